from __future__ import annotations

import pytest
import torch
from conftest import load_case

from supir_engine.colorfix import (
    ColorFixError,
    adain_color_fix,
    apply_color_fix,
    run_colorfix_case,
    wavelet_color_fix,
)
from supir_engine.errors import SupirError

ATOL, RTOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def e1():
    return load_case("e1_colorfix")


def test_fixture_runner_matches_original(e1):
    pairs = run_colorfix_case(*e1)
    assert set(pairs) == {"out_wavelet", "out_adain"}
    for expected, actual in pairs.values():
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("kind", "key"), [("Wavelet", "out_wavelet"), ("AdaIn", "out_adain")])
def test_apply_original_names(e1, kind, key):
    _, t = e1
    out = apply_color_fix(kind, t["content"], t["style"])
    torch.testing.assert_close(out, t[key], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("kind", ["none", "None", "NONE"])
def test_none_returns_content(e1, kind):
    _, t = e1
    assert apply_color_fix(kind, t["content"], t["style"]) is t["content"]


def test_unknown_kind_is_a_value_error(e1):
    _, t = e1
    with pytest.raises(ValueError, match="'wavelet', 'adain', 'none'") as info:
        apply_color_fix("histogram", t["content"], t["style"])
    assert isinstance(info.value, SupirError)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_computed_in_float32(e1, dtype):
    _, t = e1
    content, style = t["content"].to(dtype), t["style"].to(dtype)
    for fix in (wavelet_color_fix, adain_color_fix):
        out = fix(content, style)
        assert out.dtype == dtype
        assert torch.equal(out, fix(content.float(), style.float()).to(dtype))


def test_float64_stays_float64(e1):
    _, t = e1
    out = wavelet_color_fix(t["content"].double(), t["style"].double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), t["out_wavelet"], atol=ATOL, rtol=RTOL)


def test_wavelet_of_an_image_with_itself_is_the_image():
    x = torch.randn(2, 3, 20, 9)  # the blur radius (16) exceeds the image: replicate padding still works
    torch.testing.assert_close(wavelet_color_fix(x, x), x, atol=1e-5, rtol=0)


def test_adain_matches_reference_statistics():
    content, reference = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 24) * 3 + 1
    out = adain_color_fix(content, reference)  # only statistics of the reference: its size may differ
    torch.testing.assert_close(out.mean(dim=(2, 3)), reference.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.flatten(2).std(2), reference.flatten(2).std(2), atol=1e-4, rtol=1e-4)


def test_shape_errors():
    with pytest.raises(ColorFixError, match="same shape"):
        wavelet_color_fix(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 16))
    with pytest.raises(ColorFixError, match="batch and channel"):
        adain_color_fix(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    with pytest.raises(ColorFixError, match=r"\[B, C, H, W\]"):
        apply_color_fix("wavelet", torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))


@pytest.mark.parametrize("kind", ["wavelet", "adain"])
def test_no_host_reads(kind):
    """Runs on the meta device, where any read of tensor values would raise."""
    x = torch.empty(1, 3, 32, 48, device="meta", dtype=torch.bfloat16)
    out = apply_color_fix(kind, x, x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device.type == "meta"
