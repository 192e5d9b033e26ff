"""Comparing our outputs with golden fixtures produced by the original implementation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


@dataclass(frozen=True)
class Check:
    """One compared quantity. ``max_rel`` is the max error relative to the reference's largest value."""

    name: str
    passed: bool
    max_abs: float
    max_rel: float
    note: str = ""


def compare(name: str, expected: torch.Tensor, actual: torch.Tensor, tol: Tolerance) -> Check:
    """allclose-style check: |actual - expected| <= atol + rtol * |expected| everywhere.

    Integer tensors (token ids, sizes, coordinates) must be equal.
    """
    expected = torch.as_tensor(expected).detach().cpu()
    actual = torch.as_tensor(actual).detach().cpu()
    if tuple(expected.shape) != tuple(actual.shape):
        note = f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
        return Check(name, False, math.inf, math.inf, note)
    if expected.numel() == 0:
        return Check(name, True, 0.0, 0.0)
    if not expected.is_floating_point():
        mismatches = int((expected != actual.to(expected.dtype)).sum())
        return Check(name, mismatches == 0, float(mismatches), float(mismatches), "exact")
    ref, ours = expected.double(), actual.double()
    err = (ours - ref).abs()
    finite = bool(torch.isfinite(ours).all())
    passed = finite and bool((err <= tol.atol + tol.rtol * ref.abs()).all())
    scale = float(ref.abs().max())
    max_abs = float(err.max()) if finite else math.inf
    return Check(name, passed, max_abs, max_abs / scale if scale > 0 else max_abs)


def psnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    """10 log10(R^2 / MSE) with R the peak-to-peak range of the reference (float64)."""
    ref, other = reference.double(), test.double()
    mse = float(((ref - other) ** 2).mean())
    peak = float(ref.max() - ref.min())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)
