"""Faults: each keeps the generated image, shows why, and leaves the SD checkpoint on its device."""

from __future__ import annotations

import numpy as np
import pytest
from modules import processing, scripts, sd_models, shared

from sd_webui_supir.options import LOADED_CHECKPOINT
from supir_engine import sampling

from .test_generation import assert_restored, params_of, txt2img


def generated_images(webui, n=1):
    """What the generation alone gives (SUPIR off), to compare kept images against."""
    shared.state.on_change = None
    shared.state.begin(job="reference")
    runner_ = scripts.scripts_txt2img
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt="a photo of a <lora:film:0.7> (red cat:1.2)",
        width=32,
        height=32,
        steps=3,
        batch_size=n,
        scripts=runner_,
        script_args=webui.script_args(runner_, enabled=False),
    )
    return [np.asarray(im) for im in processing.process_images(p).images]


def assert_kept(webui, processed, n=1):
    assert [im.size for im in processed.images] == [(32, 32)] * n
    expected = generated_images(webui, n)
    assert len(expected) == n
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(processed.images, expected))


def test_missing_supir_file(webui, tmp_path):
    shared.opts.supir_models_path = str(tmp_path)  # an empty folder
    try:
        _, processed = txt2img(webui, batch_size=1)
    finally:
        shared.opts.supir_models_path = ""
    assert "no SUPIR-v0Q model found" in processed.comments
    assert "github.com/Fanghua-Yu/SUPIR" in processed.comments and str(tmp_path) in processed.comments
    assert "SUPIR model" not in processed.infotexts[0]
    # the API's "info" has no comments, but it has the infotexts
    assert params_of(processed.infotexts[0])["SUPIR error"].startswith("no SUPIR-v0Q model found")
    assert sd_models.calls == [] and webui.sdxl.device.type == "cuda"  # nothing was even tried
    assert_kept(webui, processed)


def test_sd15_loaded_without_a_base_file(webui):
    sd_models.model_data.set_sd_model(webui.sd15)
    webui.sd15.device = webui.sdxl.device
    assert shared.opts.supir_sdxl_base == LOADED_CHECKPOINT
    _, processed = txt2img(webui, batch_size=1)
    assert "not an SDXL model" in processed.comments and "Settings > SUPIR" in processed.comments
    assert "not an SDXL model" in params_of(processed.infotexts[0])["SUPIR error"]
    assert webui.sd15.device.type == "cuda" and sd_models.calls == []
    assert_kept(webui, processed)


def test_exception_inside_sampling(webui, monkeypatch):
    real = sampling.SAMPLERS["restore_edm"]

    def failing(denoiser, x, sigmas, guided, settings, callback=None, noise=None):
        def boom(info):
            callback(info)
            raise RuntimeError("boom in step 1")

        return real(denoiser, x, sigmas, guided, settings, boom, noise)

    monkeypatch.setitem(sampling.SAMPLERS, "restore_edm", failing)
    _, processed = txt2img(webui, batch_size=1)
    assert "SUPIR failed (RuntimeError: boom in step 1)" in processed.comments
    assert params_of(processed.infotexts[0])["SUPIR error"].startswith("SUPIR failed (RuntimeError: boom")
    assert_restored(webui, runs=1)
    assert_kept(webui, processed)


@pytest.mark.parametrize("press", ["interrupt", "skip"])
def test_interrupt_or_skip_at_sampler_step_k(webui, press):
    k = 2

    def on_change(state, name, value):
        if name == "sampling_step" and value == k and state.job.startswith("SUPIR"):
            getattr(state, press)()

    shared.state.on_change = on_change
    _, processed = txt2img(webui, batch_size=2, steps=6)
    supir_steps = [v for name, v in shared.state.history if name == "textinfo" and v and "sampling step" in v]
    assert supir_steps[-1] == "SUPIR 1/2: sampling step 2/6"  # stopped within one step
    assert "SUPIR was interrupted; the image was kept as it was." in processed.comments
    errors = [params_of(text)["SUPIR error"] for text in processed.infotexts]
    assert all(e.startswith("SUPIR was interrupted") for e in errors) and len(errors) == 2
    assert_restored(webui, runs=1)  # the second image of the batch is not even tried
    assert_kept(webui, processed, n=2)


def test_checkpoint_left_in_ram_is_said_on_the_page(webui, monkeypatch):
    from .test_host import _restore_runs_out_of_memory

    _restore_runs_out_of_memory(monkeypatch)
    _, processed = txt2img(webui, batch_size=1)
    assert "SUPIR: the SD checkpoint was left in RAM" in processed.comments
    assert webui.sdxl.device.type == "cpu"
    assert processed.images[0].size != (32, 32)  # the upscale itself succeeded


def test_nan_from_sampling_keeps_the_image_and_says_why(webui, monkeypatch):
    real = sampling.SAMPLERS["restore_edm"]

    def overflowing(*args, **kwargs):
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setitem(sampling.SAMPLERS, "restore_edm", overflowing)
    _, processed = txt2img(webui, batch_size=1)
    error = params_of(processed.infotexts[0])["SUPIR error"]
    assert error.startswith("SUPIR: sampling produced NaN/infinite values") and error in processed.comments
    assert_restored(webui, runs=1)
    assert_kept(webui, processed)
