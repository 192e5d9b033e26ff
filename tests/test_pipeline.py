from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from PIL import Image
from safetensors.torch import load_file, save_file

from supir_engine.checkpoints import LoadOptions, load_supir
from supir_engine.errors import CancelledError
from supir_engine.pipeline import SUPIRPipeline
from supir_engine.settings import UpscaleSettings


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    """The reference tiny model plus the reference tiny text towers as one merged file."""
    weights = load_file(str(FIXTURES / "tiny_model.safetensors"))
    weights.update(load_file(str(FIXTURES / "tiny_text_encoders.safetensors")))
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    path = tmp_path_factory.mktemp("models") / "tiny_merged.safetensors"
    save_file(weights, str(path))
    return path


@pytest.fixture(scope="module")
def pipeline(tiny_model_file) -> SUPIRPipeline:
    heads = json.loads((FIXTURES / "tiny_model.json").read_text())["config"]["params"]["network_config"]
    options = LoadOptions(
        dtype=torch.float32,
        num_head_channels=heads["params"]["num_head_channels"],
        clip_l_heads=2,
        bigg_heads=2,
    )
    model, _ = load_supir(tiny_model_file, None, options)
    return SUPIRPipeline(model, "cpu")


def smooth_image(size: int = 64) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, 0.5 + 0.4 * np.sin(6 * x * y)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


FAST = UpscaleSettings(scale=2, min_size=64, steps=4, seed=123, s_churn=0.0)


class RecordingHost:
    def __init__(self, stop_after_step: int | None = None):
        self.events: list[tuple[str, int, int]] = []
        self.stop_after_step = stop_after_step
        self.acquired = self.released = 0

    def acquire_device(self) -> None:
        self.acquired += 1

    def release_device(self) -> None:
        self.released += 1

    def progress(self, stage: str, step: int, total: int) -> None:
        self.events.append((stage, step, total))

    def should_stop(self) -> bool:
        steps = [s for stage, s, _ in self.events if stage == "sampling"]
        return self.stop_after_step is not None and bool(steps) and steps[-1] >= self.stop_after_step


def test_upscale_64_to_128_plain(pipeline):
    host = RecordingHost()
    result = pipeline.upscale(smooth_image(), FAST, host)
    assert result.image.size == (128, 128) and result.image.mode == "RGB"
    assert result.settings.seed == 123
    assert [s for stage, s, _ in host.events if stage == "sampling"][-4:] == [1, 2, 3, 4]
    assert host.acquired == host.released == 1
    # 4 steps, cond and uncond batched together: one network evaluation per step
    assert result.network_evaluations == 4
    assert np.asarray(result.image).std() > 1.0


def test_upscale_tiled_sampling_and_vae(pipeline):
    tiled = FAST.replace(tile_size=8, tile_stride=4, vae_encoder_tile=64, vae_decoder_tile=8)
    result = pipeline.upscale(smooth_image(), tiled)
    assert result.image.size == (128, 128)


def test_same_seed_same_image_and_stage1_cache(pipeline):
    pipeline.clear_cache()
    first = pipeline.upscale(smooth_image(), FAST)
    second = pipeline.upscale(smooth_image(), FAST.replace(cfg_scale=2.0))
    third = pipeline.upscale(smooth_image(), FAST)
    assert not first.stage1_cached and second.stage1_cached and third.stage1_cached
    assert "stage1" not in third.timings
    assert np.array_equal(np.asarray(first.image), np.asarray(third.image))
    assert not np.array_equal(np.asarray(first.image), np.asarray(second.image))


def test_random_seed_is_drawn_and_reported(pipeline):
    result = pipeline.upscale(smooth_image(), FAST.replace(seed=-1, steps=1))
    assert 0 <= result.settings.seed < 2**32
    again = pipeline.upscale(smooth_image(), FAST.replace(seed=result.settings.seed, steps=1))
    assert np.array_equal(np.asarray(result.image), np.asarray(again.image))


def test_cancel_stops_within_one_step_and_releases_the_device(pipeline):
    host = RecordingHost(stop_after_step=2)
    with pytest.raises(CancelledError):
        pipeline.upscale(smooth_image(), FAST.replace(steps=10), host)
    sampled = [s for stage, s, _ in host.events if stage == "sampling"]
    assert max(sampled) == 2
    assert host.acquired == host.released == 1
    result = pipeline.upscale(smooth_image(), FAST)  # nothing partial left behind
    assert result.image.size == (128, 128)


def test_stage1_can_be_switched_off(pipeline):
    on = pipeline.upscale(smooth_image(), FAST)
    off = pipeline.upscale(smooth_image(), FAST.replace(denoise_stage=False))
    assert off.image.size == on.image.size
    assert not np.array_equal(np.asarray(on.image), np.asarray(off.image))
