"""Latent tile grid and blending weights of the tiled samplers.

Tiles are latent-space windows ``(h0, h1, w0, w1)`` (end exclusive). A tile larger than the latent is
clamped to the latent size on that axis (the original asserts instead), so small images simply run as
one tile per axis; the weights then use the clamped height and width.
"""

from __future__ import annotations

import math

import torch

Window = tuple[int, int, int, int]

_WEIGHT_VARIANCE = 0.01


def _starts(size: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, size - tile + 1, stride))
    if (size - tile) % stride != 0:
        starts.append(size - tile)
    return starts


def tile_extent(h: int, w: int, tile: int) -> tuple[int, int]:
    """The (height, width) of the tiles used for an h x w latent: ``tile`` clamped to the latent."""
    return min(tile, h), min(tile, w)


def tile_grid(h: int, w: int, tile: int, stride: int) -> list[Window]:
    """Windows covering an h x w latent, row-major, as the original's sliding windows.

    Starts are 0, stride, 2*stride, ... up to size - tile, plus a final start at size - tile when the
    span is not a multiple of the stride, so the last row/column is shifted back to end at the border.
    """
    if min(h, w, tile, stride) < 1:
        raise ValueError(f"latent size, tile and stride must be positive, got {h}x{w}, {tile}, {stride}")
    if stride > tile:
        raise ValueError(
            f"tile stride ({stride}) must not exceed the tile size ({tile}): tiles would leave gaps"
        )
    th, tw = tile_extent(h, w, tile)
    return [(y, y + th, x, x + tw) for y in _starts(h, th, stride) for x in _starts(w, tw, stride)]


def _gaussian(size: int, midpoint: float) -> list[float]:
    norm = math.sqrt(2 * math.pi * _WEIGHT_VARIANCE)
    return [
        math.exp(-((i - midpoint) ** 2) / (size * size) / (2 * _WEIGHT_VARIANCE)) / norm for i in range(size)
    ]


def gaussian_tile_weights(height: int, width: int | None = None) -> torch.Tensor:
    """Separable Gaussian blending weights, float64 [height, width] (square when width is None).

    The column midpoint is (width - 1)/2 but the row midpoint is height/2: the original's off-by-half
    asymmetry, kept so tiled results match it.
    """
    width = height if width is None else width
    if height < 1 or width < 1:
        raise ValueError(f"tile size must be positive, got {height}x{width}")
    rows = torch.tensor(_gaussian(height, height / 2), dtype=torch.float64)
    cols = torch.tensor(_gaussian(width, (width - 1) / 2), dtype=torch.float64)
    return torch.outer(rows, cols)
