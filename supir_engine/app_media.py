"""The standalone app's "Animation / video" section: the page's settings applied to every frame of an
uploaded GIF / WebP / APNG or video, written back in the same container (resumable, see frames.py)."""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from .errors import CancelledError, SupirError
from .frames import file_digest, upscale_media
from .media import media_kind, output_extension
from .output_names import safe_stem

log = logging.getLogger(__name__)


def media_output(folder: Path, source: Path, scale: float) -> Path:
    """``<stem>_SUPIR_x<scale>_<digest>.<ext>`` in ``folder``: the same upload gets the same name (so its work
    folder is found again and an interrupted run resumes); a finished one is numbered, not replaced."""
    base = f"{safe_stem(source.stem)}_SUPIR_x{scale:g}_{file_digest(source)[:10]}"
    ext = output_extension(source)
    for n in itertools.count():
        path = folder / (f"{base}{ext}" if n == 0 else f"{base}-{n}{ext}")
        if not path.exists():
            return path
    raise AssertionError("unreachable")


def media_handler(app: Any) -> Callable:
    """A handler with the signature of ``app.upscale`` (the upload first, then every control) that upscales
    an animation or video frame by frame; returns (output file, summary)."""
    from .app import ProgressHost, RunRequest, _session, settings_from_controls, upload_path

    signature = inspect.signature(app.upscale)

    @functools.wraps(app.upscale)
    def handler(*args: Any, **kwargs: Any) -> tuple[str, str]:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        source = Path(upload_path(values["image"]))
        if media_kind(source) is None:
            raise gr.Error(
                f"{source.name} is not an animation (GIF / WebP / APNG with several frames) or a video "
                "(mp4, webm, mov, mkv); upscale a still image above"
            )
        settings = settings_from_controls(values)
        policy = None if values["memory_policy"] in (None, "", "default") else values["memory_policy"]
        request = RunRequest(values["model"], values["storage_dtype"], policy)
        output = media_output(app.results.path, source, settings.scale)
        session = _session(values.get("request"))
        flag = app.stops.begin(session)
        progress = values.get("progress")

        def upscale(image: Image.Image, frame_settings: Any, label: str) -> Image.Image:
            host = ProgressHost(_labelled(progress, label), flag, frame_settings.steps)
            return app.engine.upscale(image, frame_settings, request, host).image

        try:
            run = upscale_media(
                source,
                output,
                settings,
                upscale,
                model_name=app.engine.model_name(request.variant),
                report=log.info,
            )
        except CancelledError as exc:
            raise gr.Error(f"Stopped: {exc}. Upload the same file again to resume.") from exc
        except SupirError as exc:
            raise gr.Error(str(exc)) from exc
        finally:
            app.stops.end(session, flag)
        rate = run.frames_per_minute
        summary = f"{run.frames} frames: {run.upscaled} upscaled, {run.reused} resumed; seed {run.seed}" + (
            f"; {rate:.1f} frames/min" if rate else ""
        )
        return str(output), summary

    return handler


def _labelled(progress: Any, label: str) -> Any:
    """``progress`` with ``label`` ("frame 3/24") put before each description."""
    if progress is None:
        return None

    def report(*args: Any, desc: str | None = None, **kwargs: Any) -> Any:
        return progress(*args, desc=f"{label}: {desc}" if desc else label, **kwargs)

    return report


def add_media_section(app: Any, inputs: list[Any]) -> None:
    """The accordion on the page and the ``upscale_media`` API endpoint; ``inputs`` are the controls."""
    handler = media_handler(app)
    with gr.Accordion("Animation / video (every frame, same seed)", open=False):
        upload = gr.File(label="GIF / WebP / APNG / mp4 / webm / mov", elem_id="supir_media_input")
        button = gr.Button("Upscale every frame", elem_id="supir_media_run")
        result = gr.File(label="Result (same container, timing and audio)", elem_id="supir_media_result")
        info = gr.Textbox(label="Frames", lines=2, elem_id="supir_media_info")
    button.click(
        handler,
        inputs=[upload, *inputs],
        outputs=[result, info],
        api_name="upscale_media",
        **app.compat.device_event(),
    )
