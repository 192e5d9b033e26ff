"""Device OOM: everything the failed run held is freed before the host gets the device back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import supir_engine.pipeline  # noqa: F401 - import before any fake mode: it computes real tables
import supir_engine.tiled_vae  # noqa: F401
from bench.fakecuda import FakeCuda
from supir_engine import sampling
from supir_engine.errors import DeviceMemoryError
from supir_engine.memory import MemoryConfig, apply_storage
from supir_engine.models import build_supir
from supir_engine.pipeline import SUPIRPipeline
from supir_engine.settings import UpscaleSettings
from supir_engine.tiny import TINY_CONFIG

SETTINGS = UpscaleSettings(scale=2, min_size=0, steps=3, seed=1, s_churn=0.0)


class RecordingHost:
    """Records the tracker's live device bytes when the host gets the device back."""

    def __init__(self, tracker: FakeCuda):
        self.tracker = tracker
        self.bytes_at_release: list[int] = []

    def acquire_device(self) -> None:
        pass

    def release_device(self) -> None:
        self.bytes_at_release.append(self.tracker.current_bytes)

    def progress(self, stage: str, step: int, total: int) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def _oom() -> torch.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _fail_at_sampler_step(monkeypatch, step: int) -> None:
    real = sampling.SAMPLERS["restore_edm"]

    def failing(denoiser, x, sigmas, guided, settings, callback=None, noise=None):
        def on_step(info):
            callback(info)
            if info.step == step:
                raise _oom()

        return real(denoiser, x, sigmas, guided, settings, on_step, noise)

    monkeypatch.setitem(sampling.SAMPLERS, "restore_edm", failing)


def _fail_in_decoder(monkeypatch, pipeline: SUPIRPipeline, call: int) -> None:
    """OOM inside the VAE decoder at its ``call``-th use (1: stage 1's decode, 2: the final decode)."""
    up = pipeline.model.first_stage_model.decoder.up[0]  # after conv_in and mid: activations are live
    real, calls = up.forward, []

    def forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise _oom()
        return real(*args, **kwargs)

    monkeypatch.setattr(up, "forward", forward)


@pytest.mark.parametrize(
    ("where", "policy"), [("sampler step", "full"), ("stage 1 decode", "stages"), ("final decode", "stages")]
)
def test_device_is_empty_before_the_host_restores_and_the_next_run_works(monkeypatch, where, policy):
    image = Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8))
    with FakeCuda(total_memory=1 << 30) as fc:
        model = build_supir(TINY_CONFIG, "meta").eval()
        apply_storage(model, torch.float16, torch.bfloat16)
        pipeline = SUPIRPipeline(model, "cuda", memory=MemoryConfig(policy=policy, pin_memory=False))
        host = RecordingHost(fc)
        baseline = fc.current_bytes
        with monkeypatch.context() as patch:
            if where == "sampler step":
                _fail_at_sampler_step(patch, 1)
            else:
                _fail_in_decoder(patch, pipeline, 1 if where == "stage 1 decode" else 2)
            with pytest.raises(DeviceMemoryError, match="ran out of memory.*memory policy") as failure:
                pipeline.upscale(image, SETTINGS, host)
        cause = failure.value.__cause__
        assert isinstance(cause, torch.OutOfMemoryError) and cause.__traceback__ is None
        assert cause.__notes__[0].startswith("Traceback (its frames were released")  # still printed
        assert host.bytes_at_release == [baseline]
        result = pipeline.upscale(image, SETTINGS, host)
        assert result.output_size == (64, 64)
        assert host.bytes_at_release == [baseline, baseline]
