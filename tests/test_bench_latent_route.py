"""bench/latent_route.py runs end to end on the tiny configuration and reaches a verdict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_latent_route_figures() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "latent_route.py"), "--tiny", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    out = json.loads(done.stdout)
    pieces, figures = out["pieces"], out["figures"]
    assert (out["input_px"], out["output_px"]) == (64, 128)
    for name in ("decode_input", "stage1.denoise_encode", "stage1.decode", "sampling", "latent_upscaler"):
        assert pieces[name]["flops"] > 0 and pieces[name]["peak_bytes"] > 0
    # a decode at twice the side is four times the work (the same convolutions over 4x the pixels)
    assert pieces["stage1.decode"]["flops"] > 3.5 * pieces["decode_input"]["flops"]
    assert figures["faithful"]["net_share"] < 0 < figures["upper_bound"]["net_share"]
    assert isinstance(figures["worth_building"], bool)
