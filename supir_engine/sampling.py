"""Noise schedules, the SUPIR denoiser (EDM wrapper around GLVControl + UNet) and the samplers.

Schedules and every per-step weight are plain Python floats, so the sampling loops never read tensor
values on the host (they also run under fake tensors, which the memory benchmark relies on).

The samplers follow k-diffusion's shape: plain functions with one signature,
``sampler(denoiser, x, sigmas, cond, settings, callback=None, noise=None) -> x``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import torch

from .tiling import Window, gaussian_tile_weights, tile_extent, tile_grid

logger = logging.getLogger(__name__)

NUM_TRAIN_TIMESTEPS = 1000
SIGMA_MAX = 14.6146  # the original's literal constant for the CFG/control/restoration ramps


def training_sigmas() -> list[float]:
    """The 1000 SDXL training sigmas, ascending (index = timestep).

    The ratio (1 - a)/a is taken in float64, rounded to float32, and the square root taken in
    float32, exactly as the original does.
    """
    betas = np.linspace(0.00085**0.5, 0.012**0.5, NUM_TRAIN_TIMESTEPS, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    ratio = torch.from_numpy((1 - alphas_cumprod) / alphas_cumprod).to(torch.float32)
    return ratio.sqrt().tolist()


TRAINING_SIGMAS: tuple[float, ...] = tuple(training_sigmas())


def sampler_timesteps(steps: int) -> list[int]:
    """Ascending timesteps for an N-step schedule (always includes 999)."""
    if not 1 <= steps <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"steps must be between 1 and {NUM_TRAIN_TIMESTEPS}, got {steps}")
    if steps == NUM_TRAIN_TIMESTEPS:
        return list(range(NUM_TRAIN_TIMESTEPS))
    points = np.linspace(NUM_TRAIN_TIMESTEPS - 1, 0, steps, endpoint=False).astype(int)
    return sorted(int(t) for t in points)


def sampler_sigmas(steps: int) -> list[float]:
    """Descending sigmas of the N-step schedule with a trailing 0 (N + 1 values)."""
    return [TRAINING_SIGMAS[t] for t in reversed(sampler_timesteps(steps))] + [0.0]


def snap_sigma(sigma: float) -> tuple[float, int]:
    """Nearest training sigma and its index (the integer timestep the networks see)."""
    index = min(range(NUM_TRAIN_TIMESTEPS), key=lambda i: abs(sigma - TRAINING_SIGMAS[i]))
    return TRAINING_SIGMAS[index], index


@dataclass
class Conditioning:
    """What the denoiser needs besides x and sigma; tensors batched along dim 0."""

    crossattn: torch.Tensor
    vector: torch.Tensor
    control: torch.Tensor


class Denoiser:
    """D(x; sigma) = x - sigma_q * eps(c_in * x, t, cond): eps scalings with snapped sigma.

    ``sigma`` is a Python float shared by the batch, or one float per batch element.
    """

    def __init__(self, unet: torch.nn.Module, control_model: torch.nn.Module, dtype: torch.dtype):
        self.unet = unet
        self.control_model = control_model
        self.dtype = dtype

    def features(self, x_in: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> list[torch.Tensor]:
        return self.control_model(cond.control, timesteps, x_in, cond.crossattn, cond.vector)

    def __call__(
        self, x: torch.Tensor, sigma: float | Sequence[float], cond: Conditioning, control_scale: float
    ) -> torch.Tensor:
        sigmas = [float(sigma)] * x.shape[0] if isinstance(sigma, (int, float)) else list(sigma)
        snapped = [snap_sigma(s) for s in sigmas]
        timesteps = torch.tensor([i for _, i in snapped], dtype=torch.long, device=x.device)
        c_in = _per_sample([1.0 / math.sqrt(q**2 + 1.0) for q, _ in snapped], x)
        c_out = _per_sample([q for q, _ in snapped], x)
        x_in = (x * c_in).to(self.dtype)
        features = self.features(x_in, timesteps, cond)
        eps = self.unet(x_in, timesteps, cond.crossattn, cond.vector, features, control_scale)
        return x - c_out * eps.to(x.dtype)


def _per_sample(values: list[float], like: torch.Tensor) -> torch.Tensor | float:
    """A scalar when the batch shares one value, else a [B,1,1,1] tensor built from host floats."""
    if all(v == values[0] for v in values):
        return values[0]
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, *([1] * (like.dim() - 1)))


def conditioning_from_tensors(tensors: Mapping[str, torch.Tensor]) -> Conditioning:
    return Conditioning(tensors["crossattn"], tensors["vector"], tensors["control"])
