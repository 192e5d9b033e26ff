"""Run an image-to-image model (``[1, 3, h, w]`` in [0, 1] -> ``[1, 3, h*s, w*s]``) over overlapping tiles.

Each tile's output is weighted by a feathered mask and the weighted sum is divided by the summed weights.
Along a tile side that borders another tile the weight is 0 for the first quarter of the overlap (where the
model's zero padding at the tile edge changes its output), rises linearly over the middle half and is 1
beyond; along the image border it is 1. The neighbouring tile has full weight wherever this one has none,
so for a model whose receptive radius is at most a quarter of the overlap the tiled result equals the
untiled one, and for larger models the seams are blended away.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .memory.config import free_device_bytes

DEFAULT_OVERLAP = 32  # input pixels
CPU_TILE = 512
MIN_TILE, MAX_TILE = 64, 1024
_ACTIVATION_FACTOR = 64 * 12  # rough live activation values per input pixel (64-channel ESRGAN-style nets)


def tile_size_for(device: torch.device, scale: int, element_size: int = 4, free: int | None = None) -> int:
    """The largest tile side (a multiple of 32 in [64, 1024] input pixels) whose activations fit in half of
    the device's free memory; ``CPU_TILE`` when the device does not bound memory (the CPU)."""
    free = free_device_bytes(device) if free is None else free
    if free is None:
        return CPU_TILE
    per_pixel = element_size * (_ACTIVATION_FACTOR + 2 * 3 * scale * scale)
    side = int((free / 2 / per_pixel) ** 0.5) // 32 * 32
    return max(MIN_TILE, min(MAX_TILE, side))


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px with at least ``overlap`` px shared."""
    if length <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def _ramp(n: int, overlap: int, scale: int) -> torch.Tensor:
    """Weights for the first ``n`` output pixels from a tile side that borders another tile."""
    if overlap <= 0:
        return torch.ones(n)
    d = (torch.arange(n, dtype=torch.float32) + 0.5) / scale  # distance from the side, in input pixels
    return ((d - overlap / 4) / (overlap / 2)).clamp(0, 1)


def _axis_weights(start: int, size: int, length: int, overlap: int, scale: int) -> torch.Tensor:
    w = torch.ones(size * scale)
    ramp = _ramp(size * scale, overlap, scale)
    if start > 0:
        w = torch.minimum(w, ramp)
    if start + size < length:
        w = torch.minimum(w, ramp.flip(0))
    return w


def run_tiled(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    scale: int,
    tile: int,
    overlap: int = DEFAULT_OVERLAP,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_tile: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """``model`` over ``image`` ([1, 3, H, W] float32 on the CPU, [0, 1]) in tiles of ``tile`` input px.

    Returns the float32 CPU result [1, 3, H*scale, W*scale]. ``on_tile(done, total)`` is called after each
    tile (and may raise to stop).
    """
    _, channels, height, width = image.shape
    overlap = max(0, min(overlap, tile // 2))
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    out = torch.zeros(1, channels, height * scale, width * scale)
    total_weight = torch.zeros(1, 1, height * scale, width * scale)
    count, done = len(ys) * len(xs), 0
    for y in ys:
        th = min(tile, height - y)
        wy = _axis_weights(y, th, height, overlap, scale)
        for x in xs:
            tw = min(tile, width - x)
            part = image[:, :, y : y + th, x : x + tw].to(device, dtype)
            result = model(part).float().cpu()
            if result.shape[-2:] != (th * scale, tw * scale):
                raise ValueError(
                    f"the upscaler gave {tuple(result.shape[-2:])} for a {th}x{tw} tile; expected x{scale}"
                )
            weight = wy[:, None] * _axis_weights(x, tw, width, overlap, scale)[None, :]
            rows, cols = slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale)
            region = (slice(None), slice(None), rows, cols)
            out[region] += result * weight
            total_weight[region] += weight
            done += 1
            if on_tile is not None:
                on_tile(done, count)
    return out / total_weight
