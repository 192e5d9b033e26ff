"""Which inputs are animations or videos, their frame size, and the output file each one gets.

An animation is a GIF, WebP or PNG (APNG) with more than one frame; a still one is an ordinary image. A video
is a file with a video container's extension, read with PyAV. Both are upscaled frame by frame
(:mod:`supir_engine.frames`) and written back in the same container."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import SupirError

VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv", ".m4v"}
ANIMATION_SUFFIXES = {".gif", ".webp", ".png", ".apng"}
# What an explicit output file may be called, by the kind of its input.
OUTPUT_SUFFIXES = {"animation": {".gif", ".webp", ".png", ".apng"}, "video": VIDEO_SUFFIXES}


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def is_animation(path: Path) -> bool:
    """True for a GIF / WebP / APNG with more than one frame (a one-frame file is a still image)."""
    if path.suffix.lower() not in ANIMATION_SUFFIXES:
        return False
    try:
        with Image.open(path) as image:
            return bool(getattr(image, "is_animated", False)) and getattr(image, "n_frames", 1) > 1
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def media_kind(path: Path) -> str | None:
    """ "video", "animation", or None for a still image."""
    if is_video(path):
        return "video"
    if is_animation(path):
        return "animation"
    return None


def media_size(path: Path) -> tuple[int, int]:
    """(width, height) of the frames of an animation or video."""
    if is_video(path):
        from .video import probe

        return probe(path).size
    from .animation import read_animation

    return read_animation(path).frames[0].size


def input_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image, or of the frames of an animation or video; decodes the file so that a
    broken one fails before the models load."""
    if media_kind(path) is not None:
        return media_size(path)
    from .upscale_io import image_size

    return image_size(path)


def output_extension(source: Path) -> str:
    """The extension of ``source``'s output in a folder: its own container for media, else ``.png``."""
    if media_kind(source) is None:
        return ".png"
    suffix = source.suffix.lower()
    return ".png" if suffix == ".apng" else suffix


def check_output(path: Path, source: Path) -> None:
    """Refuse an output file named by the user that is not a container of ``source``'s kind."""
    kind = media_kind(source)
    if kind is not None and path.suffix.lower() not in OUTPUT_SUFFIXES[kind]:
        allowed = ", ".join(sorted(OUTPUT_SUFFIXES[kind]))
        what = "a video" if kind == "video" else "an animation"
        raise SupirError(
            f"{source.name} is {what}: its output must end in one of {allowed}, "
            f"not {path.suffix or '(no extension)'}"
        )
