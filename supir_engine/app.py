"""Standalone web UI and API over supir_engine (Gradio): ``python -m supir_engine serve``.

One upscale at a time on the device: Gradio's queue holds the waiting requests (unbounded, none dropped)
and runs the upscale events one at a time; ``Engine`` also holds a lock around each run, so that even the
thread of an event Gradio cancelled finishes before the next run starts. Models load once, in the
background at start (the page shows the status), and stay in a ``ModelCache``: switching SUPIR-v0Q <-> v0F
reads only SUPIR's own weights.

Everything that differs between Gradio 3.41 (what the webui ships) and Gradio 4, 5 and 6 is in ``Compat``.
"""

import dataclasses
import functools
import itertools
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from .app_media import add_media_section
from .app_tiles import TILE_PROMPTS_INFO, TILE_PROMPTS_LABEL, preview_tiles, tile_prompt_entries
from .checkpoints import LoadOptions
from .device_policy import precision_for
from .device_select import pick_device
from .errors import CancelledError, CheckpointNotFoundError, SupirError
from .infotext import infotext_line, result_infotext
from .memory import budget_config
from .model_cache import ModelCache
from .pre_upscale import RESAMPLERS
from .preprocess import MAX_PIXELS, MAX_SIDE, ImageError, check_size, target_size
from .progress import RunProgress
from .resume_options import ResumeOptions, weights_identity
from .settings import (
    COLOR_FIXES,
    LIGHTNING_NOTE,
    PRESET_CONTROLS,
    PRESET_LABELS,
    SAMPLER_NAMES,
    UpscaleSettings,
    preset,
    preset_controls,
)
from .upscaler_files import DEFAULT_UPSCALERS_DIR, resolve_choice, upscaler_choices

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6688
STORAGE_DTYPES = ("auto", "fp16", "bf16", "fp8", "fp32")
STAGE_LABELS = {
    "load": "Loading the model",
    "stage1": "Stage 1 (denoise encoder)",
    "text": "Text conditioning",
    "sampling": "Sampling",
    "decode": "Decoding",
}
# The earlier backend's call_upscaler clamped its inputs to its sliders' ranges; clients rely on that.
CALL_UPSCALER_LIMITS = {
    "steps": (1, 200),
    "prompt_cfg": (1.0, 15.0),
    "s2_str": (0.0, 1.0),
    "noise": (1.0, 1.1),
}


# ------------------------------------------------------------------------------------- gradio versions


@dataclass(frozen=True)
class Compat:
    """Arguments that differ between Gradio 3.41 and Gradio 4/5/6, in one place."""

    major: int

    @classmethod
    def installed(cls) -> "Compat":
        return cls(int(gr.__version__.split(".")[0]))

    def queue_kwargs(self) -> dict[str, Any]:
        if self.major < 4:  # 3.x: one worker pool shared by every queued event
            return {"concurrency_count": 1, "max_size": None}
        return {"default_concurrency_limit": 1, "max_size": None}

    def device_event(self) -> dict[str, Any]:
        """Events that use the device: 4+ limits concurrency per event, so they share one limit."""
        return {} if self.major < 4 else {"concurrency_limit": 1, "concurrency_id": "supir-device"}

    def undocumented(self, name: str) -> dict[str, Any]:
        """An event the page uses but the API page does not list (3.x cannot hide a named one)."""
        if self.major >= 6:
            return {"api_name": name, "api_visibility": "undocumented"}
        if self.major >= 4:
            return {"api_name": name, "show_api": False}
        return {"api_name": False}

    def image_input(self) -> dict[str, Any]:
        if self.major < 4:
            return {"type": "filepath", "source": "upload"}
        return {"type": "filepath", "sources": ["upload", "clipboard"], "image_mode": None}

    def image_output(self) -> dict[str, Any]:
        """Our PNGs as they are (3.x sends the file; 4+ would re-encode to WebP without format=png)."""
        return {"type": "filepath"} if self.major < 4 else {"type": "filepath", "format": "png"}

    def file_input(self) -> dict[str, Any]:
        return {"type": "file"} if self.major < 4 else {"type": "filepath"}

    @property
    def has_slider(self) -> bool:
        return self.major >= 5 and hasattr(gr, "ImageSlider")

    @property
    def has_timer(self) -> bool:
        return hasattr(gr, "Timer")


# ------------------------------------------------------------------------------------- configuration


@dataclass
class ServeOptions:
    """What ``serve`` was started with. ``supir`` maps "Q" / "F" to the SUPIR file of that variant."""

    sdxl: Path | None
    supir: dict[str, Path]
    model: str = "Q"
    dtype: str = "auto"  # weight storage; auto: what the device's precision suggests
    device: str = "auto"
    memory: str | None = None  # the pipeline's memory policy; None = its default
    min_size: int = 1024
    output_dir: Path | None = None
    vram_budget_gib: float | None = None  # device memory the memory policy plans with; None = free memory
    precision: str = "auto"  # compute precision: auto (from the device), fp32, fp16 or bf16
    resume: ResumeOptions | None = None  # where interrupted runs keep their sampler state; None: nowhere
    upscalers_dir: Path | None = DEFAULT_UPSCALERS_DIR  # upscaler model files offered as pre-upscalers

    def __post_init__(self) -> None:
        if not self.supir:
            raise SupirError("no SUPIR model given")
        if self.model not in self.supir:
            self.model = next(iter(self.supir))


# ------------------------------------------------------------------------------------- the engine


class StopFlags:
    """One stop flag per browser session (or API client); Stop sets the flag of the caller's run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flags: dict[str, threading.Event] = {}

    def begin(self, session: str) -> threading.Event:
        flag = threading.Event()
        with self._lock:
            self._flags[session] = flag
        return flag

    def end(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]

    def stop(self, session: str) -> bool:
        with self._lock:
            flag = self._flags.get(session)
        if flag is not None:
            flag.set()
        return flag is not None


class ProgressHost:
    """Host for one run: one Gradio progress bar over all stages with the time left; stops when ``stop``
    is set."""

    def __init__(self, report: Callable[..., Any] | None, stop: threading.Event, steps: int = 1):
        self.report = report
        self.stop = stop
        self.run = RunProgress(steps)
        self.pass_label = ""

    def begin_pass(self, index: int, count: int) -> None:
        """A progressive run starts pass ``index`` of ``count``: the bar starts again, labelled with it."""
        self.pass_label = f"Pass {index}/{count}: "
        self.run = RunProgress(self.run.steps)

    def acquire_device(self) -> None:
        pass

    def release_device(self) -> None:
        pass

    def progress(self, stage: str, step: int, total: int) -> None:
        if self.report is None:
            return
        if stage == "load":
            self.report(0.0, desc=STAGE_LABELS["load"])
            return
        self.run.update(stage, step, total)
        description = self.run.describe()
        description = description[:1].upper() + description[1:]
        if self.pass_label:
            description = self.pass_label + description[:1].lower() + description[1:]
        self.report(self.run.fraction, desc=description)

    def should_stop(self) -> bool:
        return self.stop.is_set()


@dataclass(frozen=True)
class RunRequest:
    """Which model a run needs: SUPIR variant, weight storage dtype, memory policy (None: the default)."""

    variant: str
    dtype: str
    memory: str | None


@dataclass
class Loaded:
    request: RunRequest
    pipeline: Any
    seconds: float


class Engine:
    """The models and the device: loads on demand through the cache, runs one upscale at a time."""

    def __init__(self, options: ServeOptions, cache: ModelCache | None = None):
        self.options = options
        self.cache = cache or ModelCache()
        self.device = pick_device(options.device)
        self.precision = precision_for(self.device, options.precision)
        self._device_lock = threading.Lock()
        self._loaded: Loaded | None = None
        self._state = "not loaded"
        self.loading = True  # until the start-up load has finished (or failed)

    def model_name(self, variant: str) -> str:
        return Path(self.options.supir[variant]).stem

    def start(self) -> threading.Thread:
        """Load the default model in the background; runs wait for it."""
        thread = threading.Thread(target=self._preload, name="supir-load", daemon=True)
        thread.start()
        return thread

    def _preload(self) -> None:
        try:
            with self._device_lock:
                self._pipeline(self.default_request(), None)
        except Exception:  # the status shows it, and the next run tries again
            log.exception("loading the model failed")
        finally:
            self.loading = False

    def status(self) -> str:
        with_output = f", results saved to `{self.options.output_dir}`" if self.options.output_dir else ""
        if self.options.resume is not None:
            with_output += f", interrupted runs resume from `{self.options.resume.folder}`"
        return f"**Model:** {self._state} · device `{self.device}` ({self.precision.label}){with_output}"

    def default_request(self) -> RunRequest:
        """The model loaded at start, or the one loaded last (so that API calls do not swap models)."""
        if self._loaded is not None:
            return self._loaded.request
        return RunRequest(self.options.model, self.options.dtype, self.options.memory)

    def _pipeline(self, request: RunRequest, host: ProgressHost | None):
        from .pipeline import SUPIRPipeline

        if self._loaded is not None and self._loaded.request == request:
            return self._loaded.pipeline
        if host is not None:
            host.progress("load", 0, 1)
        name = self.model_name(request.variant)
        self._state = f"loading {name} ({request.dtype})…"
        start = time.perf_counter()
        try:
            storage, vae_storage = self.precision.storage_dtypes(request.dtype)
            options = LoadOptions(storage, vae_dtype=vae_storage)
            model = self.cache.get(self.options.sdxl, self.options.supir[request.variant], options)
        except Exception as exc:
            self._state = f"failed to load {name}: {exc}"
            raise
        memory = budget_config(request.memory, self.options.vram_budget_gib)
        pipeline = SUPIRPipeline(model, self.device, memory=memory, precision=self.precision)
        self._loaded = Loaded(request, pipeline, time.perf_counter() - start)
        self._state = f"{name} ready ({request.dtype}, loaded in {self._loaded.seconds:.1f} s)"
        return pipeline

    def loaded_pipeline(self) -> Any | None:
        """The pipeline loaded now, if any (its memory plan decides the tiles of the next run)."""
        return None if self._loaded is None else self._loaded.pipeline

    def upscale(self, image: Image.Image, settings: UpscaleSettings, request: RunRequest, host: ProgressHost):
        """Run on the device once every earlier run has finished, loading the model first if needed."""
        with self._device_lock:
            pipeline = self._pipeline(request, host)
            return pipeline.upscale(image, settings, host, resume=self.resume_options(request))

    def resume_options(self, request: RunRequest) -> ResumeOptions | None:
        """Where this request's sampler states go, keyed to the files its weights come from."""
        if self.options.resume is None:
            return None
        files = (self.options.sdxl, self.options.supir[request.variant])
        weights = weights_identity(*files, extra=(request.dtype, self.precision.label))
        return dataclasses.replace(self.options.resume, weights=weights)


# ------------------------------------------------------------------------------------- images in and out


DEMO_NOTE = (
    "**Demo mode:** the models have RANDOM weights, so the result is noise, not a restoration. "
    "It only shows that the page, the API and the pipeline run."
)
UNREADABLE_UPLOAD = (
    "the upload is not a readable image (unknown format, empty, or a broken header); "
    "upload a PNG, JPEG or WebP file"
)


class Rejected(gr.Error):
    """A run that ended without a result for a reason the user caused: the page shows the message and keeps
    the previous result; API clients get it as an error."""


class Stopped(Rejected):
    pass


class BadInput(Rejected):
    pass


@dataclass(frozen=True)
class UnreadableUpload:
    """What :class:`CheckedImage` hands to the handler instead of a path when the upload is not an image."""

    message: str = UNREADABLE_UPLOAD


def checked_image(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` that hands an unreadable upload to the handler (:class:`UnreadableUpload`) instead of
    failing the event in Gradio's own preprocessing, whose error lists server temp paths. (Wrapped on the
    instance: a subclass would make Gradio write a type stub next to this module.)"""
    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def checked(*args: Any, **kw: Any) -> Any:
        try:
            return preprocess(*args, **kw)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            log.info("unreadable upload: %s", exc)
            return UnreadableUpload()

    image.preprocess = checked
    return image


def upload_path(value: Any) -> str:
    """The file path of an upload, whatever the Gradio version hands over (str, FileData, tempfile)."""
    if value is None:
        raise BadInput("no image given: upload an image first")
    if isinstance(value, UnreadableUpload):
        raise BadInput(value.message)
    if isinstance(value, dict):
        value = value.get("path") or value.get("name")
    return str(getattr(value, "name", value))


def read_image(path: str, settings: UpscaleSettings) -> Image.Image:
    """Open an upload and check its size before decoding it, so that a huge or broken file costs nothing."""
    name = Path(path).name
    try:
        with Image.open(path) as image:
            w, h = image.size
            if w < 1 or h < 1:
                raise ImageError(f"{name}: the image is empty ({w}x{h})")
            check_size(*target_size(h, w, settings.scale, settings.min_size, settings.alignment))
            image.load()
            return image.copy()
    except Image.DecompressionBombError as exc:
        limit = f"{MAX_SIDE} px per side and {MAX_PIXELS / 1e6:.1f} Mpx"
        raise ImageError(
            f"{name}: the image is too large ({exc}); the output may have at most {limit}"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not a readable image (unknown format, empty, or a broken header)") from exc
    except OSError as exc:
        raise ImageError(f"{name}: the image file is truncated or corrupt ({exc}); upload it again") from exc


class ResultFolder:
    """Where result PNGs go: the output folder if one was given, else a temporary folder for downloads."""

    def __init__(self, folder: Path | None):
        self._temp = None if folder is not None else tempfile.TemporaryDirectory(prefix="supir_results_")
        self.path = Path(folder) if folder is not None else Path(self._temp.name)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def cleanup(self) -> None:
        """Remove the temporary folder (and the results in it); an output folder is kept."""
        if self._temp is not None:
            self._temp.cleanup()

    def save(self, result, stem: str, model_name: str) -> Path:
        from .upscale_io import save_png

        stem = re.sub(r"[^\w.-]+", "_", stem)[:80] or "image"
        base = f"{stem}_SUPIR_x{result.settings.scale:g}_seed{result.settings.seed}"
        with self._lock:
            for n in itertools.count():
                path = self.path / (f"{base}.png" if n == 0 else f"{base}-{n}.png")
                if not path.exists():
                    path.touch()
                    break
        return save_png(result, path, model_name=model_name)


# ------------------------------------------------------------------------------------- settings


def _optional_tile(value: Any) -> int | None:
    return int(value) if value and int(value) > 0 else None


def settings_from_controls(values: dict[str, Any]) -> UpscaleSettings:
    """UpscaleSettings from the UI / API controls (checkbox + start value for the linear ramps)."""
    tile_size = _optional_tile(values["tile_size"])
    try:
        return UpscaleSettings(
            scale=float(values["scale"]),
            min_size=int(values["min_size"]),
            steps=int(values["steps"]),
            sampler=str(values["sampler"]),
            cfg_scale=float(values["cfg_scale"]),
            cfg_scale_start=float(values["cfg_scale_start"]) if values["linear_cfg"] else None,
            control_scale=float(values["control_scale"]),
            control_scale_start=float(values["control_scale_start"]) if values["linear_control"] else None,
            restoration_scale=float(values["restoration_scale"]),
            s_churn=float(values["s_churn"]),
            s_noise=float(values["s_noise"]),
            seed=int(values["seed"]) if values["seed"] is not None else -1,
            color_fix=str(values["color_fix"]),
            denoise_stage=bool(values["denoise_stage"]),
            caption=values["caption"] or "",
            positive_prompt=values["positive_prompt"] or "",
            negative_prompt=values["negative_prompt"] or "",
            tile_size=tile_size,
            tile_stride=_optional_tile(values["tile_stride"]) if tile_size else None,
            vae_encoder_tile=_optional_tile(values["vae_encoder_tile"]),
            vae_decoder_tile=_optional_tile(values["vae_decoder_tile"]),
            progressive=bool(values.get("progressive")),
            tile_prompts=tile_prompt_entries(values.get("tile_prompts")),
            pre_upscaler=resolve_choice(
                values.get("pre_upscaler") or "lanczos", values.get("upscalers_dir"), allow_paths=False
            ),
        )
    except (TypeError, ValueError) as exc:
        raise gr.Error(f"invalid settings: {exc}") from exc


def _clamp(name: str, value: float) -> float:
    low, high = CALL_UPSCALER_LIMITS[name]
    clamped = min(high, max(low, value))
    if clamped != value:
        log.info("call_upscaler: %s=%s clamped to %s", name, value, clamped)
    return clamped


def call_upscaler_settings(
    upscale: float,
    seed: float,
    steps: float,
    prompt_cfg: float,
    s2_str: float,
    noise: float,
    a_prompt: str,
    n_prompt: str,
    min_size: int,
) -> UpscaleSettings:
    """The earlier backend's call_upscaler inputs as settings: its Quality preset (CFG ramping from 4,
    s_churn 5, wavelet colour fix, no restoration guidance) with the given values, clamped as it did."""
    try:
        return preset(
            "quality_classic",
            scale=float(upscale),
            seed=int(seed),
            steps=int(_clamp("steps", int(steps))),
            cfg_scale=_clamp("prompt_cfg", float(prompt_cfg)),
            control_scale=_clamp("s2_str", float(s2_str)),
            s_noise=_clamp("noise", float(noise)),
            positive_prompt=a_prompt or "",
            negative_prompt=n_prompt or "",
            min_size=min_size,
        )
    except (TypeError, ValueError) as exc:
        raise gr.Error(f"invalid settings: {exc}") from exc


def preset_values(name: str) -> list[Any]:
    """Control values of a preset, in PRESET_CONTROLS order."""
    controls = preset_controls(name, cfg_start_off=1.0, control_start_off=0.0)
    return [controls[n] for n in PRESET_CONTROLS]


# ------------------------------------------------------------------------------------- the app


@dataclass
class Outcome:
    """One finished run: the PNG written, the before/after images, and a text summary."""

    path: Path
    before: Image.Image
    after: Image.Image
    summary: str


def summary(result, model_name: str) -> str:
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    return (
        f"{infotext_line(result_infotext(result, model_name))}\n\n"
        f"{result.input_size[0]}x{result.input_size[1]} -> {result.output_size[0]}x{result.output_size[1]}, "
        f"seed {result.settings.seed}; {stages}"
    )


def _session(request: Any) -> str:
    return str(getattr(request, "session_hash", None) or "")


def _on_page(core: Callable, show: Callable, keep: Callable) -> Callable:
    """Like :func:`_with_outputs`, and a :class:`Rejected` run becomes ``keep(reason)`` (no red Error)."""

    @functools.wraps(core)
    def handler(*args: Any, **kwargs: Any) -> Any:
        try:
            outcome = core(*args, **kwargs)
        except Rejected as reason:
            return keep(reason)
        return show(outcome)

    return handler


def _with_outputs(core: Callable, convert: Callable) -> Callable:
    """``core`` with its return value converted; keeps core's signature (Gradio reads the parameter names
    for the API, and the ``gr.Request`` / ``gr.Progress`` parameters it fills in)."""

    @functools.wraps(core)
    def handler(*args: Any, **kwargs: Any) -> Any:
        return convert(core(*args, **kwargs))

    return handler


class SupirApp:
    """The handlers behind the page and the API; ``build`` lays out the page."""

    def __init__(
        self, engine: Engine, results: ResultFolder, compat: Compat | None = None, demo: bool = False
    ):
        self.engine = engine
        self.results = results
        self.compat = compat or Compat.installed()
        self.demo = demo
        self.stops = StopFlags()

    # -------------------------------------------------------------------------------- runs

    def run(
        self, upload: Any, settings: UpscaleSettings, model: RunRequest, request: Any, progress
    ) -> Outcome:
        """Read the upload, upscale it (cancellable by this session's Stop), save the PNG."""
        path = upload_path(upload)
        session = _session(request)
        flag = self.stops.begin(session)
        try:
            try:
                image = read_image(path, settings)
            except ImageError as exc:
                raise BadInput(str(exc)) from exc
            host = ProgressHost(progress, flag, settings.steps)
            result = self.engine.upscale(image, settings, model, host)
        except CancelledError as exc:
            raise Stopped(f"Stopped: {exc}") from exc
        except SupirError as exc:
            raise gr.Error(str(exc)) from exc
        finally:
            self.stops.end(session, flag)
        model_name = self.engine.model_name(model.variant)
        saved = self.results.save(result, Path(path).stem, model_name)
        log.info("%s -> %s (seed %d)", Path(path).name, saved, result.settings.seed)
        before = image.convert("RGB").resize(result.image.size, Image.LANCZOS)
        return Outcome(saved, before, result.image, summary(result, model_name))

    def upscale(
        self,
        image: Any,
        model: str,
        storage_dtype: str,
        memory_policy: str,
        scale: float,
        min_size: float,
        steps: float,
        sampler: str,
        cfg_scale: float,
        linear_cfg: bool,
        cfg_scale_start: float,
        control_scale: float,
        linear_control: bool,
        control_scale_start: float,
        restoration_scale: float,
        s_churn: float,
        s_noise: float,
        seed: float,
        color_fix: str,
        denoise_stage: bool,
        caption: str,
        positive_prompt: str,
        negative_prompt: str,
        tile_size: float,
        tile_stride: float,
        vae_encoder_tile: float,
        vae_decoder_tile: float,
        progressive: bool = False,
        tile_prompts: str = "",
        pre_upscaler: str = "lanczos",
        request: gr.Request = None,
        progress=gr.Progress(),  # noqa: B008 - Gradio recognises the progress parameter by this default
    ) -> Outcome:
        """Restore and upscale ``image`` with every setting; returns the PNG (parameters embedded)."""
        values = dict(locals(), upscalers_dir=self.engine.options.upscalers_dir)
        settings = settings_from_controls(values)
        policy = None if memory_policy in (None, "", "default") else memory_policy
        if model not in self.engine.options.supir:
            raise gr.Error(f"model must be one of {', '.join(self.engine.options.supir)}, got {model!r}")
        return self.run(image, settings, RunRequest(model, storage_dtype, policy), request, progress)

    def call_upscaler(
        self,
        input_image: Any,
        upscale: float,
        seed: float,
        steps: float,
        prompt_cfg: float,
        s2_str: float,
        noise: float,
        a_prompt: str,
        n_prompt: str,
        request: gr.Request = None,
        progress=gr.Progress(),  # noqa: B008 - Gradio recognises the progress parameter by this default
    ) -> Outcome:
        """The earlier SUPIR backend's endpoint: same inputs, returns the upscaled image (a PNG)."""
        settings = call_upscaler_settings(
            upscale, seed, steps, prompt_cfg, s2_str, noise, a_prompt, n_prompt, self.engine.options.min_size
        )
        return self.run(input_image, settings, self.engine.default_request(), request, progress)

    def tile_grid(self, image: Any, *values: Any) -> tuple[Image.Image, str]:
        """The sampler's tile grid over ``image`` (numbered as the tile prompt lines count) and each tile's
        caption; takes the same inputs as ``upscale``."""
        settings = settings_from_controls(dict(zip(CONTROL_ORDER, values)))
        try:
            picture = read_image(upload_path(image), settings)
        except ImageError as exc:
            raise gr.Error(str(exc)) from exc
        return preview_tiles(picture, settings, self.engine.loaded_pipeline())

    def stop(self, request: gr.Request = None) -> str:
        """Stop the caller's running upscale (within one sampler step)."""
        stopped = self.stops.stop(_session(request))
        return "Stopping…" if stopped else "Nothing of yours is running."

    # -------------------------------------------------------------------------------- page

    def build(self) -> gr.Blocks:
        options = self.engine.options
        with gr.Blocks(title="SUPIR", analytics_enabled=False) as blocks:
            gr.Markdown("# SUPIR image restoration")
            if self.demo:
                gr.Markdown(DEMO_NOTE, elem_id="supir_demo_note")
            status = gr.Markdown(self.engine.status())
            with gr.Row():
                with gr.Column():
                    image = checked_image(
                        label="Input image", elem_id="supir_input", **self.compat.image_input()
                    )
                    with gr.Row():
                        run_button = gr.Button("Upscale", variant="primary", elem_id="supir_run")
                        stop_button = gr.Button("Stop", variant="stop", elem_id="supir_stop")
                    controls = self._controls(options)
                with gr.Column():
                    comparison = self._comparison()
                    download = gr.File(label="PNG with parameters", elem_id="supir_download")
                    info = gr.Textbox(label="Parameters", lines=4, elem_id="supir_info")
            inputs = [controls[name] for name in CONTROL_ORDER]
            controls["preset"].change(
                preset_values,
                inputs=[controls["preset"]],
                outputs=[controls[n] for n in PRESET_CONTROLS],
                queue=False,
                **self.compat.undocumented("preset_values"),
            )
            self._events(blocks, image, inputs, (run_button, stop_button), comparison, download, info, status)
            controls["show_tiles"].click(
                self.tile_grid,
                inputs=[image, *inputs],
                outputs=[controls["tile_preview"], controls["tile_text"]],
                api_name="tile_grid",
                queue=False,
            )
            self._api(inputs)
            add_media_section(self, inputs)
        return blocks

    def _controls(self, options: ServeOptions) -> dict[str, Any]:
        d = UpscaleSettings()
        c: dict[str, Any] = {}
        variants = list(options.supir)
        c["model"] = gr.Radio(variants, value=options.model, label="SUPIR model (Q quality / F fidelity)")
        c["preset"] = gr.Dropdown(
            list(PRESET_LABELS.values()),
            value=PRESET_LABELS["quality"],
            label="Preset",
            info=LIGHTNING_NOTE,
        )
        c["scale"] = gr.Slider(1, 8, value=d.scale, step=0.5, label="Scale")
        c["progressive"] = gr.Checkbox(
            value=d.progressive, label="Progressive: x2 passes (3x = 2x then 1.5x), each a full run"
        )
        c["caption"] = gr.Textbox(value="", label="Caption (describe the image)", lines=2)
        with gr.Accordion("Prompts", open=False):
            c["positive_prompt"] = gr.Textbox(value=d.positive_prompt, label="Positive prompt", lines=3)
            c["negative_prompt"] = gr.Textbox(value=d.negative_prompt, label="Negative prompt", lines=3)
        with gr.Row():
            c["steps"] = gr.Slider(1, 200, value=d.steps, step=1, label="Steps", elem_id="supir_steps")
            c["seed"] = gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id="supir_seed")
        with gr.Accordion("Guidance", open=True):
            c["cfg_scale"] = gr.Slider(0, 15, value=d.cfg_scale, step=0.1, label="CFG scale")
            with gr.Row():
                c["linear_cfg"] = gr.Checkbox(value=True, label="Linear CFG (ramp from the start value)")
                c["cfg_scale_start"] = gr.Slider(0, 15, value=d.cfg_scale_start, step=0.1, label="CFG start")
            c["control_scale"] = gr.Slider(0, 2, value=d.control_scale, step=0.05, label="Control scale")
            with gr.Row():
                c["linear_control"] = gr.Checkbox(value=False, label="Linear control scale")
                c["control_scale_start"] = gr.Slider(0, 2, value=0, step=0.05, label="Control start")
            c["restoration_scale"] = gr.Slider(
                -1, 6, value=d.restoration_scale, step=0.5, label="Restoration scale (<= 0: off)"
            )
        with gr.Accordion("Sampler and colour", open=False):
            c["sampler"] = gr.Dropdown(list(SAMPLER_NAMES), value=d.sampler, label="Sampler")
            c["s_churn"] = gr.Slider(0, 40, value=d.s_churn, step=1, label="s_churn")
            c["s_noise"] = gr.Slider(1.0, 1.1, value=d.s_noise, step=0.001, label="s_noise")
            c["color_fix"] = gr.Radio(list(COLOR_FIXES), value=d.color_fix, label="Colour fix")
            c["denoise_stage"] = gr.Checkbox(value=True, label="Stage 1 (denoise encoder)")
            c["min_size"] = gr.Slider(64, 4096, value=options.min_size, step=32, label="Minimum short side")
        with gr.Accordion("Tiles and memory", open=False):
            with gr.Row():
                c["tile_size"] = gr.Slider(0, 256, value=0, step=8, label="Sampler tile (latent px, 0: off)")
                c["tile_stride"] = gr.Slider(8, 256, value=64, step=8, label="Sampler tile stride")
            with gr.Row():
                c["vae_encoder_tile"] = gr.Slider(
                    0, 2048, value=0, step=64, label="VAE encoder tile (0: off)"
                )
                c["vae_decoder_tile"] = gr.Slider(0, 256, value=0, step=8, label="VAE decoder tile (0: off)")
            c["pre_upscaler"] = gr.Dropdown(
                upscaler_choices(options.upscalers_dir, RESAMPLERS),
                value=d.pre_upscaler,
                allow_custom_value=True,
                label="Pre-upscaler (enlargement before stage 1)",
                info="lanczos is the original's; model files come from the upscalers folder, or type a path",
            )
            with gr.Row():
                c["storage_dtype"] = gr.Dropdown(list(STORAGE_DTYPES), value=options.dtype, label="Weights")
                c["memory_policy"] = gr.Dropdown(
                    memory_policies(), value=options.memory or "default", label="Memory policy"
                )
        with gr.Accordion("Tile prompts", open=False):
            c["tile_prompts"] = gr.Textbox(
                value="",
                label=TILE_PROMPTS_LABEL,
                info=TILE_PROMPTS_INFO,
                lines=3,
                elem_id="supir_tile_prompts",
            )
            c["show_tiles"] = gr.Button("Show tile grid", elem_id="supir_show_tiles")
            c["tile_preview"] = gr.Image(label="Tile grid", type="pil", elem_id="supir_tile_preview")
            c["tile_text"] = gr.Markdown(elem_id="supir_tile_text")
        return c

    def _comparison(self) -> list[Any]:
        if self.compat.has_slider:
            return [gr.ImageSlider(label="Before / after", type="pil", format="png", elem_id="supir_compare")]
        with gr.Row():
            return [
                gr.Image(label="Before", type="pil", elem_id="supir_before"),
                gr.Image(label="After", type="pil", elem_id="supir_after"),
            ]

    def _show(self, outcome: Outcome) -> list[Any]:
        images = (
            [(outcome.before, outcome.after)] if self.compat.has_slider else [outcome.before, outcome.after]
        )
        return [*images, str(outcome.path), outcome.summary, self.engine.status()]

    def _keep(self, reason: Rejected) -> list[Any]:
        """The page after a stopped or refused run: the previous result stays, the message says why."""
        message = str(reason.message if hasattr(reason, "message") else reason)
        (gr.Info if isinstance(reason, Stopped) else gr.Warning)(message)
        kept = [gr.update()] * (2 if not self.compat.has_slider else 1)
        return [*kept, gr.update(), message, self.engine.status()]

    def _events(self, blocks, image, inputs, buttons, comparison, download, info, status) -> None:
        run_button, stop_button = buttons
        ui_upscale = _on_page(self.upscale, self._show, self._keep)
        run_button.click(
            ui_upscale,
            inputs=[image, *inputs],
            outputs=[*comparison, download, info, status],
            **self.compat.undocumented("ui_upscale"),
            **self.compat.device_event(),
        )
        stop_button.click(self.stop, inputs=None, outputs=[info], queue=False, api_name="stop")
        blocks.load(
            self.engine.status,
            inputs=None,
            outputs=[status],
            queue=False,
            **self.compat.undocumented("status"),
        )
        if self.compat.has_timer:
            timer = gr.Timer(2.0)
            timer.tick(
                self._poll_status,
                inputs=None,
                outputs=[status, timer],
                **self.compat.undocumented("poll_status"),
            )

    def _poll_status(self) -> tuple[str, Any]:
        """Refresh the status while the model loads, then stop polling."""
        return self.engine.status(), gr.Timer(active=self.engine.loading)

    def _api(self, inputs: list[Any]) -> None:
        """Endpoints for clients: hidden components, so uploads are read (and checked) by our code."""
        c = self.compat
        with gr.Column(visible=False):
            api_image = gr.File(label="image", **c.file_input())
            api_result = gr.Image(label="result", **c.image_output())
            api_parameters = gr.Textbox(label="parameters")
            api_button = gr.Button("upscale")
            api_button.click(
                _with_outputs(self.upscale, lambda o: (str(o.path), o.summary)),
                inputs=[api_image, *inputs],
                outputs=[api_result, api_parameters],
                api_name="upscale",
                **c.device_event(),
            )
            legacy = [
                gr.File(label="input_image", **c.file_input()),
                gr.Number(value=2, label="upscale"),
                gr.Number(value=-1, precision=0, label="seed"),
                gr.Number(value=50, precision=0, label="steps"),
                gr.Number(value=7.5, label="prompt_cfg"),
                gr.Number(value=1.0, label="s2_str"),
                gr.Number(value=1.003, label="noise"),
                gr.Textbox(value=UpscaleSettings().positive_prompt, label="a_prompt"),
                gr.Textbox(value=UpscaleSettings().negative_prompt, label="n_prompt"),
            ]
            legacy_result = gr.Image(label="output", **c.image_output())
            legacy_button = gr.Button("call_upscaler")
            legacy_button.click(
                _with_outputs(self.call_upscaler, lambda o: str(o.path)),
                inputs=legacy,
                outputs=[legacy_result],
                api_name="call_upscaler",
                **c.device_event(),
            )


CONTROL_ORDER = (
    "model",
    "storage_dtype",
    "memory_policy",
    "scale",
    "min_size",
    "steps",
    "sampler",
    "cfg_scale",
    "linear_cfg",
    "cfg_scale_start",
    "control_scale",
    "linear_control",
    "control_scale_start",
    "restoration_scale",
    "s_churn",
    "s_noise",
    "seed",
    "color_fix",
    "denoise_stage",
    "caption",
    "positive_prompt",
    "negative_prompt",
    "tile_size",
    "tile_stride",
    "vae_encoder_tile",
    "vae_decoder_tile",
    "progressive",
    "tile_prompts",
    "pre_upscaler",
)


def memory_policies() -> list[str]:
    from .memory import POLICIES

    return ["default", *POLICIES]


# ------------------------------------------------------------------------------------- serving


def resolve_models(
    sdxl: Path | None, supir: Path | None, supir_f: Path | None, models_dir: Path | None
) -> tuple[Path, dict[str, Path]]:
    """(SDXL base, {"Q": file, "F": file}) from the flags; variants not given are looked up in the models
    folder when it was named or when no SUPIR file was given."""
    from .model_files import default_models_dir, find_sdxl, find_supir

    folder = models_dir or default_models_dir()
    variants = {v: Path(p) for v, p in (("Q", supir), ("F", supir_f)) if p is not None}
    if models_dir is not None or not variants:
        problems = []
        for variant in ("Q", "F"):
            if variant not in variants:
                try:
                    variants[variant] = find_supir(folder, variant)
                except CheckpointNotFoundError as exc:
                    problems.append(exc)
        if not variants:
            raise problems[0]
    variants = {v: variants[v] for v in ("Q", "F") if v in variants}
    base = sdxl or find_sdxl(folder, exclude=next(iter(variants.values())))
    return Path(base), variants


def write_demo_models(folder: Path) -> tuple[Path, dict[str, Path]]:
    """A tiny random SDXL base and two tiny SUPIR files (Q, and F: Q's weights negated, which is cheaper than
    drawing new ones), so that the demo can switch between Q and F."""
    from safetensors.torch import load_file, save_file

    from .tiny import write_demo_checkpoints

    sdxl, supir_q = write_demo_checkpoints(folder)
    supir_f = folder / "tiny_supir_f.safetensors"
    save_file({k: -v for k, v in load_file(str(supir_q)).items()}, str(supir_f))
    return sdxl, {"Q": supir_q, "F": supir_f}


def serve(
    options: ServeOptions, host: str, port: int, auth: tuple[str, str] | None = None, demo: bool = False
) -> Engine:
    """Start the server and block until it is stopped (Ctrl+C or SIGTERM); the temporary results go."""
    results = ResultFolder(options.output_dir)
    blocks, engine = create_app(options, demo, results)
    url_host = f"[{host}]" if ":" in host else host
    log.info("SUPIR web UI: http://%s:%d (gradio %s)", url_host, port, gr.__version__)
    try:
        blocks.launch(
            server_name=host,
            server_port=port,
            auth=auth,
            allowed_paths=[str(options.output_dir)] if options.output_dir else None,
            show_error=True,
            inbrowser=False,
            share=False,
        )
    finally:
        blocks.close()
        results.cleanup()
    return engine


def create_app(
    options: ServeOptions, demo: bool = False, results: ResultFolder | None = None
) -> tuple[gr.Blocks, Engine]:
    """The queued Blocks app and its engine, whose model starts loading now."""
    engine = Engine(options)
    engine.start()
    app = SupirApp(engine, results or ResultFolder(options.output_dir), demo=demo)
    blocks = app.build()
    blocks.queue(**app.compat.queue_kwargs())
    return blocks, engine


def _stop_on_sigterm() -> None:
    """SIGTERM ends the server like Ctrl+C: Gradio closes it and the temporary folders are removed."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def run_serve(args: Any) -> int:
    """``python -m supir_engine serve``; cli.py has parsed and checked the flags."""
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    _stop_on_sigterm()
    engine = None
    try:
        with tempfile.TemporaryDirectory(prefix="supir_demo_") as tmp:
            engine = _serve_in(Path(tmp), args, auth)
    except KeyboardInterrupt:
        pass
    log.info("SUPIR web UI stopped")
    if engine is not None:
        # Leaving through the interpreter's shutdown with the server's and torch's threads still around
        # aborts in C++ ("terminate called without an active exception"); the temporary folders are gone.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _serve_in(tmp: Path, args: Any, auth: tuple[str, str] | None) -> Engine:
    from .cli import resume_from_args

    if args.demo:
        sdxl, supir = write_demo_models(tmp)
        log.warning("demo: tiny models with RANDOM weights; the output is noise, not a restoration")
    else:
        sdxl, supir = resolve_models(args.sdxl, args.supir, args.supir_f, args.models_dir)
    min_size = args.min_size if args.min_size is not None else (256 if args.demo else 1024)
    options = ServeOptions(
        sdxl,
        supir,
        args.model,
        args.dtype,
        args.device,
        args.memory,
        min_size,
        args.output_dir,
        args.vram_budget,
        getattr(args, "precision", "auto"),
        resume_from_args(args, ""),
        getattr(args, "upscalers_dir", None) or DEFAULT_UPSCALERS_DIR,
    )
    return serve(options, args.host, args.port, auth, demo=args.demo)
