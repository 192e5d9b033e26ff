"""The SUPIR-v0 architecture as a value, and its inference from checkpoint tensor shapes.

Head sizes cannot be read from shapes (a [640, 640] projection fits 10 heads of 64 as well as
40 of 16), so they default to SDXL's 64 channels per head and can be overridden.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .text import TextEncoderConfig, infer_text_config
from .unet import UNetConfig
from .vae import VAEConfig, infer_vae_config

UNET_PREFIX = "model.diffusion_model."
CONTROL_PREFIX = "model.control_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "conditioner."

Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class SUPIRConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)


SUPIR_V0 = SUPIRConfig()


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in shapes if (m := regex.match(k))})


def _depth(shapes: Shapes, block_prefix: str) -> int:
    return len(_indices(shapes, re.escape(block_prefix) + r"transformer_blocks\.(\d+)\."))


def infer_unet_config(shapes: Shapes, prefix: str = UNET_PREFIX, num_head_channels: int = 64) -> UNetConfig:
    """Read the UNet (or control-model) architecture from its input blocks' tensor shapes."""
    conv_in = shapes[f"{prefix}input_blocks.0.0.weight"]
    model_channels, in_channels = int(conv_in[0]), int(conv_in[1])
    levels: list[list[int]] = [[]]
    for i in _indices(shapes, re.escape(prefix) + r"input_blocks\.(\d+)\.")[1:]:
        if f"{prefix}input_blocks.{i}.0.op.weight" in shapes:
            levels.append([])
        else:
            levels[-1].append(i)
    first_res = [lvl[0] for lvl in levels]
    mult = tuple(
        int(shapes[f"{prefix}input_blocks.{i}.0.in_layers.2.weight"][0]) // model_channels for i in first_res
    )
    depth = tuple(_depth(shapes, f"{prefix}input_blocks.{i}.1.") for i in first_res)
    out_key = f"{prefix}out.2.weight"
    context_key = next(k for k in shapes if k.startswith(prefix) and k.endswith("attn2.to_k.weight"))
    return UNetConfig(
        in_channels=in_channels,
        out_channels=int(shapes[out_key][0]) if out_key in shapes else in_channels,
        model_channels=model_channels,
        channel_mult=mult,
        num_res_blocks=len(levels[0]),
        transformer_depth=depth,
        transformer_depth_middle=_depth(shapes, f"{prefix}middle_block.1."),
        context_dim=int(shapes[context_key][1]),
        adm_in_channels=int(shapes[f"{prefix}label_emb.0.0.weight"][1]),
        num_head_channels=num_head_channels,
    )


def infer_config(
    shapes: Shapes,
    num_head_channels: int = 64,
    clip_l_heads: int | None = None,
    bigg_heads: int | None = None,
) -> SUPIRConfig:
    """The whole model's architecture from the shapes of a complete (merged) state dict."""
    return SUPIRConfig(
        unet=infer_unet_config(shapes, UNET_PREFIX, num_head_channels),
        vae=infer_vae_config(shapes, VAE_PREFIX),
        text=infer_text_config(shapes, TEXT_PREFIX, clip_l_heads=clip_l_heads, bigg_heads=bigg_heads),
    )
