"""Reading input images and writing results with their parameters embedded."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .atomic_files import replacing
from .errors import SupirError
from .infotext import infotext_line, result_infotext
from .output_names import output_format
from .pre_upscale import label as pre_upscaler_label

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
# EXIF UserComment character code for UCS-2 text, big-endian, as the webui writes its infotext (piexif's
# "unicode" encoding) and reads it back in PNG Info.
UNICODE_PREFIX = b"UNICODE\0"
JPEG_QUALITY = 95


class ImageReadError(SupirError):
    pass


class OutputError(SupirError):
    pass


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read {path.name} as an image ({exc})") from exc


def image_size(path: Path) -> tuple[int, int]:
    """Decode the whole file (a truncated one fails here, not after the models loaded); its (w, h)."""
    image = load_image(path)
    if image.width < 1 or image.height < 1:
        raise ImageReadError(f"{path.name} is empty ({image.width}x{image.height})")
    return image.size


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write a file in it, so that a read-only output fails before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".supir_write_test_"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OutputError(
            f"cannot write results to {folder} ({reason}); choose another folder with -o"
        ) from exc


def user_comment(text: str) -> bytes:
    return UNICODE_PREFIX + text.encode("utf-16-be")


def read_user_comment(image: Image.Image) -> str | None:
    """The EXIF UserComment as text (what PNG Info shows for a JPEG or WebP), or None."""
    raw = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    if not raw:
        return None
    if raw.startswith(UNICODE_PREFIX):
        return raw[len(UNICODE_PREFIX) :].decode("utf-16-be")
    return raw[8:].decode("ascii", errors="replace")


def save_image(image: Image.Image, result, path: Path, model_name: str | None = None) -> Path:
    """Write ``image`` in the format ``path``'s extension names, atomically (a temporary file renamed).

    PNG: the parameters in a webui-style ``parameters`` text chunk and as JSON (``supir``). JPEG / WebP: the
    infotext in EXIF UserComment, where the webui's PNG Info looks. JPEG has no alpha: it is dropped."""
    fmt = output_format(path)
    settings = result.settings
    line = infotext_line(result_infotext(result, model_name))
    extra: dict = {}
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", line)
        values = {**settings.to_dict(), "pre_upscaler": pre_upscaler_label(settings.pre_upscaler)}
        info.add_text("supir", json.dumps({**values, "model": model_name}))  # file names only, no folders
        extra["pnginfo"] = info
    else:
        exif = Image.Exif()
        exif[EXIF_IFD] = {USER_COMMENT: user_comment(line)}  # a dict: Pillow 9.5 writes it too
        extra["exif"] = exif.tobytes()
        extra["quality"] = JPEG_QUALITY
        if fmt == "JPEG" and image.mode != "RGB":
            image = image.convert("RGB")
    with replacing(path) as tmp, open(tmp, "xb") as handle:
        image.save(handle, format=fmt, **extra)
    return path


def save_png(result, path: Path, model_name: str | None = None) -> Path:
    """Write a pipeline result as PNG (parameters embedded); see :func:`save_image`."""
    return save_image(result.image, result, path, model_name)
