"""Upscale an animation or a video frame by frame, resumably.

Every frame gets the same settings and the same seed, so the sampler starts each frame from the same noise
(what keeps a still background from flickering). Each finished frame is written (atomically) to a work
folder next to the output, ``<output name>.frames``; a run that stops part way is resumed by running the
same command again: frames already in the folder are not redone. The folder remembers the input file,
settings and model it was made with (and the seed drawn for ``-1``); anything else starts it afresh. It is
removed once the output is written, unless asked to keep it."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .alpha import keep_alpha
from .atomic_files import replacing
from .errors import SupirError
from .infotext import infotext_line, to_infotext
from .media import is_video
from .pipeline import resolve_seed
from .settings import UpscaleSettings

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
JOB_VERSION = 1
# (frame image, settings with the seed fixed, progress label such as "frame 3/24") -> the result's image.
FrameUpscaler = Callable[[Image.Image, UpscaleSettings, str], Image.Image]


def work_folder(output: Path) -> Path:
    return output.with_name(output.name + ".frames")


@dataclass(frozen=True)
class MediaRun:
    output: Path
    frames: int
    upscaled: int  # frames computed in this run
    reused: int  # frames found done in the work folder
    seed: int
    seconds: float  # spent upscaling frames in this run

    @property
    def frames_per_minute(self) -> float | None:
        return 60 * self.upscaled / self.seconds if self.upscaled and self.seconds > 0 else None


class FrameStore:
    """The work folder of one output: finished frames as PNG plus ``job.json`` (what made them)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def start(self, key: dict[str, Any], settings: UpscaleSettings) -> UpscaleSettings:
        """``settings`` with the seed of this job: kept from an earlier run with the same ``key`` (when no
        other seed was asked), else a fresh job (old frames removed) with a drawn seed."""
        job = self._read_job()
        if job is not None and job.get("key") == key and settings.seed in (-1, job.get("seed")):
            return settings.replace(seed=int(job["seed"]))
        if job is not None or self.folder.exists():
            log.info("%s was made with other settings or input: starting afresh", self.folder)
            shutil.rmtree(self.folder, ignore_errors=True)
        settings = settings.replace(seed=resolve_seed(settings.seed))
        self.folder.mkdir(parents=True, exist_ok=True)
        with replacing(self.folder / JOB_FILE) as tmp:
            tmp.write_bytes(json.dumps({"key": key, "seed": settings.seed}).encode())
        return settings

    def _read_job(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / JOB_FILE).read_text())
        except (OSError, ValueError):
            return None

    def path(self, index: int) -> Path:
        return self.folder / f"frame_{index:06d}.png"

    def has(self, index: int) -> bool:
        return self.path(index).is_file()

    def save(self, index: int, image: Image.Image) -> None:
        with replacing(self.path(index)) as tmp:
            image.save(tmp, format="PNG")

    def load(self, index: int) -> Image.Image:
        with Image.open(self.path(index)) as image:
            image.load()
            return image.copy()

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes: the same input uploaded again (under another temporary name) resumes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def job_key(source: Path, settings: UpscaleSettings, model_name: str | None) -> dict[str, Any]:
    values = settings.to_dict()
    values.pop("seed")
    return {"version": JOB_VERSION, "sha256": file_digest(source), "settings": values, "model": model_name}


def upscale_media(
    source: Path,
    output: Path,
    settings: UpscaleSettings,
    upscale: FrameUpscaler,
    *,
    model_name: str | None = None,
    keep_frames: bool = False,
    report: Callable[[str], None] = print,
) -> MediaRun:
    """Upscale every frame of animation or video ``source`` into ``output`` (same kind of container, same
    timing; a video's audio copied). ``report`` gets one line per frame ("frame 3/24 ...")."""
    store = FrameStore(work_folder(output))
    settings = store.start(job_key(source, settings, model_name), settings)
    video = is_video(source)
    if video:
        from .video import probe, read_frames, write_video

        total = probe(source).frames
        frames: Iterator[tuple[Image.Image, Any]] = read_frames(source)
    else:
        from .animation import read_animation, write_animation

        animation = read_animation(source)
        total = len(animation.frames)
        frames = ((image, duration) for image, duration in zip(animation.frames, animation.durations))
    timing: list[Any] = []
    upscaled = reused = 0
    seconds = 0.0
    for index, (image, when) in enumerate(frames):
        timing.append(when)
        label = f"frame {index + 1}/{total or '?'}"
        if store.has(index):
            reused += 1
            report(f"{source.name}: {label} done already")
            continue
        start = time.monotonic()
        result = upscale(image, settings, label)
        store.save(index, keep_alpha(image, result))
        took = time.monotonic() - start
        seconds += took
        upscaled += 1
        report(f"{source.name}: {label} ({took:.1f}s)")
    if not timing:
        raise SupirError(f"{source.name} has no frames")
    comment = infotext_line(to_infotext(settings, model_name))
    done = (store.load(i) for i in range(len(timing)))
    if video:
        write_video(source, done, timing, output, comment=comment)
    else:
        write_animation(list(done), timing, output, loop=animation.loop, comment=comment)
    if not keep_frames:
        store.remove()
    return MediaRun(output, len(timing), upscaled, reused, settings.seed, seconds)
