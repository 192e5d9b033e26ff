"""Non-finite values: an fp32 retry for a 16-bit VAE, a clear error for the UNet, never a black image."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from supir_engine.errors import NonFiniteError, SupirError
from supir_engine.models import build_supir
from supir_engine.pipeline import SUPIRPipeline
from supir_engine.preprocess import to_pil
from supir_engine.settings import UpscaleSettings
from supir_engine.tiny import TINY_CONFIG, random_state_dict

FAST = UpscaleSettings(scale=2, min_size=64, steps=2, seed=5, s_churn=0.0)
ADVICE = ("--precision fp32", "Settings > SUPIR > 'precision SUPIR computes in'", "--no-half")


@pytest.fixture(scope="module")
def model():
    model = build_supir(TINY_CONFIG, "meta")
    model.load_state_dict(random_state_dict(TINY_CONFIG, seed=3), strict=False, assign=True)
    model.denoiser.reset()
    return model.eval().requires_grad_(False)


def image(size: int = 32) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, 0.5 + 0.4 * np.sin(6 * x * y)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def nan_in(monkeypatch, module: torch.nn.Module, dtypes: tuple[torch.dtype, ...]) -> list[torch.dtype]:
    """``module`` returns NaN for inputs of ``dtypes``; returns the list of input dtypes it saw."""
    real, seen = module.forward, []

    def forward(x, *args, **kwargs):
        seen.append(x.dtype)
        out = real(x, *args, **kwargs)
        return out * float("nan") if x.dtype in dtypes else out

    monkeypatch.setattr(module, "forward", forward)
    return seen


def test_to_pil_refuses_nan_instead_of_returning_black():
    pixels = torch.zeros(3, 4, 4)
    pixels[1, 2, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN"):
        to_pil(pixels)
    assert to_pil(torch.zeros(3, 4, 4)).getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize(("denoise_stage", "what"), [(False, "the VAE decode"), (True, "stage 1 (VAE)")])
def test_a_16_bit_vae_nan_is_retried_once_in_fp32_and_noted(model, monkeypatch, caplog, denoise_stage, what):
    """Stage 1 decodes too (with its denoise stage on): its NaN is retried there."""
    vae = model.first_stage_model
    seen = nan_in(monkeypatch, vae.post_quant_conv, (torch.bfloat16,))
    pipeline = SUPIRPipeline(model, "cpu", vae_dtype=torch.bfloat16)
    with caplog.at_level(logging.WARNING):
        result = pipeline.upscale(image(), FAST.replace(denoise_stage=denoise_stage))
    expected = [f"{what} gave NaN/infinite values in bfloat16; it was run again in float32"]
    if denoise_stage:
        expected.append(expected[0].replace(what, "the VAE decode"))
        assert seen == [torch.bfloat16, torch.float32] * 2
    else:
        assert seen == [torch.bfloat16, torch.float32]
    assert result.notes == expected
    assert all(note in caplog.text for note in expected)
    assert np.asarray(result.image).std() > 0
    again = pipeline.upscale(image(), FAST.replace(denoise_stage=denoise_stage))
    assert again.stage1_cached and again.notes == expected  # a cached stage 1 keeps its note


def test_nan_from_the_vae_in_fp32_too_stops_with_an_error(model, monkeypatch):
    nan_in(monkeypatch, model.first_stage_model.post_quant_conv, (torch.bfloat16, torch.float32))
    pipeline = SUPIRPipeline(model, "cpu", vae_dtype=torch.bfloat16)
    with pytest.raises(NonFiniteError, match="the VAE decode produced NaN/infinite values in float32"):
        pipeline.upscale(image(), FAST.replace(denoise_stage=False))


def test_nan_from_the_unet_names_the_dtype_and_the_precision_setting(model, monkeypatch):
    nan_in(monkeypatch, model.unet, (torch.bfloat16,))
    pipeline = SUPIRPipeline(model, "cpu", dtype=torch.bfloat16)
    with pytest.raises(NonFiniteError) as failure:
        pipeline.upscale(image(), FAST)
    message = str(failure.value)
    assert isinstance(failure.value, SupirError) and "bfloat16" in message
    assert all(advice in message for advice in ADVICE)


def test_nan_from_the_unet_in_fp32_says_what_else_to_check(model, monkeypatch):
    nan_in(monkeypatch, model.unet, (torch.float32,))
    with pytest.raises(NonFiniteError, match="in float32: the model files may be damaged"):
        SUPIRPipeline(model, "cpu").upscale(image(), FAST)
