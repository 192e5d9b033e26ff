"""A tiny SUPIR architecture with random weights in the real key layout.

Used by the tests, the loading benchmark's CI configuration and ``check --demo``: same
structure as the real model (3 UNet levels, 12 projection modules, two text towers), a few
million parameters instead of five billion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from .checkpoints import COMPONENTS
from .models import SUPIRConfig, build_supir
from .models.text import TextEncoderConfig
from .models.unet import UNetConfig
from .models.vae import VAEConfig

TINY_CONFIG = SUPIRConfig(
    unet=UNetConfig(
        model_channels=32,
        transformer_depth=(0, 2, 1),
        transformer_depth_middle=1,
        context_dim=32,
        adm_in_channels=32 + 1536,
        num_head_channels=64,
    ),
    vae=VAEConfig(ch=32, ch_mult=(1, 1, 2, 2)),
    text=TextEncoderConfig(
        clip_l_width=16,
        clip_l_layers=3,
        clip_l_heads=1,
        clip_l_mlp=64,
        clip_l_output_layer=2,
        bigg_width=16,
        bigg_layers=3,
        bigg_heads=1,
        bigg_mlp=64,
        bigg_proj=32,
    ),
)
SUPIR_PREFIXES = tuple(c.prefix for c in COMPONENTS if c.source == "supir")


def random_state_dict(
    config: SUPIRConfig = TINY_CONFIG, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Every key of the model built from ``config``, filled with small random values."""
    generator = torch.Generator().manual_seed(seed)
    model = build_supir(config, "meta")
    state = {}
    for key, meta in model.state_dict().items():
        if key.startswith("denoiser.") or key.endswith("position_ids"):
            continue
        values = torch.randn(meta.shape, generator=generator) * 0.05
        if key.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight", "ln_1.weight")):
            values += 1.0
        state[key] = values.to(dtype)
    return state


def split_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(SDXL base part, SUPIR part) as the public files divide them."""
    supir = {k: v for k, v in state.items() if k.startswith(SUPIR_PREFIXES)}
    sdxl = {k: v for k, v in state.items() if k not in supir}
    return sdxl, supir


def save_checkpoint(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Save as .safetensors, or as a Lightning-style pickled .ckpt ({'state_dict': ...})."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 0, "epoch": 0}, path)
    return path


def write_demo_checkpoints(directory: Path, seed: int = 0) -> tuple[Path, Path]:
    """An SDXL-like fp16 base and a SUPIR-like fp16 file of the tiny architecture."""
    sdxl, supir = split_state_dict(random_state_dict(TINY_CONFIG, seed, torch.float16))
    return (
        save_checkpoint(sdxl, directory / "tiny_sdxl_base.safetensors"),
        save_checkpoint(supir, directory / "tiny_supir.safetensors"),
    )


def demo_image(size: int = 128) -> Image.Image:
    """A smooth synthetic picture (gradients and a soft disc) for demos and benchmarks."""
    y, x = np.mgrid[0:size, 0:size] / size
    disc = np.exp(-((x - 0.6) ** 2 + (y - 0.4) ** 2) / 0.02)
    rgb = np.stack([x, y, 0.3 + 0.6 * disc], axis=-1).clip(0, 1)
    return Image.fromarray((rgb * 255).astype(np.uint8))
