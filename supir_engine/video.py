"""Video files through PyAV (no system ffmpeg): read the frames with their timestamps, write the upscaled
frames with the same timing in the same container, and copy the audio streams unchanged (remuxed)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from PIL import Image

from .atomic_files import replacing
from .errors import SupirError

# Encoders to try per container, best first; the source's own codec is tried before these.
ENCODERS = {
    ".mp4": ("libx264", "h264", "mpeg4"),
    ".m4v": ("libx264", "h264", "mpeg4"),
    ".mov": ("libx264", "h264", "mpeg4"),
    ".mkv": ("libx264", "h264", "libvpx-vp9", "mpeg4"),
    ".webm": ("libvpx-vp9", "libvpx"),
}
# Decoder names that differ from the encoder to use for them.
ENCODER_FOR = {"h264": "libx264", "vp9": "libvpx-vp9", "vp8": "libvpx"}
QUALITY_OPTIONS = {"libx264": {"crf": "16", "preset": "medium"}, "libvpx-vp9": {"crf": "20", "b": "0"}}


def require_av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise SupirError(
            "reading and writing video needs PyAV (it brings its own FFmpeg): pip install av"
        ) from exc
    return av


@dataclass(frozen=True)
class VideoInfo:
    size: tuple[int, int]
    frames: int  # as the container reports it; 0 when unknown
    fps: Fraction | None
    time_base: Fraction | None
    codec: str
    audio_streams: int


def _open(path: Path):
    av = require_av()
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise SupirError(f"cannot read {path.name} as a video ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise SupirError(f"{path.name} has no video stream")
    return container


def probe(path: Path) -> VideoInfo:
    container = _open(path)
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        return VideoInfo(
            (ctx.width, ctx.height),
            int(stream.frames or 0),
            stream.average_rate or stream.guessed_rate,
            stream.time_base,
            ctx.name,
            len(container.streams.audio),
        )
    finally:
        container.close()


def read_frames(path: Path) -> Iterator[tuple[Image.Image, int | None]]:
    """Each frame of the first video stream as an RGB image with its timestamp (stream time base)."""
    av = require_av()
    container = _open(path)
    try:
        stream = container.streams.video[0]
        try:
            for frame in container.decode(stream):
                yield frame.to_image(), frame.pts
        except av.error.FFmpegError as exc:
            raise SupirError(f"cannot decode {path.name} ({exc})") from exc
    finally:
        container.close()


def pick_encoder(suffix: str, source_codec: str) -> str:
    av = require_av()
    wanted = ENCODER_FOR.get(source_codec, source_codec)
    for name in (wanted, *ENCODERS.get(suffix, ("libx264", "mpeg4"))):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises several kinds for an unknown encoder
            continue
    raise SupirError(f"no video encoder for {suffix} in this PyAV build; write .mp4 instead")


def write_video(
    source: Path,
    frames: Iterable[Image.Image],
    timestamps: list[int | None],
    path: Path,
    comment: str = "",
) -> Path:
    """Encode ``frames`` into ``path`` (atomically) with ``source``'s frame rate, time base and timestamps,
    and copy ``source``'s audio streams packet by packet."""
    av = require_av()
    info = probe(path=source)
    suffix = path.suffix.lower()
    encoder = pick_encoder(suffix, info.codec)
    src = _open(source)
    try:
        with replacing(path, suffix) as tmp:
            out = av.open(str(tmp), "w", format=_muxer(suffix))
            try:
                if comment:
                    out.metadata["comment"] = comment
                fps = info.fps or Fraction(25)
                stream = out.add_stream(encoder, rate=fps, options=QUALITY_OPTIONS.get(encoder, {}))
                stream.pix_fmt = "yuv420p"
                time_base = info.time_base or 1 / fps
                stream.time_base = time_base
                audio = {s.index: out.add_stream_from_template(s) for s in src.streams.audio}
                sized = False
                for index, image in enumerate(frames):
                    if not sized:
                        stream.width, stream.height = image.size
                        sized = True
                    frame = av.VideoFrame.from_image(image.convert("RGB"))
                    pts = timestamps[index] if index < len(timestamps) else None
                    frame.pts = pts if pts is not None else round(index / fps / time_base)
                    frame.time_base = time_base
                    out.mux(stream.encode(frame))
                out.mux(stream.encode())
                if audio:
                    _copy_audio(src, audio, out)
            finally:
                out.close()
    except av.error.FFmpegError as exc:
        raise SupirError(f"cannot write {path.name} ({exc})") from exc
    finally:
        src.close()
    return path


def _copy_audio(src, audio: dict, out) -> None:
    for packet in src.demux(*src.streams.audio):
        if packet.dts is None:  # the demuxer's flush packet
            continue
        packet.stream = audio[packet.stream.index]
        out.mux(packet)


def _muxer(suffix: str) -> str | None:
    return {".mkv": "matroska", ".webm": "webm", ".mov": "mov", ".mp4": "mp4", ".m4v": "mp4"}.get(suffix)
