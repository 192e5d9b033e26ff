"""Locating model files, and telling users where to get them when they are missing."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .errors import CheckpointNotFoundError

MODELS_DIR_ENV = "SUPIR_MODELS_DIR"
SUPIR_PATTERNS = {"Q": ("SUPIR-v0Q*", "supir_v0q*", "*v0Q*"), "F": ("SUPIR-v0F*", "supir_v0f*", "*v0F*")}
SDXL_PATTERNS = ("sd_xl_base*", "sdxl_base*", "*juggernaut*xl*", "*Juggernaut*XL*", "*sdxl*")
SUFFIXES = (".safetensors", ".ckpt")
# An SDXL UNet has the class-embedding MLP (SD 1.x/2.x do not); SUPIR files have the control model.
SDXL_UNET_KEY = "model.diffusion_model.label_emb.0.0.weight"
SUPIR_KEY_PREFIX = "model.control_model."
MAX_HEADER_BYTES = 100 * 2**20

HOW_TO_GET_SUPIR = (
    "Download SUPIR-v0Q (or SUPIR-v0F) from the links in the official SUPIR repository "
    "(https://github.com/Fanghua-Yu/SUPIR; non-commercial licence) - the original .ckpt or an fp16 "
    ".safetensors conversion - and put it in {folder}, or pass its path with --supir."
)
HOW_TO_GET_SDXL = (
    "SUPIR runs on an SDXL base model: download sd_xl_base_1.0.safetensors "
    "(huggingface.co/stabilityai/stable-diffusion-xl-base-1.0) or another SDXL checkpoint "
    "(e.g. Juggernaut-XL) and put it in {folder} as .safetensors (any name: its header is checked; "
    "a .ckpt needs a name with 'sdxl' in it), or pass its path with --sdxl."
)


def default_models_dir() -> Path:
    return Path(os.environ.get(MODELS_DIR_ENV, "models/SUPIR")).expanduser()


def _find(folder: Path, patterns: tuple[str, ...]) -> Path | None:
    if not folder.is_dir():
        return None
    for pattern in patterns:
        hits = sorted(p for p in folder.glob(pattern) if p.suffix.lower() in SUFFIXES)
        if hits:
            return hits[0]
    return None


def find_supir(folder: Path, variant: str = "Q", how_to_get: str = HOW_TO_GET_SUPIR) -> Path:
    """The SUPIR-v0Q/F file in ``folder``; when missing, ``how_to_get`` ({folder}) says what to do."""
    found = _find(folder, SUPIR_PATTERNS[variant.upper()])
    if found is None:
        raise CheckpointNotFoundError(
            f"no SUPIR-v0{variant.upper()} model found. " + how_to_get.format(folder=folder)
        )
    return found


def safetensors_keys(path: Path) -> set[str]:
    """The tensor names in a .safetensors header (reads the header only); empty when it is not one."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if not 2 <= length <= MAX_HEADER_BYTES:
                return set()
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError):
        return set()
    return set(header) - {"__metadata__"} if isinstance(header, dict) else set()


def is_sdxl_base(path: Path) -> bool:
    keys = safetensors_keys(path)
    return SDXL_UNET_KEY in keys and not any(k.startswith(SUPIR_KEY_PREFIX) for k in keys)


def find_sdxl(folder: Path, exclude: Path | None = None) -> Path:
    """An SDXL base in ``folder``: a known name first, else any .safetensors whose header has SDXL's UNet."""
    for pattern in SDXL_PATTERNS:
        hit = _find(folder, (pattern,))
        if hit is not None and hit != exclude:
            return hit
    if folder.is_dir():
        for path in sorted(folder.glob("*.safetensors")):
            if path != exclude and is_sdxl_base(path):
                return path
    raise CheckpointNotFoundError("no SDXL base model found. " + HOW_TO_GET_SDXL.format(folder=folder))
