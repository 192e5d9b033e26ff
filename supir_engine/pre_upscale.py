"""The enlargement before stage 1: a resampler, an upscaler model file, or an upscaler the host provides.

``UpscaleSettings.pre_upscaler`` names it:

* ``lanczos`` (default): the original demo's resize (:func:`preprocess.prepare_image`), output unchanged;
* ``bicubic``: Pillow's bicubic resize;
* a ``.safetensors`` / ``.pth`` file: a spandrel model (ESRGAN, SwinIR, DAT, Compact, ...), run in tiles
  with feathered overlaps, as many passes of its own scale as reach the target, then resized to the exact
  target size; the model leaves the device before SUPIR's stages run;
* any other name: asked of the host through an optional ``image_upscaler(name)`` method, which returns a
  callable ``(image, (height, width)) -> image`` or None (the webui offers its upscaler list this way).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import CancelledError, SupirError
from .oom import empty_device_cache
from .preprocess import ImageError, check_size, cv_resize, prepare_image, target_size, to_rgb
from .tiled_upscale import DEFAULT_OVERLAP, run_tiled, tile_size_for
from .upscaler_files import CACHE, UPSCALER_SUFFIXES, is_model_file

log = logging.getLogger(__name__)

DEFAULT_PRE_UPSCALER = "lanczos"
RESAMPLERS = ("lanczos", "bicubic")
STAGE = "preupscale"
MAX_PASSES = 4

ImageUpscaler = Callable[[Image.Image, tuple[int, int]], Image.Image]


class PreUpscalerError(SupirError, ValueError):
    """A pre-upscaler name that is neither a resampler, a model file, nor one of the host's upscalers."""


def is_default(name: str) -> bool:
    return name.strip().lower() == DEFAULT_PRE_UPSCALER


def label(name: str) -> str:
    """How infotext shows a pre-upscaler: a model file by its name only (no folders)."""
    return Path(name).name if is_model_file(name) else name


def passes_needed(size: tuple[int, int], target: tuple[int, int], scale: int) -> int:
    """Model passes of ``scale`` that reach ``target`` (h, w) from ``size`` (h, w): 0 when nothing grows."""
    if target[0] <= size[0] and target[1] <= size[1]:
        return 0
    if scale <= 1:
        return 1
    ratio = max(target[0] / size[0], target[1] / size[1])
    return max(1, min(MAX_PASSES, math.ceil(math.log(ratio, scale) - 1e-9)))


def fit(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """``pixels`` (HWC uint8) at exactly ``height`` x ``width``: area averaging down, Lanczos up."""
    shrinking = pixels.shape[0] >= height and pixels.shape[1] >= width
    return cv_resize(np.ascontiguousarray(pixels), height, width, lanczos=not shrinking)


def _report(host: Any) -> Callable[[int, int], None]:
    def on_tile(done: int, total: int) -> None:
        host.progress(STAGE, done, total)
        if host.should_stop():
            raise CancelledError(f"stopped after pre-upscale tile {done} of {total}")

    return on_tile


def model_upscale(
    image: Image.Image,
    descriptor: Any,
    target: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    tile: int | None = None,
    host: Any = None,
    overlap: int = DEFAULT_OVERLAP,
) -> np.ndarray:
    """The RGB ``image`` enlarged by ``descriptor`` (a spandrel image model) towards ``target`` (h, w), as HWC
    uint8 (not yet at the exact target size). The model is on ``device`` only inside this call."""
    scale = int(descriptor.scale)
    passes = passes_needed((image.height, image.width), target, scale)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    if passes == 0:
        return np.asarray(image)
    if dtype == torch.bfloat16 and not descriptor.supports_bfloat16:
        dtype = torch.float32
    if dtype == torch.float16 and not descriptor.supports_half:
        dtype = torch.float32
    tiled = descriptor.tiling.name != "INTERNAL"
    device = torch.device(device)
    try:
        descriptor.to(device, dtype)
        for index in range(passes):
            side = tile or tile_size_for(device, scale, torch.finfo(dtype).bits // 8)
            if not tiled:
                side = max(x.shape[-2:])
            log.info("pre-upscale pass %d/%d: %dx%d, tiles of %d px", index + 1, passes, *x.shape[-2:], side)
            on_tile = _report(host) if host is not None else None
            with torch.inference_mode():
                x = run_tiled(descriptor, x, scale, side, overlap, device, dtype, on_tile).clamp_(0, 1)
            if not bool(torch.isfinite(x).all()):
                raise ImageError(f"the upscaler model gave NaN/infinite values in {dtype}; use fp32")
    finally:
        descriptor.to("cpu", torch.float32)
        empty_device_cache(device)
    return (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _resolve_external(name: str, host: Any) -> ImageUpscaler | None:
    find = getattr(host, "image_upscaler", None)
    return find(name) if callable(find) else None


def _enlarge(
    rgb: Image.Image,
    name: str,
    target: tuple[int, int],
    host: Any,
    device: torch.device,
    dtype: torch.dtype,
    tile: int | None,
) -> np.ndarray:
    key = name.strip().lower()
    if key == "bicubic":
        return np.asarray(rgb.resize((target[1], target[0]), Image.BICUBIC))
    external = _resolve_external(name, host)
    if external is not None:
        host.progress(STAGE, 0, 1)
        result = np.asarray(to_rgb(external(rgb, target)), dtype=np.uint8)
        host.progress(STAGE, 1, 1)
        return result
    if not is_model_file(name):
        raise PreUpscalerError(
            f"unknown pre-upscaler {name!r}: use {' or '.join(RESAMPLERS)}, or an upscaler model file "
            f"({', '.join(UPSCALER_SUFFIXES)})"
        )
    descriptor = CACHE.get(Path(name).expanduser())
    return model_upscale(rgb, descriptor, target, device, dtype, tile, host)


def prepare_input(
    image: Image.Image,
    settings: Any,
    host: Any,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """:func:`preprocess.prepare_image` with ``settings.pre_upscaler`` doing the enlargement.

    Returns the float32 ``[1, 3, H, W]`` tensor in [-1, 1] on the CPU and ``(H, W)``.
    """
    name = getattr(settings, "pre_upscaler", DEFAULT_PRE_UPSCALER)
    if is_default(name):
        return prepare_image(image, settings.scale, settings.min_size, settings.alignment)
    if image.width < 1 or image.height < 1:
        raise ImageError(f"the image is empty ({image.width}x{image.height})")
    target = target_size(image.height, image.width, settings.scale, settings.min_size, settings.alignment)
    check_size(*target)
    start = time.perf_counter()
    tile = getattr(settings, "pre_upscale_tile", None)
    enlarged = _enlarge(to_rgb(image), name, target, host, torch.device(device), dtype, tile)
    pixels = fit(enlarged, *target)
    log.info("pre-upscaled with %s to %dx%d in %.1f s", label(name), *target, time.perf_counter() - start)
    tensor = torch.from_numpy(pixels.astype(np.float64) / 255 * 2 - 1).float()
    return tensor.permute(2, 0, 1).unsqueeze(0).contiguous(), target
