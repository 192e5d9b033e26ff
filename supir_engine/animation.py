"""Animated GIF / WebP / APNG: read every frame with its duration, write them back with the same timing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageSequence, UnidentifiedImageError

from .atomic_files import replacing
from .errors import SupirError

FORMATS = {".gif": "GIF", ".webp": "WEBP", ".png": "PNG", ".apng": "PNG"}
DEFAULT_DURATION_MS = 100
WEBP_QUALITY = 95


@dataclass
class Animation:
    frames: list[Image.Image]  # composited full frames, RGB or RGBA
    durations: list[int]  # milliseconds per frame
    loop: int | None = 0  # 0: forever; None: the file did not say (play once)
    info: dict = field(default_factory=dict)


def read_animation(path: Path) -> Animation:
    """Every frame of ``path`` as a full image (partial GIF frames composited), with its duration."""
    try:
        with Image.open(path) as image:
            loop = image.info.get("loop")
            frames, durations = [], []
            for frame in ImageSequence.Iterator(image):
                frame.load()  # WebP sets a frame's duration when it is decoded
                durations.append(int(frame.info.get("duration") or DEFAULT_DURATION_MS))
                has_alpha = "A" in frame.getbands() or "transparency" in frame.info
                frames.append(frame.convert("RGBA" if has_alpha else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError, EOFError) as exc:
        raise SupirError(f"cannot read {path.name} as an animation ({exc})") from exc
    if not frames:
        raise SupirError(f"{path.name} has no frames")
    return Animation(frames, durations, loop)


def write_animation(
    frames: Sequence[Image.Image],
    durations: Sequence[int],
    path: Path,
    loop: int | None = 0,
    comment: str = "",
) -> Path:
    """Write ``frames`` as the animation ``path``'s extension names, atomically, with ``durations`` (ms)."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SupirError(f"cannot write an animation as {path.name}: use {', '.join(FORMATS)}")
    first, rest = frames[0], list(frames[1:])
    extra: dict = {"save_all": True, "append_images": rest, "duration": list(durations)}
    if loop is not None:
        extra["loop"] = loop
    if fmt == "GIF":
        if comment:
            extra["comment"] = comment.encode("utf-8")[:255]
        # Each frame replaces the previous one entirely (a transparent pixel must not show the last frame).
        extra["disposal"] = 2
    elif fmt == "WEBP":
        extra["quality"] = WEBP_QUALITY
    with replacing(path) as tmp, open(tmp, "xb") as handle:
        first.save(handle, format=fmt, **extra)
    return path
