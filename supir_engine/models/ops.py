"""Layers whose weights are cast to the input's device and dtype just in time.

Every network in this package is built from these layers. Storage dtype (fp16, bf16, fp8)
and storage device (RAM or VRAM) then become a property of the weights alone: a layer stored
in float8 on the host computes in the input's dtype on the input's device without any change
to the model code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cast_to(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Return ``t`` on ``like``'s device and in its floating dtype (no copy when already there)."""
    if t is None:
        return None
    if t.device == like.device and t.dtype == like.dtype:
        return t
    return t.to(device=like.device, dtype=like.dtype, non_blocking=True)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, cast_to(self.weight, x), cast_to(self.bias, x))


class Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, cast_to(self.weight, x), cast_to(self.bias, x))


class GroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, cast_to(self.weight, x), cast_to(self.bias, x), self.eps)


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            x, self.normalized_shape, cast_to(self.weight, x), cast_to(self.bias, x), self.eps
        )
