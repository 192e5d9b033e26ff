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
    assert "SUPIR model:" not in processed.infotexts[0]
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
    params = params_of(processed.infotexts[0])
    assert params["SUPIR error"].startswith("SUPIR failed (RuntimeError: boom")
    assert params["Size"] == "32x32" and "SUPIR generation size" not in params  # the kept image's size
    assert_restored(webui, runs=1)
    assert_kept(webui, processed)


def test_interrupt_at_sampler_step_k_stops_the_rest_of_the_batch(webui):
    k = 2

    def on_change(state, name, value):
        if name == "sampling_step" and value == k and state.job.startswith("SUPIR"):
            state.interrupt()

    shared.state.on_change = on_change
    _, processed = txt2img(webui, batch_size=2, steps=6)
    supir_steps = [v for name, v in shared.state.history if name == "textinfo" and v and "sampling step" in v]
    assert supir_steps[-1] == "SUPIR 1/2: sampling step 2/6"  # stopped within one step
    assert "SUPIR was interrupted; the image was kept as it was." in processed.comments
    errors = [params_of(text)["SUPIR error"] for text in processed.infotexts]
    assert all(e.startswith("SUPIR was interrupted") for e in errors) and len(errors) == 2
    assert_restored(webui, runs=1)  # the second image of the batch is not even tried
    assert_kept(webui, processed, n=2)


def test_skip_at_sampler_step_k_skips_that_image_only(webui, upscale_calls):
    def on_change(state, name, value):
        if name == "sampling_step" and value == 2 and state.job == "SUPIR 1/2":
            state.skip()

    shared.state.on_change = on_change
    _, processed = txt2img(webui, batch_size=2, steps=6)
    first, second = (params_of(text) for text in processed.infotexts)
    assert first["SUPIR error"].startswith("SUPIR was skipped for this image")
    assert "SUPIR error" not in second and second["SUPIR model"] == "SUPIR-v0Q"
    assert [im.size for im in processed.images] == [(32, 32), (64, 64)]  # image 2 was upscaled
    assert len(upscale_calls) == 1 and not shared.state.skipped
    assert_restored(webui, runs=2)


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"scale": "abc"}, "scale must be a number, got 'abc'"),
        ({"model": "SUPIR-v0X"}, "model must be one of SUPIR-v0Q, SUPIR-v0F, got 'SUPIR-v0X'"),
        ({"scale": 0}, "scale must be between 1 and 8, got 0.0"),
        ({"scale": -1}, "scale must be between 1 and 8, got -1.0"),
        ({"scale": 100}, "scale must be between 1 and 8, got 100.0"),
        ({"steps": 0}, "steps must be between 1 and 200, got 0"),
        ({"sampler": "euler"}, "sampler must be one of restore_edm, restore_dpmpp_2m, got 'euler'"),
        ({"prompt_source": "Florence"}, "prompt_source must be one of Generation prompt, Custom caption"),
    ],
)
def test_invalid_api_arguments_are_reported_not_ignored(webui, caplog, bad, named):
    """alwayson_scripts with a bad value: the image is kept, and the infotext, page and console say why."""
    with caplog.at_level("WARNING"):
        _, processed = txt2img(webui, batch_size=1, **bad)
    params = params_of(processed.infotexts[0])
    assert named in params["SUPIR error"]
    assert named in processed.comments
    assert any(named in r.getMessage() for r in caplog.records)
    assert_kept(webui, processed)


def test_the_ui_and_the_api_share_one_table_of_limits(webui):
    from sd_webui_supir.args import ARG_NAMES, LIMITS, ArgumentError, SupirArgs

    script = scripts.scripts_txt2img.scripts[0]
    components = dict(zip(ARG_NAMES, script.controls))
    for name, limit in LIMITS.items():
        if name == "seed":  # a number box, not a slider
            continue
        slider = components[name]
        assert (slider.minimum, slider.maximum, slider.step) == (limit.minimum, limit.maximum, limit.step)
        SupirArgs(**{name: limit.maximum})  # the slider's end is accepted by the API
        with pytest.raises(ArgumentError, match=name):
            SupirArgs(**{name: limit.maximum + limit.step})


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
