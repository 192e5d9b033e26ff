"""The device and weight dtype a front-end asked for by name; torch is imported only when called."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import SupirError

if TYPE_CHECKING:
    import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, else MPS, else the CPU; any other name is passed to ``torch.device``."""
    import torch

    if name != "auto":
        try:
            return torch.device(name)
        except RuntimeError as exc:
            raise SupirError(f"unknown device {name!r} ({exc}); use auto, cuda, cuda:1, mps or cpu") from exc
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def storage_dtype(name: str) -> torch.dtype:
    """The torch dtype of a storage dtype name (fp16, bf16, fp8, fp32)."""
    from .memory import STORAGE_DTYPES

    try:
        return STORAGE_DTYPES[name]
    except KeyError:
        choices = ", ".join(sorted(STORAGE_DTYPES))
        raise SupirError(f"storage dtype must be one of {choices}, got {name!r}") from None
