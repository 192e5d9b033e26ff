"""SDXL AutoencoderKL with SUPIR's denoise encoder, in the sgm/ldm state-dict layout.

Module and attribute names mirror ``sgm.modules.diffusionmodules.model`` so that the
``first_stage_model.*`` tensors of an SDXL / SUPIR checkpoint load without renaming.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from supir_engine.models import ops

logger = logging.getLogger(__name__)

LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0
# Upper bound on the (queries x keys) score elements of one attention call. Backends without a fused
# kernel (the math fallback on pre-Ampere GPUs) materialise the scores: unchunked, the decoder's mid-block
# attention at 2048 px would be a 65,536^2 matrix (8 GiB in bf16). 2^24 elements is 64 MiB in float32.
ATTENTION_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class VAEConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    in_channels: int = 3
    out_channels: int = 3
    scale_factor: float = 0.13025


def infer_vae_config(shapes: Mapping[str, Sequence[int]], prefix: str = "first_stage_model.") -> VAEConfig:
    """Read the VAE hyper-parameters off tensor shapes (scale_factor is not stored; keeps the default)."""

    def shape(key: str) -> Sequence[int]:
        return shapes[prefix + key]

    level_pattern = re.compile(re.escape(prefix) + r"encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight$")
    levels: dict[int, int] = {}
    blocks: set[int] = set()
    for key in shapes:
        match = level_pattern.match(key)
        if match:
            level, block = int(match.group(1)), int(match.group(2))
            blocks.add(block)
            if block == 0:
                levels[level] = int(shapes[key][0])
    if not levels:
        raise KeyError(f"no '{prefix}encoder.down.*' tensors found")
    ch = int(shape("encoder.conv_in.weight")[0])
    return VAEConfig(
        ch=ch,
        ch_mult=tuple(levels[i] // ch for i in range(len(levels))),
        num_res_blocks=len(blocks),
        z_channels=int(shape("decoder.conv_in.weight")[1]),
        embed_dim=int(shape("post_quant_conv.weight")[0]),
        in_channels=int(shape("encoder.conv_in.weight")[1]),
        out_channels=int(shape("decoder.conv_out.weight")[0]),
    )


def _norm(channels: int) -> ops.GroupNorm:
    return ops.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, padding: int = 1) -> ops.Conv2d:
    return ops.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=padding)


def _conv1x1(in_ch: int, out_ch: int) -> ops.Conv2d:
    return ops.Conv2d(in_ch, out_ch, kernel_size=1)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = _conv3x3(in_ch, out_ch)
        self.norm2 = _norm(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.nin_shortcut = _conv1x1(in_ch, out_ch) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``scaled_dot_product_attention`` over (b, heads, tokens, c) in query chunks.

    Each chunk's score matrix has at most ``ATTENTION_CHUNK_ELEMENTS`` elements per (batch, head), whatever
    kernel the backend picks; every query row is computed as in one call, so the result is the same.
    """
    queries, keys = q.shape[2], k.shape[2]
    chunk = max(1, ATTENTION_CHUNK_ELEMENTS // max(1, keys))
    if chunk >= queries:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    out = q.new_empty((*q.shape[:3], v.shape[3]))
    for i in range(0, queries, chunk):
        out[:, :, i : i + chunk] = F.scaled_dot_product_attention(q[:, :, i : i + chunk], k, v, scale=scale)
    return out


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = _conv1x1(channels, channels)
        self.k = _conv1x1(channels, channels)
        self.v = _conv1x1(channels, channels)
        self.proj_out = _conv1x1(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:  # (b, c, h, w) -> (b, 1, h*w, c)
            return t.reshape(b, 1, c, height * width).transpose(2, 3)

        out = chunked_attention(tokens(self.q(h)), tokens(self.k(h)), tokens(self.v(h)), scale=c**-0.5)
        out = out.transpose(2, 3).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3x3(channels, channels, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ldm pads right/bottom only, so the stride-2 grid starts at the top-left pixel.
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class EncoderLevel(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, downsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch) for i in range(num_blocks)
        )
        self.downsample = Downsample(out_ch) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class DecoderLevel(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch) for i in range(num_blocks)
        )
        self.upsample = Upsample(out_ch) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class Encoder(nn.Module):
    """Image -> 2*z_channels moments (before quant_conv)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        widths = [config.ch * m for m in config.ch_mult]
        last = len(widths) - 1
        self.conv_in = _conv3x3(config.in_channels, config.ch)
        self.down = nn.ModuleList(
            EncoderLevel(([config.ch] + widths)[i], w, config.num_res_blocks, downsample=i != last)
            for i, w in enumerate(widths)
        )
        self.mid = MidBlock(widths[-1])
        self.norm_out = _norm(widths[-1])
        self.conv_out = _conv3x3(widths[-1], 2 * config.z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z_channels latent -> image. ``up[0]`` is the highest-resolution level, run last."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        widths = [config.ch * m for m in config.ch_mult]
        self.conv_in = _conv3x3(config.z_channels, widths[-1])
        self.mid = MidBlock(widths[-1])
        self.up = nn.ModuleList(
            DecoderLevel((widths + [widths[-1]])[i + 1], w, config.num_res_blocks + 1, upsample=i != 0)
            for i, w in enumerate(widths)
        )
        self.norm_out = _norm(widths[0])
        self.conv_out = _conv3x3(widths[0], config.out_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def split_moments(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split quant_conv output into (mean, clamped logvar)."""
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class LatentEncoding:
    """Control latent and restoration anchor on top of ``encode_moments`` (plain or tiled VAE)."""

    config: VAEConfig

    def encode_moments(self, image: torch.Tensor, denoise: bool) -> torch.Tensor:
        raise NotImplementedError

    def _scale(self, scale_factor: float | None) -> float:
        return self.config.scale_factor if scale_factor is None else scale_factor

    def encode_control(self, image: torch.Tensor, scale_factor: float | None = None) -> torch.Tensor:
        """Control latent z_c: scaled posterior mode of the denoise encoder."""
        mean, _ = split_moments(self.encode_moments(image, denoise=True))
        return self._scale(scale_factor) * mean

    def encode_anchor(
        self, image: torch.Tensor, noise: torch.Tensor, scale_factor: float | None = None
    ) -> torch.Tensor:
        """Scaled posterior sample of the normal encoder; ``noise`` has the mean's shape."""
        mean, logvar = split_moments(self.encode_moments(image, denoise=False))
        noise = noise.to(device=mean.device, dtype=mean.dtype)
        return self._scale(scale_factor) * (mean + torch.exp(0.5 * logvar) * noise)


class FirstStage(LatentEncoding, nn.Module):
    """SUPIR's ``first_stage_model``: SDXL VAE plus a denoise encoder sharing ``quant_conv``."""

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config or VAEConfig()
        c = self.config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = _conv1x1(2 * c.z_channels, 2 * c.embed_dim)
        self.post_quant_conv = _conv1x1(c.embed_dim, c.z_channels)
        self.denoise_encoder = Encoder(c)

    def encode_moments(self, image: torch.Tensor, denoise: bool) -> torch.Tensor:
        """quant_conv output: channels [0:embed_dim] mean, [embed_dim:] logvar (unclamped)."""
        encoder = self.denoise_encoder if denoise else self.encoder
        return self.quant_conv(encoder(image))

    def decode(self, latent: torch.Tensor, scale_factor: float | None = None) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(latent / self._scale(scale_factor)))


CaseOutput = Callable[[FirstStage, Mapping[str, torch.Tensor], float], torch.Tensor]

# Output tensor name in a fixture -> how to compute it from the fixture's inputs and scale factor.
VAE_CASE_OUTPUTS: dict[str, CaseOutput] = {
    "out_denoise_encoder_latent_mode": lambda fs, t, s: fs.encode_control(t["image"], s),
    "ref_denoise_encoder_latent_untiled": lambda fs, t, s: fs.encode_control(t["image"], s),
    "out_decoded": lambda fs, t, s: fs.decode(t["latent_in"], s),
    "ref_decoded_untiled": lambda fs, t, s: fs.decode(t["latent_in"], s),
    "out_encoder_latent_sample": lambda fs, t, s: fs.encode_anchor(t["image"], t["rng_000"], s),
    "intermediate_denoise_encoder_moments": lambda fs, t, s: fs.encode_moments(t["image"], denoise=True),
    "intermediate_encoder_moments": lambda fs, t, s: fs.encode_moments(t["image"], denoise=False),
}

_OUTPUT_PREFIXES = ("out_", "ref_", "intermediate_")


@torch.inference_mode()
def run_vae_case(
    first_stage: FirstStage, tensors: Mapping[str, torch.Tensor], sidecar: Mapping[str, Any]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Recompute every output of a VAE fixture that this module knows how to produce.

    Returns ``{name: (expected, actual)}``. Output names with no entry in ``VAE_CASE_OUTPUTS``
    (e.g. tiled-VAE results) are skipped with a warning so a caller can tell they went unchecked.
    """
    scale = float(sidecar.get("scale_factor", first_stage.config.scale_factor))
    results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, expected in tensors.items():
        compute = VAE_CASE_OUTPUTS.get(name)
        if compute is not None:
            results[name] = (expected, compute(first_stage, tensors, scale))
        elif name.startswith(_OUTPUT_PREFIXES):
            logger.warning("run_vae_case: no rule for fixture output %r; not checked", name)
    return results
