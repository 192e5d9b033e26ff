"""One SUPIR run inside the webui: which files, which SDXL tensors, the cached model, the device lease.

Every entry point (txt2img / img2img script, Extras, Upscaler, API routes) calls :func:`upscale`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from modules import devices, sd_models
from PIL import Image

from supir_engine.checkpoints import LoadOptions
from supir_engine.device_policy import Precision
from supir_engine.errors import CancelledError, CheckpointNotFoundError, SupirError
from supir_engine.memory import MemoryConfig, budget_config
from supir_engine.model_cache import InMemorySDXL, ModelCache, SDXLSource
from supir_engine.model_files import HOW_TO_GET_SUPIR, find_supir
from supir_engine.pipeline import SUPIRPipeline, UpscaleResult
from supir_engine.settings import UpscaleSettings

from . import hosts, lora
from .args import model_name
from .host import RESTORE_FAILED, WebuiHost
from .options import LOADED_CHECKPOINT, LORA_WITHOUT, models_dir, opt
from .precision import webui_precision
from .resume import resume_options
from .total_progress import ImageShare

log = logging.getLogger(__name__)

CACHE = ModelCache()
NOT_SDXL = (
    "the loaded checkpoint ({name}) is not an SDXL model, and SUPIR runs on SDXL. Load an SDXL checkpoint "
    "(sd_xl_base_1.0 or a fine-tune such as Juggernaut-XL; the SUPIR authors recommend these), or choose a "
    "file in Settings > SUPIR > 'SDXL base model SUPIR runs on'."
)
# Where webui users put the SUPIR files (the standalone CLI's --supir flag means nothing here).
HOW_TO_GET_SUPIR_WEBUI = HOW_TO_GET_SUPIR.replace(
    ", or pass its path with --supir",
    " (another folder can be chosen in Settings > SUPIR > 'Folder of the SUPIR model files' or with "
    "--supir-models-path), then press the 🔄 button next to the SUPIR status line",
)
NO_CHECKPOINT = (
    "no checkpoint is loaded. Load an SDXL checkpoint, or choose an SDXL file in Settings > SUPIR > "
    "'SDXL base model SUPIR runs on'."
)


class _Loaded:
    """The pipeline over the cached model (it keeps the stage-1 cache between runs on the same image)."""

    lock = threading.Lock()
    pipeline: SUPIRPipeline | None = None
    memory: MemoryConfig | None = None
    precision: Precision | None = None


# ------------------------------------------------------------------------------------------ files


def supir_files() -> dict[str, Path]:
    """{"Q": path, "F": path} for the SUPIR variants present in the models folder."""
    found = {}
    for variant in ("Q", "F"):
        with contextlib.suppress(CheckpointNotFoundError):
            found[variant] = find_supir(models_dir(), variant, HOW_TO_GET_SUPIR_WEBUI)
    return found


def configured_base() -> Path | None:
    """The SDXL file chosen in Settings, or None for the loaded checkpoint."""
    choice = str(opt("supir_sdxl_base") or "").strip()
    if not choice or choice == LOADED_CHECKPOINT:
        return None
    info = sd_models.checkpoints_list.get(choice)
    candidates = [Path(info.filename)] if info is not None else []
    candidates += [Path(choice).expanduser(), models_dir() / choice]
    for path in candidates:
        if path.is_file():
            return path
    raise CheckpointNotFoundError(
        f"the SDXL base '{choice}' chosen in Settings > SUPIR was not found (looked in the webui's "
        f"checkpoints and in {models_dir()}); choose another one there, or '{LOADED_CHECKPOINT}'."
    )


def describe_checkpoint(model) -> str:
    return hosts.current().describe(model)


@dataclass(frozen=True)
class Base:
    """The SDXL base of a run, and how the infotext names it."""

    source: SDXLSource
    name: str
    loras: tuple[str, ...] = ()  # LoRAs merged into the loaded checkpoint
    loras_used: bool = True  # False: the run used the weights from before they were merged


def resolve_base() -> Base:
    """The SDXL base: the file set in Settings, else the loaded SDXL checkpoint's tensors (shared).

    On hosts that load lazily (Forge, Forge Neo) the selected checkpoint is loaded first. LoRAs the webui
    merged into it are kept or left out as Settings > SUPIR says.
    """
    path = configured_base()
    if path is not None:
        return Base(path, path.name)
    adapter = hosts.current()
    model = adapter.model_for_run()
    problem = _model_problem(adapter, model)
    if problem is not None:
        raise SupirError(problem)
    loras = tuple(lora.merged_loras(model))
    without = bool(loras) and opt("supir_lora") == LORA_WITHOUT
    overrides = lora.unmerged_overrides(model, adapter.lora_family(model)) if without else None
    name = adapter.describe(model)
    token = (adapter.token(model), loras, without)
    return Base(InMemorySDXL(adapter.sdxl_tensors(model, overrides), token, name), name, loras, not without)


def preflight(variant: str) -> str | None:
    """Why SUPIR cannot run right now (missing file, no SDXL base), or None; cheap, reads no weights."""
    try:
        find_supir(models_dir(), variant, HOW_TO_GET_SUPIR_WEBUI)
        return None if configured_base() is not None else loaded_base_problem()
    except SupirError as exc:
        return str(exc)


def _model_problem(adapter: hosts.WebuiAdapter, model) -> str | None:
    if model is None:
        return NO_CHECKPOINT
    if not adapter.is_sdxl(model):
        return NOT_SDXL.format(name=adapter.describe(model))
    return adapter.base_problem(model)


def loaded_base_problem() -> str | None:
    """Why the loaded checkpoint cannot be SUPIR's base, or None (also None while a host that loads
    lazily has not loaded the selected checkpoint yet: the run loads it, and says so if it is not SDXL)."""
    adapter = hosts.current()
    model = adapter.loaded_model()
    if model is None and adapter.pending_checkpoint() is not None:
        return None
    return _model_problem(adapter, model)


def base_in_use() -> str:
    """Which SDXL base a run would use, in words, for the status line and ``/supir/v1/models``."""
    try:
        path = configured_base()
    except SupirError:
        return "the file chosen in Settings (not found)"
    if path is not None:
        return f"the file {path.name} (read by SUPIR)"
    adapter = hosts.current()
    model = adapter.loaded_model()
    if model is None:
        pending = adapter.pending_checkpoint()
        return f"{adapter.name}'s checkpoint {pending} (loaded when SUPIR runs)" if pending else "none loaded"
    return f"{adapter.name}'s loaded checkpoint {adapter.describe(model)} (shared, not copied)"


def model_status() -> dict[str, Any]:
    """Which model files are present and what is missing, for the UI and the API."""
    folder = models_dir()
    found = supir_files()
    try:
        problem = None if configured_base() is not None else loaded_base_problem()
    except SupirError as exc:
        problem = str(exc)
    return {
        "models_dir": str(folder),
        "models": [{"name": model_name(v), "variant": v, "file": str(p)} for v, p in found.items()],
        "missing": [model_name(v) for v in ("Q", "F") if v not in found],
        "how_to_get": HOW_TO_GET_SUPIR_WEBUI.format(folder=folder),
        "sdxl_base": str(opt("supir_sdxl_base")),
        "sdxl_problem": problem,
        "sdxl_base_in_use": base_in_use(),
        "host": hosts.current().name,
    }


# ------------------------------------------------------------------------------------------ settings


def load_options(precision: Precision) -> LoadOptions:
    """Weight storage: Settings > SUPIR > weight storage dtype, ``auto`` as ``precision`` suggests."""
    storage, vae_storage = precision.storage_dtypes(str(opt("supir_storage_dtype") or "auto"))
    return LoadOptions(dtype=storage, vae_dtype=vae_storage)


def base_settings() -> UpscaleSettings:
    """What Settings decide for every run (size floor, tiles); ``0`` means automatic."""
    tile = int(opt("supir_tile_size")) or None
    stride = (int(opt("supir_tile_stride")) or (tile // 2 if tile else None)) if tile else None
    return UpscaleSettings(
        min_size=int(opt("supir_min_size")),
        tile_size=tile,
        tile_stride=stride,
        vae_encoder_tile=int(opt("supir_vae_encoder_tile")) or None,
        vae_decoder_tile=int(opt("supir_vae_decoder_tile")) or None,
    )


# ------------------------------------------------------------------------------------------ running


@contextlib.contextmanager
def _no_autocast(device: torch.device) -> Iterator[None]:
    """SUPIR picks its own dtypes; the webui may call us inside its CUDA autocast (hires fix upscalers)."""
    if device.type == "cuda":
        with torch.autocast("cuda", enabled=False):
            yield
    else:
        yield


def _after_run(host: WebuiHost) -> None:
    if not opt("supir_keep_in_ram"):
        release()
    elif host.will_restore:
        # The checkpoint goes back to the GPU: the CPU copies we share would stay alive for us alone.
        release(shared_only=True)


def is_busy() -> bool:
    return _Loaded.lock.locked()


def release(shared_only: bool = False) -> None:
    """Drop the cached model (or only what references the webui's checkpoint tensors)."""
    released = CACHE.release_shared() if shared_only else (CACHE.release() or True)
    if released:
        _Loaded.pipeline = None


def memory_config() -> MemoryConfig:
    budget = float(opt("supir_vram_budget") or 0)  # 0: the free memory
    return budget_config(str(opt("supir_memory_policy")), budget if budget > 0 else None)


def _pipeline(model, device: torch.device, precision: Precision) -> SUPIRPipeline:
    config = memory_config()
    current = _Loaded.pipeline
    same = current is not None and current.model is model and current.device == device
    if not same or _Loaded.memory != config or _Loaded.precision != precision:
        current = _Loaded.pipeline = SUPIRPipeline(model, device, memory=config, precision=precision)
        _Loaded.memory, _Loaded.precision = config, precision
    return current


def fit_to_scale(image: Image.Image, source_size: tuple[int, int], scale: float) -> Image.Image:
    """The result at exactly ``scale`` x the input (SUPIR rounds to multiples of 32 and a minimum side)."""
    target = (max(1, round(source_size[0] * scale)), max(1, round(source_size[1] * scale)))
    return image if image.size == target else image.resize(target, Image.LANCZOS)


def upscale(
    image: Image.Image,
    settings: UpscaleSettings,
    variant: str,
    label: str = "SUPIR",
    total_bar: ImageShare | None = None,
) -> UpscaleResult:
    """Restore and upscale one image with the webui's SD checkpoint out of the way.

    ``total_bar``: the image's part of the console's "Total progress" bar, for an image that is one of
    a generation's jobs. Raises SupirError (CancelledError when the user interrupts); the SD checkpoint
    is back on its device whatever happens.
    """
    host = WebuiHost(label, total_bar)
    host.before_restore.append(lambda: _after_run(host))
    try:
        with _Loaded.lock, host.lease():
            supir_file = find_supir(models_dir(), variant, HOW_TO_GET_SUPIR_WEBUI)
            device = devices.get_device_for("supir")
            precision = webui_precision(device)
            base = resolve_base()
            model = CACHE.get(base.source, supir_file, load_options(precision))
            pipeline = _pipeline(model, device, precision)
            resume = resume_options(base.source, supir_file, precision.label)
            with _no_autocast(device):
                result = pipeline.upscale(image, settings, host, resume=resume)
            result.base = base.name
            if base.loras:
                result.base_loras = ", ".join(base.loras) + ("" if base.loras_used else " (left out)")
    except Exception as exc:
        if host.restore_failure:
            exc.add_note(host.restore_failure)
        raise
    if host.restore_failure:
        result.notes.append(host.restore_failure)
    result.image = fit_to_scale(result.image, image.size, settings.scale)
    result.output_size = result.image.size
    return result


def user_message(exc: BaseException) -> str:
    """What to tell the user about a failed run (and about the SD checkpoint, when it was left in RAM)."""
    restore = [n for n in getattr(exc, "__notes__", ()) if n.startswith(RESTORE_FAILED[:30])]
    return " ".join([_failure_message(exc), *restore])


def _failure_message(exc: BaseException) -> str:
    if isinstance(exc, CancelledError):
        return "SUPIR was interrupted; the image was kept as it was."
    if isinstance(exc, SupirError):
        return f"SUPIR: {exc}"
    if isinstance(exc, torch.OutOfMemoryError):
        return (
            "SUPIR ran out of memory; the image was kept as it was. Lower the scale, or set smaller tile "
            "sizes in Settings > SUPIR."
        )
    return f"SUPIR failed ({type(exc).__name__}: {exc}); the image was kept as it was."
