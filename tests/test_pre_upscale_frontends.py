"""--pre-upscaler in the CLI, the standalone app's choice, and the infotext key."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
from tiny_upscaler import write_compact

from supir_engine.cli import build_parser, settings_from_args
from supir_engine.infotext import from_infotext, to_infotext
from supir_engine.upscaler_files import resolve_choice, upscaler_choices

NEEDS_GRADIO = pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="gradio not installed")


def test_cli_flag_reaches_the_settings(tmp_path):
    model = str(tmp_path / "4x.safetensors")
    args = build_parser().parse_args(
        ["upscale", "a.png", "--pre-upscaler", model, "--pre-upscale-tile", "256"]
    )
    settings = settings_from_args(args)
    assert (settings.pre_upscaler, settings.pre_upscale_tile) == (model, 256)
    default = settings_from_args(build_parser().parse_args(["upscale", "a.png"]))
    assert (default.pre_upscaler, default.pre_upscale_tile) == ("lanczos", None)


def test_infotext_names_a_model_file_without_its_folder(tmp_path):
    settings = settings_from_args(
        build_parser().parse_args(["upscale", "a.png", "--pre-upscaler", str(tmp_path / "4x-Ultra.pth")])
    )
    params = to_infotext(settings)
    assert params["SUPIR pre-upscaler"] == "4x-Ultra.pth" and str(tmp_path) not in str(params)
    assert from_infotext(to_infotext(settings.replace(pre_upscaler="bicubic"))).pre_upscaler == "bicubic"


def test_saved_png_names_a_model_file_without_its_folder(tmp_path):
    import json
    from types import SimpleNamespace

    from PIL import Image

    from supir_engine.settings import UpscaleSettings
    from supir_engine.upscale_io import save_image

    settings = UpscaleSettings(pre_upscaler=str(tmp_path / "models" / "4x-Ultra.safetensors"))
    result = SimpleNamespace(
        settings=settings,
        input_size=(8, 8),
        output_size=(16, 16),
        precision=None,
        memory=None,
        notes=[],
        resumed_at=None,
    )
    path = save_image(Image.new("RGB", (16, 16)), result, tmp_path / "out.png", "SUPIR-v0Q")
    with Image.open(path) as saved:
        text = dict(saved.text)
    assert json.loads(text["supir"])["pre_upscaler"] == "4x-Ultra.safetensors"
    assert str(tmp_path) not in text["supir"] and str(tmp_path) not in text["parameters"]


def test_app_choices_list_the_folder(tmp_path):
    write_compact(tmp_path / "b_x2.safetensors")
    write_compact(tmp_path / "a_x2.pth")
    (tmp_path / "notes.txt").write_text("x")
    assert upscaler_choices(tmp_path, ("lanczos", "bicubic")) == [
        "lanczos",
        "bicubic",
        "a_x2.pth",
        "b_x2.safetensors",
    ]
    assert upscaler_choices(tmp_path / "missing", ("lanczos",)) == ["lanczos"]
    assert resolve_choice("a_x2.pth", tmp_path) == str(tmp_path / "a_x2.pth")
    assert resolve_choice("bicubic", tmp_path) == "bicubic"
    assert resolve_choice("/elsewhere/x.safetensors", tmp_path) == "/elsewhere/x.safetensors"  # the CLI
    with pytest.raises(ValueError, match="upscaler models folder"):  # a served page: the folder's files only
        resolve_choice("/elsewhere/x.safetensors", tmp_path, allow_paths=False)
    with pytest.raises(ValueError, match="upscaler models folder"):
        resolve_choice("../b_x2.safetensors", tmp_path / "sub", allow_paths=False)
    assert resolve_choice("a_x2.pth", tmp_path, allow_paths=False) == str(tmp_path / "a_x2.pth")


@NEEDS_GRADIO
def test_app_endpoint_takes_the_choice_last_and_maps_it_to_the_file(tmp_path):
    from supir_engine.app import CONTROL_ORDER, SupirApp, settings_from_controls

    params = list(inspect.signature(SupirApp.upscale).parameters)
    assert params[2 : 2 + len(CONTROL_ORDER)] == list(CONTROL_ORDER) and CONTROL_ORDER[-1] == "pre_upscaler"
    write_compact(tmp_path / "x2.safetensors")
    values = dict.fromkeys(CONTROL_ORDER)
    values.update(
        scale=2,
        min_size=64,
        steps=2,
        sampler="restore_edm",
        cfg_scale=4,
        linear_cfg=False,
        cfg_scale_start=1,
        control_scale=1,
        linear_control=False,
        control_scale_start=0,
        restoration_scale=-1,
        s_churn=0,
        s_noise=1.0,
        seed=1,
        color_fix="wavelet",
        denoise_stage=True,
        caption="",
        positive_prompt="",
        negative_prompt="",
        tile_size=0,
        tile_stride=0,
        vae_encoder_tile=0,
        vae_decoder_tile=0,
        pre_upscaler="x2.safetensors",
        upscalers_dir=tmp_path,
    )
    assert Path(settings_from_controls(values).pre_upscaler) == tmp_path / "x2.safetensors"
    values.pop("pre_upscaler")
    assert settings_from_controls(values).pre_upscaler == "lanczos"


@NEEDS_GRADIO
def test_serve_flag_sets_the_folder(tmp_path):
    args = build_parser().parse_args(["serve", "--upscalers-dir", str(tmp_path)])
    assert args.upscalers_dir == tmp_path
