"""Resumable SUPIR jobs in the webui: sampler states in a folder of the webui's data directory.

An interrupted job (Interrupt, an out-of-memory error, a closed webui) continues where it stopped when the
same image is upscaled again with the same settings, models and precision. Settings > SUPIR turns this
off and bounds the folder's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from supir_engine.resume_options import ResumeOptions, weights_identity

from .options import opt

FOLDER_NAME = "supir_resume"


def resume_folder() -> Path:
    """``<webui data dir>/supir_resume``."""
    from modules import paths

    return Path(paths.data_path) / FOLDER_NAME


def resume_options(base_source: Any, supir_file: Path, precision_label: str) -> ResumeOptions | None:
    """Where this run's sampler states go (None when Settings turn resuming off)."""
    if not opt("supir_resume"):
        return None
    limit_gb = float(opt("supir_resume_limit_gb"))
    every = int(opt("supir_resume_every_steps"))
    storage = str(opt("supir_storage_dtype"))
    weights = weights_identity(base_source, supir_file, extra=(storage, precision_label))
    return ResumeOptions(
        resume_folder(), weights, every_steps=max(1, every), max_bytes=max(1, int(limit_gb * 1024**3))
    )
