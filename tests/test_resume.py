"""Resumable sampling: a run stopped part-way and resumed gives the uninterrupted run's result exactly."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from test_pipeline import FAST, RecordingHost, pipeline, smooth_image, tiny_model_file  # noqa: F401

from supir_engine.errors import CancelledError
from supir_engine.resume import (
    SUFFIX,
    ResumeJob,
    ResumeOptions,
    SavedState,
    state_files,
    write_atomic,
)
from supir_engine.sampling import (
    SAMPLERS,
    SCHEDULES,
    Conditioning,
    GuidedConditioning,
    SamplerSettings,
    SamplerStart,
    generator_noise,
)


class _Stop(Exception):
    pass


def _toy_denoiser(x, sigma, cond, control_scale):
    """A cheap deterministic stand-in for the networks that depends on x, sigma and the control."""
    return torch.tanh(x * 0.3) / (1 + sigma) + cond.control * control_scale * 0.1


def _guided(shape=(1, 4, 12, 16)) -> GuidedConditioning:
    g = torch.Generator().manual_seed(7)
    control = torch.randn(shape, generator=g)
    text = torch.zeros(1, 2, 3)
    vector = torch.zeros(1, 5)
    return GuidedConditioning(
        Conditioning(text, vector, control), Conditioning(text, vector, control * 0.5), control * 0.9
    )


SAMPLER_CASES = {
    "restore_edm": SamplerSettings(cfg_scale=3.0, cfg_scale_start=1.0, s_churn=5.0, restoration_scale=2.0),
    "restore_dpmpp_2m": SamplerSettings(cfg_scale=2.0, eta=1.0, dpm_restoration=True, restoration_scale=2.0),
}


def _run(name: str, settings: SamplerSettings, stop_after: int | None = None, start=None, rng=None):
    """Sample 7 steps; with ``stop_after`` return the state after that many steps instead."""
    guided = _guided()
    generator = torch.Generator().manual_seed(11)
    noise = generator_noise(generator)
    x0 = noise(guided.uncond.control)
    if rng is not None:
        generator.set_state(rng)
    saved = {}

    def callback(info):
        if stop_after is not None and info.step + 1 == stop_after:
            saved.update(x=info.x.clone(), old=info.denoised.clone(), rng=generator.get_state())
            raise _Stop

    sigmas = SCHEDULES[name](7)
    try:
        out = SAMPLERS[name](_toy_denoiser, x0, sigmas, guided, settings, callback, noise, start=start)
    except _Stop:
        return saved
    return out


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
@pytest.mark.parametrize("name", list(SAMPLER_CASES))
@pytest.mark.parametrize("stop_after", [1, 4, 7])
def test_sampler_resumes_bit_identically(name, tiled, stop_after):
    settings = SAMPLER_CASES[name]
    if tiled:
        settings = SamplerSettings(**{**settings.__dict__, "tile_size": 8, "tile_stride": 5})
    whole = _run(name, settings)
    saved = _run(name, settings, stop_after=stop_after)
    old = saved["old"] if name == "restore_dpmpp_2m" else None
    resumed = _run(name, settings, start=SamplerStart(stop_after, saved["x"], old), rng=saved["rng"])
    assert torch.equal(whole, resumed)


def test_dpm_resume_needs_the_previous_prediction():
    saved = _run("restore_dpmpp_2m", SAMPLER_CASES["restore_dpmpp_2m"], stop_after=3)
    with pytest.raises(ValueError, match="previous prediction"):
        _run("restore_dpmpp_2m", SAMPLER_CASES["restore_dpmpp_2m"], start=SamplerStart(3, saved["x"]))


# ------------------------------------------------------------------------------------------ pipeline


def _options(tmp_path, **kw) -> ResumeOptions:
    return ResumeOptions(tmp_path / "states", weights="tiny", **{"every_steps": 100, **kw})


PIPELINE_CASES = {
    "edm": FAST.replace(steps=6, s_churn=5.0),
    "dpm": FAST.replace(steps=6, sampler="restore_dpmpp_2m", restoration_scale=4.0, s_churn=0.0),
    "edm_tiled": FAST.replace(steps=6, s_churn=5.0, tile_size=8, tile_stride=4),
    "dpm_tiled": FAST.replace(steps=6, sampler="restore_dpmpp_2m", tile_size=8, tile_stride=4),
}


@pytest.mark.parametrize("case", list(PIPELINE_CASES))
def test_interrupted_upscale_resumes_to_the_same_image(pipeline, tmp_path, case):  # noqa: F811
    settings = PIPELINE_CASES[case]
    options = _options(tmp_path)
    whole = pipeline.upscale(smooth_image(), settings)
    with pytest.raises(CancelledError):
        pipeline.upscale(smooth_image(), settings, RecordingHost(stop_after_step=2), resume=options)
    assert len(state_files(options.folder)) == 1
    host = RecordingHost()
    resumed = pipeline.upscale(smooth_image(), settings, host, resume=options)
    assert resumed.resumed_at == (2, 6)
    assert "resumed at step 2/6" in resumed.notes
    assert np.array_equal(np.asarray(whole.image), np.asarray(resumed.image))
    assert resumed.network_evaluations < whole.network_evaluations
    assert state_files(options.folder) == []  # dropped on completion


def test_random_seed_resumes_with_the_saved_seed(pipeline, tmp_path):  # noqa: F811
    settings = FAST.replace(steps=5, seed=-1)
    options = _options(tmp_path)
    with pytest.raises(CancelledError):
        pipeline.upscale(smooth_image(), settings, RecordingHost(stop_after_step=3), resume=options)
    resumed = pipeline.upscale(smooth_image(), settings, resume=options)
    assert resumed.resumed_at == (3, 5)
    whole = pipeline.upscale(smooth_image(), settings.replace(seed=resumed.settings.seed))
    assert np.array_equal(np.asarray(whole.image), np.asarray(resumed.image))


class _Crash(Exception):
    pass


class _CrashingHost(RecordingHost):
    def progress(self, stage, step, total):
        super().progress(stage, step, total)
        if stage == "sampling" and step == 5:
            raise _Crash  # the process dies: no chance to save at this step


def test_periodic_saves_survive_a_crash(pipeline, tmp_path):  # noqa: F811
    settings = FAST.replace(steps=7)
    options = _options(tmp_path, every_steps=2)
    with pytest.raises(_Crash):
        pipeline.upscale(smooth_image(), settings, _CrashingHost(), resume=options)
    (path,) = state_files(options.folder)
    with safe_open(str(path), "pt") as f:  # safetensors with a JSON header, nothing pickled
        header = json.loads(f.metadata()["supir"])
        assert set(f.keys()) == {"x", "rng"}
    assert (header["step"], header["total"]) == (4, 7)
    resumed = pipeline.upscale(smooth_image(), settings, resume=options)
    assert resumed.resumed_at == (4, 7)
    whole = pipeline.upscale(smooth_image(), settings)
    assert np.array_equal(np.asarray(whole.image), np.asarray(resumed.image))


def test_other_settings_do_not_resume_and_say_why(pipeline, tmp_path):  # noqa: F811
    settings = FAST.replace(steps=5)
    options = _options(tmp_path)
    with pytest.raises(CancelledError):
        pipeline.upscale(smooth_image(), settings, RecordingHost(stop_after_step=2), resume=options)
    other = pipeline.upscale(smooth_image(), settings.replace(cfg_scale=2.5), resume=options)
    assert other.resumed_at is None
    assert any("different cfg_scale" in n for n in other.notes)
    other_weights = ResumeOptions(options.folder, weights="other", every_steps=100)
    result = pipeline.upscale(smooth_image(), settings, resume=other_weights)
    assert result.resumed_at is None and any("different weights" in n for n in result.notes)


def test_a_damaged_state_is_ignored_with_a_message(pipeline, tmp_path):  # noqa: F811
    settings = FAST.replace(steps=5)
    options = _options(tmp_path)
    with pytest.raises(CancelledError):
        pipeline.upscale(smooth_image(), settings, RecordingHost(stop_after_step=2), resume=options)
    (path,) = state_files(options.folder)
    path.write_bytes(path.read_bytes()[:100])
    result = pipeline.upscale(smooth_image(), settings, resume=options)
    assert result.resumed_at is None
    assert any("ignored (unreadable" in n and "starts from step 0" in n for n in result.notes)
    whole = pipeline.upscale(smooth_image(), settings)
    assert np.array_equal(np.asarray(whole.image), np.asarray(result.image))


# ------------------------------------------------------------------------------------------ the store


def _job(tmp_path, name: str, **options) -> ResumeJob:
    opts = ResumeOptions(tmp_path, **options)
    return ResumeJob(opts, {"settings": {"n": name}, "image": name}, "restore_edm", 10, (1, 4, 8, 8))


def _state(step: int = 3) -> SavedState:
    return SavedState(step, 10, 1, torch.randn(1, 4, 8, 8), None, torch.Generator().get_state())


def test_prune_removes_the_oldest_states_beyond_the_limit(tmp_path):
    sizes = []
    for i, name in enumerate("abc"):
        job = _job(tmp_path, name)
        sizes.append(job.save(_state()))
        os.utime(job.path, ns=(i * 10**9, i * 10**9))
    limit = sizes[0] * 2 + 10
    newest = _job(tmp_path, "d", max_bytes=limit)
    newest.save(_state())
    left = {p.name for p in state_files(tmp_path)}
    assert left == {_job(tmp_path, "c").path.name, newest.path.name}


def test_a_state_over_the_limit_is_not_written(tmp_path):
    job = _job(tmp_path, "a", max_bytes=1000)
    assert job.save(_state()) == 0 and not job.path.exists()


def test_failed_write_keeps_the_previous_state_and_no_temporary(tmp_path, monkeypatch):
    job = _job(tmp_path, "a")
    job.save(_state(3))
    before = job.path.read_bytes()

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_atomic(job.path, b"partial")
    assert job.path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [job.path.name]


def test_saves_are_due_every_n_steps_or_m_seconds(tmp_path):
    by_steps = _job(tmp_path, "a", every_steps=3, every_seconds=None)
    assert [s for s in range(1, 10) if by_steps.due(s)] == [3, 6, 9]
    by_time = _job(tmp_path, "b", every_steps=None, every_seconds=60.0)
    start = by_time._last_save
    assert not by_time.due(1, now=start + 59) and by_time.due(1, now=start + 61)


def test_state_file_names_use_the_suffix(tmp_path):
    assert _job(tmp_path, "a").path.name.endswith(SUFFIX)
