"""The SUPIR demo's input pre-processing (``SUPIR/util.py:upscale_image``, ``gradio_demo.py``) without OpenCV.

:func:`prepare_image` turns a PIL image into the ``[1, 3, H, W]`` tensor in [-1, 1] the pipeline expects:
RGB uint8, resized to :func:`target_size` (multiples of ``unit``, short side at least ``min_size``) with a
re-implementation of ``cv2.resize`` (INTER_LANCZOS4 when ``scale > 1``, INTER_AREA otherwise), then
``x / 255 * 2 - 1``. :func:`to_pil` is the demo's way back.

The resampler reproduces OpenCV's uint8 arithmetic (see ``_cv_resize``): for enlargements, which is what the
pipeline does, it matches OpenCV 5.0 bit for bit on the reference fixtures.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image

from .errors import NonFiniteError, SupirError
from .finite import USE_FP32

log = logging.getLogger(__name__)

MAX_SIDE = 8192
MAX_PIXELS = 64 * 1024 * 1024
_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS: uint8 weights are fixed point with 2**11 = 1.0
_ONE = 1 << _COEF_BITS
_ROW_BLOCK = 256  # output rows per vertical-pass block


class ImageError(SupirError, ValueError):
    """An input image that cannot be prepared: empty, too large, or of an unsupported mode."""


# ------------------------------------------------------------------------------------------ sizes


def target_size(h: int, w: int, scale: float, min_size: int | None = 1024, unit: int = 32) -> tuple[int, int]:
    """Output (height, width) of ``upscale_image``: scale (as floats), enlarge so the short side is at least
    ``min_size`` (skipped when None), round each side to the nearest multiple of ``unit`` (ties to even)."""
    if not (math.isfinite(scale) and scale > 0):
        raise ImageError(f"scale must be a positive number, got {scale!r}")
    if unit < 1:
        raise ImageError(f"unit must be a positive integer, got {unit!r}")
    fh, fw = float(h) * scale, float(w) * scale
    if min_size is not None and min(fh, fw) < min_size:
        factor = min_size / min(fw, fh)
        fw *= factor
        fh *= factor
    return int(np.round(fh / unit)) * unit, int(np.round(fw / unit)) * unit


def check_size(h: int, w: int, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS) -> None:
    """Raise :class:`ImageError` for an empty size or one beyond the limits."""
    if h < 1 or w < 1:
        raise ImageError(f"output size {h}x{w} is empty; use a larger scale or a smaller unit")
    if max(h, w) > max_side or h * w > max_pixels:
        raise ImageError(
            f"output size {h}x{w} exceeds the limit of {max_side} px per side and "
            f"{max_pixels / 1e6:.1f} Mpx; use a smaller scale or min_size (or raise max_side / max_pixels)"
        )


# -------------------------------------------------------------------------- OpenCV-style resampling


def _lanczos4_weights(fx: np.ndarray) -> np.ndarray:
    """OpenCV's ``interpolateLanczos4`` for float32 offsets ``fx`` in [0, 1): [n, 8] float32, sum 1."""
    x3 = fx.astype(np.float32) + np.float32(3)
    y0 = -x3.astype(np.float64) * math.pi * 0.25
    s0, c0 = np.sin(y0), np.cos(y0)
    s45 = 0.70710678118654752440084436210485
    cs = np.array([[1, 0], [-s45, -s45], [0, 1], [s45, -s45], [-1, 0], [s45, s45], [0, -1], [-s45, s45]])
    coeffs = np.empty((fx.size, 8), np.float32)
    for i in range(8):
        yi = x3 - np.float32(i)
        y = -yi.astype(np.float64) * math.pi * 0.25
        with np.errstate(divide="ignore", invalid="ignore"):
            value = ((cs[i, 0] * s0 + cs[i, 1] * c0) / (y * y)).astype(np.float32)
        coeffs[:, i] = np.where(np.abs(yi) >= np.float32(1e-6), value, np.float32(1e30))
    total = np.zeros(fx.size, np.float32)
    for i in range(8):  # sequential float32 sum, as in C
        total = total + coeffs[:, i]
    return coeffs * (np.float32(1) / total)[:, None]


def _fixed_point(weights: np.ndarray) -> np.ndarray:
    """``saturate_cast<short>(w * 2048)``: float32 product, rounded half to even."""
    scaled = np.rint(weights.astype(np.float32) * np.float32(_ONE))
    return np.clip(scaled, -32768, 32767).astype(np.int32)


def _axis_taps(src: int, dst: int, lanczos: bool) -> tuple[np.ndarray, np.ndarray]:
    """(source indices [dst, k], fixed-point weights [dst, k]) for one axis of the generic resize.

    Lanczos: centre mapping (d + 0.5) * s - 0.5, 8 taps from floor - 3. Enlarging INTER_AREA: OpenCV's
    "area mode" bilinear, floor(d * s) with offset frac((d + 1) - (floor + 1) / s) (0 if not positive).
    Out-of-range taps are clamped to the edge (OpenCV's resize replicates the border).
    """
    inv_scale = dst / src
    scale = 1.0 / inv_scale
    d = np.arange(dst, dtype=np.float64)
    if lanczos:
        f = ((d + 0.5) * scale - 0.5).astype(np.float32)
        start = np.floor(f).astype(np.int64)
        weights = _lanczos4_weights(f - start.astype(np.float32))
        start -= 3
    else:
        start = np.floor(d * scale).astype(np.int64)
        f = ((d + 1) - (start + 1) * inv_scale).astype(np.float32)
        f = np.where(f <= 0, np.float32(0), f - np.floor(f)).astype(np.float32)
        weights = np.stack([np.float32(1) - f, f], axis=1)
    taps = weights.shape[1]
    index = np.clip(start[:, None] + np.arange(taps), 0, src - 1)
    return index, _fixed_point(weights)


def _linear_edge_rule(index: np.ndarray, weights: np.ndarray, src: int) -> None:
    """OpenCV's horizontal bilinear pass takes the left tap at full weight once the right one would fall
    outside the image (the left one is then the last column)."""
    edge = index[:, 0] >= src - 1
    weights[edge] = (_ONE, 0)


def _resize_generic(image: np.ndarray, out_h: int, out_w: int, lanczos: bool) -> np.ndarray:
    """Separable fixed-point resize of an HWC uint8 image: horizontal pass into int32 rows, then vertical."""
    h, w = image.shape[:2]
    xi, xw = _axis_taps(w, out_w, lanczos)
    yi, yw = _axis_taps(h, out_h, lanczos)
    if not lanczos:
        _linear_edge_rule(xi, xw, w)
    src = image.astype(np.int32)
    rows = np.zeros((h, out_w, image.shape[2]), np.int32)
    for k in range(xi.shape[1]):
        rows += src[:, xi[:, k]] * xw[:, k, None]
    out = np.empty((out_h, out_w, image.shape[2]), np.uint8)
    for start in range(0, out_h, _ROW_BLOCK):  # bounded temporaries for large outputs
        block = slice(start, start + _ROW_BLOCK)
        out[block] = _vertical_pass(rows, yi[block], yw[block], lanczos)
    return out


def _vertical_pass(rows: np.ndarray, index: np.ndarray, weights: np.ndarray, lanczos: bool) -> np.ndarray:
    """Vertical taps over the int32 horizontal results, with OpenCV's uint8 fixed-point rounding."""
    if lanczos:
        acc = np.zeros((index.shape[0],) + rows.shape[1:], np.int32)
        for k in range(index.shape[1]):
            acc += rows[index[:, k]] * weights[:, k, None, None]
        out = (acc + (1 << (2 * _COEF_BITS - 1))) >> (2 * _COEF_BITS)
    else:  # VResizeLinear's uint8 arithmetic: ((b * (row >> 4)) >> 16) per tap, then (+2) >> 2
        top = (weights[:, 0, None, None] * (rows[index[:, 0]] >> 4)) >> 16
        bottom = (weights[:, 1, None, None] * (rows[index[:, 1]] >> 4)) >> 16
        out = (top + bottom + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def _area_table(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's ``computeResizeAreaTab`` as dense [dst, k] (source index, float32 weight) arrays."""
    scale = src / dst
    entries: list[list[tuple[int, float]]] = []
    for d in range(dst):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, src - f1)
        s2 = min(math.floor(f2), src - 1)
        s1 = min(math.ceil(f1), s2)
        row = []
        if s1 - f1 > 1e-3:
            row.append((s1 - 1, (s1 - f1) / cell))
        row += [(s, 1.0 / cell) for s in range(s1, s2)]
        if f2 - s2 > 1e-3:
            row.append((s2, min(f2 - s2, 1.0, cell) / cell))
        entries.append(row)
    k = max(len(r) for r in entries)
    index = np.zeros((dst, k), np.int64)
    weight = np.zeros((dst, k), np.float32)
    for d, row in enumerate(entries):
        for j, (s, a) in enumerate(row):
            index[d, j], weight[d, j] = s, a
    return index, weight


def _resize_area_down(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """INTER_AREA when neither side grows: exact box averaging with fractional edge weights, in float32."""
    h, w = image.shape[:2]
    sy, sx = h / out_h, w / out_w
    if sx.is_integer() and sy.is_integer():
        return _resize_area_integer(image, int(sy), int(sx))
    xi, xw = _area_table(w, out_w)
    yi, yw = _area_table(h, out_h)
    src = image.astype(np.float32)
    rows = np.zeros((h, out_w, image.shape[2]), np.float32)
    for k in range(xi.shape[1]):
        rows += src[:, xi[:, k]] * xw[:, k, None]
    acc = np.zeros((out_h, out_w, image.shape[2]), np.float32)
    for k in range(yi.shape[1]):
        acc += rows[yi[:, k]] * yw[:, k, None, None]
    return np.clip(np.rint(acc), 0, 255).astype(np.uint8)


def _resize_area_integer(image: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """OpenCV's fast integer-factor INTER_AREA: block sums, (s + 2) >> 2 for 2x2, else round(s * (1/area))."""
    h, w, c = image.shape
    blocks = image.reshape(h // fy, fy, w // fx, fx, c).astype(np.int32).sum(axis=(1, 3))
    if fy == 2 and fx == 2:
        return ((blocks + 2) >> 2).astype(np.uint8)
    scaled = blocks.astype(np.float32) * (np.float32(1) / np.float32(fy * fx))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def cv_resize(image: np.ndarray, out_h: int, out_w: int, lanczos: bool) -> np.ndarray:
    """``cv2.resize(image, (out_w, out_h), INTER_LANCZOS4 if lanczos else INTER_AREA)`` for HWC uint8."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ImageError(f"expected an HWC uint8 array, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if (h, w) == (out_h, out_w):
        return image.copy()
    if not lanczos and out_h <= h and out_w <= w:
        return _resize_area_down(image, out_h, out_w)
    return _resize_generic(image, out_h, out_w, lanczos)


def upscale_image(
    image: np.ndarray,
    scale: float,
    min_size: int | None = 1024,
    unit: int = 32,
    max_side: int = MAX_SIDE,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """The original ``upscale_image`` on an HWC uint8 array (Lanczos when ``scale > 1``, else area)."""
    h, w = target_size(image.shape[0], image.shape[1], scale, min_size, unit)
    check_size(h, w, max_side, max_pixels)
    return cv_resize(image, h, w, lanczos=scale > 1)


# --------------------------------------------------------------------------------- PIL conversion


def _alpha_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _wide_grey_to_rgb(image: Image.Image) -> Image.Image:
    """16/32-bit integer greyscale ("I;16*", "I"): the 0..65535 range scaled to 0..255 (Pillow would clip)."""
    values = np.asarray(image, dtype=np.float64)
    grey = np.clip(np.floor(values / 257.0 + 0.5), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB 8-bit version of ``image``. Transparency (RGBA, LA, palette with transparency) is composited on
    white; 16-bit greyscale is scaled to 8 bits; "F" (float) is clipped to 0..255 as Pillow does."""
    mode = image.mode
    if mode == "RGB":
        return image
    try:
        if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
            return _alpha_on_white(image)
        if mode.startswith("I;16") or mode == "I":
            return _wide_grey_to_rgb(image)
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"cannot convert a {mode!r} image to RGB ({exc}); convert it to RGB first") from exc


def prepare_image(
    image: Image.Image,
    scale: float,
    min_size: int | None = 1024,
    unit: int = 32,
    *,
    max_side: int = MAX_SIDE,
    max_pixels: int = MAX_PIXELS,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The demo's pre-processing: RGB uint8, :func:`upscale_image`, then ``x / 255 * 2 - 1``.

    Returns the float32 ``[1, 3, H, W]`` tensor on the CPU and ``(H, W)``. Raises :class:`ImageError` for an
    empty image, an output beyond ``max_side`` / ``max_pixels``, or an unconvertible mode.
    """
    if image.width < 1 or image.height < 1:
        raise ImageError(f"the image is empty ({image.width}x{image.height})")
    pixels = np.asarray(to_rgb(image), dtype=np.uint8)
    resized = upscale_image(pixels, scale, min_size, unit, max_side, max_pixels)
    log.debug("prepared %dx%d -> %dx%d", image.height, image.width, *resized.shape[:2])
    tensor = torch.from_numpy(resized.astype(np.float64) / 255 * 2 - 1).float()
    return tensor.permute(2, 0, 1).unsqueeze(0).contiguous(), (resized.shape[0], resized.shape[1])


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """[-1, 1] ``[3, H, W]`` or ``[1, 3, H, W]`` tensor to an RGB image: round(x * 127.5 + 127.5), clipped.

    Raises NonFiniteError for NaN or infinite values rather than clipping them to black or white.
    """
    if tensor.dim() == 4:
        if tensor.shape[0] != 1:
            raise ImageError(f"to_pil takes one image; got a batch of {tensor.shape[0]} (index it first)")
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ImageError(f"expected a [3, H, W] or [1, 3, H, W] tensor, got {tuple(tensor.shape)}")
    values = tensor.detach().float()
    if not bool(torch.isfinite(values).all()):
        # clamp would turn NaN into 0: a black image that looks like a result
        raise NonFiniteError(f"the output image holds NaN/infinite values. To fix it, {USE_FP32}.")
    pixels = (values.permute(1, 2, 0) * 127.5 + 127.5).round().clamp(0, 255)
    return Image.fromarray(pixels.to(torch.uint8).cpu().numpy(), mode="RGB")


# ------------------------------------------------------------------------------------ fixture runner


def run_upscale_image_case(sidecar: Mapping, tensors: Mapping[str, torch.Tensor]) -> dict:
    """Fixture runner. Every ``calls`` entry gives a pixel pair (as float32, so a tolerance can apply) and an
    output-size pair; every ``size_table`` row gives a size pair (int64)."""
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    source = tensors[sidecar.get("input", "input_uint8_hwc")].numpy()
    for call in sidecar.get("calls", []):
        name = call["output"]
        out = upscale_image(source, call["upscale"], call.get("min_size"), call["unit_resolution"])
        pairs[name] = (tensors[name].float(), torch.from_numpy(out).float())
        if "out_hw" in call:
            pairs[f"{name}_hw"] = (torch.tensor(call["out_hw"]), torch.tensor(out.shape[:2]))
    for i, row in enumerate(sidecar.get("size_table", [])):
        size = target_size(*row["in_hw"], row["upscale"], row.get("min_size"), row["unit_resolution"])
        pairs[f"size_table_{i}"] = (torch.tensor(row["out_hw"]), torch.tensor(size))
    return pairs
