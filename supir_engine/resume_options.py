"""Where and how often resumable runs save the sampler's state (no torch import: the CLI's --help)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_EVERY_STEPS = 5


@dataclass(frozen=True)
class ResumeOptions:
    """Where and how often sampler states are saved.

    ``weights`` identifies the model's weights (``weights_identity``); empty means "this model object in
    this process" (a state then resumes only within the same process). A state is saved after every
    ``every_steps`` steps and/or once ``every_seconds`` have passed since the last save (None: not by that
    measure), and always when the run is stopped. ``max_bytes`` bounds the folder's states.
    """

    folder: Path
    weights: str = ""
    every_steps: int | None = DEFAULT_EVERY_STEPS
    every_seconds: float | None = None
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.every_steps is not None and self.every_steps < 1:
            raise ValueError(f"save every N steps needs N >= 1, got {self.every_steps}")
        if self.every_seconds is not None and self.every_seconds <= 0:
            raise ValueError(f"save every M seconds needs M > 0, got {self.every_seconds}")
        if self.max_bytes < 1:
            raise ValueError(f"the size limit of saved states must be positive, got {self.max_bytes} bytes")


def weights_identity(*sources: Any, extra: tuple[str, ...] = ()) -> str:
    """An identity of model weights: files (``str``/``Path``: resolved path, size, mtime), host tensors
    (``InMemorySDXL``: their token), and ``extra`` words such as the storage dtype."""
    from .model_cache import InMemorySDXL, file_key

    described = []
    for source in sources:
        if isinstance(source, InMemorySDXL):
            described.append(f"memory:{source.token!r}")
        elif isinstance(source, (str, Path)):
            described.append("file:" + json.dumps(file_key(source)))
        elif source is not None:
            raise TypeError(f"weights come from a file or host tensors, not {type(source).__name__}")
    return "|".join([*described, *extra])
