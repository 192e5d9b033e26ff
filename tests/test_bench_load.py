"""The loading benchmark runs end to end on the tiny configuration (what CI runs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = (
    "sdxl_fp16_sft",
    "supir_fp16_sft",
    "supir_fp32_ckpt",
    "sdxl_fp16_sft + supir_fp16_sft",
    "sdxl_fp16_sft + supir_fp32_ckpt",
)
SIZE = r"\d+\.\d+ [MG]iB"


def test_tiny_benchmark_prints_the_table_with_all_cases(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), "--config", "tiny", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,  # ~15 s on an idle 2-core machine; generous for loaded CI runners
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("case "))
    columns = ("seconds", "CPU s", "baseline RSS", "peak RSS", "resident", "(peak-base)/res", "peak/res")
    assert all(column in header for column in columns), header
    row = re.compile(
        rf"^(?P<case>.+?)\s+(?P<seconds>\d+\.\d+)\s+(?P<cpu>\d+\.\d+)\s+{SIZE}\s+(?P<peak>{SIZE})\s+{SIZE}\s+(?P<resident>{SIZE})"
        rf"\s+(?P<delta>-?\d+\.\d+)\s+(?P<ratio>\d+\.\d+)\s+n/a \(tiny\)\s*$"
    )
    rows = {m["case"]: m for m in map(row.match, lines) if m}
    assert sorted(rows) == sorted(CASES), done.stdout
    for match in rows.values():
        assert float(match["ratio"]) > 1.0  # peak RSS includes Python + torch: above the tiny model's size
    assert len(list(tmp_path.glob("tiny_*"))) == 4  # three checkpoints and the manifest, kept in --workdir
