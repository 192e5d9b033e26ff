"""Reading input images and writing results with their parameters embedded."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import SupirError
from .infotext import infotext_line, to_infotext


class ImageReadError(SupirError):
    pass


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read {path.name} as an image ({exc})") from exc


def _plan_notes(result) -> tuple[str, ...]:
    return result.memory.notes if getattr(result, "memory", None) is not None else ()


def save_png(result, path: Path, model_name: str | None = None) -> Path:
    """Write the PNG with the parameters as a webui-style ``parameters`` text chunk and as JSON."""
    params = to_infotext(result.settings, model_name, _plan_notes(result))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext_line(params))
    info.add_text("supir", json.dumps({**result.settings.to_dict(), "model": model_name}))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    result.image.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)
    return path
