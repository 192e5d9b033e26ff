"""Replays the original's sampler and schedule fixtures (b/c/j/k- and g-style cases) through our samplers.

Everything is read from the sidecar and the tensors, nothing from case names.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ..sampling import (
    NUM_TRAIN_TIMESTEPS,
    SAMPLERS,
    SCHEDULES,
    TRAINING_SIGMAS,
    Conditioning,
    DenoiserFn,
    GuidedConditioning,
    SamplerSettings,
    StepInfo,
    TileInfo,
    dpmpp_2m_sigmas,
    sampler_sigmas,
)
from ..tiling import gaussian_tile_weights, tile_extent, tile_grid

logger = logging.getLogger(__name__)

Comparison = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _size_embedding(name: str, expected: torch.Tensor) -> torch.Tensor | None:
    from ..models.blocks import timestep_embedding

    values = [float(v) for v in name.split("_")]
    if expected.shape[-1] % len(values):
        return None
    emb = timestep_embedding(torch.tensor(values), expected.shape[-1] // len(values))
    return emb.reshape(expected.shape)


def _schedule_tensor(name: str, expected: torch.Tensor) -> torch.Tensor | None:
    """Our value of one g-style tensor, or None when its name is not one we know how to compute."""
    if m := re.fullmatch(r"denoiser_sigmas_(\d+)", name):
        return torch.tensor(TRAINING_SIGMAS) if int(m[1]) == NUM_TRAIN_TIMESTEPS else None
    if m := re.fullmatch(r"sampler_sigmas_(\d+)", name):
        return torch.tensor(sampler_sigmas(int(m[1])))
    if m := re.fullmatch(r"(?:dpmpp_2m|karras)_sigmas_(\d+)", name):
        return torch.tensor(dpmpp_2m_sigmas(int(m[1])))
    if m := re.fullmatch(r"tile_weights_(\d+)(?:x(\d+))?", name):
        return gaussian_tile_weights(int(m[1]), int(m[2] or m[1]))
    if m := re.fullmatch(r"size_embedding_(\d+(?:_\d+)*)", name):
        return _size_embedding(m[1], expected)
    return None


def _pair(expected: torch.Tensor, actual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return expected, actual.to(expected.dtype)


def run_schedule_case(sidecar: Mapping, tensors: Mapping[str, torch.Tensor]) -> Comparison:
    """(expected, actual) for every schedule tensor and sliding-window list of a g-style fixture."""
    results: Comparison = {}
    for name, expected in tensors.items():
        actual = _schedule_tensor(name, expected)
        if actual is None:
            logger.debug("schedule case: no computation for %s", name)
        else:
            results[name] = _pair(expected, actual)
    for name, windows in sidecar.get("sliding_windows", {}).items():
        m = re.fullmatch(r"(\d+)x(\d+)_tile(\d+)_stride(\d+)", name)
        if m is None:
            logger.debug("schedule case: cannot parse sliding window entry %s", name)
            continue
        actual = tile_grid(*(int(g) for g in m.groups()))
        results[f"sliding_windows_{name}"] = (torch.tensor(windows), torch.tensor(actual))
    return results


def _sampler_name(sidecar: Mapping) -> str:
    text = f"{sidecar.get('sampler', '')} {sidecar.get('case', '')}".lower()
    if "dpmpp" in text:
        return "restore_dpmpp_2m"
    if "edm" in text:
        return "restore_edm"
    raise ValueError(f"cannot tell the sampler of this case: {text!r}")


def _first(sidecar: Mapping, *names: str, default: object = None) -> object:
    return next((sidecar[n] for n in names if n in sidecar), default)


def settings_from_sidecar(sidecar: Mapping) -> SamplerSettings:
    """SamplerSettings equivalent to the original sampler call a fixture sidecar describes.

    The guider's scale (at sigma_max) and scale_min (as sigma -> 0) are preferred over the demo-level
    cfg_scale fields; "*_passed" fields are arguments the DPM++ 2M sampler accepted and ignored, passed on
    with dpm_restoration=False so that ignoring them is exercised too.
    """
    cfg_end = float(_first(sidecar, "guider_scale_min", "cfg_scale"))
    cfg_start = float(_first(sidecar, "guider_scale", "cfg_scale_start", default=cfg_end))
    linear_control = bool(_first(sidecar, "use_linear_control_scale", "use_linear_control_scale_passed"))
    control_start = _first(sidecar, "control_scale_start", "control_scale_start_passed", default=0.0)
    tile_size = sidecar.get("tile_size")
    return SamplerSettings(
        cfg_scale=cfg_end,
        cfg_scale_start=None if cfg_start == cfg_end else cfg_start,
        control_scale=float(sidecar.get("control_scale", 1.0)),
        control_scale_start=float(control_start) if linear_control else None,
        restoration_scale=float(_first(sidecar, "restore_cfg", "restore_cfg_passed", default=-1.0)),
        restoration_sigma_min=float(sidecar.get("restore_cfg_s_tmin", 0.05)),
        s_churn=float(sidecar.get("s_churn", 0.0)),
        s_noise=float(sidecar.get("s_noise", 1.0)),
        s_tmin=float(sidecar.get("s_tmin", 0.0)),
        s_tmax=float(sidecar.get("s_tmax", math.inf)),
        eta=float(sidecar.get("eta", 1.0)),
        tile_size=None if tile_size is None else int(tile_size),
        tile_stride=None if tile_size is None else int(sidecar["tile_stride"]),
    )


class _RecordedNoise:
    """Noise source replaying rng_000, rng_001, ... in order."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        names = sorted(n for n in tensors if re.fullmatch(r"rng_\d+", n))
        self.draws = [tensors[n] for n in names]
        self.used = 0

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        if self.used >= len(self.draws):
            raise ValueError(f"the sampler asked for more noise than the {len(self.draws)} recorded draws")
        draw = self.draws[self.used]
        if tuple(draw.shape) != tuple(like.shape):
            raise ValueError(
                f"noise draw {self.used} has shape {tuple(draw.shape)}, sampler wants {tuple(like.shape)}"
            )
        self.used += 1
        return draw.to(like)


@dataclass
class _Recorder:
    steps: list[StepInfo] = field(default_factory=list)
    tiles: list[TileInfo] = field(default_factory=list)

    def tile_stack(self, attr: str, num_steps: int) -> torch.Tensor:
        per_step = [[getattr(t, attr) for t in self.tiles if t.step == s] for s in range(num_steps)]
        return torch.stack([torch.stack(tiles) for tiles in per_step])


def _case_conditioning(sidecar: Mapping, tensors: Mapping[str, torch.Tensor]) -> GuidedConditioning:
    control = tensors["control"]
    cond = Conditioning(tensors["c_crossattn"], tensors["c_vector"], control)
    uncond = Conditioning(tensors["uc_crossattn"], tensors["uc_vector"], control)
    anchor = tensors.get("x_center") if sidecar.get("x_center_passed", True) else None
    return GuidedConditioning(cond, uncond, anchor)


def _sampler_actuals(
    name: str,
    settings: SamplerSettings,
    steps: int,
    x: torch.Tensor,
    out: torch.Tensor,
    record: _Recorder,
    noise: _RecordedNoise,
) -> dict[str, Callable[[], torch.Tensor]]:
    """Our counterpart of every output/intermediate a sampler fixture may hold, computed on demand."""
    h, w = x.shape[-2:]
    actuals = {
        "out_latent": lambda: out,
        "intermediate_sigmas": lambda: torch.tensor(SCHEDULES[name](steps)),
        "intermediate_legacy_sigmas": lambda: torch.tensor(sampler_sigmas(steps)),
        "intermediate_x_after_step": lambda: torch.stack([s.x for s in record.steps]),
        "intermediate_denoised": lambda: torch.stack([s.denoised for s in record.steps]),
        "rng_draw_count": lambda: torch.tensor(noise.used),
    }
    if settings.tiled:
        actuals |= {
            "intermediate_tile_weights": lambda: gaussian_tile_weights(
                *tile_extent(h, w, settings.tile_size)
            ),
            "intermediate_tile_coords": lambda: torch.tensor(
                tile_grid(h, w, settings.tile_size, settings.tile_stride)
            ),
            "intermediate_tile_x_out": lambda: record.tile_stack("x", steps),
            "intermediate_tile_denoised": lambda: record.tile_stack("denoised", steps),
        }
    return actuals


def run_sampler_case(
    denoiser: DenoiserFn, sidecar: Mapping, tensors: Mapping[str, torch.Tensor]
) -> Comparison:
    """Run the sampler a b/c/j/k-style fixture describes with its recorded noise; (expected, actual) pairs.

    Compares out_latent, every intermediate the fixture holds that we produce, and the number of noise
    draws ("rng_draw_count").
    """
    name = _sampler_name(sidecar)
    settings = settings_from_sidecar(sidecar)
    steps = int(sidecar["num_steps"])
    noise = _RecordedNoise(tensors)
    record = _Recorder()
    with torch.inference_mode():
        out = SAMPLERS[name](
            denoiser,
            tensors["noise"],
            SCHEDULES[name](steps),
            _case_conditioning(sidecar, tensors),
            settings,
            callback=record.steps.append,
            noise=noise,
            tile_callback=record.tiles.append,
        )
    expected = dict(tensors) | {"rng_draw_count": torch.tensor(len(noise.draws))}
    actuals = _sampler_actuals(name, settings, steps, tensors["noise"], out, record, noise)
    return {key: _pair(expected[key], make()) for key, make in actuals.items() if key in expected}
