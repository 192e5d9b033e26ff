"""SUPIR's precision inside the webui: the Settings choice, and the webui's own precision flags on auto."""

from __future__ import annotations

import pytest
import torch
from modules import devices, shared

from sd_webui_supir.precision import webui_precision
from supir_engine.device_policy import PrecisionError

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.fixture
def gpu(monkeypatch):
    """An RTX 3060 (sm_86) and the webui's default precision (fp16, no flags); each test changes some."""

    def card(name: str, capability: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)

    monkeypatch.setattr(torch.version, "hip", None)
    card("NVIDIA GeForce RTX 3060", (8, 6))
    for flag, value in {"no_half": False, "no_half_vae": False, "upcast_sampling": False}.items():
        monkeypatch.setattr(shared.cmd_opts, flag, value)
    monkeypatch.setattr(shared.cmd_opts, "precision", "autocast")
    for name in ("dtype", "dtype_vae", "dtype_unet"):
        monkeypatch.setattr(devices, name, F16)
    monkeypatch.setattr(devices, "unet_needs_upcast", False)
    monkeypatch.setitem(shared.opts.data, "supir_precision", "auto")
    return card


def dtypes(precision) -> tuple[torch.dtype, torch.dtype, torch.dtype]:
    return precision.unet, precision.text, precision.vae


def test_default_webui_precision_keeps_the_vae_out_of_fp16(gpu):
    assert dtypes(webui_precision(torch.device("cuda"))) == (F16, F16, BF16)
    gpu("Tesla T4", (7, 5))
    assert dtypes(webui_precision(torch.device("cuda"))) == (F16, F16, F32)


@pytest.mark.parametrize("flag", ["no_half", "precision"])
def test_no_half_and_precision_full_mean_fp32(gpu, monkeypatch, flag):
    monkeypatch.setattr(shared.cmd_opts, flag, "full" if flag == "precision" else True)
    precision = webui_precision(torch.device("cuda"))
    assert dtypes(precision) == (F32, F32, F32)
    assert "the webui asks for" in precision.reason


def test_no_half_vae_and_upcast_sampling(gpu, monkeypatch):
    monkeypatch.setattr(shared.cmd_opts, "no_half_vae", True)
    assert dtypes(webui_precision(torch.device("cuda"))) == (F16, F16, F32)
    monkeypatch.setattr(devices, "unet_needs_upcast", True)
    assert dtypes(webui_precision(torch.device("cuda"))) == (F32, F16, F32)


def test_webui_bf16_is_followed(gpu, monkeypatch):
    for name in ("dtype", "dtype_vae", "dtype_unet"):
        monkeypatch.setattr(devices, name, BF16)
    assert dtypes(webui_precision(torch.device("cuda"))) == (BF16, BF16, BF16)


def test_gtx_16xx_is_kept_out_of_fp16_whatever_the_webui_uses(gpu):
    gpu("NVIDIA GeForce GTX 1660 SUPER", (7, 5))
    assert dtypes(webui_precision(torch.device("cuda"))) == (F32, F32, F32)


def test_settings_choice_wins_over_the_webui(gpu, monkeypatch):
    monkeypatch.setattr(shared.cmd_opts, "no_half", True)
    monkeypatch.setitem(shared.opts.data, "supir_precision", "fp16")
    assert dtypes(webui_precision(torch.device("cuda"))) == (F16, F16, BF16)
    monkeypatch.setitem(shared.opts.data, "supir_precision", "fp64")
    with pytest.raises(PrecisionError, match="Settings > SUPIR > precision"):
        webui_precision(torch.device("cuda"))
