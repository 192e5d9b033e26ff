"""Non-finite guards: a NaN must stop the run with a reason, never come out as a black image.

One ``isfinite`` reduction per stage output (one host sync per stage, none per sampler step). A VAE pass
in a 16-bit dtype that overflowed is run again once in float32: the layers cast their weights to the
input's dtype, so a float32 input runs the whole VAE in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from .errors import NonFiniteError

log = logging.getLogger(__name__)

REDUCED_DTYPES = (torch.float16, torch.bfloat16)
USE_FP32 = (
    "set the precision to fp32 (CLI --precision fp32, webui Settings > SUPIR > "
    "'precision SUPIR computes in', or start the webui with --no-half)"
)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def all_finite(*tensors: torch.Tensor) -> bool:
    """True when no tensor holds NaN or infinity; always True for fake tensors (they hold no values)."""
    from torch._subclasses.fake_tensor import is_fake

    for t in tensors:
        if is_fake(t):
            continue
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return False
    return True


def check_sampled(latent: torch.Tensor, dtype: torch.dtype) -> None:
    """Raise NonFiniteError when sampling (UNet + control in ``dtype``) gave a non-finite latent."""
    if all_finite(latent):
        return
    if dtype in REDUCED_DTYPES:
        raise NonFiniteError(
            f"sampling produced NaN/infinite values: the UNet overflowed in {dtype_name(dtype)}. "
            f"To fix it, {USE_FP32}."
        )
    raise NonFiniteError(
        f"sampling produced NaN/infinite values in {dtype_name(dtype)}: the model files may be damaged or "
        "not SUPIR/SDXL weights, or the CFG/control scales are extreme. Check the checkpoints and settings."
    )


T = TypeVar("T")


def _single(output: object) -> Sequence[torch.Tensor]:
    return (output,)


def run_vae_checked(
    run: Callable[[torch.dtype], T],
    dtype: torch.dtype,
    what: str,
    notes: list[str],
    tensors_of: Callable[[T], Sequence[torch.Tensor]] = _single,
) -> T:
    """``run(dtype)`` with its output checked; a 16-bit ``dtype`` that gave NaN is retried once in float32.

    ``tensors_of`` lists the output's tensors (default: the output is one tensor). The retry is logged as
    a warning and recorded in ``notes`` (shown with the result). Raises NonFiniteError when float32 fails.
    """
    output = run(dtype)
    if all_finite(*tensors_of(output)):
        return output
    if dtype in REDUCED_DTYPES:
        note = f"{what} gave NaN/infinite values in {dtype_name(dtype)}; it was run again in float32"
        log.warning("SUPIR: %s", note)
        del output
        output = run(torch.float32)
        if all_finite(*tensors_of(output)):
            notes.append(note)
            return output
    raise NonFiniteError(
        f"{what} produced NaN/infinite values in float32: the VAE weights may be damaged or not SDXL's. "
        "Check the SDXL checkpoint (or choose another one) and try again."
    )
