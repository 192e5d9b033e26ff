"""Which dtypes SUPIR computes and stores each part in, from what the device can do.

Every "which dtype on this device" question is answered here; the rest of the engine takes a
:class:`Precision`. Rules for ``auto`` (compute dtype of UNet + control / text encoders / VAE):

* CPU: fp32 everywhere (weights stored fp16 to halve RAM; each layer upcasts its weight).
* NVIDIA sm_80 and newer (Ampere, Ada, Hopper, Blackwell), ROCm and XPU with native bf16: fp16 / fp16 / bf16.
* NVIDIA sm_70-sm_75 (V100, T4, RTX 20xx): fp16 / fp16 / fp32. bf16 has no hardware support before
  sm_80 (CUDA C++ Programming Guide, "Arithmetic Instructions": bf16 arithmetic needs compute
  capability 8.0), so bf16 convolutions are emulated and slow and the fused attention kernels refuse
  bf16 there; this VAE overflows in fp16 (SDXL VAE, known issue), which leaves fp32.
* GTX 16xx and the other TU116/TU117 parts (sm_75 without tensor cores): fp32 / fp32 / fp32. Their fp16
  produces NaN (black images) in SD models; the AUTOMATIC1111 webui detects them the same way (capability
  (7, 5) and the "GeForce GTX 16" name) and its wiki tells their owners to run ``--precision full --no-half``.
* NVIDIA below sm_70 (Pascal and older): fp32 everywhere (no fast fp16: GP10x runs fp16 at 1/64 rate).
* Apple MPS: fp16 / fp16 / fp32 (no fp8 storage; bf16 only from macOS 14, where MPS gained bfloat16).

The VAE is never computed or stored in fp16: it overflows to NaN. fp8 is a storage dtype only (each layer
upcasts), allowed wherever the device has float8 tensors (not MPS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch

from .errors import SupirError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
NAMED_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}

# TU116/TU117 boards (sm_75, no tensor cores) whose fp16 gives NaN in SD models: GeForce GTX 1630/1650/1660,
# MX450/MX550, Quadro/RTX T400-T2000, CMP 30HX. The plain "T4" (TU104) is not one of them.
_FP16_BROKEN = re.compile(r"GTX 16\d\d|\bMX[45]50\b|\bT(400|500|550|600|1000|1200|2000)\b|\bCMP 30HX\b")


class PrecisionError(SupirError):
    """A precision the device cannot compute in was asked for."""


@dataclass(frozen=True)
class Precision:
    """Compute and default storage dtypes of each part, and why they were chosen.

    unet: UNet + GLVControl compute dtype; text: text encoders; vae: the VAE (bf16 or fp32, never fp16).
    storage / vae_storage: weight storage when the user leaves it on ``auto``. fp8_storage: float8
    weight storage works on this device. reason: one line for logs and infotext.
    """

    unet: torch.dtype
    text: torch.dtype
    vae: torch.dtype
    storage: torch.dtype
    vae_storage: torch.dtype
    fp8_storage: bool
    reason: str

    def __post_init__(self) -> None:
        if self.vae == torch.float16 or self.vae_storage == torch.float16:
            raise PrecisionError("the SUPIR VAE overflows in fp16: compute and store it in bf16 or fp32")

    @property
    def label(self) -> str:
        """``UNet fp16 / text fp16 / VAE bf16``: short, no commas (it goes into infotext)."""
        return f"UNet {dtype_name(self.unet)} / text {dtype_name(self.text)} / VAE {dtype_name(self.vae)}"

    def replace(self, **changes: object) -> Precision:
        return replace(self, **changes)

    def storage_dtypes(self, choice: str | torch.dtype = "auto") -> tuple[torch.dtype, torch.dtype]:
        """(UNet/control/text storage, VAE storage) for the user's storage choice (``auto``: the defaults)."""
        from .memory import is_storage_only, storage_dtype

        if isinstance(choice, str) and choice.lower() == "auto":
            return self.storage, self.vae_storage
        dtype = storage_dtype(choice)
        if is_storage_only(dtype) and not self.fp8_storage:
            raise PrecisionError("this device has no float8 tensors: choose fp16 or bf16 weight storage")
        return dtype, torch.float32 if dtype == torch.float32 else self.vae_storage


def widest_float(device: torch.device | str) -> torch.dtype:
    """float64, or float32 on MPS (which has no float64)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


@dataclass(frozen=True)
class DeviceFacts:
    """What the rules need to know about a device."""

    kind: str  # cpu, cuda, mps, xpu or another torch device type
    name: str = ""
    capability: tuple[int, int] | None = None  # NVIDIA compute capability; None elsewhere (ROCm included)
    native_bf16: bool = False  # bf16 arithmetic in hardware
    any_bf16: bool = False  # bf16 tensors work at all (emulated or native)
    fp16_broken: bool = False
    fp8_storage: bool = True


def device_facts(device: torch.device | str) -> DeviceFacts:
    """Query the device (only the queries its type has)."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_facts(device)
    if device.type == "mps":
        bf16 = bool(torch.backends.mps.is_macos_or_newer(14, 0))
        return DeviceFacts("mps", "Apple MPS", native_bf16=bf16, any_bf16=bf16, fp8_storage=False)
    if device.type == "xpu":
        native, emulated = (bool(torch.xpu.is_bf16_supported(including_emulation=e)) for e in (False, True))
        return DeviceFacts("xpu", "Intel XPU", native_bf16=native, any_bf16=emulated)
    if device.type == "cpu":
        return DeviceFacts("cpu", "CPU", native_bf16=True, any_bf16=True)
    return DeviceFacts(device.type, device.type)


def _cuda_facts(device: torch.device) -> DeviceFacts:
    name = torch.cuda.get_device_name(device)
    if torch.version.hip:  # ROCm reports gfx versions as "capabilities"; every supported AMD GPU has bf16
        return DeviceFacts("cuda", name, native_bf16=True, any_bf16=True)
    capability = tuple(torch.cuda.get_device_capability(device))
    return DeviceFacts(
        "cuda",
        name,
        capability,
        native_bf16=capability >= (8, 0),
        any_bf16=True,  # every CUDA GPU converts and (slowly) computes bf16
        fp16_broken=capability == (7, 5) and bool(_FP16_BROKEN.search(name)),
    )


def _auto(facts: DeviceFacts) -> tuple[torch.dtype, torch.dtype, torch.dtype, str]:
    """(UNet, text, VAE) compute dtypes and the reason, for ``auto``."""
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    half_vae = bf16 if facts.native_bf16 else f32
    if facts.kind == "cpu":
        return f32, f32, f32, "CPU: fp32"
    if facts.kind == "mps":
        return f16, f16, f32, "Apple MPS: fp16, VAE fp32"
    if facts.kind == "xpu":
        return f16, f16, half_vae, f"Intel XPU: fp16, VAE {dtype_name(half_vae)}"
    if facts.kind != "cuda":
        return f32, f32, f32, f"{facts.kind}: fp32 (unknown device type)"
    if facts.capability is None:
        return f16, f16, half_vae, f"{facts.name} (ROCm): fp16, VAE {dtype_name(half_vae)}"
    sm = "sm_{}{}".format(*facts.capability)
    if facts.fp16_broken:
        return f32, f32, f32, f"{facts.name} ({sm}): fp32, its fp16 gives NaN"
    if facts.capability >= (8, 0):
        return f16, f16, bf16, f"{facts.name} ({sm}): fp16, VAE bf16"
    if facts.capability >= (7, 0):
        return f16, f16, f32, f"{facts.name} ({sm}): fp16, VAE fp32 (bf16 is emulated before sm_80)"
    return f32, f32, f32, f"{facts.name} ({sm}): fp32 (no fast fp16 before sm_70)"


def _requested(facts: DeviceFacts, precision: str) -> tuple[torch.dtype, torch.dtype, torch.dtype, str]:
    if precision == "fp32":
        return torch.float32, torch.float32, torch.float32, "fp32 requested"
    if precision == "fp16":
        vae = torch.bfloat16 if facts.native_bf16 else torch.float32
        note = " (this GPU's fp16 often gives NaN: use fp32 if the image is black)"
        note = note if facts.fp16_broken else ""
        return torch.float16, torch.float16, vae, f"fp16 requested, VAE {dtype_name(vae)}{note}"
    if not facts.any_bf16:
        raise PrecisionError(
            f"{facts.name} cannot compute in bf16: set precision to auto, fp16 or fp32 (MPS needs macOS 14)"
        )
    note = "" if facts.native_bf16 else " (emulated on this GPU: slow)"
    return torch.bfloat16, torch.bfloat16, torch.bfloat16, f"bf16 requested{note}"


def _prefer(
    facts: DeviceFacts, part: str, wanted: torch.dtype | None, chosen: torch.dtype
) -> tuple[torch.dtype, str | None]:
    """A host's wish for one part, unless the device cannot honour it; the note says what was done."""
    if wanted is None or wanted == chosen:
        return chosen, None
    if wanted not in DTYPE_NAMES:
        return chosen, None  # float8 and the like are storage dtypes: keep computing in ``chosen``
    if wanted == torch.float16 and (facts.fp16_broken or part == "VAE"):
        return chosen, None  # fp16 NaNs there: keep the device's choice
    if wanted == torch.bfloat16 and not facts.any_bf16:
        return chosen, None
    return wanted, f"{part} {dtype_name(wanted)}"


def precision_for(
    device: torch.device | str,
    precision: str = "auto",
    *,
    unet: torch.dtype | None = None,
    text: torch.dtype | None = None,
    vae: torch.dtype | None = None,
    source: str = "host",
    facts: DeviceFacts | None = None,
) -> Precision:
    """The precision SUPIR runs in on ``device``.

    ``precision`` is the user's choice (``auto``, ``fp32``, ``fp16`` or ``bf16``); an explicit one is used
    as asked except that the VAE is never fp16. With ``auto``, ``unet`` / ``text`` / ``vae`` are a host's
    wishes (the webui's precision flags, named by ``source`` in the reason) that replace the device rules
    part by part, except fp16 where it gives NaN and bf16 where the device has none.
    """
    choice = (precision or "auto").lower()
    if choice not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    facts = facts or device_facts(device)
    if choice == "auto":
        *dtypes, reason = _auto(facts)
        wishes = zip(("UNet", "text", "VAE"), (unet, text, vae), dtypes)
        chosen = [_prefer(facts, part, wanted, current) for part, wanted, current in wishes]
        u, t, v = (dtype for dtype, _ in chosen)
        notes = [note for _, note in chosen if note]
        if notes:
            reason += f"; {source} asks for " + ", ".join(notes)
    else:
        u, t, v, reason = _requested(facts, choice)
    return Precision(
        unet=u,
        text=t,
        vae=v,
        storage=torch.float16,
        vae_storage=v,
        fp8_storage=facts.fp8_storage,
        reason=reason,
    )
