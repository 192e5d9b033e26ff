"""One upscale on a small CPU configuration: network evaluations and wall time per stage.

    python bench/pipeline.py [--size 128] [--scale 2] [--steps 10] [--tile 16]

Uses the tiny architecture with random weights (no model download); the figures show where
the time goes and how many UNet+control evaluations each setting costs, not image quality.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from supir_engine.models import build_supir  # noqa: E402
from supir_engine.pipeline import SUPIRPipeline  # noqa: E402
from supir_engine.settings import UpscaleSettings  # noqa: E402
from supir_engine.tiny import TINY_CONFIG, random_state_dict  # noqa: E402


def tiny_pipeline(seed: int = 0) -> SUPIRPipeline:
    model = build_supir(TINY_CONFIG, "meta")
    model.load_state_dict(random_state_dict(TINY_CONFIG, seed), strict=False, assign=True)
    model.denoiser.reset()
    return SUPIRPipeline(model.eval().requires_grad_(False), "cpu")


def test_image(size: int) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, 0.5 + 0.4 * np.sin(8 * x * y)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tile", type=int, default=16, help="latent tile size for the tiled run")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipeline = tiny_pipeline()
    image = test_image(args.size)
    base = UpscaleSettings(scale=args.scale, min_size=args.size, steps=args.steps, seed=1)
    cases = {
        "plain": base,
        "plain, stage 1 cached": base,
        f"tiled sampler {args.tile}/{args.tile // 2}": base.replace(
            tile_size=args.tile, tile_stride=args.tile // 2
        ),
        "tiled VAE": base.replace(vae_encoder_tile=args.size, vae_decoder_tile=args.tile),
    }
    print(f"input {args.size}x{args.size}, scale {args.scale}, {args.steps} steps, tiny random model, CPU")
    header = f"{'case':<26} {'net evals':>9} {'total s':>8}  per stage (s)"
    print(header)
    print("-" * len(header))
    for name, settings in cases.items():
        if name == "plain":
            pipeline.clear_cache()
        start = time.perf_counter()
        result = pipeline.upscale(image, settings)
        total = time.perf_counter() - start
        stages = ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items())
        print(f"{name:<26} {result.network_evaluations:>9} {total:>8.2f}  {stages}")


if __name__ == "__main__":
    main()
