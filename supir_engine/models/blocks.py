"""Building blocks of the SDXL UNet and GLVControl, in the ldm/sgm state-dict layout."""

from __future__ import annotations

import math
from collections.abc import Generator

import torch
import torch.nn.functional as F
from torch import nn

from . import ops


class GroupNorm32(ops.GroupNorm):
    """GroupNorm computed in float32 whatever the activation dtype, as the original UNet does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(device=x.device, dtype=torch.float32)
        b = None if self.bias is None else self.bias.to(device=x.device, dtype=torch.float32)
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cosine half first, as used for timesteps and SDXL size conditions."""
    half = dim // 2
    # Same operation order as the original (multiply, then divide): it decides the last bit.
    arange = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * arange / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention on [B, N, heads*d] tensors via scaled_dot_product_attention."""
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, n, inner)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = ops.Linear(query_dim, inner, bias=False)
        self.to_k = ops.Linear(context_dim, inner, bias=False)
        self.to_v = ops.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(ops.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = ops.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(0.0), ops.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1 = ops.LayerNorm(dim)
        self.norm2 = ops.LayerNorm(dim)
        self.norm3 = ops.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


Steps = Generator[None, None, torch.Tensor]
"""A stepped forward: yields at segment boundaries, returns the output (see ``drive``)."""


def drive(steps: Steps) -> torch.Tensor:
    """Run a stepped forward to the end and return its output."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


class SpatialTransformer(nn.Module):
    """Linear-projection spatial transformer (SDXL's use_linear_in_transformer=True).

    Its stepped form yields between transformer blocks; ``segments`` lists the modules of each segment.
    """

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int):
        super().__init__()
        self.norm = ops.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = ops.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, dim_head, context_dim) for _ in range(depth)
        )
        self.proj_out = ops.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return drive(self.steps(x, context))

    def steps(self, x: torch.Tensor, context: torch.Tensor) -> Steps:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        tokens = self.proj_in(tokens)
        for i, block in enumerate(self.transformer_blocks):
            if i:
                yield
            tokens = block(tokens, context)
        tokens = self.proj_out(tokens)
        return x + tokens.transpose(1, 2).reshape(b, c, h, w)

    def segments(self) -> list[list[nn.Module]]:
        blocks = list(self.transformer_blocks)
        if not blocks:
            return [[self.norm, self.proj_in, self.proj_out]]
        parts = [[block] for block in blocks]
        parts[0] = [self.norm, self.proj_in, *parts[0]]
        parts[-1].append(self.proj_out)
        return parts


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(32, channels), nn.SiLU(), ops.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), ops.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels),
            nn.SiLU(),
            nn.Dropout(0.0),
            ops.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = ops.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = ops.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimestepSequential(nn.Sequential):
    """A sequence of layers, each given what it needs: embedding, text context, or nothing.

    Its stepped form yields before every layer but the first (and inside transformers).
    """

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return drive(self.steps(x, emb, context))

    def steps(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> Steps:
        for i, layer in enumerate(self):
            if i:
                yield
            x = yield from layer_steps(layer, x, emb, context)
        return x

    def segments(self) -> list[list[nn.Module]]:
        return [part for layer in self for part in layer_segments(layer)]


def run_layer(layer: nn.Module, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    return drive(layer_steps(layer, x, emb, context))


def layer_steps(layer: nn.Module, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> Steps:
    if isinstance(layer, ResBlock):
        return layer(x, emb)
    if isinstance(layer, SpatialTransformer):
        return (yield from layer.steps(x, context))
    return layer(x)


def layer_segments(layer: nn.Module) -> list[list[nn.Module]]:
    """The segments of one layer's stepped form (one, but for a transformer's blocks)."""
    return layer.segments() if isinstance(layer, SpatialTransformer) else [[layer]]
