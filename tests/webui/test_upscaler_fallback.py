"""A failed SUPIR Upscaler keeps the image (the webui resizes it with Lanczos) and every label says so."""

from __future__ import annotations

import pytest
from modules import postprocessing, processing, scripts, shared
from PIL import Image

from supir_engine.errors import SupirError

from .test_generation import params_of

REASON = "the SDXL base could not be read"


@pytest.fixture
def supir_fails(monkeypatch):
    """runner.upscale raises for the calls whose number (from 0) is in the returned set; runs otherwise."""
    from sd_webui_supir import runner

    failing = {0}
    calls = []
    real = runner.upscale

    def upscale(image, settings, variant, label="SUPIR", **kwargs):
        calls.append(label)
        if len(calls) - 1 in failing:
            raise SupirError(REASON)
        return real(image, settings, variant, label, **kwargs)

    monkeypatch.setattr(runner, "upscale", upscale)
    return failing


def extras_upscale_args(upscaler: str, supir_enabled: bool = False) -> list:
    runner = scripts.scripts_postproc
    args = [getattr(c, "value", None) for c in runner.inputs]
    values = {
        "Upscale": {"upscale_enabled": True, "upscale_by": 2, "upscaler_1_name": upscaler},
        "SUPIR": {"enabled": supir_enabled},
    }
    for script in runner.scripts:
        for name, value in values.get(script.name, {}).items():
            args[script.args_from + list(script.controls).index(name)] = value
    return args


def run_extras(image, args):
    images, html_info, _ = postprocessing.run_postprocessing(0, image, None, "", "", True, *args)
    return images[0], html_info


@pytest.mark.parametrize("order", [[], ["SUPIR", "Upscale"]], ids=["default-order", "supir-script-first"])
def test_extras_info_says_the_supir_upscaler_failed(webui, supir_fails, order):
    shared.opts.postprocessing_operation_order = order
    try:
        _extras_fail_twice(supir_fails)
    finally:
        shared.opts.postprocessing_operation_order = []


def _extras_fail_twice(supir_fails):
    image = Image.new("RGB", (32, 24), "red")
    args = extras_upscale_args("SUPIR-v0F")
    for attempt in range(2):  # the webui caches upscaled images: a cached fallback must not pass as SUPIR's
        supir_fails.add(attempt)
        result, info = run_extras(image, args)
        assert result.size == (64, 48)  # the image is kept, resized by the webui
        assert "Postprocess upscaler: SUPIR-v0F failed" in info and REASON in info and "Lanczos" in info
        assert "Postprocess upscaler: SUPIR-v0F," not in info + ","


def test_extras_info_names_supir_when_it_ran(webui, supir_fails):
    supir_fails.clear()
    result, info = run_extras(Image.new("RGB", (32, 24), "blue"), extras_upscale_args("SUPIR-v0Q"))
    assert result.size == (64, 48)
    assert "Postprocess upscaler: SUPIR-v0Q" in info and "failed" not in info


def test_upscaler_failure_reaches_the_console_and_status(webui, supir_fails, caplog):
    data = next(u for u in shared.sd_upscalers if u.name == "SUPIR-v0F")
    out = data.scaler.upscale(Image.new("RGB", (40, 24), "white"), 2, data.data_path)
    assert out.size == (80, 48)
    message = "Upscaler SUPIR-v0F failed (the SDXL base could not be read); a Lanczos resize was used instead"
    assert shared.state.textinfo == message
    assert message in caplog.text


def test_hires_fix_infotext_says_which_image_the_supir_upscaler_failed_for(webui, supir_fails):
    runner_ = scripts.scripts_txt2img
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt="a cat",
        width=32,
        height=32,
        steps=1,
        batch_size=2,
        enable_hr=True,
        hr_upscaler="SUPIR-v0F",
        hr_scale=2.0,
        scripts=runner_,
        script_args=webui.script_args(runner_, enabled=False),
    )
    processed = processing.process_images(p)
    assert [im.size for im in processed.images] == [(64, 64), (64, 64)]  # both images kept
    first, second = (params_of(text) for text in processed.infotexts)
    assert first["Hires upscaler"] == second["Hires upscaler"] == "SUPIR-v0F"
    assert first["SUPIR upscaler error"] == (
        "Hires upscaler SUPIR-v0F failed (the SDXL base could not be read); a Lanczos resize was used instead"
    )
    assert "SUPIR upscaler error" not in second  # SUPIR upscaled the second image
    assert any("Hires upscaler SUPIR-v0F failed" in c for c in p.comments)


def test_sd_upscale_infotext_says_its_supir_upscaler_failed(webui, supir_fails):
    """The SD upscale script upscales with its upscaler, names it, then runs one img2img per tile batch."""
    data = next(u for u in shared.sd_upscalers if u.name == "SUPIR-v0Q")
    runner_ = scripts.scripts_img2img
    p = processing.StableDiffusionProcessingImg2Img(
        init_images=[Image.new("RGB", (32, 32), "green")],
        prompt="a field",
        width=32,
        height=32,
        steps=1,
        scripts=runner_,
        script_args=webui.script_args(runner_, enabled=False),
    )
    p.extra_generation_params["SD upscale upscaler"] = data.name
    upscaled = data.scaler.upscale(p.init_images[0], 2, data.data_path)
    assert upscaled.size == (64, 64)
    tiles = [processing.process_images(p) for _ in range(2)]  # the script's tile batches
    for processed in tiles:
        assert params_of(processed.infotexts[0])["SUPIR upscaler error"].startswith(
            "SD upscale upscaler SUPIR-v0Q failed (the SDXL base could not be read)"
        )
