"""The extension's own API routes, added in ``on_app_started``.

- ``POST /supir/v1/upscale``: base64 image + arguments -> base64 PNG + the parameters used;
- ``GET /supir/v1/models``: model files found and missing, and where to get them;
- ``GET /supir/v1/status``: what is cached and whether a run is going on;
- ``GET /supir/v1/args``: the argument order of ``alwayson_scripts["supir"]["args"]`` with defaults;
- ``GET /supir/v1/before/{job_timestamp}/{index}``: a generated image as it was before SUPIR (PNG), for the
  gallery's before/after comparison.

Who may call them: with ``--api-auth``, its users (as the webui's own routes); otherwise, with
``--gradio-auth``, whoever is logged in to the page (its session cookie), so a protected page on a
``--listen`` server never leaves SUPIR's routes open. With no login configured at all, answers never carry
absolute server paths (the models folder and files are named relative to the webui's folders). An upscale
takes the webui's queue lock, so it waits for (and holds off) every other GPU job. The ``before`` route
serves the page's own script, so it always follows the page's login: a browser would pop up a password
dialog for an API login.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import io
import logging
import re
import warnings
from pathlib import Path
from secrets import compare_digest
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from modules import call_queue, shared
from PIL import Image, PngImagePlugin, UnidentifiedImageError
from pydantic import BaseModel, Field

from supir_engine.errors import CancelledError, CheckpointNotFoundError, SupirError
from supir_engine.infotext import infotext_line
from supir_engine.preprocess import MAX_PIXELS, MAX_SIDE
from supir_engine.settings import preset_key

from . import runner
from .args import ARG_NAMES, ArgumentError, from_mapping, result_params, with_preset
from .compare import BEFORE
from .extras import upscale_image
from .options import PRESETS, default_args, default_prompts

log = logging.getLogger(__name__)
PREFIX = "/supir/v1"


class UpscaleRequest(BaseModel):
    image: str = Field(..., description="the input image, base64 (a data: URL prefix is accepted)")
    model: str = Field("SUPIR-v0Q", description="SUPIR-v0Q or SUPIR-v0F")
    preset: str | None = Field(
        None,
        description=(
            "a SUPIR preset (Quality, Fidelity, Quality (classic), Fidelity (classic), Lightning Quality, "
            "Lightning Fidelity): its values before `args`"
        ),
    )
    args: dict[str, Any] = Field(
        default_factory=dict, description="arguments by name, see GET /supir/v1/args"
    )
    tile_prompts: list[str] | None = Field(
        None,
        description=(
            "one caption per sampler tile, row-major ('row,col: text' names one tile; '' keeps the caption); "
            "the same as args.tile_prompts"
        ),
    )


class UpscaleResponse(BaseModel):
    image: str = Field(..., description="the result, base64 PNG with the parameters in its text chunk")
    parameters: dict[str, Any]
    infotext: str
    input_size: list[int]
    output_size: list[int]
    seconds: dict[str, float]
    resumed_at: list[int] | None = Field(
        None, description="[steps done, steps] of the saved sampler state this run continued; null: from 0"
    )


def decode_image(data: str) -> Image.Image:
    """The request's image; 400 for data that is not an image, 413 for one too large to upscale."""
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise HTTPException(status_code=400, detail=f"'image' is not valid base64 ({exc})") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            _check_input_size(*image.size)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses sizes far beyond ours before we can look: say it in our terms
        raise HTTPException(status_code=413, detail=_too_large(None)) from exc
    except UnidentifiedImageError as exc:
        raise HTTPException(
            status_code=400,
            detail=f"'image' is not an image: {len(raw):,} bytes after base64 decoding that no image reader "
            "recognises. Send a PNG, JPEG or WebP file, base64-encoded.",
        ) from exc
    except (OSError, ValueError) as exc:
        raise HTTPException(status_code=400, detail=f"'image' could not be read ({exc})") from exc
    return image


def _too_large(size: tuple[int, int] | None) -> str:
    given = f" ({size[0]}x{size[1]})" if size else ""
    return (
        f"the image{given} is too large: SUPIR takes inputs of at most {MAX_SIDE} pixels a side and "
        f"{MAX_PIXELS // 2**20} megapixels. Send a smaller image."
    )


def _check_input_size(width: int, height: int) -> None:
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise HTTPException(status_code=413, detail=_too_large((width, height)))


def encode_png(image: Image.Image, infotext: str) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def upscale(req: UpscaleRequest) -> UpscaleResponse:
    try:
        defaults = default_args()
        if req.preset:
            try:
                preset_key(req.preset)
            except ValueError:
                known = ", ".join(PRESETS)
                raise ArgumentError(f"preset must be one of {known}, got {req.preset!r}") from None
            defaults = with_preset(defaults, req.preset)
        values = {**req.args, "model": req.args.get("model", req.model), "enabled": True}
        if req.tile_prompts is not None:
            values["tile_prompts"] = req.tile_prompts
        args = from_mapping(values, defaults)
    except ArgumentError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    image = decode_image(req.image)
    with call_queue.queue_lock:
        shared.state.begin(job="supir_api")
        try:
            out, result = upscale_image(image, args, label="SUPIR (API)")
        except CancelledError as exc:
            raise HTTPException(status_code=409, detail=runner.user_message(exc)) from exc
        except CheckpointNotFoundError as exc:
            raise HTTPException(status_code=404, detail=runner.user_message(exc)) from exc
        except SupirError as exc:
            raise HTTPException(status_code=400, detail=runner.user_message(exc)) from exc
        except Exception as exc:
            log.exception("SUPIR API upscale failed")
            raise HTTPException(status_code=500, detail=runner.user_message(exc)) from exc
        finally:
            shared.state.end()
    params = result_params(args, result, default_prompts())
    text = infotext_line({k: str(v) for k, v in params.items()})
    return UpscaleResponse(
        image=encode_png(out, text),
        parameters=dataclasses.asdict(result.settings),
        infotext=text,
        input_size=list(result.input_size),
        output_size=list(out.size),
        seconds={k: round(v, 3) for k, v in result.timings.items()},
        resumed_at=None if result.resumed_at is None else list(result.resumed_at),
    )


def models() -> dict[str, Any]:
    return runner.model_status()


def status() -> dict[str, Any]:
    return {"busy": runner.is_busy(), "cache": runner.CACHE.describe(), "job": shared.state.job}


def _path_labels() -> list[tuple[str, str]]:
    """Absolute folders and what to call them instead, the most specific first."""
    from modules import paths

    folders = [
        (str(runner.models_dir()), "<SUPIR models folder>"),
        (str(getattr(paths, "models_path", "")), "<webui models>"),
        (str(getattr(paths, "data_path", "")), "<webui data>"),
        (str(getattr(paths, "script_path", "")), "<webui>"),
    ]
    resolved = []
    for folder, label in folders:
        if folder and folder not in (".", ""):
            resolved += [(folder, label), (str(Path(folder).resolve()), label)]
    return sorted(set(resolved), key=lambda item: -len(item[0]))


# An absolute path outside the named folders (e.g. where a linked checkpoint really lies); not a URL's path
# (after "//" or a host name) nor a label's ("<...>/name"), nor a route of the webui's or of this API.
_OTHER_PATH = re.compile(
    r"(?<![\w<>/:.])(?:[A-Za-z]:[\\/]|/)(?!(?:supir|sdapi)/v1/)(?:[^\s\"'<>/\\]+[\\/])+([^\s\"'<>/\\]+)"
)


def without_paths(value: Any, labels: list[tuple[str, str]] | None = None) -> Any:
    """``value`` (JSON-like) with the server's absolute folders replaced by their names; any other
    absolute path keeps only its last part."""
    labels = _path_labels() if labels is None else labels
    if isinstance(value, str):
        for folder, label in labels:
            value = value.replace(folder, label)
        return _OTHER_PATH.sub(r"<elsewhere>/\1", value)
    if isinstance(value, dict):
        return {k: without_paths(v, labels) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_paths(v, labels) for v in value]
    return value


def _anonymous(handler):
    """A route handler whose answers (and error details) carry no absolute paths."""

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return without_paths(handler(*args, **kwargs))
        except HTTPException as exc:
            exc.detail = without_paths(exc.detail)
            raise

    return wrapped


def arguments() -> list[dict[str, Any]]:
    defaults = default_args()
    return [
        {"index": i, "name": name, "default": getattr(defaults, name)} for i, name in enumerate(ARG_NAMES)
    ]


def auth_dependencies() -> list:
    """The webui's ``--api-auth user:password[,user2:password2]`` as a dependency, or none."""
    configured = getattr(shared.cmd_opts, "api_auth", None)
    if not configured:
        return []
    credentials = dict(item.split(":", 1) for item in configured.split(",") if ":" in item)

    def check(given: HTTPBasicCredentials = Depends(HTTPBasic())) -> bool:  # noqa: B008 - FastAPI idiom
        expected = credentials.get(given.username)
        if expected is not None and compare_digest(given.password, expected):
            return True
        raise HTTPException(
            status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"}
        )

    return [Depends(check)]


def page_login_dependencies(app: FastAPI) -> list:
    """The gradio page's login (its session cookie), when ``--gradio-auth`` is set; else none."""
    if not getattr(app, "auth", None):
        return []

    def check(request: Request) -> bool:
        tokens = getattr(app, "tokens", {})
        token = request.cookies.get("access-token") or request.cookies.get("access-token-unsecure")
        if token is None or token not in tokens:
            raise HTTPException(status_code=401, detail="Not logged in")
        return True

    return [Depends(check)]


def before_image(job: str, index: int) -> Response:
    image = BEFORE.get(job, index)
    if image is None:
        raise HTTPException(status_code=404, detail="no image before SUPIR for this generation and index")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    headers = {"Cache-Control": "private, max-age=3600"}
    return Response(buffer.getvalue(), media_type="image/png", headers=headers)


def mount(app: FastAPI) -> None:
    app.add_api_route(
        f"{PREFIX}/before/{{job}}/{{index}}",
        before_image,
        methods=["GET"],
        dependencies=page_login_dependencies(app),
        include_in_schema=False,
    )
    dependencies = auth_dependencies() or page_login_dependencies(app)
    # No login at all: anyone who reaches the server may call these, so they name no server folders.
    guard = (lambda handler: handler) if dependencies else _anonymous
    app.add_api_route(
        f"{PREFIX}/upscale",
        guard(upscale),
        methods=["POST"],
        response_model=UpscaleResponse,
        dependencies=dependencies,
    )
    app.add_api_route(f"{PREFIX}/models", guard(models), methods=["GET"], dependencies=dependencies)
    app.add_api_route(f"{PREFIX}/status", guard(status), methods=["GET"], dependencies=dependencies)
    app.add_api_route(f"{PREFIX}/args", arguments, methods=["GET"], dependencies=dependencies)


def on_app_started(demo, app: FastAPI) -> None:
    """``script_callbacks.on_app_started``: ``demo`` is None under ``--nowebui``."""
    mount(app)
    log.info("SUPIR API routes added under %s", PREFIX)
