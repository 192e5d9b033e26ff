"""The Extras tab (UI path and the webui's Extras API path) and SUPIR as a webui Upscaler."""

from __future__ import annotations

import numpy as np
from modules import modelloader, postprocessing, script_callbacks, scripts, shared
from PIL import Image

from .test_generation import assert_restored


def extras_args(**values):
    runner = scripts.scripts_postproc
    args = [getattr(c, "value", None) for c in runner.inputs]
    script = next(s for s in runner.scripts if s.name == "SUPIR")
    names = list(script.controls)
    for name, value in {"enabled": True, "steps": 2, "s_churn": 0.0, "seed": 3, **values}.items():
        args[script.args_from + names.index(name)] = value
    return args


def rgba_image(size=32):
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (size, size, 4), dtype=np.uint8), "RGBA")


def test_extras_single_image_keeps_alpha_and_reports_parameters(webui):
    images, html_info, _ = postprocessing.run_postprocessing(
        0, rgba_image(), None, "", "", True, *extras_args()
    )
    (image,) = images
    assert image.size == (64, 64) and image.mode == "RGBA"
    assert "SUPIR model: SUPIR-v0Q" in html_info and "SUPIR steps: 2" in html_info
    assert_restored(webui, runs=1)


def test_extras_batch_uses_each_image_infotext_for_caption_and_seed(webui, monkeypatch):
    from sd_webui_supir import runner

    seen = []
    real = runner.upscale
    monkeypatch.setattr(runner, "upscale", lambda im, s, v, label="": seen.append(s) or real(im, s, v, label))
    first = Image.new("RGB", (32, 32), "red")
    first.info["parameters"] = "a red square\nNegative prompt: blur\nSteps: 20, Seed: 4242, Size: 32x32"
    second = Image.new("RGB", (32, 32), "blue")
    images, _, _ = postprocessing.run_postprocessing(
        1, None, [first, second], "", "", True, *extras_args(seed_from_image=True)
    )
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    assert seen[0].caption == "a red square, " and seen[0].seed == 4242
    assert seen[1].caption == "" and seen[1].seed == 3  # no infotext: no caption, the given seed


def test_extras_api_path_leaves_the_image_alone(webui):
    """The webui's /sdapi/v1/extra-single-image gives extension scripts None for every control."""
    image = Image.new("RGB", (32, 32), "green")
    images, _, _ = postprocessing.run_extras(0, 0, image, None, "", "", True)
    assert images[0].size == (32, 32)
    assert webui.sdxl.device.type == "cuda"


def test_extras_failure_is_shown_in_the_info_panel(webui, tmp_path):
    shared.opts.supir_models_path = str(tmp_path)
    try:
        images, html_info, _ = postprocessing.run_postprocessing(
            0, rgba_image(), None, "", "", True, *extras_args()
        )
    finally:
        shared.opts.supir_models_path = ""
    assert images[0].size == (32, 32) and "SUPIR: " in html_info and "no SUPIR-v0Q model found" in html_info


def test_upscaler_entries_are_added_where_the_webui_lists_only_its_own(webui, monkeypatch):
    """Forge Neo's load_upscalers makes only its own entries; SUPIR's appear before the UI all the same."""
    from modules import script_callbacks

    own = [u for u in shared.sd_upscalers if not u.name.startswith("SUPIR")]
    monkeypatch.setattr(shared, "sd_upscalers", own)
    script_callbacks.before_ui_callback()
    names = [u.name for u in shared.sd_upscalers]
    assert sorted(n for n in names if n.startswith("SUPIR")) == ["SUPIR-v0F", "SUPIR-v0Q"]
    script_callbacks.before_ui_callback()  # listed already (A1111, Forge): no second entry
    assert [u.name for u in shared.sd_upscalers] == names
    data = next(u for u in shared.sd_upscalers if u.name == "SUPIR-v0Q")
    assert data.scaler.upscale(Image.new("RGB", (20, 12), "white"), 2, data.data_path).size == (40, 24)


def test_upscaler_entries_and_hires_style_call(webui):
    by_name = {u.name: u for u in shared.sd_upscalers}
    assert set(by_name) == {"SUPIR-v0Q", "SUPIR-v0F", "None", "Lanczos", "Nearest"}
    data = by_name["SUPIR-v0F"]
    image = Image.new("RGB", (40, 24), "white")
    out = data.scaler.upscale(image, 2, data.data_path)
    assert out.size == (80, 48)
    assert_restored(webui, runs=1)


def test_upscaler_entries_where_the_host_lists_only_its_own_upscalers(webui, monkeypatch):
    """reForge's load_upscalers builds the list from a fixed set of its own classes, not every subclass."""
    monkeypatch.setattr(shared, "sd_upscalers", [])  # what such a loader leaves for an extension
    script_callbacks.before_ui_callback()
    by_name = {u.name: u for u in shared.sd_upscalers}
    assert set(by_name) == {"SUPIR-v0Q", "SUPIR-v0F"}
    data = by_name["SUPIR-v0Q"]
    assert data.data_path.endswith("SUPIR-v0Q.safetensors")
    assert data.scaler.upscale(Image.new("RGB", (40, 24), "white"), 2, data.data_path).size == (80, 48)


def test_upscaler_entries_listed_once_where_the_host_lists_every_subclass(webui, monkeypatch):
    monkeypatch.setattr(shared, "sd_upscalers", [])
    modelloader.load_upscalers()  # A1111 and Forge: SUPIR is there already
    script_callbacks.before_ui_callback()
    assert sorted(u.name for u in shared.sd_upscalers if u.name.startswith("SUPIR")) == [
        "SUPIR-v0F",
        "SUPIR-v0Q",
    ]
