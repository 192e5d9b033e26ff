"""One exception hierarchy; every message says what was wrong and what to do about it."""

from __future__ import annotations

from pathlib import Path


class SupirError(Exception):
    """Base class of every error this package raises on purpose."""


class CheckpointError(SupirError):
    """A model file cannot be used. ``path`` names the file when one is to blame."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{self.path.name}: {message}" if self.path else message)


class CheckpointNotFoundError(CheckpointError):
    pass


class CheckpointFormatError(CheckpointError):
    """Not a checkpoint we can read: unknown extension, corrupt or truncated."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would need code execution to load; refused."""


class WrongModelError(CheckpointError):
    """A readable checkpoint of the wrong kind (SD 1.5, SDXL refiner, ...)."""


class MissingWeightsError(CheckpointError):
    """A component the model needs was found in none of the given files."""


class ShapeMismatchError(CheckpointError):
    """Tensors of the right names but the wrong shapes."""


class CancelledError(SupirError):
    """The host asked us to stop."""


class DeviceMemoryError(SupirError):
    """The run cannot fit in the device memory available (``needed`` and ``budget`` in bytes)."""

    def __init__(self, message: str, needed: int | None = None, budget: int | None = None):
        self.needed = needed
        self.budget = budget
        super().__init__(message)


class HostMemoryError(SupirError):
    """The run would need more RAM than is available (``needed`` and ``available`` in bytes)."""

    def __init__(self, message: str, needed: int | None = None, available: int | None = None):
        self.needed = needed
        self.available = available
        super().__init__(message)


class NonFiniteError(SupirError):
    """A stage produced NaN or infinite values (usually a reduced-precision overflow)."""
