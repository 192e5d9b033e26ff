"""Animations and videos: frame count, timing, size x scale, audio, and resuming after an interruption."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from supir_engine.animation import read_animation
from supir_engine.errors import SupirError
from supir_engine.frames import upscale_media, work_folder
from supir_engine.media import check_output, media_kind, output_extension
from supir_engine.settings import UpscaleSettings

av = pytest.importorskip("av")

SETTINGS = UpscaleSettings(seed=11)
DURATIONS = [80, 200, 500]


def write_gif(path, durations=DURATIONS, size=(24, 16)):
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in durations]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path


def write_video(path, frames=4, size=(32, 32), fps=5, audio=True):
    """A short test video written with PyAV: moving colour blocks at ``fps``, and a 440 Hz tone."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264" if path.suffix != ".webm" else "libvpx-vp9", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if audio:
            sound = out.add_stream("aac" if path.suffix != ".webm" else "libopus", rate=48000)
            sound.layout = "mono"
        for i in range(frames):
            pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
            pixels[:, : 8 * (i + 1)] = ((40 * i) % 256, 200, (255 - 40 * i) % 256)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        if audio:
            seconds = frames / fps
            total = int(48000 * seconds)
            t = np.arange(total) / 48000
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            frame.sample_rate = 48000
            frame.pts = 0
            out.mux(sound.encode(frame))
            out.mux(sound.encode())
    return path


def double(image, settings, label):
    return image.convert("RGB").resize((image.width * 2, image.height * 2), Image.BICUBIC)


def video_facts(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        audio = len(container.streams.audio)
        return {
            "frames": len(frames),
            "size": (frames[0].width, frames[0].height),
            "fps": stream.average_rate,
            "seconds": [float(f.pts * f.time_base) for f in frames],
            "audio": audio,
        }


def test_media_kind_tells_animations_videos_and_stills(tmp_path):
    gif = write_gif(tmp_path / "a.gif")
    still = tmp_path / "s.gif"
    Image.new("RGB", (8, 8)).save(still)
    assert media_kind(gif) == "animation"
    assert media_kind(still) is None
    assert media_kind(tmp_path / "clip.mp4") == "video"


def test_explicit_output_must_be_the_same_kind(tmp_path):
    gif = write_gif(tmp_path / "a.gif")
    assert output_extension(gif) == ".gif" and output_extension(tmp_path / "c.MOV") == ".mov"
    check_output(tmp_path / "x.webp", gif)
    with pytest.raises(SupirError, match="an animation: its output must end in one of"):
        check_output(tmp_path / "x.mp4", gif)


def test_gif_keeps_frame_count_durations_and_loop(tmp_path):
    src = write_gif(tmp_path / "anim.gif")
    out = tmp_path / "anim_SUPIR_x2.gif"
    lines = []
    run = upscale_media(src, out, SETTINGS, double, report=lines.append)
    back = read_animation(out)
    assert (run.frames, run.upscaled, run.reused) == (3, 3, 0)
    assert len(back.frames) == 3 and back.frames[0].size == (48, 32)
    assert back.durations == DURATIONS and back.loop == 0
    assert lines[1].startswith("anim.gif: frame 2/3")
    assert not work_folder(out).exists()


@pytest.mark.parametrize("suffix", [".webp", ".png"])
def test_webp_and_apng_keep_their_timing(tmp_path, suffix):
    frames = [Image.new("RGB", (16, 16), (60 * i, 0, 0)) for i in range(3)]
    src = tmp_path / f"anim{suffix}"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=DURATIONS, loop=0)
    out = tmp_path / f"big{suffix}"
    upscale_media(src, out, SETTINGS, double, report=lambda line: None)
    back = read_animation(out)
    assert len(back.frames) == 3 and back.frames[0].size == (32, 32) and back.durations == DURATIONS


def test_every_frame_gets_the_same_seed(tmp_path):
    src = write_gif(tmp_path / "anim.gif")
    seen = []

    def record(image, settings, label):
        seen.append(settings.seed)
        return double(image, settings, label)

    run = upscale_media(src, tmp_path / "o.gif", SETTINGS.replace(seed=-1), record, report=lambda line: None)
    assert len(seen) == 3 and set(seen) == {run.seed} and run.seed >= 0


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_video_keeps_frames_fps_timing_and_audio(tmp_path, suffix):
    src = write_video(tmp_path / f"clip{suffix}")
    out = tmp_path / f"clip_SUPIR_x2{suffix}"
    run = upscale_media(src, out, SETTINGS, double, report=lambda line: None)
    before, after = video_facts(src), video_facts(out)
    assert run.frames == before["frames"] == after["frames"] == 4
    assert after["size"] == (64, 64)
    assert after["fps"] == before["fps"] == Fraction(5)
    assert after["seconds"] == pytest.approx(before["seconds"])
    assert after["audio"] == 1


def test_interrupted_run_resumes_without_redoing_finished_frames(tmp_path):
    src = write_video(tmp_path / "clip.mp4")
    out = tmp_path / "clip_SUPIR_x2.mp4"
    calls = []

    def fails_on_third(image, settings, label):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(label)
        return double(image, settings, label)

    with pytest.raises(KeyboardInterrupt):
        upscale_media(src, out, SETTINGS.replace(seed=-1), fails_on_third, report=lambda line: None)
    assert not out.exists()
    assert sorted(p.name for p in work_folder(out).glob("frame_*.png")) == [
        "frame_000000.png",
        "frame_000001.png",
    ]
    first_seed = None
    seen = []

    def record(image, settings, label):
        nonlocal first_seed
        first_seed = settings.seed
        seen.append(label)
        return double(image, settings, label)

    run = upscale_media(src, out, SETTINGS.replace(seed=-1), record, report=lambda line: None)
    assert seen == ["frame 3/4", "frame 4/4"]
    assert (run.upscaled, run.reused) == (2, 2) and run.seed == first_seed
    assert video_facts(out)["frames"] == 4


def test_other_settings_start_the_work_folder_afresh(tmp_path):
    src = write_gif(tmp_path / "anim.gif")
    out = tmp_path / "o.gif"
    upscale_media(src, out, SETTINGS, double, keep_frames=True, report=lambda line: None)
    assert work_folder(out).is_dir()
    run = upscale_media(src, out, SETTINGS.replace(steps=3), double, report=lambda line: None)
    assert (run.upscaled, run.reused) == (3, 0)


def test_missing_pyav_names_the_package(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    from supir_engine.video import probe

    with pytest.raises(SupirError, match="pip install av"):
        probe(tmp_path / "clip.mp4")
