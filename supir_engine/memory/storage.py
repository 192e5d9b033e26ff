"""Storage dtypes of the weights: fp32, fp16, bf16, or fp8 (e4m3) upcast per layer at compute time.

fp8 weights are stored scaled: ``stored = weight / scale`` with one power-of-two scale per tensor, chosen
so that the tensor's largest magnitude lands in e4m3's top binade (224, 448]. Unscaled, trained weights
(std 0.005-0.02) sit in e4m3's subnormal range and lose up to 15 % of their values to zero. The scale is
a float32 scalar buffer named ``<weight name>_fp8_scale`` on the weight's module (not persistent: it is
not part of the checkpoint layout), so everything that moves a module's buffers moves it with its weight.
A float8 weight without a scale buffer (e.g. one shared from a host that stored it in fp8 itself) has the
implicit scale 1.

Measured on 1280x1280 matmuls (relative error against float32): per-tensor and per-output-channel
scales give the same 2.6 % at weight std 0.02, 0.01 and 0.005, also when the rows' magnitudes spread
(log-normal, sigma 0.5); a 99.9th-percentile scale instead of the absmax gives 2.9-6 %; no scale gives
3.3 %, 5.7 % and 11 %. Hence one scale per tensor, from the absmax. A power of two makes the upcast
exact: ``fp8 value * scale`` is representable in fp16, bf16 and fp32 alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8": torch.float8_e4m3fn,
}
# With fp8 storage, what stays in 16 bits (vectors, and the parts named in ``keeps_16bit``) has this dtype.
FP8_VECTOR_DTYPE = torch.float16
FP8_SCALE_SUFFIX = "_fp8_scale"

# Parts kept in 16 bits under fp8 storage, as state-dict key fragments (matched on "." boundaries):
# - SUPIR's connectors (ZeroSFT, ZeroCrossAttn): zero-initialised and trained briefly, so their weights
#   are small and uneven; every UNet decoder skip passes through them. 55 M parameters at real size.
# - time and label embeddings: they feed every ResBlock of both networks. 7 M parameters.
# - token and position embeddings of the text encoders: gathered row by row, not upcast per layer. 101 M.
# Vectors (biases, norm weights) are kept in 16 bits by their shape (``tensor_storage_dtype``).
FP8_KEEP_16BIT = (
    "project_modules",
    "time_embed",
    "label_emb",
    "token_embedding",
    "position_embedding",
    "positional_embedding",
)


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


def keeps_16bit(key: str) -> bool:
    """True for the state-dict keys that fp8 storage keeps in 16 bits (see ``FP8_KEEP_16BIT``)."""
    parts = key.split(".")
    return any(part in FP8_KEEP_16BIT for part in parts)


def tensor_storage_dtype(shape: Sequence[int], storage: torch.dtype, key: str | None = None) -> torch.dtype:
    """fp8 stores matrices and kernels only; vectors, and the parts ``keeps_16bit`` names, keep 16 bits."""
    if is_storage_only(storage) and (len(shape) < 2 or (key is not None and keeps_16bit(key))):
        return FP8_VECTOR_DTYPE
    return storage


def fp8_scale(t: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    """Power-of-two scale mapping ``t``'s largest magnitude into ``dtype``'s top binade (float32 scalar)."""
    absmax = float(t.detach().abs().max()) if t.numel() else 0.0
    if not math.isfinite(absmax) or absmax == 0.0:
        return torch.ones((), dtype=torch.float32)
    return torch.tensor(2.0 ** math.ceil(math.log2(absmax / torch.finfo(dtype).max)), dtype=torch.float32)


def quantise_fp8(
    t: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``t / scale`` in ``dtype``, scale): a new tensor, ``t`` is untouched."""
    scale = fp8_scale(t, dtype)
    limit = torch.finfo(dtype).max
    return (t.float() / scale).clamp_(-limit, limit).to(dtype), scale


def scale_name(name: str) -> str:
    return name + FP8_SCALE_SUFFIX


def set_scale(module: nn.Module, name: str, scale: torch.Tensor | None) -> None:
    """Give tensor ``name`` of ``module`` its fp8 scale (``None``: no scale, the implicit 1)."""
    buffer = scale_name(name)
    if scale is None:
        module._buffers.pop(buffer, None)
        module._non_persistent_buffers_set.discard(buffer)
    else:
        module.register_buffer(buffer, scale, persistent=False)


def _stored(
    t: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``t`` (holding ``value / scale``) in ``dtype``, and its new scale."""
    if t.is_meta:  # weightless model (benchmarks): uninitialised RAM, or fake RAM under a fake-tensor mode
        new = torch.empty(t.shape, dtype=dtype, device="cpu")
        return new, torch.ones((), dtype=torch.float32) if is_storage_only(dtype) else None
    if t.dtype == dtype:
        return t, scale
    if scale is not None:
        t = t.float() * scale
    if is_storage_only(dtype):
        return quantise_fp8(t, dtype)
    return t.to(dtype), None


def convert_storage(module: nn.Module, storage: str | torch.dtype, prefix: str = "") -> nn.Module:
    """Give every floating tensor of ``module`` its storage dtype (new tensors; the old ones are untouched).

    ``prefix`` is the module's key in the state dict (e.g. ``"model."``), for ``keeps_16bit``. fp8 tensors
    get a scale buffer; tensors converted away from fp8 lose it. Meta tensors become uninitialised CPU
    tensors, so a model built on the meta device can be run (under a fake-tensor mode, to measure memory)
    without any weights.
    """
    dtype = storage_dtype(storage)
    done: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for path, sub in module.named_modules():
        for table in (sub._parameters, sub._buffers):
            for name, t in list(table.items()):
                if t is None or name.endswith(FP8_SCALE_SUFFIX) or not (t.is_floating_point() or t.is_meta):
                    continue
                if id(t) not in done:
                    if t.is_floating_point():
                        key = f"{prefix}{path}.{name}" if path else f"{prefix}{name}"
                        target = tensor_storage_dtype(t.shape, dtype, key)
                        new, scale = _stored(t, target, sub._buffers.get(scale_name(name)))
                    else:
                        new, scale = torch.empty_like(t, device="cpu"), None
                    if isinstance(t, nn.Parameter):
                        new = nn.Parameter(new, requires_grad=False)
                    done[id(t)] = (new, scale)
                new, scale = done[id(t)]
                table[name] = new
                set_scale(sub, name, scale)
    return module


def apply_storage(
    model: nn.Module, storage: str | torch.dtype, vae_dtype: torch.dtype = torch.bfloat16
) -> None:
    """Storage dtypes of a SUPIRModel: ``storage`` for UNet, control and text, ``vae_dtype`` for the VAE.

    The VAE is never stored in fp16 (it overflows to NaN) nor fp8.
    """
    if vae_dtype == torch.float16 or is_storage_only(vae_dtype):
        raise ValueError("the VAE must be stored in bfloat16 or float32 (fp16 overflows in this VAE)")
    convert_storage(model.model, storage, "model.")
    convert_storage(model.conditioner, storage, "conditioner.")
    convert_storage(model.first_stage_model, vae_dtype, "first_stage_model.")
    if model.denoiser.sigmas.is_meta:
        model.denoiser.reset()


def tensor_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of the distinct tensors of ``modules`` (tied tensors counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            seen[id(t)] = t.nelement() * t.element_size()
    return sum(seen.values())
