"""Cost of one saved sampler state (resume.py) at a given output size, on this machine's CPU and disk.

    python bench/resume_overhead.py --size 2048 --repeats 20 [--folder DIR]

Times ``ResumeJob.save`` (copy to RAM, safetensors encoding, write, fsync, rename, prune) and the read
back, for both samplers (DPM++ 2M also keeps its previous prediction), and prints the bytes per state.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from supir_engine.resume import ResumeJob, ResumeOptions, SavedState


def measure(size: int, repeats: int, folder: Path) -> list[dict]:
    shape = (1, 4, size // 8, size // 8)
    rows = []
    for sampler in ("restore_edm", "restore_dpmpp_2m"):
        job = ResumeJob(ResumeOptions(folder), {"settings": {}, "image": sampler}, sampler, 50, shape)
        x = torch.randn(shape)
        old = torch.randn(shape) if sampler == "restore_dpmpp_2m" else None
        rng = torch.Generator().manual_seed(0).get_state()
        saves, loads, size_bytes = [], [], 0
        for step in range(1, repeats + 1):
            start = time.perf_counter()
            size_bytes = job.save(SavedState(step, 50, 0, x, old, rng))
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            job.load(rng.numel())
            loads.append(time.perf_counter() - start)
        job.drop()
        rows.append(
            {
                "sampler": sampler,
                "latent": "x".join(map(str, shape)),
                "bytes": size_bytes,
                "save_ms_median": 1000 * statistics.median(saves),
                "save_ms_max": 1000 * max(saves),
                "load_ms_median": 1000 * statistics.median(loads),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="output side in pixels (latent = size / 8)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--folder", type=Path, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for row in measure(args.size, args.repeats, args.folder or Path(tmp)):
            print(
                f"{row['sampler']:18s} latent {row['latent']}: {row['bytes']} bytes per state, save "
                f"{row['save_ms_median']:.1f} ms median ({row['save_ms_max']:.1f} max), "
                f"load {row['load_ms_median']:.1f} ms"
            )


if __name__ == "__main__":
    main()
