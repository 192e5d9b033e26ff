"""GLVControl: SUPIR's control network, a trainable copy of the SDXL UNet encoder."""

from __future__ import annotations

import torch
from torch import nn

from . import ops
from .blocks import TimestepSequential
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
        dtype = xt.dtype
        context = context.to(dtype)
        emb = embed(self.cfg, self.time_embed, self.label_emb, timesteps, y, dtype)
        guided_hint = self.input_hint_block(hint.to(dtype), emb, context)
        features = []
        h = xt
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided_hint
            features.append(h)
        features.append(self.middle_block(h, emb, context))
        return features
