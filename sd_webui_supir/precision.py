"""SUPIR's precision inside the webui: the Settings choice, and on ``auto`` the webui's own precision.

The webui decides its precision from its flags (``--no-half``, ``--no-half-vae``, ``--upcast-sampling``,
``--precision full``) into ``modules.devices`` (``dtype``, ``dtype_unet``, ``dtype_vae``,
``unet_needs_upcast``). On ``auto`` SUPIR follows those, part by part; the engine's device policy still
keeps fp16 off GPUs where it gives NaN and never computes the VAE in fp16.
"""

from __future__ import annotations

import torch

from supir_engine.device_policy import PRECISIONS, Precision, PrecisionError, precision_for

from .options import opt


def webui_wishes() -> dict[str, torch.dtype | None]:
    """Compute dtypes the webui's precision asks for: {"unet", "text", "vae"} (None: the device decides)."""
    from modules import devices, shared

    flags = shared.cmd_opts
    if getattr(flags, "no_half", False) or getattr(flags, "precision", None) == "full":
        return {"unet": torch.float32, "text": torch.float32, "vae": torch.float32}
    text = getattr(devices, "dtype", None)
    unet = getattr(devices, "dtype_unet", text)
    if getattr(devices, "unet_needs_upcast", False) or getattr(flags, "upcast_sampling", False):
        unet = torch.float32  # the webui samples in fp32 with weights kept in fp16
    vae = getattr(devices, "dtype_vae", None)
    if getattr(flags, "no_half_vae", False):
        vae = torch.float32
    return {"unet": unet, "text": text, "vae": vae}


def webui_precision(device: torch.device) -> Precision:
    """SUPIR's precision on ``device``: Settings > SUPIR > precision, ``auto`` following the webui."""
    choice = str(opt("supir_precision") or "auto").lower()
    if choice not in PRECISIONS:
        raise PrecisionError(
            f"Settings > SUPIR > precision is {choice!r}; choose one of {', '.join(PRECISIONS)}"
        )
    if choice != "auto":
        return precision_for(device, choice)
    return precision_for(device, "auto", source="the webui", **webui_wishes())
