"""Which webui this is, and the adapter that knows where its SDXL lives and how its memory is managed.

Chosen once, at import, from the packages the host has: the Forge backend (Forge, Forge Neo), the
``ldm_patched`` backend (reForge, Forge Classic), or neither (AUTOMATIC1111 1.10 and its dev branch).
"""

from __future__ import annotations

import importlib.util

from .base import WebuiAdapter

_current: WebuiAdapter | None = None


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def detect() -> str:
    """``forge`` (Forge, Forge Neo), ``reforge`` (reForge, Forge Classic) or ``a1111``."""
    if _has("modules_forge") and _has("backend.memory_management"):
        return "forge"
    if _has("modules_forge") and _has("ldm_patched.modules.model_management"):
        return "reforge"
    return "a1111"


def adapter_for(family: str) -> WebuiAdapter:
    if family == "forge":
        from .forge import ForgeAdapter

        return ForgeAdapter()
    if family == "reforge":
        from .forge import ReForgeAdapter

        return ReForgeAdapter()
    if family == "a1111":
        return WebuiAdapter()
    raise ValueError(f"unknown webui family {family!r}")


def current() -> WebuiAdapter:
    global _current
    if _current is None:
        _current = adapter_for(detect())
    return _current


def activate(family: str | None = None) -> WebuiAdapter:
    """Choose the adapter again (``None``: detect); tests switch fake hosts with it."""
    global _current
    _current = adapter_for(family or detect())
    return _current
