"""Pure parts of the adapter: arguments, infotext names, captions, Skip Img2Img bookkeeping."""

from __future__ import annotations

import types

import pytest
import torch
from PIL import Image

from sd_webui_supir.args import (
    ALL_INFOTEXT_KEYS,
    ARG_NAMES,
    INFOTEXT_KEYS,
    ArgumentError,
    SupirArgs,
    from_mapping,
    from_values,
    infotext_params,
    model_variant,
    paste_value,
    to_settings,
)
from sd_webui_supir.prompts import (
    caption_from_prompt,
    caption_prefix,
    prompt_from_parameters,
    seed_from_parameters,
)
from supir_engine.settings import DEFAULT_NEGATIVE_PROMPT, DEFAULT_POSITIVE_PROMPT, UpscaleSettings


def test_documented_argument_order():
    assert ARG_NAMES[:4] == ("enabled", "model", "scale", "skip_img2img")
    assert ARG_NAMES.index("steps") == 8 and len(ARG_NAMES) == 26
    assert ARG_NAMES[-3:] == ("progressive", "tile_prompts", "pre_upscaler")


def test_infotext_table_is_consistent():
    names = [name for name, _ in INFOTEXT_KEYS]
    keys = [key for _, key in INFOTEXT_KEYS]
    assert len(set(names)) == len(names) and len(set(keys)) == len(keys)
    assert set(names) <= set(ARG_NAMES) and all(k.startswith("SUPIR ") for k in keys)
    assert set(keys) <= set(ALL_INFOTEXT_KEYS)
    derived = {"enabled", "linear_cfg", "linear_control", "progressive", "tile_prompts"}  # from other keys
    assert set(ARG_NAMES) - set(names) == derived


def test_values_are_coerced_and_none_keeps_the_default():
    args = from_values([True, "F", "1.5", None, None, None, None, None, "20"])
    assert (args.enabled, args.variant, args.scale, args.steps) == (True, "F", 1.5, 20)
    assert from_values([None] * len(ARG_NAMES)) == SupirArgs()  # the webui's Extras API passes None
    assert from_mapping({"enabled": "false", "seed": 3.0}).enabled is False


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": "SUPIR-v1"}, "model must be one of"),
        ({"steps": 0}, "steps must be between"),
        ({"steps": "x"}, "steps must be a whole number"),
        ({"sampler": "euler"}, "sampler must be one of"),
        ({"nonsense": 1}, "unknown SUPIR argument"),
    ],
)
def test_bad_arguments_say_what_is_wrong(values, message):
    with pytest.raises(ArgumentError, match=message):
        from_mapping(values)
    with pytest.raises(ArgumentError, match="at most"):
        from_values([None] * (len(ARG_NAMES) + 1))


def test_model_names():
    assert [model_variant(n) for n in ("SUPIR-v0Q", "v0f", "Q", "SUPIR-v1Q", "")] == [
        "Q",
        "F",
        "Q",
        None,
        None,
    ]


def test_settings_and_infotext_round_trip():
    args = SupirArgs(enabled=True, linear_cfg=False, linear_control=True, control_scale_start=0.5, seed=9)
    settings = to_settings(args, UpscaleSettings(min_size=64), caption="a cat, ", seed=9)
    assert (
        settings.cfg_scale_start is None and settings.control_scale_start == 0.5 and settings.min_size == 64
    )
    params = infotext_params(args, settings, (DEFAULT_POSITIVE_PROMPT, DEFAULT_NEGATIVE_PROMPT))
    assert "SUPIR CFG start" not in params and params["SUPIR control start"] == 0.5
    assert (
        "SUPIR caption" not in params and "SUPIR positive prompt" not in params
    )  # generation prompt, defaults
    text = {k: str(v) for k, v in params.items()}
    assert paste_value("enabled", text) is True and paste_value("linear_cfg", text) is False
    assert paste_value("steps", text) == 50 and paste_value("seed", text) == 9
    assert paste_value("denoise_stage", text) is True and paste_value("caption", text) is None


def test_captions_from_webui_prompts():
    prompt = "masterpiece, (red cat:1.3), [blue:green:0.4] <lora:film:0.8>, BREAK ((sharp))"
    assert caption_from_prompt(prompt) == "masterpiece, red cat, blue:green, sharp"
    assert (
        caption_prefix("a cat") == "a cat, "
        and caption_prefix("a cat.") == "a cat. "
        and caption_prefix(" ") == ""
    )
    infotext = "a dog\non grass\nNegative prompt: blur\nSteps: 20, Seed: 123, Size: 64x64"
    assert prompt_from_parameters(infotext) == "a dog\non grass"
    assert seed_from_parameters(infotext) == 123 and seed_from_parameters("just a prompt") is None


def test_skip_img2img_changes_and_restores_one_processing_object(webui):
    from sd_webui_supir.skip_img2img import SkipImg2Img

    source = Image.new("RGB", (20, 10), "red")
    p = types.SimpleNamespace(
        width=512,
        height=768,
        restore_faces=True,
        image_mask="mask",
        color_corrections=None,
        init_images=[source],
    )
    skip = SkipImg2Img(p)
    skip.apply(p)
    assert (p.width, p.height, p.restore_faces, p.image_mask, p.color_corrections) == (
        64,
        64,
        False,
        None,
        [],
    )
    samples = p.sample(None, None, [1, 2], [1, 2], 0, ["a", "b"])
    assert samples.already_decoded and len(samples) == 2 and samples[0].shape == (3, 10, 20)
    assert torch.allclose(samples[0][0], torch.ones(10, 20))  # red, in [-1, 1]
    skip.restore_size(p)
    assert (p.width, p.height) == (512, 768)
    skip.restore(p)
    assert vars(p) == {
        "width": 512,
        "height": 768,
        "restore_faces": True,
        "image_mask": "mask",
        "color_corrections": None,
        "init_images": [source],
    }


def test_webui_state_dict_keys_are_unwrapped():
    from sd_webui_supir.hosts.base import webui_sdxl_tensors

    t = torch.zeros(1)
    state = {
        "conditioner.embedders.0.wrapped.transformer.text_model.embeddings.token_embedding.wrapped.weight": t,
        "conditioner.embedders.1.wrapped.model.ln_final.weight": t,
        "model.diffusion_model.out.0.weight": t,
        "alphas_cumprod": t,
    }
    assert set(webui_sdxl_tensors(state)) == {
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "conditioner.embedders.1.model.ln_final.weight",
        "model.diffusion_model.out.0.weight",
    }


def test_readme_documents_the_argument_order():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (\w+) \|.*?(?:\| (\d+) \| (\w+) \|.*)?$", readme, re.MULTILINE)
    documented = {int(i): name for row in rows for i, name in (row[:2], row[2:]) if i}
    assert documented == dict(enumerate(ARG_NAMES))
