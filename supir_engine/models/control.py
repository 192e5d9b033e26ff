"""GLVControl: SUPIR's control network, a trainable copy of the SDXL UNet encoder."""

from __future__ import annotations

from collections.abc import Generator

import torch
from torch import nn

from . import ops
from .blocks import TimestepSequential, drive
from .unet import UNetConfig, build_encoder, embed, make_embeddings


class GLVControl(nn.Module):
    """Returns one feature map per input block plus the middle-block output (10 for SDXL)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        self.time_embed, self.label_emb = make_embeddings(cfg)
        self.input_blocks, self.middle_block, _ = build_encoder(cfg)
        self.input_hint_block = TimestepSequential(
            ops.Conv2d(cfg.in_channels, cfg.model_channels, 3, padding=1)
        )

    def forward(
        self,
        hint: torch.Tensor,
        timesteps: torch.Tensor,
        xt: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor,
    ) -> list[torch.Tensor]:
        """``hint`` is the unscaled control latent; ``xt`` the c_in-scaled noisy latent."""
        return drive(self.steps(hint, timesteps, xt, context, y))

    def steps(
        self,
        hint: torch.Tensor,
        timesteps: torch.Tensor,
        xt: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor,
    ) -> Generator[None, None, list[torch.Tensor]]:
        """The stepped forward: yields between the parts ``segments`` lists, in the same order."""
        dtype = xt.dtype
        context = context.to(dtype)
        emb = embed(self.cfg, self.time_embed, self.label_emb, timesteps, y, dtype)
        guided_hint = self.input_hint_block(hint.to(dtype), emb, context)
        features = []
        h = xt
        for i, block in enumerate(self.input_blocks):
            yield
            h = yield from block.steps(h, emb, context)
            if i == 0:
                h = h + guided_hint
            features.append(h)
        yield
        features.append((yield from self.middle_block.steps(h, emb, context)))
        return features

    def segments(self) -> list[list[nn.Module]]:
        """The modules each segment of ``steps`` runs, in execution order."""
        parts: list[list[nn.Module]] = [[self.time_embed, self.label_emb, self.input_hint_block]]
        for block in self.input_blocks:
            parts += block.segments()
        return parts + self.middle_block.segments()
