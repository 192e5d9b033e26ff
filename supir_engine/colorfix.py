"""Colour correction of a restored image towards a reference (the original's ``SUPIR/utils/colorfix.py``).

Both fixes work on ``[B, C, H, W]`` float tensors (SUPIR uses C = 3, values in [-1, 1]) of any float dtype on
any device. Half-precision inputs are computed in float32 and returned in their own dtype. Nothing here reads
tensor values back to the host, so the fixes can be queued on an accelerator without a sync.

* :func:`wavelet_color_fix` keeps the high frequencies of ``content`` and takes the low frequencies (a
  5-level a-trous blur) of ``reference``.
* :func:`adain_color_fix` matches the per-image, per-channel mean and standard deviation of ``content`` to
  those of ``reference``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from .errors import SupirError

log = logging.getLogger(__name__)

WAVELET_LEVELS = 5
ADAIN_EPS = 1e-5
_BLUR_KERNEL = ((1.0, 2.0, 1.0), (2.0, 4.0, 2.0), (1.0, 2.0, 1.0))  # divided by 16


class ColorFixError(SupirError, ValueError):
    """Bad arguments to a colour fix: unknown kind, wrong rank, or mismatched shapes."""


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_inputs(content: torch.Tensor, reference: torch.Tensor, same_spatial: bool) -> None:
    for name, t in (("content", content), ("reference", reference)):
        if t.dim() != 4 or not t.is_floating_point():
            raise ColorFixError(f"{name} must be a float [B, C, H, W] tensor, got {t.dtype} {tuple(t.shape)}")
    n = 4 if same_spatial else 2
    if content.shape[:n] != reference.shape[:n]:
        what = "shape" if same_spatial else "batch and channel sizes"
        raise ColorFixError(
            f"content and reference must have the same {what}: {tuple(content.shape)} vs "
            f"{tuple(reference.shape)}; resize the reference to the content's size first"
        )


def _blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    """Depthwise 3x3 binomial blur with dilation ``radius`` after replicate padding by ``radius``."""
    channels = image.shape[1]
    kernel = torch.tensor(_BLUR_KERNEL, dtype=image.dtype, device=image.device) / 16
    kernel = kernel.expand(channels, 1, 3, 3)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=radius)


def wavelet_decomposition(
    image: torch.Tensor, levels: int = WAVELET_LEVELS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the band-pass layers, the ``levels``-times blurred image); radius 2**i at level i."""
    high = torch.zeros_like(image)
    low = image
    for i in range(levels):
        blurred = _blur(low, 2**i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(
    content: torch.Tensor, reference: torch.Tensor, levels: int = WAVELET_LEVELS
) -> torch.Tensor:
    """High frequencies of ``content`` plus the 5-level low-pass of ``reference`` (same shape required)."""
    _check_inputs(content, reference, same_spatial=True)
    dtype = _compute_dtype(content.dtype)
    high, _ = wavelet_decomposition(content.to(dtype), levels)
    _, low = wavelet_decomposition(reference.to(device=content.device, dtype=dtype), levels)
    return (high + low).to(content.dtype)


def _mean_std(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.flatten(2)
    std = (flat.var(dim=2, unbiased=True) + eps).sqrt()
    return flat.mean(dim=2)[..., None, None], std[..., None, None]


def adain_color_fix(content: torch.Tensor, reference: torch.Tensor, eps: float = ADAIN_EPS) -> torch.Tensor:
    """Per image and channel: (content - mean_c) / std_c * std_r + mean_r, std = sqrt(unbiased var + eps).

    Only statistics of ``reference`` are used, so its height and width may differ from the content's;
    batch and channel sizes must match.
    """
    _check_inputs(content, reference, same_spatial=False)
    dtype = _compute_dtype(content.dtype)
    x = content.to(dtype)
    ref_mean, ref_std = _mean_std(reference.to(device=content.device, dtype=dtype), eps)
    mean, std = _mean_std(x, eps)
    return ((x - mean) / std * ref_std + ref_mean).to(content.dtype)


def _no_fix(content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return content


COLOR_FIXES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "wavelet": wavelet_color_fix,
    "adain": adain_color_fix,
    "none": _no_fix,
}


def apply_color_fix(kind: str, content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Apply the colour fix named ``kind``: "wavelet", "adain" or "none" (any case, e.g. the original's
    "Wavelet", "AdaIn", "None"). "none" returns ``content`` itself."""
    fix = COLOR_FIXES.get(str(kind).strip().lower())
    if fix is None:
        choices = ", ".join(repr(k) for k in COLOR_FIXES)
        raise ColorFixError(f"unknown colour fix {kind!r}; choose one of {choices}")
    return fix(content, reference)


def run_colorfix_case(sidecar: Mapping, tensors: Mapping[str, torch.Tensor]) -> dict:
    """Fixture runner: ``out_wavelet`` / ``out_adain`` (those present) from ``content`` and ``style``."""
    content, style = tensors["content"], tensors["style"]
    levels = int(sidecar.get("wavelet_levels", WAVELET_LEVELS))
    eps = float(sidecar.get("adain_eps", ADAIN_EPS))
    pairs = {}
    if "out_wavelet" in tensors:
        pairs["out_wavelet"] = (tensors["out_wavelet"], wavelet_color_fix(content, style, levels))
    if "out_adain" in tensors:
        pairs["out_adain"] = (tensors["out_adain"], adain_color_fix(content, style, eps))
    log.debug("colour-fix case: compared %s", sorted(pairs))
    return pairs
