"""Pre-upscale throughput on the CPU: tiles/s and output megapixels/s of a Compact (x2) model.

Usage: python bench/pre_upscale_cpu.py [repeats]. Writes nothing; prints one line per case.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_upscaler import write_compact  # noqa: E402

from supir_engine.pre_upscale import model_upscale  # noqa: E402
from supir_engine.upscaler_files import load_upscaler  # noqa: E402


class Count:
    def __init__(self) -> None:
        self.tiles = 0

    def progress(self, stage: str, step: int, total: int) -> None:
        self.tiles = total

    def should_stop(self) -> bool:
        return False


def main(repeats: int = 5) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "test model (8 feat, 2 convs)": write_compact(Path(tmp) / "tiny.safetensors", 2),
            "compact size (64 feat, 16 convs)": write_compact(
                Path(tmp) / "compact.safetensors", 2, features=64, convs=16
            ),
        }
        for name, path in cases.items():
            model = load_upscaler(path)
            for side in (512, 1024):
                rng = np.random.default_rng(0)
                image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
                times, host = [], Count()
                for _ in range(repeats):
                    start = time.perf_counter()
                    target = (2 * side, 2 * side)
                    model_upscale(image, model, target, torch.device("cpu"), tile=256, host=host)
                    times.append(time.perf_counter() - start)
                best, median = min(times), statistics.median(times)
                mpx = (2 * side) ** 2 / 1e6
                print(
                    f"{name}: {side}->{2 * side}, {host.tiles} tiles of 256: min {best:.3f} s, median "
                    f"{median:.3f} s; {host.tiles / best:.2f} / {host.tiles / median:.2f} tiles/s, "
                    f"{mpx / best:.2f} / {mpx / median:.2f} output Mpx/s (min / median)",
                    flush=True,
                )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
