"""The CLI's run of one animation or video: every frame through the pipeline, a progress bar per frame."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from .errors import CancelledError, SupirError
from .frames import upscale_media, work_folder
from .settings import UpscaleSettings


def run_media_file(
    pipeline, settings: UpscaleSettings, src: Path, dst: Path, model_name: str, keep_frames: bool = False
) -> int:
    """Upscale ``src`` into ``dst``; prints one line per frame and a summary. Returns 1 on a failure
    (reported), else 0. An interruption leaves the finished frames for the next run and says so."""
    from .progress import TqdmHost

    def upscale(image: Image.Image, frame_settings: UpscaleSettings, label: str) -> Image.Image:
        host = TqdmHost(f"{src.name} {label}", frame_settings.steps)
        return pipeline.upscale(image, frame_settings, host).image

    def report(line: str) -> None:
        print(line, file=sys.stderr)

    try:
        run = upscale_media(
            src, dst, settings, upscale, model_name=model_name, keep_frames=keep_frames, report=report
        )
    except (KeyboardInterrupt, CancelledError):
        print(
            f"{src}: stopped; the frames done so far are kept in {work_folder(dst)}: run the same command "
            "again to resume",
            file=sys.stderr,
        )
        raise
    except (SupirError, OSError) as exc:
        print(f"error: {src}: {exc}", file=sys.stderr)
        return 1
    rate = run.frames_per_minute
    print(
        f"{src} -> {dst} ({run.frames} frames: {run.upscaled} upscaled, {run.reused} resumed; seed {run.seed}"
        f"{f'; {rate:.1f} frames/min' if rate else ''})",
        file=sys.stderr,
    )
    return 0
