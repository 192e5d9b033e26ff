"""The sampler loop queues its host-made tensors (timesteps, CPU-generator noise) without blocking copies."""

from __future__ import annotations

import pytest
import torch

import supir_engine.pipeline  # noqa: F401 - import before any fake mode: it computes real tables
from bench.fakecuda import FakeCuda
from supir_engine.memory import apply_storage
from supir_engine.models import build_supir
from supir_engine.sampling import (
    SAMPLERS,
    SCHEDULES,
    Conditioning,
    Denoiser,
    GuidedConditioning,
    SamplerSettings,
    generator_noise,
)
from supir_engine.tiny import TINY_CONFIG


class HostCopies:
    """Records, once ``active``, device tensors made from host data and blocking host-to-device copies."""

    def __init__(self, monkeypatch):
        self.active = False
        self.made: list[str] = []
        self.blocking: list[str] = []
        real_tensor, real_to = torch.tensor, torch.Tensor.to

        def tensor(data, *args, **kwargs):
            out = real_tensor(data, *args, **kwargs)
            if self.active and out.device.type != "cpu":
                self.made.append(f"torch.tensor({data!r}) on {out.device}")
            return out

        def to(source, *args, **kwargs):
            out = real_to(source, *args, **kwargs)
            copied = source.device.type == "cpu" and out.device.type != "cpu"
            queued = kwargs.get("non_blocking", False) and source.is_pinned()
            if self.active and copied and not queued:
                self.blocking.append(f"{tuple(source.shape)} to {out.device}")
            return out

        monkeypatch.setattr(torch, "tensor", tensor)
        monkeypatch.setattr(torch.Tensor, "to", to)


class Watched(Denoiser):
    """Turns the recorder on at the first network call: what comes before the loop may block."""

    def __init__(self, inner: Denoiser, copies: HostCopies):
        super().__init__(inner.unet, inner.control_model, inner.dtype)
        self.copies = copies

    def __call__(self, *args, **kwargs):
        self.copies.active = True
        return super().__call__(*args, **kwargs)


@pytest.mark.parametrize(
    ("sampler", "tiled"), [("restore_edm", False), ("restore_edm", True), ("restore_dpmpp_2m", False)]
)
def test_no_blocking_host_copies_in_the_step_loop(monkeypatch, sampler, tiled):
    h = w = 8
    settings = SamplerSettings(
        s_churn=2.0,  # EDM draws noise at every step
        restoration_scale=4.0,
        tile_size=4 if tiled else None,
        tile_stride=4 if tiled else None,
    )
    with FakeCuda(total_memory=1 << 30), torch.inference_mode():
        model = build_supir(TINY_CONFIG, "meta").eval()
        apply_storage(model, torch.float16, torch.bfloat16)
        model.unet.to("cuda"), model.control_model.to("cuda")
        context, vector = TINY_CONFIG.unet.context_dim, TINY_CONFIG.unet.adm_in_channels
        cond = Conditioning(
            torch.randn(1, 4, context, device="cuda"),
            torch.randn(1, vector, device="cuda"),
            torch.randn(1, 4, h, w, device="cuda"),
        )
        guided = GuidedConditioning(cond, cond, torch.randn(1, 4, h, w, device="cuda"))
        x = torch.randn(1, 4, h, w, device="cuda")
        noise = generator_noise(torch.Generator("cpu").manual_seed(1))
        copies = HostCopies(monkeypatch)
        denoiser = Watched(Denoiser(model.unet, model.control_model, torch.float16), copies)
        out = SAMPLERS[sampler](denoiser, x, SCHEDULES[sampler](2), guided, settings, None, noise)
        monkeypatch.undo()
    assert copies.active and out.device.type == "cuda"
    assert copies.made == [] and copies.blocking == []


def test_cpu_generator_noise_is_the_same_on_every_device():
    on_cpu = generator_noise(torch.Generator("cpu").manual_seed(3))(torch.empty(2, 4, 3, 3))
    expected = torch.randn(2, 4, 3, 3, generator=torch.Generator("cpu").manual_seed(3))
    assert torch.equal(on_cpu, expected)
