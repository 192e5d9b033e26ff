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

from ..memory.storage import FP8_SCALE_SUFFIX


def cast_to(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Return ``t`` on ``like``'s device and in its floating dtype (no copy when already there)."""
    if t is None:
        return None
    if t.device == like.device and t.dtype == like.dtype:
        return t
    return t.to(device=like.device, dtype=like.dtype, non_blocking=True)


def cast_weight(module: nn.Module, name: str, like: torch.Tensor) -> torch.Tensor | None:
    """Tensor ``name`` of ``module`` cast like ``cast_to``, times its fp8 scale buffer if it has one.

    The scale multiplies the upcast copy in place, so scaled fp8 storage costs no temporary beyond the
    copy every storage-only dtype needs. It is a power of two: the product is exact in every compute dtype.
    """
    t = getattr(module, name)
    w = cast_to(t, like)
    scale = module._buffers.get(name + FP8_SCALE_SUFFIX)
    if scale is None or w is None:
        return w
    scale = cast_to(scale, like)
    return w * scale if w is t else w.mul_(scale)  # ``w is t``: a device copy already upcast (MPS)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, cast_weight(self, "weight", x), cast_to(self.bias, x))


class Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, cast_weight(self, "weight", x), cast_to(self.bias, x))


class GroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(
            x, self.num_groups, cast_weight(self, "weight", x), cast_to(self.bias, x), self.eps
        )


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            x, self.normalized_shape, cast_weight(self, "weight", x), cast_to(self.bias, x), self.eps
        )
