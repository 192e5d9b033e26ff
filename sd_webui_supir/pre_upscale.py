"""The webui's upscalers (``shared.sd_upscalers``: ESRGAN, SwinIR, DAT, Lanczos, ...) as SUPIR pre-upscalers.

The engine asks its host for a pre-upscaler by name (``WebuiHost.image_upscaler``); the webui's own
``Upscaler.upscale(img, scale, data_path)`` then enlarges the image with its tiling and settings, and the
engine resizes the result to SUPIR's exact input size. SUPIR's own entries and "None" are not offered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modules import shared
from PIL import Image

from supir_engine.pre_upscale import RESAMPLERS

SKIPPED = ("none",)  # the webui's "None" does not enlarge
OWN_SCALER = "SUPIR"  # UpscalerSUPIR.name: SUPIR cannot pre-upscale for itself


def _usable(data: Any) -> bool:
    name = str(getattr(data, "name", "") or "")
    scaler = getattr(data, "scaler", None)
    if not name or scaler is None or name.lower() in SKIPPED or name.lower() in RESAMPLERS:
        return False
    return getattr(scaler, "name", None) != OWN_SCALER


def webui_upscalers() -> list[Any]:
    """The entries of the webui's upscaler list SUPIR can use before stage 1, in the webui's order."""
    return [data for data in getattr(shared, "sd_upscalers", None) or [] if _usable(data)]


def choices() -> list[str]:
    """The accordion's pre-upscaler choices: the engine's resamplers, then the webui's upscalers."""
    return [*RESAMPLERS, *(data.name for data in webui_upscalers())]


def find(name: str) -> Callable[[Image.Image, tuple[int, int]], Image.Image] | None:
    """The webui upscaler called ``name`` as an ``(image, (height, width)) -> image`` callable, or None."""
    for data in webui_upscalers():
        if data.name == name:

            def upscale(image: Image.Image, size: tuple[int, int], data: Any = data) -> Image.Image:
                scale = max(size[0] / image.height, size[1] / image.width)
                return data.scaler.upscale(image, scale, data.data_path)

            return upscale
    return None
