"""The GPU check's --dry-run runs the whole check on the CPU (tiny model), so the script cannot rot."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_every_field_for_every_case_and_passes_its_checks(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,  # ~15 s on an idle 2-core machine; generous for loaded CI runners
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    gc = _module()
    rows = {r["case"]: r for r in result["rows"]}
    assert sorted(rows) == sorted(c.name for c in gc.all_cases(dry_run=True))
    for name, row in rows.items():
        assert list(row) == list(gc.ROW_FIELDS), name
        assert row["error"] is None, row["error"]
        assert row["nan"] is False and row["nonfinite"]["output"] == 0 and row["nonfinite"]["unet"] == 0
        assert row["output_px"] == 2 * row["input_px"]
        assert len(row["step_seconds"]) == row["steps"] == 2 and row["seconds_per_step"] > 0
        assert set(gc.STAGES) <= set(row["stage_seconds"])
        assert row["max_memory_allocated"] > 0 and row["estimated_peak_bytes"] > 0
        assert sum(row["bytes_to_device"].values()) > 0
        assert row["memory_method"].startswith("cpu stand-in")
    for size in gc.DRY_SIZES:
        stages, blocks = rows[f"{size}:stages:fp16"], rows[f"{size}:blocks:fp16"]
        assert blocks["policy"] == "blocks"
        # streaming really ran: far fewer weight bytes live at once, more bytes copied
        assert blocks["max_memory_allocated"] < stages["max_memory_allocated"] / 2
        assert sum(blocks["bytes_to_device"].values()) > sum(stages["bytes_to_device"].values())
    identical = result["checks"]["stages_vs_blocks"]
    assert len([c for c in identical if c["required"]]) == len(gc.DRY_SIZES)
    assert all(c["identical"] for c in identical)
    psnrs = result["checks"]["fp8_vs_fp16_psnr"]
    assert len(psnrs) == len(gc.DRY_SIZES) * len(gc.POLICIES)
    assert all(c["psnr_db"] is None or c["psnr_db"] > 20 for c in psnrs)
    assert set(result["sdpa"]) == {"unet", "vae"} and all(p["available"] for p in result["sdpa"].values())
    assert result["ok"] is True and result["failures"] == []
    assert "all checks passed" in done.stdout and "32:blocks:fp16" in done.stdout


def test_stages_blocks_difference_and_nan_fail_the_check() -> None:
    gc = _module()
    cases = [gc.Case(64, "stages", "fp16"), gc.Case(64, "blocks", "fp16")]
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 3
    checks = gc.compare({"64:stages:fp16": a, "64:blocks:fp16": b}, cases)
    assert checks["stages_vs_blocks"][0]["max_abs_diff"] == 3
    rows = [gc._complete({"case": "64:stages:fp16", "nan": True, "nonfinite": {"output": 5}})]
    bad = gc.failures(rows, checks)
    assert len(bad) == 2 and "differ" in bad[1] and "non-finite" in bad[0]
    assert gc.failures([], gc.compare({"64:stages:fp16": a, "64:blocks:fp16": a}, cases)) == []


def test_fake_figure_comes_from_the_saved_row_of_the_same_case() -> None:
    gc = _module()
    saved = json.loads((ROOT / "bench" / "vram_results.json").read_text())
    want = next(r["peak_bytes"] for r in saved if r["case"] == "blocks:fp8" and r["input_px"] == 1024)
    assert gc.fake_figure(saved, gc.Case(1024, "blocks", "fp8"), None, True) == want
    assert gc.fake_figure(saved, gc.Case(512, "blocks", "fp8"), None, True) is None  # no 512 px row
    auto8 = next(r["peak_bytes"] for r in saved if r["case"] == "auto8:fp16")
    assert gc.fake_figure(saved, gc.Case(1024, "auto", "fp16"), 8.0, True) == auto8
    assert gc.fake_figure(saved, gc.Case(1024, "auto", "fp16"), None, True) is None
