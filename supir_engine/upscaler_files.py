"""Image-upscaler model files (ESRGAN, SwinIR, DAT, Compact, ... as spandrel detects them), loaded safely.

Only two formats are read: ``.safetensors`` (plain tensors, no code) and ``.pth`` through spandrel's
restricted unpickler, which rebuilds tensors and containers and refuses every other object, so no pickle
code ever runs. ``.pt`` / ``.ckpt`` files may be TorchScript (code) or arbitrary pickles and are refused.
"""

from __future__ import annotations

import logging
import pickle
import threading
from pathlib import Path
from typing import Any

from .errors import CheckpointError, CheckpointFormatError, CheckpointNotFoundError, UnsafeCheckpointError

log = logging.getLogger(__name__)

UPSCALER_SUFFIXES = (".safetensors", ".pth")


class UnsupportedUpscalerError(CheckpointError):
    """A file that holds no image-to-image upscaler spandrel knows."""


def is_model_file(name: str) -> bool:
    """Whether ``name`` names an upscaler model file by its suffix (it may not exist)."""
    return Path(name).suffix.lower() in UPSCALER_SUFFIXES


def list_model_files(folder: Path | None) -> list[Path]:
    """Upscaler model files directly in ``folder``, by name; empty when the folder does not exist."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in UPSCALER_SUFFIXES)


def _state_dict(path: Path) -> dict[str, Any]:
    from spandrel import ModelLoader

    try:
        # For .pth, spandrel unpickles with its RestrictedUnpickle: tensors and containers only.
        return ModelLoader(device="cpu").load_state_dict_from_file(path)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path.name} holds Python objects other than tensors ({exc}); it was not loaded. Use a "
            ".safetensors version of the model"
        ) from exc
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        raise CheckpointFormatError(f"cannot read {path.name} as a {path.suffix} model file ({exc})") from exc


def load_upscaler(path: Path) -> Any:
    """The spandrel ``ImageModelDescriptor`` in ``path``, on the CPU, in eval mode.

    Raises CheckpointNotFoundError, CheckpointFormatError (unreadable or unsupported suffix),
    UnsafeCheckpointError (a pickle with code) or UnsupportedUpscalerError (not an RGB image upscaler).
    """
    path = Path(path)
    if path.suffix.lower() not in UPSCALER_SUFFIXES:
        raise CheckpointFormatError(
            f"{path.name}: upscaler models are read from .safetensors or .pth files only (.pt / .ckpt may "
            "run code when loaded); convert the model to .safetensors, e.g. with chaiNNer"
        )
    if not path.is_file():
        raise CheckpointNotFoundError(f"upscaler model {path} does not exist; check the path")
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    state = _state_dict(path)
    try:
        descriptor = ModelLoader(device="cpu").load_from_state_dict(state)
    except UnsupportedModelError as exc:
        raise UnsupportedUpscalerError(
            f"{path.name} is not a model architecture spandrel knows (ESRGAN, SwinIR, DAT, Compact, HAT, ...)"
        ) from exc
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UnsupportedUpscalerError(
            f"{path.name} looks like a known architecture but does not load ({exc})"
        ) from exc
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.input_channels != 3:
        raise UnsupportedUpscalerError(
            f"{path.name} is not an RGB image-to-image model (it is {descriptor.purpose})"
        )
    if descriptor.output_channels != 3:
        raise UnsupportedUpscalerError(f"{path.name} gives {descriptor.output_channels} channels, not RGB")
    log.info("loaded upscaler %s: %s x%d", path.name, descriptor.architecture.name, descriptor.scale)
    return descriptor.eval()


class UpscalerCache:
    """The last loaded upscaler, kept on the CPU (keyed by path, size and modification time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._model: Any = None

    def get(self, path: Path) -> Any:
        path = Path(path)
        stat = path.stat() if path.is_file() else None
        key = (str(path.resolve()), stat and stat.st_size, stat and stat.st_mtime_ns)
        with self._lock:
            if key != self._key or self._model is None:
                self._model, self._key = None, None
                self._model = load_upscaler(path)
                self._key = key
            return self._model

    def clear(self) -> None:
        with self._lock:
            self._key, self._model = None, None


CACHE = UpscalerCache()


DEFAULT_UPSCALERS_DIR = Path("models/upscalers")


def upscaler_choices(folder: Path | None, resamplers: tuple[str, ...]) -> list[str]:
    """The resamplers, then the model files in ``folder`` by file name (what the app's dropdown lists)."""
    return [*resamplers, *(p.name for p in list_model_files(folder))]


def resolve_choice(
    value: str,
    folder: Path | None,
    allow_paths: bool = True,
    resamplers: tuple[str, ...] = ("lanczos", "bicubic"),
) -> str:
    """A dropdown value as a ``pre_upscaler`` setting: a file name in ``folder`` becomes its path; a
    resampler name stays as it is, and so does a typed path where ``allow_paths`` (the CLI's user). A
    served page passes ``allow_paths=False``: its callers pick the folder's files, never probe the server."""
    value = (value or "").strip()
    if folder is not None and value and Path(value).name == value and (folder / value).is_file():
        return str(folder / value)
    if allow_paths or value in resamplers:
        return value
    raise ValueError(
        f"pre_upscaler must be {' or '.join(resamplers)} or a file of the upscaler models folder, "
        f"got {value!r}"
    )
