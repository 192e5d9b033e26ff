"""Storage dtypes of the weights: fp32, fp16, bf16, or fp8 (e4m3) upcast per layer at compute time."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8": torch.float8_e4m3fn,
}
# With fp8 storage, vectors (biases, norm scales, 0.1 % of the bytes) keep this dtype.
FP8_VECTOR_DTYPE = torch.float16


def storage_dtype(storage: str | torch.dtype) -> torch.dtype:
    if isinstance(storage, torch.dtype):
        return storage
    try:
        return STORAGE_DTYPES[storage.lower()]
    except KeyError:
        raise ValueError(
            f"storage dtype must be one of {', '.join(STORAGE_DTYPES)}, got {storage!r}"
        ) from None


def is_storage_only(dtype: torch.dtype) -> bool:
    """True for dtypes that store weights but are not computed in (float8)."""
    return dtype.is_floating_point and dtype.itemsize == 1


def tensor_storage_dtype(shape: Sequence[int], storage: torch.dtype) -> torch.dtype:
    """fp8 stores matrices and kernels only; vectors keep 16 bits (they cost nothing and round worst)."""
    if is_storage_only(storage) and len(shape) < 2:
        return FP8_VECTOR_DTYPE
    return storage


def _stored(t: torch.Tensor, storage: torch.dtype) -> torch.Tensor:
    dtype = tensor_storage_dtype(t.shape, storage)
    if t.is_meta:  # weightless model (benchmarks): uninitialised RAM, or fake RAM under a fake-tensor mode
        return torch.empty(t.shape, dtype=dtype, device="cpu")
    return t if t.dtype == dtype else t.to(dtype)


def convert_storage(module: nn.Module, storage: str | torch.dtype) -> nn.Module:
    """Give every floating tensor of ``module`` its storage dtype (new tensors; the old ones are untouched).

    Meta tensors become uninitialised CPU tensors, so a model built on the meta device can be run
    (under a fake-tensor mode, to measure memory) without any weights.
    """
    dtype = storage_dtype(storage)
    done: dict[int, torch.Tensor] = {}
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for name, t in table.items():
                if t is None or not (t.is_floating_point() or t.is_meta):
                    continue
                if id(t) not in done:
                    new = _stored(t, dtype) if t.is_floating_point() else torch.empty_like(t, device="cpu")
                    done[id(t)] = (
                        nn.Parameter(new, requires_grad=False) if isinstance(t, nn.Parameter) else new
                    )
                table[name] = done[id(t)]
    return module


def apply_storage(
    model: nn.Module, storage: str | torch.dtype, vae_dtype: torch.dtype = torch.bfloat16
) -> None:
    """Storage dtypes of a SUPIRModel: ``storage`` for UNet, control and text, ``vae_dtype`` for the VAE.

    The VAE is never stored in fp16 (it overflows to NaN) nor fp8.
    """
    if vae_dtype == torch.float16 or is_storage_only(vae_dtype):
        raise ValueError("the VAE must be stored in bfloat16 or float32 (fp16 overflows in this VAE)")
    convert_storage(model.model, storage)
    convert_storage(model.conditioner, storage)
    convert_storage(model.first_stage_model, vae_dtype)
    if model.denoiser.sigmas.is_meta:
        model.denoiser.reset()


def tensor_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of the distinct tensors of ``modules`` (tied tensors counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            seen[id(t)] = t.nelement() * t.element_size()
    return sum(seen.values())
