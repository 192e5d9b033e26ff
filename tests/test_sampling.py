from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import load_file
from torch._subclasses.fake_tensor import FakeTensorMode

from supir_engine.models.config import infer_unet_config
from supir_engine.models.control import GLVControl
from supir_engine.models.unet import SUPIRUNet
from supir_engine.replay.sampling import run_sampler_case, run_schedule_case
from supir_engine.sampling import (
    SAMPLERS,
    SCHEDULES,
    Conditioning,
    Denoiser,
    GuidedConditioning,
    SamplerSettings,
    StepInfo,
    dpmpp_2m_sigmas,
    generator_noise,
    karras_sigmas,
    sample_restore_dpmpp_2m,
    sample_restore_edm,
    sampler_sigmas,
)
from supir_engine.tiling import gaussian_tile_weights, tile_grid

SAMPLER_CASES = {"b", "c", "j", "k"}
SCHEDULE_CASES = {"g"}
INPUTS = {"noise", "control", "x_center", "c_crossattn", "uc_crossattn", "c_vector", "uc_vector"}


def _cases(kinds: set[str]) -> list[str]:
    found = []
    for path in sorted(FIXTURES.glob("*.json")):
        sidecar = json.loads(path.read_text())
        case = sidecar.get("case") if isinstance(sidecar, dict) else None
        if isinstance(case, str) and case.split("_")[0] in kinds:
            found.append(path.stem)
    return found


def _load(stem: str) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((FIXTURES / f"{stem}.json").read_text()), load_file(
        str(FIXTURES / f"{stem}.safetensors")
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The machine is shared; the tiny model is faster single-threaded anyway.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def denoiser(tiny_weights) -> Denoiser:
    params = json.loads((FIXTURES / "tiny_model.json").read_text())["config"]["params"]["network_config"][
        "params"
    ]
    cfg = infer_unet_config(
        {k: v.shape for k, v in tiny_weights.items()}, num_head_channels=params["num_head_channels"]
    )
    with torch.device("meta"):
        unet, control = SUPIRUNet(cfg), GLVControl(cfg)
    for prefix, net in (("model.diffusion_model.", unet), ("model.control_model.", control)):
        state = {k[len(prefix) :]: v for k, v in tiny_weights.items() if k.startswith(prefix)}
        state.pop("mask_LQ", None)
        net.load_state_dict(state, strict=True, assign=True)
    return Denoiser(unet, control, torch.float32)


def _conditioning(h: int, w: int, seed: int = 0, vector: int = 1568) -> GuidedConditioning:
    g = torch.Generator().manual_seed(seed)
    control = torch.randn(1, 4, h, w, generator=g)
    cond = Conditioning(torch.randn(1, 77, 32, generator=g), torch.randn(1, vector, generator=g), control)
    uncond = Conditioning(torch.randn(1, 77, 32, generator=g), torch.randn(1, vector, generator=g), control)
    return GuidedConditioning(cond, uncond, torch.randn(1, 4, h, w, generator=g))


def _assert_same_up_to_rounding(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # float32 kernels round differently for batch 1 vs 2 and the tiny model amplifies it over the
    # steps; relative to the output's magnitude, rounding stays ~1e-6, a real bug is ~1.
    scale = expected.abs().max()
    torch.testing.assert_close(actual / scale, expected / scale, atol=2e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- fixtures


def test_fixture_discovery_finds_cases():
    assert _cases(SAMPLER_CASES) and _cases(SCHEDULE_CASES)


@pytest.mark.parametrize("stem", _cases(SAMPLER_CASES))
def test_sampler_fixture(stem, denoiser):
    sidecar, tensors = _load(stem)
    results = run_sampler_case(denoiser, sidecar, tensors)
    assert "out_latent" in results and "rng_draw_count" in results
    uncompared = {k for k in tensors if not k.startswith("rng_")} - set(results) - INPUTS
    assert not uncompared, f"fixture tensors nobody compared: {sorted(uncompared)}"
    for key, (expected, actual) in results.items():
        torch.testing.assert_close(actual, expected, atol=1e-3, rtol=1e-4, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("stem", _cases(SCHEDULE_CASES))
def test_schedule_fixture(stem):
    sidecar, tensors = _load(stem)
    results = run_schedule_case(sidecar, tensors)
    assert set(tensors) <= set(results)
    assert {f"sliding_windows_{k}" for k in sidecar.get("sliding_windows", {})} <= set(results)
    for key, (expected, actual) in results.items():
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-5, msg=lambda m, k=key: f"{k}: {m}")


# ---------------------------------------------------------------------------------------------- schedules


def test_legacy_schedule_shape():
    sigmas = sampler_sigmas(4)
    assert len(sigmas) == 5 and sigmas[-1] == 0.0
    assert sigmas == sorted(sigmas, reverse=True)
    assert sigmas[0] == pytest.approx(14.6146, abs=1e-4)


def test_karras_schedule_ends_at_legacy_second_to_last():
    legacy = sampler_sigmas(8)
    sigmas = dpmpp_2m_sigmas(8)
    assert len(sigmas) == 9 and sigmas[-1] == 0.0
    assert sigmas[0] == pytest.approx(legacy[0], rel=1e-6)
    assert sigmas[-2] == pytest.approx(legacy[-2], rel=1e-6)
    assert sigmas[-2] == pytest.approx(0.398, abs=1e-3)
    assert karras_sigmas(1, 0.5, 2.0) == [pytest.approx(2.0), 0.0]
    with pytest.raises(ValueError):
        karras_sigmas(3, 2.0, 1.0)


def test_tile_grid_shifts_last_tiles_and_clamps_small_latents():
    grid = tile_grid(16, 20, 8, 5)
    assert len(grid) == 12
    assert grid[3] == (0, 8, 12, 20) and grid[-1] == (8, 16, 12, 20)
    assert tile_grid(6, 30, 8, 4)[0] == (0, 6, 0, 8)
    assert tile_grid(6, 7, 8, 4) == [(0, 6, 0, 7)]
    with pytest.raises(ValueError, match="gaps"):
        tile_grid(16, 16, 8, 9)


def test_gaussian_weights_are_asymmetric_like_the_original():
    w = gaussian_tile_weights(8)
    assert w.dtype == torch.float64 and w.shape == (8, 8)
    assert int(w[:, 0].argmax()) == 4  # rows peak at T/2
    torch.testing.assert_close(w[0, :], w[0, :].flip(0))  # columns symmetric about (T-1)/2
    assert gaussian_tile_weights(6, 10).shape == (6, 10)


def test_settings_weights():
    s = SamplerSettings(cfg_scale=7.5, cfg_scale_start=4.0, control_scale=1.0, control_scale_start=0.0)
    assert s.cfg_at(14.6146) == pytest.approx(4.0) and s.cfg_at(0.0) == 7.5
    assert s.control_at(14.6146) == pytest.approx(0.0) and s.control_at(0.0) == 1.0
    assert SamplerSettings(cfg_scale=3.0).cfg_at(10.0) == 3.0
    r = SamplerSettings(restoration_scale=4.0)
    assert r.restoration_weight(14.6146, 5.0) == pytest.approx(1.0)
    assert r.restoration_weight(0.5, 0.0) == 0.0 and r.restoration_weight(0.5, 0.05) == 0.0
    assert SamplerSettings(restoration_scale=-1.0).restoration_weight(14.0, 5.0) == 0.0
    assert SamplerSettings(s_churn=5.0).churn(1.0, 50) == pytest.approx(0.1)
    assert SamplerSettings(s_churn=5.0).churn(1.0, 4) == pytest.approx(math.sqrt(2) - 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cfg_scale": math.nan}, "cfg_scale"),
        ({"s_churn": -1.0}, "s_churn"),
        ({"eta": -0.5}, "eta"),
        ({"s_tmin": 2.0, "s_tmax": 1.0}, "s_tmax"),
        ({"tile_size": 64}, "together"),
        ({"tile_size": 64, "tile_stride": 0}, "tile_stride"),
        ({"tile_size": 64, "tile_stride": 65}, "gaps"),
        ({"tile_size": 1.5, "tile_stride": 1}, "tile_size"),
    ],
)
def test_settings_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplerSettings(**kwargs)


# ---------------------------------------------------------------------------------------------- samplers


class Stub:
    """A cheap denoiser that depends on x, sigma, conditioning and control scale; counts calls."""

    def __init__(self):
        self.calls = 0
        self.batches: list[int] = []

    def __call__(self, x, sigma, cond, control_scale):
        self.calls += 1
        self.batches.append(x.shape[0])
        text = cond.crossattn.mean(dim=(1, 2)).view(-1, 1, 1, 1) + cond.vector.mean(dim=1).view(-1, 1, 1, 1)
        return x / (1.0 + sigma**2) ** 0.5 + 0.1 * control_scale * cond.control + 0.01 * text


class CountingNoise:
    def __init__(self, seed: int = 0):
        self.draws = 0
        self.source = generator_noise(torch.Generator().manual_seed(seed))

    def __call__(self, like):
        self.draws += 1
        return self.source(like)


@pytest.mark.parametrize(
    ("sampler", "settings", "draws"),
    [
        (sample_restore_edm, SamplerSettings(), 0),
        (sample_restore_edm, SamplerSettings(s_churn=5.0), 5),
        (sample_restore_edm, SamplerSettings(tile_size=8, tile_stride=5), 5),
        (sample_restore_dpmpp_2m, SamplerSettings(), 3),
        (sample_restore_dpmpp_2m, SamplerSettings(eta=0.0, tile_size=8, tile_stride=5), 3),
    ],
)
def test_noise_draw_counts(sampler, settings, draws):
    noise = CountingNoise()
    sampler(
        Stub(),
        torch.randn(1, 4, 16, 20),
        sampler_sigmas(5),
        _conditioning(16, 20, vector=8),
        settings,
        None,
        noise,
    )
    assert noise.draws == draws


def test_dpmpp_eta_zero_is_finite_and_ends_on_the_prediction(denoiser):
    steps: list[StepInfo] = []
    cond = _conditioning(8, 8)
    with torch.inference_mode():
        out = sample_restore_dpmpp_2m(
            denoiser,
            torch.randn(1, 4, 8, 8),
            dpmpp_2m_sigmas(3),
            cond,
            SamplerSettings(eta=0.0),
            steps.append,
        )
    assert torch.isfinite(out).all()
    assert [s.step for s in steps] == [0, 1, 2] and steps[-1].sigma_next == 0.0
    assert torch.equal(out, steps[-1].denoised)


def test_one_tile_covering_the_latent_equals_untiled(denoiser):
    cond, x = _conditioning(8, 8), torch.randn(1, 4, 8, 8)
    base = SamplerSettings(cfg_scale=5.0, restoration_scale=2.0, s_churn=2.0, control_scale_start=0.3)
    outs = []
    with torch.inference_mode():
        for tiles in ({}, {"tile_size": 16, "tile_stride": 8}):
            settings = replace(base, **tiles)
            noise = generator_noise(torch.Generator().manual_seed(1))
            outs.append(sample_restore_edm(denoiser, x, sampler_sigmas(3), cond, settings, noise=noise))
    _assert_same_up_to_rounding(outs[1], outs[0])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_batched_and_split_cfg_agree(name, denoiser):
    cond, x = _conditioning(8, 8, seed=3), torch.randn(1, 4, 8, 8)
    outs = []
    with torch.inference_mode():
        for batch_cfg in (True, False):
            settings = SamplerSettings(cfg_scale=6.0, restoration_scale=3.0, batch_cfg=batch_cfg)
            noise = generator_noise(torch.Generator().manual_seed(2))
            outs.append(SAMPLERS[name](denoiser, x, SCHEDULES[name](3), cond, settings, noise=noise))
    _assert_same_up_to_rounding(outs[1], outs[0])


def test_split_cfg_uses_single_batches():
    stub = Stub()
    settings = SamplerSettings(batch_cfg=False)
    sample_restore_edm(
        stub, torch.randn(1, 4, 8, 8), sampler_sigmas(2), _conditioning(8, 8, vector=8), settings
    )
    assert stub.batches == [1, 1, 1, 1]


@pytest.mark.parametrize("tiles", [{}, {"tile_size": 8, "tile_stride": 4}])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_raising_callback_stops_within_one_step(name, tiles):
    class Stop(Exception):
        pass

    def callback(info: StepInfo):
        if info.step == 1:
            raise Stop

    stub, x = Stub(), torch.randn(1, 4, 12, 12)
    x_before = x.clone()
    settings = SamplerSettings(**tiles)
    with pytest.raises(Stop):
        SAMPLERS[name](stub, x, SCHEDULES[name](6), _conditioning(12, 12, vector=8), settings, callback)
    calls_per_step = len(tile_grid(12, 12, 8, 4)) if tiles else 1
    assert stub.calls == 2 * calls_per_step
    assert torch.equal(x, x_before)  # the caller's noise is never scaled in place


def test_dpmpp_restoration_is_off_unless_asked():
    cond, x = _conditioning(8, 8, vector=8), torch.randn(1, 4, 8, 8)
    no_anchor = GuidedConditioning(cond.cond, cond.uncond, None)
    run = lambda c, **kw: sample_restore_dpmpp_2m(  # noqa: E731
        Stub(), x, dpmpp_2m_sigmas(4), c, SamplerSettings(restoration_scale=4.0, eta=0.0, **kw)
    )
    torch.testing.assert_close(run(cond), run(no_anchor), atol=0, rtol=0)
    assert not torch.allclose(run(cond, dpm_restoration=True), run(cond))
    with pytest.raises(ValueError, match="anchor"):
        run(no_anchor, dpm_restoration=True)


def test_per_tile_prompts():
    base = _conditioning(16, 20, vector=8)
    windows = tile_grid(16, 20, 8, 5)
    seen = []

    def stub(x, sigma, cond, control_scale):
        seen.append(cond.crossattn)
        return Stub()(x, sigma, cond, control_scale)

    prompts = [
        Conditioning(torch.full((1, 77, 32), float(j)), base.single().vector, base.single().control)
        for j in range(len(windows))
    ]
    cond = GuidedConditioning(prompts, base.uncond, base.anchor)
    settings = SamplerSettings(tile_size=8, tile_stride=5, batch_cfg=False)
    sample_restore_edm(stub, torch.randn(1, 4, 16, 20), sampler_sigmas(1), cond, settings)
    assert [float(c[0, 0, 0]) for c in seen[1::2]] == [float(j) for j in range(len(windows))]
    with pytest.raises(ValueError, match="per-tile"):
        sample_restore_edm(stub, torch.randn(1, 4, 16, 20), sampler_sigmas(1), cond, SamplerSettings())


def test_step_loops_read_no_tensor_values_on_the_host():
    """Under FakeTensorMode every .item()/float()/bool()/tolist() of a tensor raises."""
    variants = [
        SamplerSettings(
            cfg_scale_start=2.0,
            control_scale_start=0.5,
            restoration_scale=4.0,
            s_churn=5.0,
            dpm_restoration=True,
            eta=eta,
            batch_cfg=batch_cfg,
            tile_size=tile,
            tile_stride=tile and 4,
        )
        for tile in (None, 8)
        for eta, batch_cfg in ((1.0, True), (0.0, False))
    ]
    with FakeTensorMode():
        x, cond = torch.randn(1, 4, 12, 12), _conditioning(12, 12, vector=8)
        for settings in variants:
            for name, sampler in SAMPLERS.items():
                out = sampler(Stub(), x, SCHEDULES[name](3), cond, settings, lambda info: None)
                assert out.shape == x.shape

        def reads_host(x, sigma, cond, control_scale):
            return x * float(x.mean())

        with pytest.raises(Exception, match="local_scalar_dense"):  # the check really bites
            sample_restore_edm(reads_host, x, sampler_sigmas(2), cond, variants[0])


@pytest.mark.parametrize("batch_cfg", [True, False])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_tiles_batched_together_agree_with_one_at_a_time(name, batch_cfg, denoiser):
    """tile_batch only groups tiles into one network call; per-tile prompts and the anchor follow them."""
    base = _conditioning(12, 14, seed=4)
    g = torch.Generator().manual_seed(9)
    per_tile = [
        Conditioning(
            torch.randn(1, 77, 32, generator=g), torch.randn(1, 1568, generator=g), base.uncond.control
        )
        for _ in tile_grid(12, 14, 8, 4)
    ]
    cond = GuidedConditioning(per_tile, base.uncond, base.anchor)
    x = torch.randn(1, 4, 12, 14, generator=g)
    outs, seen = [], []
    with torch.inference_mode():
        for tile_batch in (1, 4):  # 6 tiles: groups of 4 and 2
            settings = SamplerSettings(
                cfg_scale=5.0, restoration_scale=2.0, s_churn=2.0, batch_cfg=batch_cfg, dpm_restoration=True,
                tile_size=8, tile_stride=4, tile_batch=tile_batch,
            )  # fmt: skip
            tiles: list[int] = []
            noise = generator_noise(torch.Generator().manual_seed(2))
            out = SAMPLERS[name](
                denoiser, x, SCHEDULES[name](3), cond, settings, noise=noise,
                tile_callback=lambda info, tiles=tiles: tiles.append(info.tile),
            )  # fmt: skip
            outs.append(out)
            seen.append(tiles)
    assert len(per_tile) == 6 and seen[0] == seen[1] == list(range(6)) * 3
    _assert_same_up_to_rounding(outs[1], outs[0])


def test_tile_batch_sets_the_network_batch():
    stub = Stub()
    settings = SamplerSettings(tile_size=8, tile_stride=5, tile_batch=4)
    sample_restore_edm(
        stub, torch.randn(1, 4, 16, 20), sampler_sigmas(2), _conditioning(16, 20, vector=8), settings
    )
    n_tiles = len(tile_grid(16, 20, 8, 5))
    assert n_tiles == 12 and stub.batches == [8, 8, 8] * 2  # 4 tiles x [uncond; cond], three calls a step
    with pytest.raises(ValueError, match="tile_batch"):
        SamplerSettings(tile_batch=0)
