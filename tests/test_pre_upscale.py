from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from test_pipeline import FAST, RecordingHost, pipeline, smooth_image, tiny_model_file  # noqa: F401
from tiny_upscaler import write_compact

from supir_engine import tiled_upscale
from supir_engine.errors import CancelledError, CheckpointFormatError, UnsafeCheckpointError
from supir_engine.pre_upscale import PreUpscalerError, label, model_upscale, passes_needed, prepare_input
from supir_engine.preprocess import prepare_image, target_size
from supir_engine.settings import UpscaleSettings
from supir_engine.upscaler_files import UnsupportedUpscalerError, load_upscaler

RADIUS = 4  # write_compact's default: 4 chained 3x3 convs


@pytest.fixture(scope="module")
def x2_file(tmp_path_factory):
    return write_compact(tmp_path_factory.mktemp("upscalers") / "compact_x2.safetensors", 2)


@pytest.fixture(scope="module")
def x2(x2_file):
    return load_upscaler(x2_file)


def noise_image(h: int = 72, w: int = 90, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


class StopHost(RecordingHost):
    def __init__(self, stop_at: int):
        super().__init__()
        self.stop_at = stop_at

    def should_stop(self) -> bool:
        return any(stage == "preupscale" and step >= self.stop_at for stage, step, _ in self.events)


def test_default_lanczos_is_the_original_resize():
    image = noise_image()
    settings = UpscaleSettings(scale=2, min_size=64)
    assert settings.pre_upscaler == "lanczos"
    expected, _ = prepare_image(image, 2, 64, 32)
    actual, _ = prepare_input(image, settings, RecordingHost())
    assert torch.equal(actual, expected)


def test_bicubic_is_pillow_bicubic_at_the_target_size():
    image = noise_image()
    h, w = target_size(72, 90, 2, 64, 32)
    actual, size = prepare_input(image, UpscaleSettings(scale=2, min_size=64, pre_upscaler="bicubic"), None)
    expected = np.asarray(image.resize((w, h), Image.BICUBIC)).astype(np.float64) / 255 * 2 - 1
    assert size == (h, w)
    assert np.allclose(actual[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("scale", [2.0, 3.0, 1.5])
def test_model_output_size_is_the_target(x2_file, scale):
    image = noise_image(40, 56)
    settings = UpscaleSettings(scale=scale, min_size=64, pre_upscaler=str(x2_file), pre_upscale_tile=64)
    tensor, size = prepare_input(image, settings, RecordingHost())
    assert size == target_size(40, 56, scale, 64, 32)
    assert tuple(tensor.shape) == (1, 3, *size)
    assert tensor.min() >= -1 and tensor.max() <= 1


def test_passes_repeat_the_model_scale():
    assert passes_needed((100, 100), (200, 200), 2) == 1
    assert passes_needed((100, 100), (300, 300), 2) == 2
    assert passes_needed((100, 100), (400, 400), 2) == 2
    assert passes_needed((100, 100), (401, 400), 2) == 3
    assert passes_needed((100, 100), (400, 400), 4) == 1
    assert passes_needed((100, 100), (100, 90), 4) == 0
    assert passes_needed((100, 100), (150, 150), 1) == 1


def test_two_passes_report_their_tiles(x2):
    host = RecordingHost()
    out = model_upscale(noise_image(40, 40), x2, (160, 160), torch.device("cpu"), tile=32, host=host)
    assert out.shape == (160, 160, 3)
    totals = [total for stage, _, total in host.events if stage == "preupscale"]
    # 40 px in 32 px tiles (overlap 16): 2x2 tiles; then 80 px: 4x4 tiles
    assert totals == [4] * 4 + [16] * 16
    steps = [step for stage, step, _ in host.events if stage == "preupscale"]
    assert steps == [*range(1, 5), *range(1, 17)]


def test_tiled_equals_untiled_away_from_the_border(x2):
    image = noise_image(150, 170, seed=3)
    whole = model_upscale(image, x2, (300, 340), torch.device("cpu"), tile=1024).astype(int)
    tiled = model_upscale(image, x2, (300, 340), torch.device("cpu"), tile=64, overlap=32).astype(int)
    m = 2 * RADIUS
    assert np.abs(whole[m:-m, m:-m] - tiled[m:-m, m:-m]).max() <= 1


def test_feathering_blends_a_model_wider_than_the_overlap(tmp_path):
    wide = load_upscaler(write_compact(tmp_path / "wide.safetensors", 2, convs=10))  # radius 12
    image = noise_image(96, 96, seed=5)
    whole = model_upscale(image, wide, (192, 192), torch.device("cpu"), tile=1024).astype(int)
    tiled = model_upscale(image, wide, (192, 192), torch.device("cpu"), tile=48, overlap=16).astype(int)
    inner = (slice(24, -24), slice(24, -24))
    assert np.abs(whole[inner] - tiled[inner]).mean() < 2.0


def test_constant_image_stays_constant_across_tile_borders(x2):
    image = Image.new("RGB", (130, 110), (90, 140, 200))
    out = model_upscale(image, x2, (220, 260), torch.device("cpu"), tile=48, overlap=16)
    # A random x2 pixel-shuffle net maps a constant to a 2x2-periodic pattern: the interior must repeat it
    # exactly, across tile borders too.
    m = 2 * RADIUS
    interior = out[m:-m, m:-m].astype(int)
    cell = interior[:2, :2]
    periodic = np.tile(cell, (interior.shape[0] // 2, interior.shape[1] // 2, 1))
    assert np.abs(interior - periodic).max() <= 1
    assert np.abs(interior - periodic).mean() < 0.01


def test_cancel_between_tiles(x2):
    host = StopHost(stop_at=2)
    with pytest.raises(CancelledError, match="tile 2 of"):
        model_upscale(noise_image(64, 64), x2, (128, 128), torch.device("cpu"), tile=32, host=host)


def test_tile_size_from_free_memory(monkeypatch):
    free = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 8 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    cuda = torch.device("cuda")
    side = tiled_upscale.tile_size_for(cuda, 4, 2)
    per_pixel = 2 * (64 * 12 + 6 * 16)
    assert side % 32 == 0 and side * side * per_pixel <= free / 2 < (side + 32) ** 2 * per_pixel
    free = 64 << 30
    assert tiled_upscale.tile_size_for(cuda, 4, 2) == tiled_upscale.MAX_TILE
    free = 1 << 20
    assert tiled_upscale.tile_size_for(cuda, 4, 2) == tiled_upscale.MIN_TILE
    assert tiled_upscale.tile_size_for(torch.device("cpu"), 4) == tiled_upscale.CPU_TILE


def test_pth_loads_through_the_weights_only_path(tmp_path, x2):
    model = load_upscaler(write_compact(tmp_path / "compact.pth", 2))
    assert model.scale == 2
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(model(x), x2(x))


class _Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickles_with_code_are_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"body.0.weight": _Payload()}))
    with pytest.raises(UnsafeCheckpointError, match="safetensors"):
        load_upscaler(path)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin"])
def test_other_suffixes_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({}, path)
    with pytest.raises(CheckpointFormatError, match="safetensors"):
        load_upscaler(path)


def test_unknown_architecture_is_reported(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "nothing.safetensors"
    save_file({"foo.weight": torch.zeros(3)}, str(path))
    with pytest.raises(UnsupportedUpscalerError, match="spandrel"):
        load_upscaler(path)


def test_unknown_name_is_reported():
    settings = UpscaleSettings(scale=2, min_size=64, pre_upscaler="4x-Nonexistent")
    with pytest.raises(PreUpscalerError, match="lanczos or bicubic"):
        prepare_input(noise_image(), settings, RecordingHost())


def test_host_upscaler_is_asked_by_name():
    class Host(RecordingHost):
        def image_upscaler(self, name):
            half = lambda image, size: image.resize((size[1] // 2, size[0] // 2))  # noqa: E731
            return half if name == "Mine" else None

    host = Host()
    settings = UpscaleSettings(scale=2, min_size=64, pre_upscaler="Mine")
    tensor, size = prepare_input(noise_image(), settings, host)
    assert tuple(tensor.shape[-2:]) == size == target_size(72, 90, 2, 64, 32)
    assert host.events == [("preupscale", 0, 1), ("preupscale", 1, 1)]


def test_label_hides_folders(x2_file):
    assert label(str(x2_file)) == "compact_x2.safetensors"
    assert label("bicubic") == "bicubic"


def test_settings_check_the_tile():
    with pytest.raises(ValueError, match="pre_upscale_tile"):
        UpscaleSettings(pre_upscale_tile=8)


def test_pipeline_runs_the_model_first_and_frees_it(pipeline, x2_file):  # noqa: F811
    from supir_engine.upscaler_files import CACHE

    host = RecordingHost()
    settings = FAST.replace(pre_upscaler=str(x2_file), pre_upscale_tile=48)
    pipeline.clear_cache()
    plain = pipeline.upscale(smooth_image(), FAST)
    result = pipeline.upscale(smooth_image(), settings, host)
    assert result.image.size == (128, 128) and not result.stage1_cached
    stages = [stage for stage, _, _ in host.events]
    assert stages[0] == "preupscale" and stages.index("stage1") > max(
        i for i, s in enumerate(stages) if s == "preupscale"
    )
    assert CACHE.get(x2_file).device.type == "cpu"
    assert not np.array_equal(np.asarray(plain.image), np.asarray(result.image))
