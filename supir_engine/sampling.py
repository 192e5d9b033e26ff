"""Noise schedules, the SUPIR denoiser (EDM wrapper around GLVControl + UNet) and the samplers.

Schedules and every per-step weight are plain Python floats, so the sampling loops never read tensor
values on the host (they also run under fake tensors, which the memory benchmark relies on).

The samplers follow k-diffusion's shape: plain functions with one signature,
``sampler(denoiser, x, sigmas, cond, settings, callback=None, noise=None) -> x``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import torch

from .device_policy import widest_float
from .tiling import Window, gaussian_tile_weights, tile_grid

logger = logging.getLogger(__name__)

NUM_TRAIN_TIMESTEPS = 1000
SIGMA_MAX = 14.6146  # the original's literal constant for the CFG/control/restoration ramps


def training_sigmas() -> list[float]:
    """The 1000 SDXL training sigmas, ascending (index = timestep).

    The ratio (1 - a)/a is taken in float64, rounded to float32, and the square root taken in
    float32, exactly as the original does.
    """
    betas = np.linspace(0.00085**0.5, 0.012**0.5, NUM_TRAIN_TIMESTEPS, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    ratio = torch.from_numpy((1 - alphas_cumprod) / alphas_cumprod).to(torch.float32)
    return ratio.sqrt().tolist()


TRAINING_SIGMAS: tuple[float, ...] = tuple(training_sigmas())


def sampler_timesteps(steps: int) -> list[int]:
    """Ascending timesteps for an N-step schedule (always includes 999)."""
    if not 1 <= steps <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"steps must be between 1 and {NUM_TRAIN_TIMESTEPS}, got {steps}")
    if steps == NUM_TRAIN_TIMESTEPS:
        return list(range(NUM_TRAIN_TIMESTEPS))
    points = np.linspace(NUM_TRAIN_TIMESTEPS - 1, 0, steps, endpoint=False).astype(int)
    return sorted(int(t) for t in points)


def sampler_sigmas(steps: int) -> list[float]:
    """Descending sigmas of the N-step schedule with a trailing 0 (N + 1 values)."""
    return [TRAINING_SIGMAS[t] for t in reversed(sampler_timesteps(steps))] + [0.0]


def snap_sigma(sigma: float) -> tuple[float, int]:
    """Nearest training sigma and its index (the integer timestep the networks see)."""
    index = min(range(NUM_TRAIN_TIMESTEPS), key=lambda i: abs(sigma - TRAINING_SIGMAS[i]))
    return TRAINING_SIGMAS[index], index


@dataclass
class Conditioning:
    """What the denoiser needs besides x and sigma; tensors batched along dim 0."""

    crossattn: torch.Tensor
    vector: torch.Tensor
    control: torch.Tensor


class Denoiser:
    """D(x; sigma) = x - sigma_q * eps(c_in * x, t, cond): eps scalings with snapped sigma.

    ``sigma`` is a Python float shared by the batch, or one float per batch element.
    """

    def __init__(self, unet: torch.nn.Module, control_model: torch.nn.Module, dtype: torch.dtype):
        self.unet = unet
        self.control_model = control_model
        self.dtype = dtype
        # Per-step tensors built from host numbers, one copy each (tiles and CFG halves share them).
        self._host_values: dict[tuple, torch.Tensor] = {}

    def features(self, x_in: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> list[torch.Tensor]:
        return self.control_model(cond.control, timesteps, x_in, cond.crossattn, cond.vector)

    def __call__(
        self, x: torch.Tensor, sigma: float | Sequence[float], cond: Conditioning, control_scale: float
    ) -> torch.Tensor:
        x_in, timesteps, c_out = self._inputs(x, sigma)
        features = self.features(x_in, timesteps, cond)
        eps = self.unet(x_in, timesteps, cond.crossattn, cond.vector, features, control_scale)
        return x - c_out * eps.to(x.dtype)

    def steps(
        self, x: torch.Tensor, sigma: float | Sequence[float], cond: Conditioning, control_scale: float
    ) -> Generator[None, None, torch.Tensor]:
        """``self(x, sigma, cond, control_scale)`` in stepped form: yields at the networks' segment
        boundaries (control's, then the UNet's), so several evaluations can run in lockstep."""
        x_in, timesteps, c_out = self._inputs(x, sigma)
        features = yield from self.control_model.steps(
            cond.control, timesteps, x_in, cond.crossattn, cond.vector
        )
        yield
        eps = yield from self.unet.steps(
            x_in, timesteps, cond.crossattn, cond.vector, features, control_scale
        )
        return x - c_out * eps.to(x.dtype)

    def _inputs(
        self, x: torch.Tensor, sigma: float | Sequence[float]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
        """The scaled network input, the integer timesteps and c_out, exactly as ``__call__`` makes them."""
        sigmas = [float(sigma)] * x.shape[0] if isinstance(sigma, (int, float)) else list(sigma)
        snapped = [snap_sigma(s) for s in sigmas]
        timesteps = self._on_device([i for _, i in snapped], torch.long, x.device)
        c_in = self._per_sample([1.0 / math.sqrt(q**2 + 1.0) for q, _ in snapped], x)
        c_out = self._per_sample([q for q, _ in snapped], x)
        return (x * c_in).to(self.dtype), timesteps, c_out

    def segments(self) -> list[list[torch.nn.Module]]:
        """The modules each segment of ``steps`` runs, in execution order."""
        return [*self.control_model.segments(), *self.unet.segments()]

    def lockstep(self, calls: Sequence[DenoiserCall]) -> list[torch.Tensor]:
        """Evaluate several calls segment by segment, round-robin: each segment's weights serve every
        call before the next segment runs. Every call computes what it would alone."""
        return run_lockstep([self.steps(*call) for call in calls])

    def _per_sample(self, values: list[float], like: torch.Tensor) -> torch.Tensor | float:
        """A scalar when the batch shares one value, else a [B,1,1,1] tensor of the host floats."""
        if all(v == values[0] for v in values):
            return values[0]
        return self._on_device(values, like.dtype, like.device).view(-1, *([1] * (like.dim() - 1)))

    def _on_device(self, values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (tuple(values), dtype, device)
        if key not in self._host_values:
            self._host_values[key] = host_to_device(torch.tensor(values, dtype=dtype), device)
        return self._host_values[key]


DenoiserCall = tuple[torch.Tensor, "float | Sequence[float]", Conditioning, float]


def run_lockstep(runs: Sequence[Generator[None, None, torch.Tensor]]) -> list[torch.Tensor]:
    """Advance stepped evaluations one segment at a time each, in turn, until all have returned."""
    results: list[torch.Tensor | None] = [None] * len(runs)
    alive = list(range(len(runs)))
    while alive:
        still = []
        for i in alive:
            try:
                next(runs[i])
                still.append(i)
            except StopIteration as stop:
                results[i] = stop.value
        alive = still
    return results


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (in RAM) on ``device`` without making the host wait for the device's queue.

    A blocking copy to a CUDA device waits for every kernel queued before it; from page-locked memory the
    copy is queued like a kernel instead (the allocator keeps the page-locked block until it has run).
    """
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True).copy_(tensor)
    return pinned.to(device, non_blocking=True)


def conditioning_from_tensors(tensors: Mapping[str, torch.Tensor]) -> Conditioning:
    return Conditioning(tensors["crossattn"], tensors["vector"], tensors["control"])


# ----------------------------------------------------------------------------------------------------------
# Schedules of the DPM++ 2M sampler


def _linspace01_f32(n: int) -> np.ndarray:
    """torch.linspace(0, 1, n) in float32, same arithmetic (two halves, from each end)."""
    if n == 1:
        return np.zeros(1, dtype=np.float32)
    step = np.float32(1.0) / np.float32(n - 1)
    idx = np.arange(n)
    head = idx.astype(np.float32) * step
    tail = np.float32(1.0) - (n - 1 - idx).astype(np.float32) * step
    return np.where(idx < n // 2, head, tail).astype(np.float32)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """Karras et al. schedule of n sigmas from sigma_max down to sigma_min plus a trailing 0, in float32."""
    if n < 1:
        raise ValueError(f"the Karras schedule needs at least one step, got {n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min} and {sigma_max}")
    f32 = np.float32
    min_inv_rho = f32(sigma_min) ** f32(1 / rho)
    max_inv_rho = f32(sigma_max) ** f32(1 / rho)
    sigmas = (max_inv_rho + _linspace01_f32(n) * (min_inv_rho - max_inv_rho)) ** f32(rho)
    return [float(s) for s in sigmas.astype(np.float32)] + [0.0]


def dpmpp_2m_sigmas(steps: int) -> list[float]:
    """The restore DPM++ 2M schedule: Karras from the legacy schedule's first to its last non-zero sigma.

    The lower end is legacy[-2] (e.g. ~0.398 for 8 steps), not the smallest training sigma.
    """
    legacy = sampler_sigmas(steps)
    return karras_sigmas(steps, legacy[-2], legacy[0])


# ----------------------------------------------------------------------------------------------------------
# Settings


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _finite(name: str, value: float) -> None:
    _require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        f"{name} must be a finite number, got {value!r}",
    )


def _positive_int(name: str, value: object) -> None:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        f"{name} must be a positive integer (latent pixels), got {value!r}",
    )


@dataclass(frozen=True)
class SamplerSettings:
    """Everything a sampler needs besides the model, the schedule and the conditioning.

    cfg_scale: text guidance scale w; with cfg_scale_start set, w ramps linearly from ~cfg_scale_start at
        sigma = 14.6146 to cfg_scale as sigma -> 0 (the original's "linear CFG").
    control_scale / control_scale_start: the same for the control (stage-2) scale, ramped on the unchurned
        sigma.
    restoration_scale: kappa of the restoration (stage-1) guidance towards the anchor; <= 0 disables it.
        Applied while the next sigma exceeds restoration_sigma_min.
    s_churn, s_noise, s_tmin, s_tmax: EDM churn (s_noise also scales the DPM++ 2M noise).
    eta: DPM++ 2M stochasticity (1 = the original's default; 0 = deterministic).
    dpm_restoration: False reproduces the original DPM++ 2M sampler, which silently ignores the restoration
        guidance and the linear control ramp; True applies both exactly as the EDM sampler does.
    batch_cfg: run uncond and cond as one doubled batch (True, the original) or as two calls (half the
        activation memory, same result).
    tile_size / tile_stride: latent tiles of the tiled samplers (both None = untiled).
    tile_batch: tiles evaluated together in one network call (tiled sampling). More tiles per call means
        fewer passes over the weights (what matters when they are streamed) for proportionally more
        activation memory; the result is the same up to float rounding of batched kernels.
    lockstep: evaluate all network calls of a step (every tile call, cond and uncond) together, one
        network segment at a time (``Denoiser.lockstep``): streamed weights then pass once per step
        instead of once per call, while every call's skip activations stay live. Same result.
    """

    cfg_scale: float = 4.0
    cfg_scale_start: float | None = None
    control_scale: float = 1.0
    control_scale_start: float | None = None
    restoration_scale: float = -1.0
    restoration_sigma_min: float = 0.05
    s_churn: float = 0.0
    s_noise: float = 1.003
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    eta: float = 1.0
    dpm_restoration: bool = False
    batch_cfg: bool = True
    tile_size: int | None = None
    tile_stride: int | None = None
    tile_batch: int = 1
    lockstep: bool = False

    def __post_init__(self) -> None:
        for name in ("cfg_scale", "control_scale", "restoration_scale", "restoration_sigma_min", "eta"):
            _finite(name, getattr(self, name))
        for name in ("cfg_scale_start", "control_scale_start"):
            if getattr(self, name) is not None:
                _finite(name, getattr(self, name))
        for name in ("s_churn", "s_noise", "s_tmin"):
            _finite(name, getattr(self, name))
            _require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _require(self.restoration_sigma_min >= 0, "restoration_sigma_min must be >= 0")
        _require(self.eta >= 0, f"eta must be >= 0, got {self.eta}")
        _require(
            isinstance(self.s_tmax, (int, float))
            and not math.isnan(self.s_tmax)
            and self.s_tmax >= self.s_tmin,
            f"s_tmax must be a number >= s_tmin ({self.s_tmin}), got {self.s_tmax!r}",
        )
        _positive_int("tile_batch", self.tile_batch)
        self._validate_tiles()

    def _validate_tiles(self) -> None:
        if self.tile_size is None and self.tile_stride is None:
            return
        _require(
            self.tile_size is not None and self.tile_stride is not None,
            "tile_size and tile_stride must be given together (or both None for untiled sampling)",
        )
        _positive_int("tile_size", self.tile_size)
        _positive_int("tile_stride", self.tile_stride)
        _require(
            self.tile_stride <= self.tile_size,
            f"tile_stride ({self.tile_stride}) must not exceed tile_size ({self.tile_size}): "
            "tiles would leave gaps",
        )

    @property
    def tiled(self) -> bool:
        return self.tile_size is not None

    def cfg_at(self, sigma: float) -> float:
        """Text guidance scale at (churned) sigma."""
        if self.cfg_scale_start is None:
            return self.cfg_scale
        return (self.cfg_scale_start - self.cfg_scale) * sigma / SIGMA_MAX + self.cfg_scale

    def control_at(self, sigma: float) -> float:
        """Control scale at (unchurned) sigma."""
        if self.control_scale_start is None:
            return self.control_scale
        return (sigma / SIGMA_MAX) * (self.control_scale_start - self.control_scale) + self.control_scale

    @property
    def restoration_enabled(self) -> bool:
        return self.restoration_scale > 0

    def restoration_weight(self, sigma: float, sigma_next: float) -> float:
        """Weight pulling the prediction towards the anchor at this step (0 = none)."""
        if not self.restoration_enabled or not sigma_next > self.restoration_sigma_min:
            return 0.0
        return (sigma / SIGMA_MAX) ** self.restoration_scale

    def churn(self, sigma: float, steps: int) -> float:
        """EDM gamma of a step at sigma (steps = number of sampler steps)."""
        if self.s_churn > 0 and self.s_tmin <= sigma <= self.s_tmax:
            return min(self.s_churn / steps, math.sqrt(2) - 1)
        return 0.0


# ----------------------------------------------------------------------------------------------------------
# Conditioning and classifier-free guidance


def _slice_conditioning(cond: Conditioning, window: Window) -> Conditioning:
    h0, h1, w0, w1 = window
    return Conditioning(cond.crossattn, cond.vector, cond.control[:, :, h0:h1, w0:w1])


@dataclass(frozen=True)
class GuidedConditioning:
    """Conditional and unconditional conditioning plus the restoration anchor (x_center).

    ``cond`` may be a list of conditionings, one per tile (local prompts of the tiled samplers); the
    unconditional side is shared. Control latents and the anchor have the latent's spatial size.
    """

    cond: Conditioning | Sequence[Conditioning]
    uncond: Conditioning
    anchor: torch.Tensor | None = None

    @property
    def per_tile(self) -> bool:
        return not isinstance(self.cond, Conditioning)

    def single(self, index: int = 0) -> Conditioning:
        return self.cond[index] if self.per_tile else self.cond

    def tile(self, window: Window, index: int = 0) -> GuidedConditioning:
        """The conditioning of one latent tile: control and anchor sliced spatially, text untouched."""
        h0, h1, w0, w1 = window
        anchor = None if self.anchor is None else self.anchor[:, :, h0:h1, w0:w1]
        cond = _slice_conditioning(self.single(index), window)
        return GuidedConditioning(cond, _slice_conditioning(self.uncond, window), anchor)

    def batched(self) -> Conditioning:
        """The doubled batch [uncond; cond] of the original's CFG guider."""
        return _batched(self, {})


def _batched(cond: GuidedConditioning, text_cache: dict) -> Conditioning:
    single, uncond = cond.single(), cond.uncond
    text = _doubled_text(single, uncond, text_cache)
    return Conditioning(*text, torch.cat([uncond.control, single.control]))


def _doubled_text(cond: Conditioning, uncond: Conditioning, cache: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """[uncond; cond] text tensors, concatenated once per distinct pair (tiles share them)."""
    key = (id(uncond.crossattn), id(cond.crossattn), id(uncond.vector), id(cond.vector))
    if key not in cache:
        cache[key] = (torch.cat([uncond.crossattn, cond.crossattn]), torch.cat([uncond.vector, cond.vector]))
    return cache[key]


DenoiserFn = Callable[[torch.Tensor, float, Conditioning, float], torch.Tensor]
# A computation that needs network evaluations: it yields the calls it needs (denoiser arguments) and is
# sent their outputs, in the same order; ``answer`` and ``_run_regions`` evaluate them.
NeedsCalls = Generator[list[tuple], list[torch.Tensor], object]


def answer(computation: NeedsCalls, denoiser: DenoiserFn) -> object:
    """Run ``computation``, evaluating the calls it asks for one after the other; return its result."""
    try:
        calls = next(computation)
        while True:
            calls = computation.send([denoiser(*call) for call in calls])
    except StopIteration as stop:
        return stop.value


def cfg_denoise(
    denoiser: DenoiserFn,
    x: torch.Tensor,
    sigma: float,
    cond: GuidedConditioning,
    cfg_scale: float,
    control_scale: float,
    batched: Conditioning | None = None,
) -> torch.Tensor:
    """D = D_u + w (D_c - D_u); one call on the doubled batch when ``batched`` is given, else two calls."""
    return answer(_cfg_calls(x, sigma, cond, cfg_scale, control_scale, batched), denoiser)


def _cfg_calls(
    x: torch.Tensor,
    sigma: float,
    cond: GuidedConditioning,
    cfg_scale: float,
    control_scale: float,
    batched: Conditioning | None,
) -> NeedsCalls:
    if batched is not None:
        (both,) = yield [(torch.cat([x, x]), sigma, batched, control_scale)]
        d_u, d_c = both.chunk(2)
    else:
        d_u, d_c = yield [(x, sigma, cond.uncond, control_scale), (x, sigma, cond.single(), control_scale)]
    return d_u + (d_c - d_u) * cfg_scale


# ----------------------------------------------------------------------------------------------------------
# Sampler plumbing: regions (the whole latent, or its tiles), noise, callbacks

NoiseSource = Callable[[torch.Tensor], torch.Tensor]


def generator_noise(generator: torch.Generator) -> NoiseSource:
    """A noise source drawing standard-normal tensors from ``generator`` (on the generator's device).

    A CPU generator gives the same draws whatever the device; they reach a CUDA device through
    page-locked memory, queued without waiting for the device (see ``host_to_device``).
    """

    def draw(like: torch.Tensor) -> torch.Tensor:
        out = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=generator.device)
        return host_to_device(out, like.device)

    return draw


@dataclass(frozen=True)
class StepInfo:
    """Passed to the callback after every step; x is the new latent, denoised the step's prediction."""

    step: int
    total: int
    sigma: float
    sigma_next: float
    x: torch.Tensor
    denoised: torch.Tensor


@dataclass(frozen=True)
class TileInfo:
    """Passed to ``tile_callback`` for every tile of every step, before blending."""

    step: int
    tile: int
    window: Window
    x: torch.Tensor
    denoised: torch.Tensor


StepCallback = Callable[[StepInfo], None]


@dataclass(frozen=True)
class SamplerStart:
    """Where a resumed run begins: ``step`` steps are done, ``x`` is the latent after them (already
    scaled) and ``old`` DPM++ 2M's blended prediction of the last done step (None for the EDM sampler).
    The noise source must already be at the state it had after those steps."""

    step: int
    x: torch.Tensor
    old: torch.Tensor | None = None


def _start_at(
    start: SamplerStart | None, x: torch.Tensor, sigma0: float, steps: int
) -> tuple[int, torch.Tensor]:
    """(first step to run, the latent it gets): the scaled noise, or the resumed latent."""
    if start is None:
        return 0, x * math.sqrt(1.0 + sigma0**2)
    _require(0 <= start.step <= steps, f"cannot resume at step {start.step} of a {steps}-step schedule")
    _require(
        tuple(start.x.shape) == tuple(x.shape),
        f"resumed latent {tuple(start.x.shape)} differs from x {tuple(x.shape)}",
    )
    return start.step, start.x.to(x.device, x.dtype)


TileCallback = Callable[[TileInfo], None]


@dataclass(frozen=True)
class _Region:
    window: Window | None
    cond: GuidedConditioning
    batched: Conditioning | None


@dataclass(frozen=True)
class _Group:
    """Tiles evaluated in one network call: their windows, and one region of their batched conditioning."""

    first: int  # index of the first tile
    windows: list[Window]
    region: _Region


@dataclass
class _Plan:
    """Regions of one sampling run and, when tiled, the blending weights and their per-pixel sum."""

    regions: list[_Region]
    weights: torch.Tensor | None = None
    weight_sum: torch.Tensor | None = None
    tile_callback: TileCallback | None = field(default=None, repr=False)
    groups: list[_Group] = field(default_factory=list)


def _check_inputs(x: torch.Tensor, cond: GuidedConditioning, needs_anchor: bool) -> None:
    _require(x.dim() == 4, f"x must be a [B, C, H, W] latent, got shape {tuple(x.shape)}")
    conds = list(cond.cond) if cond.per_tile else [cond.cond]
    _require(len(conds) > 0, "the list of per-tile conditionings is empty")
    for c in [*conds, cond.uncond]:
        _require(
            tuple(c.control.shape[-2:]) == tuple(x.shape[-2:]),
            f"control latent {tuple(c.control.shape)} does not match x {tuple(x.shape)} spatially",
        )
    if needs_anchor:
        _require(cond.anchor is not None, "restoration guidance (restoration_scale > 0) needs an anchor")
        _require(
            tuple(cond.anchor.shape) == tuple(x.shape),
            f"anchor shape {tuple(cond.anchor.shape)} differs from x {tuple(x.shape)}",
        )


def _windows(x: torch.Tensor, cond: GuidedConditioning, settings: SamplerSettings) -> list[Window | None]:
    h, w = x.shape[-2:]
    if not settings.tiled:
        _require(not cond.per_tile or len(cond.cond) == 1, "per-tile conditionings need tiled sampling")
        return [None]
    windows = tile_grid(h, w, settings.tile_size, settings.tile_stride)
    _require(
        not cond.per_tile or len(cond.cond) == len(windows),
        f"got {len(cond.cond) if cond.per_tile else 1} per-tile conditionings for {len(windows)} tiles",
    )
    return windows


def _plan(
    x: torch.Tensor,
    cond: GuidedConditioning,
    settings: SamplerSettings,
    needs_anchor: bool,
    tile_callback: TileCallback | None,
) -> _Plan:
    """Slice the conditioning to every region once; sampling steps only index the prepared list."""
    _check_inputs(x, cond, needs_anchor)
    if not needs_anchor:
        cond = replace(cond, anchor=None)
    text_cache: dict = {}
    regions = []
    for j, window in enumerate(_windows(x, cond, settings)):
        region_cond = cond if window is None else cond.tile(window, j)
        batched = _batched(region_cond, text_cache) if settings.batch_cfg else None
        regions.append(_Region(window, region_cond, batched))
    if not settings.tiled:
        return _Plan(regions)
    plan = _blend_plan(x, regions, tile_callback)
    plan.groups = _groups(regions, settings.tile_batch, settings.batch_cfg)
    return plan


def _cat_conditioning(conds: Sequence[Conditioning]) -> Conditioning:
    fields = ("crossattn", "vector", "control")
    return Conditioning(*(torch.cat([getattr(c, f) for c in conds]) for f in fields))


def _groups(regions: list[_Region], size: int, batch_cfg: bool) -> list[_Group]:
    """Consecutive tiles, ``size`` at a time, with their conditionings concatenated along the batch."""
    if size <= 1:
        return [_Group(j, [r.window], r) for j, r in enumerate(regions)]
    groups = []
    for first in range(0, len(regions), size):
        members = regions[first : first + size]
        anchors = [r.cond.anchor for r in members]
        cond = GuidedConditioning(
            _cat_conditioning([r.cond.single() for r in members]),
            _cat_conditioning([r.cond.uncond for r in members]),
            None if anchors[0] is None else torch.cat(anchors),
        )
        region = _Region(None, cond, _batched(cond, {}) if batch_cfg else None)
        groups.append(_Group(first, [r.window for r in members], region))
    return groups


def _blend_plan(x: torch.Tensor, regions: list[_Region], tile_callback: TileCallback | None) -> _Plan:
    h0, h1, w0, w1 = regions[0].window
    th, tw = h1 - h0, w1 - w0
    # The original blends with float64 weights into float32 accumulators.
    weights = gaussian_tile_weights(th, tw).to(device=x.device, dtype=widest_float(x.device))
    weight_sum = torch.zeros_like(x)
    for region in regions:
        weight_sum[_index(region.window)] += weights
    return _Plan(regions, weights, weight_sum, tile_callback)


def _index(window: Window) -> tuple[slice, ...]:
    h0, h1, w0, w1 = window
    return (slice(None), slice(None), slice(h0, h1), slice(w0, w1))


RegionStep = Callable[..., NeedsCalls]  # (region, *slices) -> computation returning (x, denoised)


def _run_regions(
    plan: _Plan,
    step: int,
    region_step: RegionStep,
    denoiser: DenoiserFn,
    lockstep: bool,
    *full: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``region_step(region, *slices)`` on every region; blend tiles with the Gaussian weights.

    ``full`` are latent-sized tensors (x first) handed to each region as its slice; returns (x, denoised).
    With ``lockstep`` the network calls of all regions are evaluated together (``Denoiser.lockstep``);
    otherwise each region runs to the end before the next starts.
    """
    if plan.weights is None:
        return _answer_regions([region_step(plan.regions[0], *full)], denoiser, lockstep)[0]
    x_acc = torch.zeros_like(full[0])
    d_acc = torch.zeros_like(full[0])
    batch = full[0].shape[0]

    def accumulate(group: _Group, indices: list[tuple[slice, ...]], x_out, d_out) -> None:
        for k, (window, index) in enumerate(zip(group.windows, indices)):
            x_tile, d_tile = x_out[k * batch : (k + 1) * batch], d_out[k * batch : (k + 1) * batch]
            if plan.tile_callback is not None:
                plan.tile_callback(TileInfo(step, group.first + k, window, x_tile, d_tile))
            x_acc[index] += x_tile * plan.weights
            d_acc[index] += d_tile * plan.weights

    def computation(group: _Group, indices: list[tuple[slice, ...]]) -> NeedsCalls:
        if len(indices) == 1:
            slices = [None if t is None else t[indices[0]] for t in full]
        else:
            slices = [None if t is None else torch.cat([t[i] for i in indices]) for t in full]
        return region_step(group.region, *slices)

    groups = [(group, [_index(w) for w in group.windows]) for group in plan.groups]
    if lockstep:
        outs = _answer_regions([computation(g, i) for g, i in groups], denoiser, True)
        for (group, indices), (x_out, d_out) in zip(groups, outs):
            accumulate(group, indices, x_out, d_out)
    else:
        for group, indices in groups:
            accumulate(group, indices, *answer(computation(group, indices), denoiser))
    return x_acc / plan.weight_sum, d_acc / plan.weight_sum


def _answer_regions(computations: Sequence[NeedsCalls], denoiser: DenoiserFn, lockstep: bool) -> list:
    """Run computations; with ``lockstep`` the calls they ask for at the same time are evaluated together
    by ``denoiser.lockstep`` (a plain denoiser function evaluates them one after the other)."""
    if not lockstep:
        return [answer(c, denoiser) for c in computations]
    results: list = [None] * len(computations)
    pending: dict[int, list[tuple]] = {}
    for i, c in enumerate(computations):
        try:
            pending[i] = next(c)
        except StopIteration as stop:
            results[i] = stop.value
    together = getattr(denoiser, "lockstep", None)
    while pending:
        calls = [call for needs in pending.values() for call in needs]
        outs = together(calls) if together is not None else [denoiser(*call) for call in calls]
        asked, pending, k = pending, {}, 0
        for i, needs in asked.items():
            mine, k = outs[k : k + len(needs)], k + len(needs)
            try:
                pending[i] = computations[i].send(mine)
            except StopIteration as stop:
                results[i] = stop.value
    return results


def _prepare_sigmas(sigmas: Sequence[float] | torch.Tensor) -> list[float]:
    """Python floats (a tensor is read once here, before the loop)."""
    values = sigmas.tolist() if isinstance(sigmas, torch.Tensor) else [float(s) for s in sigmas]
    _require(len(values) >= 2, f"a schedule needs at least two sigmas (one step), got {len(values)}")
    _require(all(math.isfinite(s) and s >= 0 for s in values), f"sigmas must be finite and >= 0: {values}")
    _require(all(s > 0 for s in values[:-1]), f"only the last sigma may be 0: {values}")
    return values


def _guided(
    region: _Region,
    x: torch.Tensor,
    sigma_net: float,
    sigma: float,
    settings: SamplerSettings,
    linear_control: bool = True,
) -> NeedsCalls:
    """CFG prediction at sigma_net (the network's sigma) with the control scale of the unchurned sigma."""
    control = settings.control_at(sigma) if linear_control else settings.control_scale
    return _cfg_calls(x, sigma_net, region.cond, settings.cfg_at(sigma_net), control, region.batched)


def _restore(denoised: torch.Tensor, region: _Region, weight: float) -> torch.Tensor:
    if weight <= 0.0:
        return denoised
    return denoised - (denoised - region.cond.anchor) * weight


# ----------------------------------------------------------------------------------------------------------
# Restoration-guided EDM (Euler, with churn)


@dataclass(frozen=True)
class _EDMStep:
    sigma: float
    sigma_next: float
    gamma: float


def _edm_region_step(
    settings: SamplerSettings,
    p: _EDMStep,
    region: _Region,
    x: torch.Tensor,
    xi: torch.Tensor | None,
) -> NeedsCalls:
    sigma_hat = p.sigma * (p.gamma + 1.0)
    if p.gamma > 0:
        x = x + xi * (settings.s_noise * math.sqrt(sigma_hat**2 - p.sigma**2))
    denoised = yield from _guided(region, x, sigma_hat, p.sigma, settings)
    denoised = _restore(denoised, region, settings.restoration_weight(p.sigma, p.sigma_next))
    d = (x - denoised) / sigma_hat
    return x + d * (p.sigma_next - sigma_hat), denoised


def sample_restore_edm(
    denoiser: DenoiserFn,
    x: torch.Tensor,
    sigmas: Sequence[float],
    cond: GuidedConditioning,
    settings: SamplerSettings,
    callback: StepCallback | None = None,
    noise: NoiseSource | None = None,
    *,
    tile_callback: TileCallback | None = None,
    start: SamplerStart | None = None,
) -> torch.Tensor:
    """The original's (Tiled)RestoreEDMSampler: Euler steps with churn, CFG and restoration guidance.

    ``x`` is unscaled standard-normal noise (scaled here by sqrt(1 + sigmas[0]^2); the caller's tensor is
    not modified). Untiled, noise is drawn only at steps with gamma > 0; tiled, one full-latent draw per
    step (used only when gamma > 0), sliced per tile, as the original does. ``callback`` gets a StepInfo
    after every step (raise from it to cancel); ``tile_callback`` every tile's result before blending.
    ``start`` resumes a run after its first ``start.step`` steps (see SamplerStart).
    """
    sigmas = _prepare_sigmas(sigmas)
    noise = torch.randn_like if noise is None else noise
    plan = _plan(x, cond, settings, settings.restoration_enabled, tile_callback)
    steps = len(sigmas) - 1
    logger.debug("restore_edm: %d steps, %d region(s)", steps, len(plan.regions))
    first, x = _start_at(start, x, sigmas[0], steps)
    for i in range(first, steps):
        p = _EDMStep(sigmas[i], sigmas[i + 1], settings.churn(sigmas[i], steps))
        xi = noise(x) if settings.tiled or p.gamma > 0 else None
        region_step = partial(_edm_region_step, settings, p)
        x, denoised = _run_regions(plan, i, region_step, denoiser, settings.lockstep, x, xi)
        if callback is not None:
            callback(StepInfo(i, steps, p.sigma, p.sigma_next, x, denoised))
    return x


# ----------------------------------------------------------------------------------------------------------
# Restore DPM++ 2M (stochastic with eta > 0)

_FINAL_SIGMA = 1e-14  # the original's test for "sigma_next is zero"


@dataclass(frozen=True)
class _DPMStep:
    sigma_prev: float | None  # None at the first step
    sigma: float
    sigma_next: float


def _dpm_update(
    x: torch.Tensor,
    denoised: torch.Tensor,
    old: torch.Tensor | None,
    xi: torch.Tensor | None,
    p: _DPMStep,
    settings: SamplerSettings,
) -> torch.Tensor:
    if p.sigma_next < _FINAL_SIGMA:
        # The original computes A x + B D with h = inf: A = 0, B = 1 when eta > 0, but eta * h = 0 * inf
        # makes everything NaN when eta = 0. The limit is x = D for every eta >= 0, so return D directly.
        return denoised
    h = math.log(p.sigma) - math.log(p.sigma_next)
    eta_h = settings.eta * h
    a = p.sigma_next / p.sigma * math.exp(-eta_h)
    b = -math.expm1(-h - eta_h)
    if old is None:
        return x * a + denoised * b
    half_inv_r = h / (2 * (math.log(p.sigma_prev) - math.log(p.sigma)))
    x = x * a + (denoised * (1 + half_inv_r) - old * half_inv_r) * b
    if settings.eta != 0:
        x = x + xi * (p.sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * settings.s_noise)
    return x


def _dpm_region_step(
    settings: SamplerSettings,
    p: _DPMStep,
    region: _Region,
    x: torch.Tensor,
    xi: torch.Tensor | None,
    old: torch.Tensor | None,
) -> NeedsCalls:
    restoration = settings.dpm_restoration
    denoised = yield from _guided(region, x, p.sigma, p.sigma, settings, linear_control=restoration)
    if restoration:
        denoised = _restore(denoised, region, settings.restoration_weight(p.sigma, p.sigma_next))
    return _dpm_update(x, denoised, old, xi, p, settings), denoised


def sample_restore_dpmpp_2m(
    denoiser: DenoiserFn,
    x: torch.Tensor,
    sigmas: Sequence[float],
    cond: GuidedConditioning,
    settings: SamplerSettings,
    callback: StepCallback | None = None,
    noise: NoiseSource | None = None,
    *,
    tile_callback: TileCallback | None = None,
    start: SamplerStart | None = None,
) -> torch.Tensor:
    """The original's (Tiled)RestoreDPMPP2MSampler (DPM++ 2M with eta-scaled noise).

    ``sigmas`` is normally ``dpmpp_2m_sigmas(steps)``; ``x`` is unscaled noise, scaled by
    sqrt(1 + sigmas[0]^2) (the original uses legacy[0], equal to the Karras sigmas[0] up to float32
    rounding). Noise is drawn (full latent, sliced per tile) at every step except the first and the last:
    N - 2 draws, also when eta = 0. Tiled, the previous prediction is itself blended over tiles.
    Callbacks and ``start`` as in ``sample_restore_edm``; ``StepInfo.denoised`` is the blended prediction
    the next step uses (``SamplerStart.old``).
    """
    sigmas = _prepare_sigmas(sigmas)
    noise = torch.randn_like if noise is None else noise
    needs_anchor = settings.dpm_restoration and settings.restoration_enabled
    plan = _plan(x, cond, settings, needs_anchor, tile_callback)
    steps = len(sigmas) - 1
    logger.debug("restore_dpmpp_2m: %d steps, %d region(s)", steps, len(plan.regions))
    first, x = _start_at(start, x, sigmas[0], steps)
    old = None
    if start is not None and first > 0:
        _require(start.old is not None, "resuming DPM++ 2M after step 0 needs the previous prediction (old)")
        old = start.old.to(x.device, x.dtype)
    for i in range(first, steps):
        p = _DPMStep(sigmas[i - 1] if i > 0 else None, sigmas[i], sigmas[i + 1])
        xi = noise(x) if i > 0 and p.sigma_next > _FINAL_SIGMA else None
        region_step = partial(_dpm_region_step, settings, p)
        x, old = _run_regions(plan, i, region_step, denoiser, settings.lockstep, x, xi, old)
        if callback is not None:
            callback(StepInfo(i, steps, p.sigma, p.sigma_next, x, old))
    return x


Sampler = Callable[..., torch.Tensor]

SAMPLERS: dict[str, Sampler] = {
    "restore_edm": sample_restore_edm,
    "restore_dpmpp_2m": sample_restore_dpmpp_2m,
}

SCHEDULES: dict[str, Callable[[int], list[float]]] = {
    "restore_edm": sampler_sigmas,
    "restore_dpmpp_2m": dpmpp_2m_sigmas,
}
