"""The CLI on animations and videos, with a tiny random model."""

from __future__ import annotations

import pytest

from supir_engine.animation import read_animation
from supir_engine.cli import main
from supir_engine.frames import work_folder
from supir_engine.pipeline import SUPIRPipeline
from supir_engine.tiny import random_state_dict, save_checkpoint, split_state_dict
from tests.test_media import DURATIONS, video_facts, write_gif, write_video

FAST = ["--min-size", "32", "--steps", "2", "--dtype", "fp32", "--scale", "2"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("SUPIR")
    sdxl, supir = split_state_dict(random_state_dict(seed=5))
    save_checkpoint(sdxl, folder / "sd_xl_base_1.0.safetensors")
    save_checkpoint(supir, folder / "SUPIR-v0Q.ckpt")
    return folder


def test_gif_comes_back_with_its_frames_and_durations(tmp_path, models_dir, capsys):
    src = write_gif(tmp_path / "anim.gif", size=(32, 32))
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out), "--models-dir", str(models_dir), *FAST]) == 0
    result = out / "anim_SUPIR_x2.gif"
    back = read_animation(result)
    assert len(back.frames) == 3 and back.frames[0].size == (64, 64) and back.durations == DURATIONS
    err = capsys.readouterr().err
    assert "anim.gif: frame 3/3" in err and "3 frames: 3 upscaled, 0 resumed" in err
    assert not work_folder(result).exists()


def test_video_in_a_folder_keeps_fps_and_audio(tmp_path, models_dir, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    src = write_video(inputs / "clip.mp4")
    args = ["upscale", str(inputs), "-o", str(tmp_path), "--models-dir", str(models_dir), *FAST]
    assert main(args) == 0
    result = tmp_path / "clip_SUPIR_x2.mp4"
    before, after = video_facts(src), video_facts(result)
    assert after["frames"] == 4 and after["size"] == (64, 64) and after["audio"] == 1
    assert after["fps"] == before["fps"] and after["seconds"] == pytest.approx(before["seconds"])


def test_wrong_output_extension_for_an_animation_is_refused(tmp_path, models_dir, capsys):
    src = write_gif(tmp_path / "anim.gif")
    args = ["upscale", str(src), "-o", str(tmp_path / "x.jpg"), "--models-dir", str(models_dir), *FAST]
    assert main(args) == 2
    assert "its output must end in one of .apng, .gif, .png, .webp" in capsys.readouterr().err


def test_interrupted_video_resumes_at_the_first_missing_frame(tmp_path, models_dir, monkeypatch, capsys):
    src = write_video(tmp_path / "clip.mp4")
    out = tmp_path / "big.mp4"
    args = ["upscale", str(src), "-o", str(out), "--models-dir", str(models_dir), *FAST, "--seed", "-1"]
    real = SUPIRPipeline.upscale
    calls = []

    def interrupted(self, image, settings, host=None):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(settings.seed)
        return real(self, image, settings, host)

    monkeypatch.setattr(SUPIRPipeline, "upscale", interrupted)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err and not out.exists()
    assert len(list(work_folder(out).glob("frame_*.png"))) == 3

    resumed = []

    def counting(self, image, settings, host=None):
        resumed.append(settings.seed)
        return real(self, image, settings, host)

    monkeypatch.setattr(SUPIRPipeline, "upscale", counting)
    assert main(args) == 0
    assert resumed == [calls[0]]  # only frame 4, with the seed the first run drew
    err = capsys.readouterr().err
    assert "frame 1/4 done already" in err and "4 frames: 1 upscaled, 3 resumed" in err
    assert video_facts(out)["frames"] == 4
