"""Lockstep evaluation: a sampler step's network calls run segment by segment together, so streamed weights
pass through the device once per step (not once per call), with bit-identical results."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from supir_engine.memory import GiB, MemoryConfig, Residency, plan, tensor_bytes
from supir_engine.memory.planning import _fixed_plan
from supir_engine.models import build_supir
from supir_engine.pipeline import SUPIRPipeline
from supir_engine.sampling import (
    SAMPLERS,
    SCHEDULES,
    Conditioning,
    Denoiser,
    GuidedConditioning,
    SamplerSettings,
    generator_noise,
)
from supir_engine.settings import UpscaleSettings
from supir_engine.tiling import tile_grid
from supir_engine.tiny import TINY_CONFIG, random_state_dict
from tests.test_memory import real_size_workload

CHUNK = 64 << 10  # small chunks: the tiny UNet + control stream in dozens of them


@pytest.fixture(scope="module")
def model():
    state = random_state_dict(TINY_CONFIG, seed=5)
    model = build_supir(TINY_CONFIG, "meta")
    model.load_state_dict(state, strict=False, assign=True)
    model.denoiser.reset()
    return model.eval().requires_grad_(False)


def _leaves_of(modules) -> list[int]:
    out = []
    for module in modules:
        for m in module.modules():
            if any(True for _ in m.parameters(recurse=False)) and id(m) not in out:
                out.append(id(m))
    return out


def test_stepped_forwards_run_exactly_the_segments_they_list(model):
    """``segments()`` (what the streamer chunks by) is what runs between the stepped forward's yields."""
    denoiser = Denoiser(model.unet, model.control_model, torch.float32)
    ran: list[list[int]] = [[]]
    leaves = _leaves_of([model.unet, model.control_model])
    modules = {id(m): m for m in [*model.unet.modules(), *model.control_model.modules()]}
    hooks = [
        modules[i].register_forward_pre_hook(
            lambda m, a, i=i: ran[-1].append(i) if i not in ran[-1] else None
        )
        for i in leaves
    ]
    g = torch.Generator().manual_seed(0)
    cond = Conditioning(
        torch.randn(1, 77, 32, generator=g), torch.randn(1, 1568, generator=g), torch.randn(1, 4, 8, 8)
    )
    try:
        with torch.inference_mode():
            steps = denoiser.steps(torch.randn(1, 4, 8, 8, generator=g), 3.0, cond, 1.0)
            with pytest.raises(StopIteration):
                while True:
                    next(steps)
                    ran.append([])
    finally:
        for h in hooks:
            h.remove()
    expected = [_leaves_of(segment) for segment in denoiser.segments()]
    assert len(expected) > 30
    assert [sorted(r) for r in ran] == [sorted(e) for e in expected]


def _per_tile_conditioning(h: int, w: int) -> GuidedConditioning:
    g = torch.Generator().manual_seed(4)
    control = torch.randn(1, 4, h, w, generator=g)
    uncond = Conditioning(torch.randn(1, 77, 32, generator=g), torch.randn(1, 1568, generator=g), control)
    per_tile = [
        Conditioning(torch.randn(1, 77, 32, generator=g), torch.randn(1, 1568, generator=g), control)
        for _ in tile_grid(h, w, 8, 4)
    ]
    return GuidedConditioning(per_tile, uncond, torch.randn(1, 4, h, w, generator=g))


@pytest.mark.parametrize("batch_cfg,tile_batch,tiled", [(True, 1, True), (False, 4, True), (False, 1, False)])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_lockstep_is_bit_identical_to_one_call_at_a_time(model, name, batch_cfg, tile_batch, tiled):
    cond = _per_tile_conditioning(12, 16)
    if not tiled:
        cond = GuidedConditioning(cond.cond[0], cond.uncond, cond.anchor)
    x = torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(1))
    outs, tiles, calls = [], [], []
    for lockstep in (False, True):
        denoiser = Denoiser(model.unet, model.control_model, torch.float32)
        seen: list = []
        hook = model.unet.time_embed.register_forward_pre_hook(
            lambda m, a, seen=seen: seen.append(a[0].shape[0])
        )
        settings = SamplerSettings(
            cfg_scale=5.0, restoration_scale=2.0, s_churn=2.0, batch_cfg=batch_cfg, dpm_restoration=True,
            tile_size=8 if tiled else None, tile_stride=4 if tiled else None, tile_batch=tile_batch,
            lockstep=lockstep,
        )  # fmt: skip
        record: list = []
        try:
            with torch.inference_mode():
                out = SAMPLERS[name](
                    denoiser, x, SCHEDULES[name](3), cond, settings,
                    noise=generator_noise(torch.Generator().manual_seed(2)),
                    tile_callback=lambda info, record=record: record.append((info.tile, info.denoised)),
                )  # fmt: skip
        finally:
            hook.remove()
        outs.append(out)
        tiles.append(record)
        calls.append(seen)
    assert torch.equal(outs[0], outs[1])
    assert [t for t, _ in tiles[0]] == [t for t, _ in tiles[1]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(tiles[0], tiles[1]))
    assert calls[0] == calls[1] and len(calls[0]) > 3  # the same network calls, batch for batch


def _sampling_bytes(model, lockstep: bool, steps: int, batch_cfg: bool = True, **settings) -> tuple[int, int]:
    """Weight bytes copied to the "device" by the sampling stage, and the streamed networks' bytes."""
    memory = MemoryConfig("blocks", chunk_bytes=CHUNK, lockstep=lockstep, batch_cfg=batch_cfg)
    pipe = SUPIRPipeline(model, "cpu", memory=memory, transfer=lambda t: t.clone())
    run = UpscaleSettings(scale=2, min_size=64, steps=steps, seed=3, s_churn=0.0).replace(**settings)
    result = pipe.upscale(Image.new("RGB", (32, 32), "gray"), run)
    assert result.memory.lockstep is lockstep
    return result.bytes_to_device["sampling"], tensor_bytes([model.unet, model.control_model])


def test_lockstep_streams_the_weights_once_per_step_first_step_included(model):
    tiles = {"tile_size": 4, "tile_stride": 2}  # 64 px -> an 8x8 latent: 9 tiles, 9 calls per step
    one_step, weights = _sampling_bytes(model, True, 1, **tiles)
    assert one_step <= 1.1 * weights  # the first step too: chunks follow the execution order at once
    two_steps, _ = _sampling_bytes(model, True, 2, **tiles)
    assert two_steps - one_step <= 1.1 * weights
    sequential, _ = _sampling_bytes(model, True, 1, batch_cfg=False, **tiles)
    assert sequential <= 1.1 * weights
    # one call at a time, every tile call streams everything: about 9 passes per step
    per_call, _ = _sampling_bytes(model, False, 1, **tiles)
    assert 8.5 * weights <= per_call <= 9.5 * weights


def test_first_evaluation_streams_about_one_pass_without_tiles(model):
    untiled, weights = _sampling_bytes(model, False, 1)
    assert untiled <= 1.1 * weights


def test_chunks_hold_whole_segments_in_execution_order(model):
    residency = Residency("cpu", "blocks", chunk_bytes=CHUNK, transfer=lambda t: t.clone())
    roots = (model.control_model, model.unet)
    streamer_cls = __import__("supir_engine.memory.residency", fromlist=["_Streamer"])._Streamer
    streamer = streamer_cls(residency.placement, residency.copier, roots, 0, CHUNK, prefetch=False)
    try:
        chunk_of = {id(leaf): c for c, chunk in enumerate(streamer.chunks) for leaf in chunk}
        segments = [*model.control_model.segments(), *model.unet.segments()]
        order = [{chunk_of[i] for i in _leaves_of(segment)} for segment in segments]
        assert all(len(chunks) == 1 for chunks in order)  # no segment split across chunks
        flat = [next(iter(c)) for c in order]
        assert flat == sorted(flat) and len(streamer.chunks) > 5  # chunks follow the execution order
    finally:
        streamer.close()


def test_planner_uses_lockstep_when_it_fits_and_not_when_it_does_not():
    work = real_size_workload(2).__class__(
        **{**real_size_workload(2).__dict__, "tile": (128, 64), "vae_tiles": (512, 64)}
    )
    roomy = _fixed_plan(work, MemoryConfig("blocks", budget_bytes=None), "blocks", 12 * GiB)
    tight = _fixed_plan(work, MemoryConfig("blocks"), "blocks", 2 * GiB)
    assert roomy.lockstep and not tight.lockstep
    assert roomy.estimated_peak_bytes > tight.estimated_peak_bytes  # every call's skips are live
    assert not _fixed_plan(work, MemoryConfig("blocks"), "blocks", None).lockstep  # the CPU: no device
    assert not _fixed_plan(work, MemoryConfig("stages"), "stages", 12 * GiB).lockstep
    forced = _fixed_plan(work, MemoryConfig("blocks", lockstep=False), "blocks", 12 * GiB)
    assert not forced.lockstep
    # auto: a 3072 px output on a 4 GiB card streams its weights, untiled with sequential CFG (two calls
    # a step); lockstep halves the passes for the other call's live skips. On 3 GiB those do not fit.
    big = real_size_workload(2, output_px=3072)
    chosen = plan(big, 4 * GiB, MemoryConfig("auto"))
    assert chosen.policy == "blocks" and chosen.lockstep and not chosen.batch_cfg
    assert chosen.estimated_peak_bytes <= 4 * GiB
    assert not plan(big, 3 * GiB, MemoryConfig("auto")).lockstep
    assert not plan(big, 4 * GiB, MemoryConfig("auto", lockstep=False)).lockstep
