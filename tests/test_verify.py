from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import FIXTURES


def test_verifier_passes_every_reference_case():
    proc = subprocess.run(
        [sys.executable, "-m", "supir_engine.verify", str(FIXTURES)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(proc.stdout)
    cases = json.loads((FIXTURES / "index.json").read_text())["fixtures"]
    lines = [line for line in proc.stdout.splitlines() if line.split(" ")[0] in cases]
    assert len(lines) == len(cases)
    assert all(" PASS " in line for line in lines), proc.stdout + proc.stderr
    assert proc.returncode == 0


def test_verifier_fails_on_a_corrupted_expectation(tmp_path):
    """A case whose expected output was tampered with must fail, and the exit status must say so."""
    work = tmp_path / "fixtures"
    work.mkdir()
    index = json.loads((FIXTURES / "index.json").read_text())
    keep = {name: entry for name, entry in index["fixtures"].items() if name.startswith(("a1", "e1"))}
    for name in [index["model_file"], index["model_sidecar"]]:
        shutil.copy(FIXTURES / name, work / name)
    from safetensors.torch import load_file, save_file

    for name, entry in keep.items():
        shutil.copy(FIXTURES / entry["sidecar"], work / entry["sidecar"])
        tensors = load_file(str(FIXTURES / entry["file"]))
        if name.startswith("e1"):
            tensors["out_adain"] = tensors["out_adain"] + 1e-2
        save_file(tensors, str(work / entry["file"]))
    (work / "index.json").write_text(json.dumps({**index, "fixtures": keep}))
    proc = subprocess.run(
        [sys.executable, "-m", "supir_engine.verify", str(work)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 1
    assert "FAIL" in next(line for line in proc.stdout.splitlines() if line.startswith("e1"))
    assert " PASS " in next(line for line in proc.stdout.splitlines() if line.startswith("a1"))
