"""The web app's tile prompts without a server: controls -> settings, and the grid preview."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
from PIL import Image

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="gradio not installed")

VALUES = {
    "model": "Q", "storage_dtype": "fp32", "memory_policy": "default", "scale": 2, "min_size": 64, "steps": 2,
    "sampler": "restore_edm", "cfg_scale": 4.0, "linear_cfg": False, "cfg_scale_start": 1.0,
    "control_scale": 1.0, "linear_control": False, "control_scale_start": 0.0, "restoration_scale": -1.0,
    "s_churn": 0.0, "s_noise": 1.003, "seed": 1, "color_fix": "none", "denoise_stage": True, "caption": "",
    "positive_prompt": "", "negative_prompt": "", "tile_size": 8, "tile_stride": 4, "vae_encoder_tile": 0,
    "vae_decoder_tile": 0, "progressive": False, "tile_prompts": "", "pre_upscaler": "lanczos",
}  # fmt: skip


def test_textbox_lines_become_tile_prompts():
    from supir_engine.app import CONTROL_ORDER, settings_from_controls

    assert list(CONTROL_ORDER) == list(VALUES)  # the API's positional order
    settings = settings_from_controls({**VALUES, "tile_prompts": "sky\n\n2,1: sea\n\n"})
    assert settings.tile_prompts == ("sky", "", "2,1: sea")
    assert settings_from_controls({**VALUES, "tile_prompts": ["a", "b"]}).tile_prompts == ("a", "b")
    assert settings_from_controls({**VALUES, "tile_prompts": None}).tile_prompts == ()


def test_bad_tile_prompt_is_a_page_error():
    import gradio as gr

    from supir_engine.app import settings_from_controls

    with pytest.raises(gr.Error, match="count from 1"):
        settings_from_controls({**VALUES, "tile_prompts": "0,2: x"})


def test_tile_grid_handler_draws_the_grid(tmp_path):
    from supir_engine.app import CONTROL_ORDER, Compat, SupirApp

    path = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (10, 20, 30)).save(path)
    engine = SimpleNamespace(loaded_pipeline=lambda: None)
    app = SupirApp(engine, results=None, compat=Compat(6))
    values = {**VALUES, "tile_prompts": "a\nb\nc\nd\ne\nf\ng"}
    picture, text = app.tile_grid(str(path), *(values[name] for name in CONTROL_ORDER))
    assert picture.size == (128, 96)
    assert "2 x 3 = 6 tiles over 128x96 px (tile 64 px, stride 32 px)" in text
    assert "- 6 (2,3): f" in text and "1 tile prompt line(s) ignored" in text


def test_tile_grid_uses_the_loaded_pipelines_plan(tmp_path):
    from supir_engine.app import CONTROL_ORDER, Compat, SupirApp
    from supir_engine.regions import grid_for_output

    path = tmp_path / "in.png"
    Image.new("RGB", (64, 48)).save(path)
    asked = []

    def tile_grid(size, settings):
        asked.append(size)
        return grid_for_output((96, 128), (4, 4))

    engine = SimpleNamespace(loaded_pipeline=lambda: SimpleNamespace(tile_grid=tile_grid))
    _, text = SupirApp(engine, None, Compat(6)).tile_grid(str(path), *(VALUES[n] for n in CONTROL_ORDER))
    assert asked == [(64, 48)] and "3 x 4 = 12 tiles" in text
