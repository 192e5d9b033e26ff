"""Resumable runs from the CLI (--resume-dir) and the standalone app's engine (serve --resume-dir)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image
from test_cli_upscale import FAST, models_dir, write_image  # noqa: F401

from supir_engine.cli import build_parser, main
from supir_engine.errors import CancelledError
from supir_engine.progress import TqdmHost
from supir_engine.resume import state_files
from supir_engine.resume_options import ResumeOptions

STEPS = ["--steps", "3"]


def _stop_after_first_step(monkeypatch):
    seen = {"sampling": 0}
    real = TqdmHost.progress

    def progress(self, stage, step, total):
        if stage == "sampling":
            seen["sampling"] = step
        return real(self, stage, step, total)

    monkeypatch.setattr(TqdmHost, "progress", progress)
    monkeypatch.setattr(TqdmHost, "should_stop", lambda self: seen["sampling"] >= 1)


def test_cli_resume_dir_continues_an_interrupted_run(tmp_path, models_dir, capsys, monkeypatch):  # noqa: F811
    src = write_image(tmp_path / "photo.png")
    common = ["upscale", str(src), "--models-dir", str(models_dir), *FAST, *STEPS, "--overwrite"]
    states = tmp_path / "states"
    assert main([*common, "-o", str(tmp_path / "whole.png")]) == 0
    with monkeypatch.context() as patch:
        _stop_after_first_step(patch)
        assert main([*common, "-o", str(tmp_path / "resumed.png"), "--resume-dir", str(states)]) == 2
    assert "stopped after sampler step 1 of 3" in capsys.readouterr().err
    assert len(state_files(states)) == 1
    assert main([*common, "-o", str(tmp_path / "resumed.png"), "--resume-dir", str(states)]) == 0
    assert "resumed at step 1/3" in capsys.readouterr().err
    resumed = Image.open(tmp_path / "resumed.png")
    assert "SUPIR resumed: step 1/3" in resumed.text["parameters"]
    assert np.array_equal(np.asarray(resumed), np.asarray(Image.open(tmp_path / "whole.png")))
    assert state_files(states) == []


def test_cli_resume_flags_are_checked(tmp_path, models_dir, capsys):  # noqa: F811
    src = write_image(tmp_path / "photo.png")
    args = ["upscale", str(src), "--models-dir", str(models_dir), *FAST, "--resume-dir", str(tmp_path)]
    assert main([*args, "--save-every-steps", "0"]) == 2
    assert "save every N steps needs N >= 1" in capsys.readouterr().err


def test_serve_takes_the_same_resume_flags():
    args = build_parser().parse_args(
        ["serve", "--resume-dir", "states", "--save-every-steps", "4", "--save-every-minutes", "1.5"]
    )
    assert (str(args.resume_dir), args.save_every_steps, args.save_every_minutes) == ("states", 4, 1.5)


@pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="gradio not installed")
def test_app_engine_resumes_and_says_so(tmp_path):
    from supir_engine.app import Engine, RunRequest, ServeOptions, summary
    from supir_engine.settings import UpscaleSettings
    from supir_engine.tiny import demo_image, write_demo_checkpoints

    sdxl, supir = write_demo_checkpoints(tmp_path)
    resume = ResumeOptions(tmp_path / "states", every_steps=100)
    engine = Engine(ServeOptions(sdxl, {"Q": supir}, dtype="fp32", device="cpu", min_size=64, resume=resume))
    assert "interrupted runs resume from" in engine.status()
    request = RunRequest("Q", "fp32", None)
    settings = UpscaleSettings(min_size=64, steps=3, seed=5, s_churn=0.0)

    class StopAt:
        def __init__(self, step):
            self.step, self.seen = step, 0

        def acquire_device(self):
            pass

        def release_device(self):
            pass

        def progress(self, stage, step, total):
            if stage == "sampling":
                self.seen = step

        def should_stop(self):
            return self.step is not None and self.seen >= self.step

    image = demo_image(32)
    with pytest.raises(CancelledError):
        engine.upscale(image, settings, request, StopAt(2))
    weights = engine.resume_options(request).weights
    assert str(supir.resolve()) in weights and str(sdxl.resolve()) in weights
    result = engine.upscale(image, settings, request, StopAt(None))
    assert result.resumed_at == (2, 3)
    assert "SUPIR resumed: step 2/3" in summary(result, "SUPIR-v0Q")
