"""The device precision policy: each card class emulated through torch.cuda's queries."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from supir_engine.cli import build_parser, load_pipeline, memory_from_args
from supir_engine.device_policy import PrecisionError, precision_for
from supir_engine.memory import MemoryConfig, budget_config
from supir_engine.pipeline import SUPIRPipeline
from supir_engine.settings import UpscaleSettings
from supir_engine.tiny import write_demo_checkpoints

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def emulate_cuda(monkeypatch, name: str, capability: tuple[int, int]) -> None:
    """torch.cuda answers as a GPU called ``name`` of ``capability`` would (NVIDIA, not ROCm)."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


# (GPU name, compute capability) -> (UNet, text, VAE) compute dtypes
CARDS = [
    ("NVIDIA H100 80GB HBM3", (9, 0), (F16, F16, BF16)),
    ("NVIDIA GeForce RTX 4060", (8, 9), (F16, F16, BF16)),
    ("NVIDIA GeForce RTX 3060", (8, 6), (F16, F16, BF16)),
    ("NVIDIA A100-SXM4-40GB", (8, 0), (F16, F16, BF16)),
    ("Tesla T4", (7, 5), (F16, F16, F32)),
    ("NVIDIA GeForce RTX 2070 SUPER", (7, 5), (F16, F16, F32)),
    ("Tesla V100-SXM2-16GB", (7, 0), (F16, F16, F32)),
    ("NVIDIA GeForce GTX 1660 SUPER", (7, 5), (F32, F32, F32)),
    ("NVIDIA GeForce GTX 1650", (7, 5), (F32, F32, F32)),
    ("NVIDIA T1000 8GB", (7, 5), (F32, F32, F32)),
    ("NVIDIA GeForce MX450", (7, 5), (F32, F32, F32)),
    ("NVIDIA GeForce GTX 1080 Ti", (6, 1), (F32, F32, F32)),
    ("Tesla P100-PCIE-16GB", (6, 0), (F32, F32, F32)),
]


@pytest.mark.parametrize(("name", "capability", "expected"), CARDS, ids=[c[0] for c in CARDS])
def test_each_card_class_gets_its_dtypes(monkeypatch, name, capability, expected):
    emulate_cuda(monkeypatch, name, capability)
    precision = precision_for(torch.device("cuda"))
    assert (precision.unet, precision.text, precision.vae) == expected
    assert precision.vae_storage == precision.vae  # the VAE is stored as it computes (never fp16)
    assert precision.storage == F16 and precision.fp8_storage
    assert name in precision.reason


def test_cpu_and_mps(monkeypatch):
    cpu = precision_for("cpu")
    assert (cpu.unet, cpu.text, cpu.vae, cpu.storage) == (F32, F32, F32, F16)
    for macos14 in (True, False):
        monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor, v=macos14: v)
        mps = precision_for(torch.device("mps"))
        assert (mps.unet, mps.text, mps.vae) == (F16, F16, F32) and not mps.fp8_storage
        with pytest.raises(PrecisionError, match="float8"):
            mps.storage_dtypes("fp8")
        if macos14:
            assert precision_for(torch.device("mps"), "bf16").unet == BF16
        else:
            with pytest.raises(PrecisionError, match="macOS 14"):
                precision_for(torch.device("mps"), "bf16")


def test_requested_precision_never_computes_the_vae_in_fp16(monkeypatch):
    emulate_cuda(monkeypatch, "Tesla T4", (7, 5))
    fp16 = precision_for("cuda", "fp16")
    assert (fp16.unet, fp16.vae) == (F16, F32)
    fp32 = precision_for("cuda", "fp32")
    assert {fp32.unet, fp32.text, fp32.vae} == {F32}
    bf16 = precision_for("cuda", "bf16")
    assert bf16.vae == BF16 and "emulated" in bf16.reason
    emulate_cuda(monkeypatch, "NVIDIA GeForce GTX 1660", (7, 5))
    assert "NaN" in precision_for("cuda", "fp16").reason
    with pytest.raises(PrecisionError, match="auto, fp32, fp16, bf16"):
        precision_for("cpu", "fp64")


def test_host_wishes_follow_except_where_the_device_refuses(monkeypatch):
    emulate_cuda(monkeypatch, "NVIDIA GeForce RTX 3060", (8, 6))
    wishes = precision_for("cuda", unet=F32, text=F16, vae=F16, source="the webui")
    assert (wishes.unet, wishes.text, wishes.vae) == (F32, F16, BF16)  # VAE fp16 refused
    assert "the webui asks for UNet fp32" in wishes.reason
    emulate_cuda(monkeypatch, "NVIDIA GeForce GTX 1650", (7, 5))
    broken = precision_for("cuda", unet=F16, text=F16, vae=F16)
    assert (broken.unet, broken.text, broken.vae) == (F32, F32, F32)


def test_storage_choices(monkeypatch):
    emulate_cuda(monkeypatch, "NVIDIA A100-SXM4-40GB", (8, 0))
    precision = precision_for("cuda")
    assert precision.storage_dtypes("auto") == (F16, BF16)
    assert precision.storage_dtypes("fp8") == (torch.float8_e4m3fn, BF16)
    assert precision.storage_dtypes("fp32") == (F32, F32)


def test_pipeline_takes_its_dtypes_from_the_policy(monkeypatch, tmp_path):
    emulate_cuda(monkeypatch, "NVIDIA GeForce GTX 1660 Ti", (7, 5))
    sdxl, supir = write_demo_checkpoints(tmp_path)
    pipe = SUPIRPipeline.from_files(sdxl, supir, "cuda")  # nothing runs: only the dtypes are read
    assert (pipe.dtype, pipe.text_dtype, pipe.vae_dtype) == (F32, F32, F32)
    assert pipe.model.first_stage_model.decoder.conv_in.weight.dtype == F32
    assert pipe.model.unet.out[2].weight.dtype == F16
    emulate_cuda(monkeypatch, "Tesla T4", (7, 5))
    t4 = SUPIRPipeline(pipe.model, "cuda")
    assert (t4.dtype, t4.vae_dtype) == (F16, F32)
    assert SUPIRPipeline(pipe.model, "cuda", vae_dtype=BF16).vae_dtype == BF16  # callers may still override


def test_cli_defaults_are_auto_and_precision_reaches_the_pipeline(tmp_path):
    args = build_parser().parse_args(["upscale", "x.png"])
    assert (args.precision, args.dtype) == ("auto", "auto")
    assert memory_from_args(args).policy == "auto"
    assert MemoryConfig().policy == "auto" and budget_config(None, None).policy == "auto"
    assert build_parser().parse_args(["serve"]).precision == "auto"

    sdxl, supir = write_demo_checkpoints(tmp_path)
    args = build_parser().parse_args(["upscale", "x.png", "--precision", "bf16", "--device", "cpu"])
    pipe, _ = load_pipeline(sdxl, supir, args)
    assert (pipe.dtype, pipe.text_dtype, pipe.vae_dtype) == (BF16, BF16, BF16)


def test_result_and_png_say_which_precision_ran(tmp_path):
    from supir_engine.upscale_io import save_png

    sdxl, supir = write_demo_checkpoints(tmp_path)
    pipe = SUPIRPipeline.from_files(sdxl, supir, "cpu")
    settings = UpscaleSettings(scale=1, min_size=32, steps=1, seed=1, s_churn=0.0)
    result = pipe.upscale(Image.new("RGB", (32, 32), (90, 120, 150)), settings)
    assert result.precision.label == "UNet fp32 / text fp32 / VAE fp32"
    path = save_png(result, tmp_path / "out.png")
    assert "SUPIR precision: UNet fp32 / text fp32 / VAE fp32" in Image.open(path).text["parameters"]


def test_widest_float():
    from supir_engine.device_policy import widest_float

    assert widest_float("cpu") == torch.float64 and widest_float(torch.device("mps")) == torch.float32
