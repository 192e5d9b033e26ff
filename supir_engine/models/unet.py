"""The SDXL UNet with SUPIR's projection modules (ZeroSFT, ZeroCrossAttn), ldm/sgm layout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import ops
from .blocks import (
    CrossAttention,
    Downsample,
    GroupNorm32,
    ResBlock,
    SpatialTransformer,
    Steps,
    TimestepSequential,
    Upsample,
    drive,
    layer_segments,
    layer_steps,
    timestep_embedding,
)

SFT_HIDDEN_CHANNELS = 128  # hard-coded in SUPIR's ZeroSFT
CROSS_ATTN_HEAD_DIM = 64  # ZeroCrossAttn always uses 64-channel heads


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the SDXL UNet (and of GLVControl, which copies its encoder half).

    ``transformer_depth`` gives the number of transformer blocks per level; 0 means the level
    has no attention. Defaults are SDXL base / SUPIR-v0.
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    transformer_depth: tuple[int, ...] = (0, 2, 10)
    transformer_depth_middle: int = 10
    context_dim: int = 2048
    adm_in_channels: int = 2816
    num_head_channels: int = 64

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4

    def heads(self, channels: int) -> int:
        return channels // self.num_head_channels

    def level_channels(self, level: int) -> int:
        return self.model_channels * self.channel_mult[level]


def make_embeddings(cfg: UNetConfig) -> tuple[nn.Sequential, nn.Sequential]:
    """time_embed and label_emb (the SDXL "vector" embedding), in checkpoint layout."""
    ted = cfg.time_embed_dim
    time_embed = nn.Sequential(ops.Linear(cfg.model_channels, ted), nn.SiLU(), ops.Linear(ted, ted))
    label = nn.Sequential(ops.Linear(cfg.adm_in_channels, ted), nn.SiLU(), ops.Linear(ted, ted))
    return time_embed, nn.Sequential(label)


def embed(
    cfg: UNetConfig,
    time_embed: nn.Module,
    label_emb: nn.Module,
    timesteps: torch.Tensor,
    y: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    t_emb = timestep_embedding(timesteps, cfg.model_channels).to(dtype)
    return time_embed(t_emb) + label_emb(y.to(dtype))


def _transformer(cfg: UNetConfig, channels: int, depth: int) -> SpatialTransformer:
    heads = cfg.heads(channels)
    return SpatialTransformer(channels, heads, cfg.num_head_channels, depth, cfg.context_dim)


def build_encoder(cfg: UNetConfig) -> tuple[nn.ModuleList, TimestepSequential, list[int]]:
    """Input blocks and middle block; also the channel count of each input block's output."""
    ted, mc = cfg.time_embed_dim, cfg.model_channels
    blocks = [TimestepSequential(ops.Conv2d(cfg.in_channels, mc, 3, padding=1))]
    channels = [mc]
    ch = mc
    for level, depth in enumerate(cfg.transformer_depth):
        out_ch = cfg.level_channels(level)
        for _ in range(cfg.num_res_blocks):
            layers: list[nn.Module] = [ResBlock(ch, ted, out_ch)]
            ch = out_ch
            if depth:
                layers.append(_transformer(cfg, ch, depth))
            blocks.append(TimestepSequential(*layers))
            channels.append(ch)
        if level != len(cfg.channel_mult) - 1:
            blocks.append(TimestepSequential(Downsample(ch)))
            channels.append(ch)
    middle = TimestepSequential(
        ResBlock(ch, ted, ch), _transformer(cfg, ch, cfg.transformer_depth_middle), ResBlock(ch, ted, ch)
    )
    return nn.ModuleList(blocks), middle, channels


class ZeroSFT(nn.Module):
    """Spatial feature transform of a skip connection by a control feature (SUPIR's ZeroSFT).

    result = scale * (GN([upper, skip + zero_conv(c)]) * (1 + gamma(c)) + beta(c))
             + (1 - scale) * [upper, skip]
    """

    def __init__(self, label_nc: int, norm_nc: int, concat_channels: int = 0):
        super().__init__()
        total = norm_nc + concat_channels
        self.param_free_norm = ops.GroupNorm(32, total)  # affine, despite the name
        self.mlp_shared = nn.Sequential(ops.Conv2d(label_nc, SFT_HIDDEN_CHANNELS, 3, padding=1), nn.SiLU())
        self.zero_mul = ops.Conv2d(SFT_HIDDEN_CHANNELS, total, 3, padding=1)
        self.zero_add = ops.Conv2d(SFT_HIDDEN_CHANNELS, total, 3, padding=1)
        self.zero_conv = ops.Conv2d(label_nc, norm_nc, 1)
        self.concat_channels = concat_channels

    def forward(
        self, control: torch.Tensor, skip: torch.Tensor, upper: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        guided = skip + self.zero_conv(control)
        if self.concat_channels:
            raw = torch.cat([upper, skip], dim=1)
            guided = torch.cat([upper, guided], dim=1)
        else:
            raw = skip
        actv = self.mlp_shared(control)
        out = self.param_free_norm(guided) * (1 + self.zero_mul(actv)) + self.zero_add(actv)
        return out * scale + raw * (1 - scale)


class ZeroCrossAttn(nn.Module):
    """Cross-attention from the hidden state to a control feature map (SUPIR's ZeroCrossAttn)."""

    def __init__(self, context_dim: int, query_dim: int):
        super().__init__()
        heads = max(1, query_dim // CROSS_ATTN_HEAD_DIM)
        self.attn = CrossAttention(query_dim, context_dim, heads, CROSS_ATTN_HEAD_DIM)
        self.norm1 = ops.GroupNorm(32, query_dim)
        self.norm2 = ops.GroupNorm(32, context_dim)

    def forward(self, control: torch.Tensor, x: torch.Tensor, scale: float) -> torch.Tensor:
        b, c, h, w = x.shape
        context = self.norm2(control).flatten(2).transpose(1, 2)
        query = self.norm1(x).flatten(2).transpose(1, 2)
        out = self.attn(query, context).transpose(1, 2).reshape(b, c, h, w)
        return x + out * scale


def _wants_cross_attn(block: nn.Sequential) -> bool:
    """Output blocks ending in Transformer + Upsample get a ZeroCrossAttn before the Upsample."""
    return isinstance(block[-1], Upsample) and isinstance(block[-2], SpatialTransformer)


class SUPIRUNet(nn.Module):
    """SDXL UNet whose decoder merges skips and control features through ZeroSFT/ZeroCrossAttn."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        self.time_embed, self.label_emb = make_embeddings(cfg)
        self.input_blocks, self.middle_block, skip_channels = build_encoder(cfg)
        self.output_blocks, upper_channels = self._build_decoder(skip_channels)
        self.out = nn.Sequential(
            GroupNorm32(32, cfg.model_channels),
            nn.SiLU(),
            ops.Conv2d(cfg.model_channels, cfg.out_channels, 3, padding=1),
        )
        self.project_modules = self._build_projections(skip_channels, upper_channels)

    def _build_decoder(self, skip_channels: list[int]) -> tuple[nn.ModuleList, list[int]]:
        cfg, ted = self.cfg, self.cfg.time_embed_dim
        skips = list(skip_channels)
        ch = skips[-1]
        blocks, uppers = [], []
        for level in reversed(range(len(cfg.channel_mult))):
            depth, out_ch = cfg.transformer_depth[level], cfg.level_channels(level)
            for i in range(cfg.num_res_blocks + 1):
                uppers.append(ch)
                layers: list[nn.Module] = [ResBlock(ch + skips.pop(), ted, out_ch)]
                ch = out_ch
                if depth:
                    layers.append(_transformer(cfg, ch, depth))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                blocks.append(TimestepSequential(*layers))
        return nn.ModuleList(blocks), uppers

    def _build_projections(self, skip_channels: list[int], upper_channels: list[int]) -> nn.ModuleList:
        """Index 0 serves the last output block; the last index serves the middle block."""
        modules: list[nn.Module] = []
        n = len(self.output_blocks)
        for b in reversed(range(n)):
            feature_ch = skip_channels[n - 1 - b]
            block = self.output_blocks[b]
            if _wants_cross_attn(block):
                modules.append(ZeroCrossAttn(feature_ch, block[-1].conv.in_channels))
            modules.append(ZeroSFT(feature_ch, feature_ch, upper_channels[b]))
        middle_ch = skip_channels[-1]
        modules.append(ZeroSFT(middle_ch, middle_ch, 0))
        return nn.ModuleList(modules)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor,
        control: Sequence[torch.Tensor],
        control_scale: float = 1.0,
    ) -> torch.Tensor:
        return drive(self.steps(x, timesteps, context, y, control, control_scale))

    def steps(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor,
        control: Sequence[torch.Tensor],
        control_scale: float = 1.0,
    ) -> Steps:
        """The stepped forward: yields between the parts ``segments`` lists, in the same order."""
        dtype = x.dtype
        context = context.to(dtype)
        emb = embed(self.cfg, self.time_embed, self.label_emb, timesteps, y, dtype)
        skips, h = [], x
        for block in self.input_blocks:
            yield
            h = yield from block.steps(h, emb, context)
            skips.append(h)
        yield
        h = yield from self.middle_block.steps(h, emb, context)

        proj = len(self.project_modules) - 1
        feat = len(control) - 1
        yield
        h = self.project_modules[proj](control[feat], h, None, control_scale)
        proj -= 1
        feat -= 1
        for block in self.output_blocks:
            yield
            h = self.project_modules[proj](control[feat], skips.pop(), h, control_scale)
            proj -= 1
            yield
            if _wants_cross_attn(block):
                for i, layer in enumerate(block[:-1]):
                    if i:
                        yield
                    h = yield from layer_steps(layer, h, emb, context)
                yield
                h = self.project_modules[proj](control[feat], h, control_scale)
                proj -= 1
                yield
                h = block[-1](h)
            else:
                h = yield from block.steps(h, emb, context)
            feat -= 1
        yield
        return self.out(h)

    def segments(self) -> list[list[nn.Module]]:
        """The modules each segment of ``steps`` runs, in execution order."""
        parts: list[list[nn.Module]] = [[self.time_embed, self.label_emb]]
        for block in self.input_blocks:
            parts += block.segments()
        parts += self.middle_block.segments()
        proj = len(self.project_modules) - 1
        parts.append([self.project_modules[proj]])
        for block in self.output_blocks:
            proj -= 1
            parts.append([self.project_modules[proj]])
            if _wants_cross_attn(block):
                for layer in block[:-1]:
                    parts += layer_segments(layer)
                proj -= 1
                parts += [[self.project_modules[proj]], [block[-1]]]
            else:
                parts += block.segments()
        parts.append([self.out])
        return parts
