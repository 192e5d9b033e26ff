"""Planner limits: the sampler tile floor, the tiled VAE's full maps (device or RAM), and their notes."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from PIL import Image

import supir_engine.tiled_vae as tiled_vae_module
from supir_engine.errors import HostMemoryError
from supir_engine.infotext import PLAN_KEY, to_infotext
from supir_engine.memory import (
    GiB,
    MemoryConfig,
    MemoryPlan,
    Workload,
    available_host_bytes,
    plan,
    plan_memory,
    planning,
)
from supir_engine.models import SUPIR_V0, build_supir
from supir_engine.models.vae import FirstStage, VAEConfig
from supir_engine.pipeline import SUPIRPipeline
from supir_engine.settings import UpscaleSettings
from supir_engine.tiled_vae import storage_bytes
from supir_engine.tiny import TINY_CONFIG, random_state_dict


def workload(output_px: int, storage_itemsize: float = 2, **changes: object) -> Workload:
    """SUPIR-v0 at real size (weights in fp16, or fp8 with ``storage_itemsize`` 1)."""
    work = Workload(
        latent_hw=(output_px // 8, output_px // 8),
        steps=50,
        sampling_bytes=int(7.20 * GiB * storage_itemsize / 2),
        text_bytes=int(1.52 * GiB * storage_itemsize / 2),
        vae_bytes={"denoise_encode": 65 << 20, "decode": 94 << 20, "encode": 65 << 20},
        largest_weight=1280 * 10240,
    )
    return Workload(**{**work.__dict__, **changes})


# ------------------------------------------------------------------------------------------ tile floor


@pytest.mark.parametrize(
    ("output_px", "itemsize", "budget_gib"),
    [(6144, 1, 4), (6144, 1, 6), (8192, 2, 5), (6144, 2, 3)],  # each chose 64 or 96 without the floor
)
def test_tight_budgets_stream_more_instead_of_shrinking_tiles_below_the_floor(
    output_px, itemsize, budget_gib
):
    chosen = plan(workload(output_px, itemsize), budget_gib * GiB, MemoryConfig("auto"))
    assert chosen.tile is not None and chosen.tile[0] >= 128
    assert chosen.estimated_peak_bytes <= budget_gib * GiB
    assert chosen.notes == (f"tiled {chosen.tile[0]}/{chosen.tile[1]} to fit {budget_gib:.2f} GiB",)


def test_below_the_floor_only_when_nothing_else_fits_and_it_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        chosen = plan(workload(2048), int(0.45 * GiB), MemoryConfig("auto"))
    assert chosen.tile is not None and chosen.tile[0] < 128
    assert any("below the tile floor" in note for note in chosen.notes)
    assert "may lower quality" in caplog.text


def test_a_plan_that_keeps_the_users_tiling_has_no_notes():
    assert plan(workload(2048), 12 * GiB, MemoryConfig("auto")).notes == ()
    fixed = plan(workload(4096, tile=(64, 32)), 4 * GiB, MemoryConfig("auto"))
    assert fixed.tile == (64, 32) and fixed.notes == ()


def test_notes_reach_the_infotext():
    notes = ("tiled 128/64 to fit 4.00 GiB",)
    assert to_infotext(UpscaleSettings(), "m", plan_notes=notes)[PLAN_KEY] == "tiled 128/64 to fit 4.00 GiB"
    assert PLAN_KEY not in to_infotext(UpscaleSettings(), "m")


# ------------------------------------------------------------------------------------------ VAE maps


def test_map_bytes_per_pixel_are_the_tiled_vaes_own_accounting():
    with torch.device("meta"):
        vae = FirstStage(VAEConfig())
    for px in (1024, 2048):
        assert (
            storage_bytes(vae, "encode", (px, px), torch.bfloat16)
            == planning.VAE_ENCODE_MAP_BYTES_PER_PX * px * px
        )
        assert (
            storage_bytes(vae, "decode", (px, px), torch.bfloat16)
            == planning.VAE_DECODE_MAP_BYTES_PER_PX * px * px
        )


def test_workload_of_a_model_counts_the_maps_of_its_vae():
    model = build_supir(SUPIR_V0, "meta")
    work = Workload.of(model, (1024, 1536), UpscaleSettings(), torch.float16, torch.bfloat16)
    assert work.vae_map_bytes == (768 * 1024 * 1536, 1024 * 1024 * 1536)


def test_maps_stay_on_the_device_when_they_fit_else_in_ram():
    roomy = plan(workload(2048), 24 * GiB, MemoryConfig("auto"))
    assert roomy.vae_tiles != (None, None) and roomy.vae_storage == "device" and roomy.host_bytes == 0
    tight = plan(workload(2048), 4 * GiB, MemoryConfig("auto"))
    assert tight.vae_storage == "host" and tight.host_bytes == 4 * GiB  # two 256-channel bf16 maps
    assert tight.as_dict()["host_bytes"] == 4 * GiB


def test_refuses_before_running_when_ram_cannot_hold_the_maps():
    with pytest.raises(
        HostMemoryError, match=r"8192x8192 .* 65\.00 GiB of free RAM .* only 8\.00 GiB"
    ) as err:
        plan(workload(8192), 6 * GiB, MemoryConfig("auto"), host_available=8 * GiB)
    assert err.value.needed == 64 * GiB and err.value.available == 8 * GiB
    assert plan(workload(8192), 6 * GiB, MemoryConfig("auto"), host_available=80 * GiB).host_bytes == 64 * GiB


@pytest.mark.parametrize("policy", ["auto", "blocks"])
def test_plan_memory_checks_ram_on_a_gpu(monkeypatch, policy):
    monkeypatch.setattr(planning, "available_host_bytes", lambda: 2 * GiB)
    work = workload(4096, vae_tiles=(512, 64)) if policy != "auto" else workload(4096)
    config = MemoryConfig(policy, budget_bytes=6 * GiB)
    with pytest.raises(HostMemoryError, match="smaller output"):
        plan_memory(work, config, torch.device("cuda"))
    plan_memory(work, config, torch.device("cpu"))  # on the CPU the maps are the computation's own memory


def test_available_host_bytes_reads_meminfo(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    1234567 kB\n")
    assert available_host_bytes(meminfo) == 1234567 * 1024
    monkeypatch.setattr(os, "sysconf", _no_sysconf)
    assert available_host_bytes(tmp_path / "absent") is None


def _no_sysconf(name: str) -> int:
    raise ValueError(name)


# ------------------------------------------------------------------------------------------ pipeline


@pytest.mark.parametrize(("storage", "expected"), [("device", torch.device("cpu")), ("host", None)])
def test_pipeline_gives_the_tiled_vae_the_planned_storage(monkeypatch, storage, expected):
    model = build_supir(TINY_CONFIG, "meta")
    model.load_state_dict(random_state_dict(TINY_CONFIG, seed=3), strict=False, assign=True)
    model.denoiser.reset()
    notes = ("tiled 4/2 to fit 1.00 GiB",)
    fixed = MemoryPlan("stages", tile=(4, 2), vae_tiles=(32, 4), vae_storage=storage, notes=notes)
    monkeypatch.setattr(SUPIRPipeline, "plan_memory", lambda self, hw, settings: fixed)
    seen = []
    run_program = tiled_vae_module._run_program

    def recording(program, x, grid, storage_device, recompute):
        seen.append(storage_device)
        return run_program(program, x, grid, storage_device, recompute)

    monkeypatch.setattr(tiled_vae_module, "_run_program", recording)
    settings = UpscaleSettings(scale=2, min_size=64, steps=1, seed=7, s_churn=0.0)
    result = SUPIRPipeline(model.eval(), "cpu").upscale(Image.new("RGB", (32, 32), "gray"), settings)
    assert seen and all(s == expected for s in seen)
    assert result.memory.notes == notes
