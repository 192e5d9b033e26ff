"""Planning: the fastest arrangement (policy, residency, tiles, CFG batching) that fits a device budget."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from itertools import product

import torch
from torch import nn

from ..errors import DeviceMemoryError, HostMemoryError
from .config import MemoryConfig, MiB, available_host_bytes, device_budget, gib
from .storage import tensor_bytes

log = logging.getLogger(__name__)

_gib = gib


# ------------------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class Workload:
    """What one run asks of the device: weight bytes per stage, latent size, tiles the user fixed."""

    latent_hw: tuple[int, int]
    steps: int
    sampling_bytes: int  # UNet + control
    text_bytes: int
    vae_bytes: Mapping[str, int]  # "denoise_encode", "decode", "encode"
    largest_weight: int  # elements of the largest single weight (upcast transient with fp8 storage)
    compute_itemsize: int = 2
    vae_itemsize: int = 2
    unet_channels: int = 320
    vae_channels: int = 128
    tile: tuple[int, int] | None = None  # (size, stride) the user asked for; None = free (auto) or untiled
    vae_tiles: tuple[int | None, int | None] = (None, None)
    # bytes of full maps the tiled VAE stores (encode, decode) at this size; None: estimated per pixel
    vae_map_bytes: tuple[int, int] | None = None

    @classmethod
    def of(
        cls,
        model: nn.Module,
        output_hw: tuple[int, int],
        settings: object,
        dtype: torch.dtype,
        vae_dtype: torch.dtype = torch.bfloat16,
    ) -> Workload:
        from ..tiled_vae import storage_bytes

        vae = model.first_stage_model
        weights = [*model.model.parameters(), *model.conditioner.parameters()]
        maps = tuple(storage_bytes(vae, d, output_hw, vae_dtype) for d in ("encode", "decode"))
        tile = None if settings.tile_size is None else (settings.tile_size, settings.tile_stride)
        return cls(
            latent_hw=(output_hw[0] // 8, output_hw[1] // 8),
            steps=settings.steps,
            sampling_bytes=tensor_bytes([model.model]),
            text_bytes=tensor_bytes([model.conditioner]),
            vae_bytes={
                "denoise_encode": tensor_bytes([vae.denoise_encoder, vae.quant_conv]),
                "decode": tensor_bytes([vae.decoder, vae.post_quant_conv]),
                "encode": tensor_bytes([vae.encoder, vae.quant_conv]),
            },
            largest_weight=max((t.nelement() for t in weights), default=0),
            compute_itemsize=dtype.itemsize,
            vae_itemsize=vae_dtype.itemsize,
            unet_channels=model.config.unet.model_channels,
            vae_channels=model.config.vae.ch,
            tile=tile,
            vae_tiles=(settings.vae_encoder_tile, settings.vae_decoder_tile),
            vae_map_bytes=maps,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class MemoryPlan:
    """The resolved policy of one run, and the tiles and CFG batching it runs with."""

    policy: str  # full, stages or blocks
    resident_bytes: int = 0  # blocks: bytes of the streamed networks kept resident
    batch_cfg: bool = True
    tile: tuple[int, int] | None = None  # sampler (size, stride) in latent pixels
    vae_tiles: tuple[int | None, int | None] = (None, None)  # encoder (image px), decoder (latent px)
    budget_bytes: int | None = None
    estimated_peak_bytes: int | None = None
    requested: str = "stages"
    tile_batch: int = 1  # sampler tiles per network call
    vae_storage: str = "host"  # where the tiled VAE keeps its full maps: "device" or "host" (RAM)
    host_bytes: int = 0  # RAM those maps take when kept on the host (0: untiled VAE or device storage)
    notes: tuple[str, ...] = ()  # how the plan changed the user's tiling, for the log and the infotext
    lockstep: bool = False  # a step's network calls evaluated together (one weight pass per step)

    def apply(self, settings: object) -> object:
        """``settings`` with this plan's tiles (UpscaleSettings)."""
        size, stride = self.tile if self.tile is not None else (None, None)
        encoder, decoder = self.vae_tiles
        return settings.replace(
            tile_size=size, tile_stride=stride, vae_encoder_tile=encoder, vae_decoder_tile=decoder
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "requested": self.requested,
            "resident_bytes": self.resident_bytes,
            "batch_cfg": self.batch_cfg,
            "tile": self.tile,
            "tile_batch": self.tile_batch,
            "lockstep": self.lockstep,
            "vae_tiles": self.vae_tiles,
            "budget_bytes": self.budget_bytes,
            "estimated_peak_bytes": self.estimated_peak_bytes,
            "vae_storage": self.vae_storage,
            "host_bytes": self.host_bytes,
            "notes": list(self.notes),
        }


# Activation bytes and FLOPs of SUPIR-v0 pieces, measured with ``bench/vram.py --calibrate`` (fake CUDA,
# fp16 UNet/control, bf16 VAE, flash / memory-efficient attention). Other architectures scale them by their
# channel counts. They are estimates for planning; the margin absorbs their error.
SAMPLING_ACT_PER_PX = 18_300  # bytes per latent pixel of a tile and per batch element (cond or uncond)
# What one call keeps live between network segments when calls run in lockstep, per latent pixel and batch
# element: the UNet's skip activations and the control features (SDXL: 3280 channels at latent resolution
# summed over levels, in fp16).
LOCKSTEP_STATE_PER_PX = 6_560
# FLOPs of one UNet + control evaluation of a tile of n latent pixels, per batch element: a n + b n^2
# (attention is quadratic): 2.4 TFLOP at 64^2, 10.1 at 128^2, 53.9 at 256^2.
SAMPLING_FLOPS_LINEAR = 565e6
SAMPLING_FLOPS_QUADRATIC = 3934.0
# VAE (bf16) activations per pixel of a tile: tiled encoder per image pixel, tiled decoder per latent pixel;
# the plain (untiled) networks need more per pixel. The tiled VAE also keeps the mid-block attention's keys
# and values for the whole image (2 x 512 channels at latent resolution).
VAE_ENCODE_ACT_PER_PX = 900
VAE_DECODE_ACT_PER_PX = 84_000
VAE_PLAIN_ENCODE_ACT_PER_PX = 1_300
VAE_PLAIN_DECODE_ACT_PER_PX = 98_500
VAE_IMAGE_BYTES_PER_PX = 40  # image-sized tensors around the VAE (input, output, colour fix in float32)
TEXT_ACT_BYTES = 64 * MiB
# A weight byte streamed to the device costs about as much time as this many FLOPs (PCIe ~16-25 GB/s
# against ~20-80 effective TFLOP/s), and running cond and uncond one after the other is a bit slower.
FLOPS_PER_STREAMED_BYTE = 1500.0
SEQUENTIAL_CFG_SLOWDOWN = 1.1

# Full maps the tiled VAE stores at once, per image pixel (bf16, 128 base channels): three maps of 128
# channels while encoding, two of 256 while decoding (``tiled_vae.storage_bytes`` gives them exactly).
VAE_ENCODE_MAP_BYTES_PER_PX = 768
VAE_DECODE_MAP_BYTES_PER_PX = 1024
# RAM left free beside the tiled VAE's maps (the host's own working memory)
HOST_MARGIN_BYTES = 1 << 30

SAMPLER_TILES = (None, 224, 192, 160, 128, 96, 64, 48, 32)  # latent px; stride = tile // 2
# SDXL was trained at 1024 px (128 latent px): smaller sampler tiles lose global context. The planner
# streams more before it goes below this, and says so when it has to.
TILE_FLOOR = 128
VAE_ENCODER_TILES = (None, 2048, 1536, 1024, 768, 512, 384, 256, 128)  # image px
VAE_DECODER_TILES = (None, 256, 192, 128, 96, 64, 48, 32, 16)  # latent px


@dataclass(frozen=True)
class _Option:
    policy: str
    resident: int
    batch_cfg: bool
    tile: tuple[int, int] | None
    vae_tiles: tuple[int | None, int | None]
    peak: int
    cost: float
    tile_batch: int = 1
    vae_storage: str = "host"
    host_bytes: int = 0
    lockstep: bool = False


def _tiles(latent_hw: tuple[int, int], tile: tuple[int, int] | None) -> tuple[int, int]:
    """(number of tiles, latent pixels of one tile); untiled is one tile of the whole latent."""
    from ..tiling import tile_extent, tile_grid

    h, w = latent_hw
    if tile is None:
        return 1, h * w
    th, tw = tile_extent(h, w, tile[0])
    return len(tile_grid(h, w, tile[0], tile[1])), th * tw


def _step_flops(work: Workload, n_tiles: int, tile_px: int) -> float:
    """FLOPs of one sampler step (cond and uncond) over all tiles."""
    per_tile = SAMPLING_FLOPS_LINEAR * tile_px + SAMPLING_FLOPS_QUADRATIC * tile_px**2
    return 2 * n_tiles * per_tile * (work.unet_channels / 320) ** 2


def _sampling_act(work: Workload, tile_px: int, batch: int, lockstep_calls: int = 1) -> int:
    """Sampling activations of calls of ``batch`` elements; in lockstep, the live state of the other calls."""
    scale = work.unet_channels / 320 * work.compute_itemsize / 2
    latent_state = 16 * 4 * 4 * work.latent_hw[0] * work.latent_hw[1]  # fp32 latents of the sampler loop
    others = LOCKSTEP_STATE_PER_PX * (lockstep_calls - 1)
    return int((SAMPLING_ACT_PER_PX + others) * scale * tile_px * batch) + latent_state


def _calls(n_tiles: int, tile_batch: int, batch_cfg: bool) -> int:
    """Network calls of one sampler step."""
    return -(-n_tiles // tile_batch) * (1 if batch_cfg else 2)


def _vae_peak(work: Workload, tiles: tuple[int | None, int | None], weights: int) -> int:
    """Peak of the larger VAE stage (encode or decode) with these tiles (None: plain network)."""
    h, w = work.latent_hw
    scale = work.vae_channels / 128 * work.vae_itemsize / 2
    enc_tile, dec_tile = tiles
    if enc_tile is None or enc_tile >= 8 * max(h, w):  # one tile: the plain network runs
        encode = VAE_PLAIN_ENCODE_ACT_PER_PX * 64 * h * w
    else:
        encode = VAE_ENCODE_ACT_PER_PX * min(enc_tile, 8 * h) * min(enc_tile, 8 * w)
    if dec_tile is None or dec_tile >= max(h, w):
        decode = VAE_PLAIN_DECODE_ACT_PER_PX * h * w
    else:
        decode = VAE_DECODE_ACT_PER_PX * min(dec_tile, h) * min(dec_tile, w)
    keys_values = 2 * 4 * work.vae_channels * h * w * work.vae_itemsize
    act = max(encode, decode, keys_values) * scale
    return int(weights + act + VAE_IMAGE_BYTES_PER_PX * 64 * h * w)


def _vae_choice(work: Workload, room: int) -> tuple[tuple[int | None, int | None], int]:
    """The largest VAE tiles (fewest tiles) whose stage fits in ``room`` bytes, and that stage's peak.

    When none fits: the smallest tiles and their peak (the least the VAE needs).
    """
    weights = max(work.vae_bytes.values(), default=0)
    fixed = work.vae_tiles != (None, None)
    encoders = (work.vae_tiles[0],) if fixed else VAE_ENCODER_TILES
    decoders = (work.vae_tiles[1],) if fixed else VAE_DECODER_TILES
    for dec in decoders:
        for enc in encoders:
            peak = _vae_peak(work, (enc, dec), weights)
            if peak <= room:
                return (enc, dec), peak
    return (encoders[-1], decoders[-1]), _vae_peak(work, (encoders[-1], decoders[-1]), weights)


def _vae_map_bytes(work: Workload, tiles: tuple[int | None, int | None]) -> int:
    """Bytes of full maps the tiled VAE stores with these tiles (0 when both directions run plain)."""
    h, w = work.latent_hw
    if work.vae_map_bytes is not None:
        encode, decode = work.vae_map_bytes
    else:
        per_px = 64 * h * w * work.vae_channels / 128 * work.vae_itemsize / 2
        encode, decode = int(VAE_ENCODE_MAP_BYTES_PER_PX * per_px), int(VAE_DECODE_MAP_BYTES_PER_PX * per_px)
    enc_tile, dec_tile = tiles
    encode_tiled = enc_tile is not None and enc_tile < 8 * max(h, w)
    decode_tiled = dec_tile is not None and dec_tile < max(h, w)
    return max(encode if encode_tiled else 0, decode if decode_tiled else 0)


def _below_floor(tile: tuple[int, int] | None) -> bool:
    # tiles are only ever smaller than the latent, so below the floor also covers "smaller than the latent"
    return tile is not None and tile[0] < TILE_FLOOR


def _host_fits(host_bytes: int, available: int | None) -> bool:
    return host_bytes == 0 or available is None or host_bytes + HOST_MARGIN_BYTES <= available


def _host_error(work: Workload, need: int, available: int) -> HostMemoryError:
    h, w = work.latent_hw
    return HostMemoryError(
        f"a {8 * w}x{8 * h} output needs about {_gib(need + HOST_MARGIN_BYTES)} of free RAM for the tiled "
        f"VAE's full-size maps ({_gib(need)}, plus {_gib(HOST_MARGIN_BYTES)} kept free), but only "
        f"{_gib(available)} is available and the device has no room to keep them. Choose a smaller output "
        "size, close other programs to free RAM, or use a machine with more RAM or GPU memory.",
        needed=need,
        available=available,
    )


def _stream_extra(work: Workload, chunk_bytes: int) -> int:
    """Two chunks in flight plus one layer's upcast copy."""
    return 2 * chunk_bytes + work.largest_weight * work.compute_itemsize


def _total_bytes(work: Workload) -> int:
    return work.sampling_bytes + work.text_bytes + sum(work.vae_bytes.values())


def _peaks(work: Workload, policy: str, act: int, extra: int, resident: int) -> tuple[int, int, int]:
    """(sampling stage peak, text stage peak, bytes resident beside the VAE's own) of an arrangement."""
    text = work.text_bytes + TEXT_ACT_BYTES
    if policy == "full":  # everything a run has used stays: at the last stage, all of it
        total = _total_bytes(work)
        return total + act, text, total - max(work.vae_bytes.values(), default=0)
    if policy == "stages":
        return work.sampling_bytes + act, text, 0
    return resident + act + extra, min(work.text_bytes, resident) + extra + TEXT_ACT_BYTES, 0


def _options(work: Workload, budget: int, config: MemoryConfig) -> Iterator[_Option]:
    if work.tile is not None:
        tiles = [work.tile]
    else:
        tiles = [
            None if t is None else (t, t // 2) for t in SAMPLER_TILES if t is None or t < max(work.latent_hw)
        ]
    batches = [config.batch_cfg] if config.batch_cfg is not None else [True, False]
    extra = _stream_extra(work, config.chunk_bytes)
    for tile in tiles:
        n_tiles, tile_px = _tiles(work.latent_hw, tile)
        for batch_cfg, tile_batch in product(batches, _tile_batches(n_tiles, config.tile_batch)):
            per_call = (2 if batch_cfg else 1) * tile_batch
            flops = _step_flops(work, n_tiles, tile_px) * (1 if batch_cfg else SEQUENTIAL_CFG_SLOWDOWN)
            calls = _calls(n_tiles, tile_batch, batch_cfg)
            for policy, lockstep in product(("full", "stages", "blocks"), _lockstep_choices(calls, config)):
                if policy != "blocks" and (tile_batch > 1 or lockstep):
                    continue  # resident weights are not streamed: nothing to save, only memory to spend
                act = _sampling_act(work, tile_px, per_call, calls if lockstep else 1)
                option = _option(work, budget, policy, tile, batch_cfg, act, extra)
                if option is None:
                    continue
                streamed = work.sampling_bytes - option.resident if policy == "blocks" else 0
                passes = 1 if lockstep else calls
                loads = _total_bytes(work) + (0 if policy == "full" else work.vae_bytes["decode"])
                cost = work.steps * (flops + FLOPS_PER_STREAMED_BYTE * passes * streamed)
                cost += FLOPS_PER_STREAMED_BYTE * loads
                yield replace(option, cost=cost, tile_batch=tile_batch, lockstep=lockstep)


def _lockstep_choices(calls: int, config: MemoryConfig) -> list[bool]:
    """Lockstep only pays with several calls per step; the configured choice, else both."""
    if calls <= 1 or config.lockstep is False:
        return [False]
    return [True] if config.lockstep else [False, True]


def _tile_batches(n_tiles: int, fixed: int | None) -> list[int]:
    """Tiles per network call to try: the configured number, or 1, 2, 4, ... up to all tiles at once."""
    if fixed is not None:
        return [min(fixed, n_tiles)]
    sizes = [1]
    while sizes[-1] < n_tiles:
        sizes.append(min(2 * sizes[-1], n_tiles))
    return sizes


def _option(
    work: Workload,
    budget: int,
    policy: str,
    tile: tuple[int, int] | None,
    batch_cfg: bool,
    act: int,
    extra: int,
) -> _Option | None:
    """One arrangement and its peak; ``blocks`` keeps as much resident as fits (None: that is ``stages``)."""
    resident = 0
    if policy == "blocks":
        resident = max(0, min(work.sampling_bytes, budget - act - extra))
        if resident >= work.sampling_bytes:
            return None
    sampling, text, others = _peaks(work, policy, act, extra, resident)
    # VAE tiles as large as fit without raising the run's peak (the tiled VAE costs no extra FLOPs)
    room = max(sampling, text)
    vae_tiles, vae_peak = _vae_choice(work, room - others)
    if vae_peak + others > room:
        vae_tiles, vae_peak = _vae_choice(work, budget - others)
    maps = _vae_map_bytes(work, vae_tiles)
    storage = "host"
    if maps and vae_peak + others + maps <= budget:  # keep the maps on the device: no RAM, no copies
        storage, vae_peak, maps = "device", vae_peak + maps, 0
    peak = max(sampling, text, vae_peak + others)
    return _Option(policy, resident, batch_cfg, tile, vae_tiles, peak, 0.0, 1, storage, maps)


def _estimate(
    work: Workload,
    policy: str,
    resident: int,
    batch_cfg: bool,
    chunk_bytes: int,
    tile_batch: int = 1,
    lockstep: bool = False,
) -> int:
    """Estimated peak of a fixed arrangement (the user's tiles as they are)."""
    n_tiles, tile_px = _tiles(work.latent_hw, work.tile)
    tile_batch = min(tile_batch, n_tiles)
    calls = _calls(n_tiles, tile_batch, batch_cfg) if lockstep else 1
    act = _sampling_act(work, tile_px, (2 if batch_cfg else 1) * tile_batch, calls)
    sampling, text, others = _peaks(work, policy, act, _stream_extra(work, chunk_bytes), resident)
    vae = _vae_peak(work, work.vae_tiles, max(work.vae_bytes.values(), default=0))
    return max(sampling, text, vae + others)


def plan(
    workload: Workload, budget: int, config: MemoryConfig, host_available: int | None = None
) -> MemoryPlan:
    """The fastest arrangement whose estimated peak fits ``budget`` bytes (and its RAM ``host_available``).

    Tries full / stages / blocks with as much resident as fits, every sampler tile (untiled first) with
    batched or sequential CFG, and for each the largest VAE tiles that fit, their full maps kept on the
    device when there is room; the cost is FLOPs (tile overlap included) plus streamed weight bytes at
    FLOPS_PER_STREAMED_BYTE. Sampler tiles below TILE_FLOOR are used only when nothing else fits (with a
    warning). Raises DeviceMemoryError naming the budget and the smallest need when nothing fits, and
    HostMemoryError when the tiled VAE's maps fit neither on the device nor in ``host_available`` bytes.
    """
    options = list(_options(workload, budget, config))
    fitting = [o for o in options if o.peak <= budget]
    if not fitting:
        need = min((o.peak for o in options), default=0)
        h, w = workload.latent_hw
        raise DeviceMemoryError(
            f"SUPIR needs at least {_gib(need)} of device memory for a {8 * w}x{8 * h} output, even with "
            f"the 'blocks' policy (every layer streamed, small tiles), but only {_gib(budget)} is "
            "available (free memory less a safety margin). Free GPU memory (close other programs or "
            "unload other models), choose a smaller output, or run on the CPU.",
            needed=need,
            budget=budget,
        )
    in_ram = [o for o in fitting if _host_fits(o.host_bytes, host_available)]
    if not in_ram:
        raise _host_error(workload, min(o.host_bytes for o in fitting), host_available or 0)
    at_floor = [o for o in in_ram if not _below_floor(o.tile)]
    best = min(at_floor or in_ram, key=lambda o: (o.cost, o.peak))
    notes = _notes(workload, best.tile, budget)
    log.info(
        "memory plan for a budget of %s: %s, resident %s, tile %s (%d per call%s), VAE tiles %s, %s CFG, "
        "estimated peak %s",
        _gib(budget),
        best.policy,
        _gib(best.resident),
        best.tile,
        best.tile_batch,
        ", in lockstep" if best.lockstep else "",
        best.vae_tiles,
        "batched" if best.batch_cfg else "sequential",
        _gib(best.peak),
    )
    if best.host_bytes:
        log.info("tiled VAE keeps %s of full-size maps in RAM", _gib(best.host_bytes))
    return MemoryPlan(
        policy=best.policy,
        resident_bytes=best.resident,
        batch_cfg=best.batch_cfg,
        tile=best.tile,
        vae_tiles=best.vae_tiles,
        budget_bytes=budget,
        estimated_peak_bytes=best.peak,
        requested=config.policy,
        tile_batch=best.tile_batch,
        vae_storage=best.vae_storage,
        host_bytes=best.host_bytes,
        notes=notes,
        lockstep=best.lockstep,
    )


def _notes(work: Workload, tile: tuple[int, int] | None, budget: int) -> tuple[str, ...]:
    """What the plan changed about the user's sampler tiling, if anything."""
    if work.tile is not None or tile is None:
        return ()
    notes = [f"tiled {tile[0]}/{tile[1]} to fit {_gib(budget)}"]
    if _below_floor(tile):
        notes.append(f"below the tile floor of {TILE_FLOOR}: quality may suffer")
        log.warning(
            "memory plan: nothing fits %s with sampler tiles of %d latent px or more; using %d, which may "
            "lower quality (SDXL works best on 1024 px tiles). Free GPU memory or choose a smaller output.",
            _gib(budget),
            TILE_FLOOR,
            tile[0],
        )
    return tuple(notes)


def plan_memory(workload: Workload, config: MemoryConfig, device: torch.device) -> MemoryPlan:
    """Resolve ``config`` for this workload on ``device``: ``auto`` plans (see ``plan``), others are fixed."""
    budget = device_budget(device, config)
    host = None if device.type == "cpu" else available_host_bytes()  # on the CPU, RAM is the device
    if config.policy == "auto":
        if budget is None:  # the CPU: nothing to plan
            return _fixed_plan(workload, config, "stages", None)
        return plan(workload, budget, config, host)
    return _fixed_plan(workload, config, config.policy, budget, host)


def _fixed_plan(
    workload: Workload,
    config: MemoryConfig,
    policy: str,
    budget: int | None,
    host_available: int | None = None,
) -> MemoryPlan:
    resident = config.resident_bytes
    if resident is None and policy == "blocks" and config.budget_bytes is not None:
        resident = _room_for_resident(workload, config)
    batch_cfg = config.batch_cfg is not False
    n_tiles, _ = _tiles(workload.latent_hw, workload.tile)
    tile_batch = min(config.tile_batch or 1, n_tiles)
    lockstep = _fixed_lockstep(workload, config, policy, resident or 0, budget, tile_batch)
    estimate = _estimate(workload, policy, resident or 0, batch_cfg, config.chunk_bytes, tile_batch, lockstep)
    if budget is not None and estimate > budget:
        log.warning(
            "the %s policy needs about %s of device memory but %s is available: expect an out-of-memory "
            "error; the 'auto' policy plans within the free memory",
            policy,
            _gib(estimate),
            _gib(budget),
        )
    maps = _vae_map_bytes(workload, workload.vae_tiles)
    # A fixed policy keeps its documented peak: the maps go on the device only within a budget the user set.
    room = config.budget_bytes
    storage = "device" if maps and room is not None and estimate + maps <= room else "host"
    if storage == "device":
        estimate, maps = estimate + maps, 0
    elif not _host_fits(maps, host_available):
        raise _host_error(workload, maps, host_available or 0)
    return MemoryPlan(
        policy=policy,
        resident_bytes=resident or 0,
        batch_cfg=batch_cfg,
        tile=workload.tile,
        vae_tiles=workload.vae_tiles,
        budget_bytes=budget,
        estimated_peak_bytes=estimate,
        requested=config.policy,
        tile_batch=tile_batch,
        vae_storage=storage,
        host_bytes=maps,
        lockstep=lockstep,
    )


def _fixed_lockstep(
    workload: Workload, config: MemoryConfig, policy: str, resident: int, budget: int | None, tile_batch: int
) -> bool:
    """The configured choice; None: ``blocks`` with several calls per step, when its peak fits ``budget``."""
    if config.lockstep is not None:
        return config.lockstep
    batch_cfg = config.batch_cfg is not False
    n_tiles, _ = _tiles(workload.latent_hw, workload.tile)
    if policy != "blocks" or budget is None or _calls(n_tiles, tile_batch, batch_cfg) <= 1:
        return False
    peak = _estimate(workload, policy, resident, batch_cfg, config.chunk_bytes, tile_batch, lockstep=True)
    return peak <= budget


def _room_for_resident(workload: Workload, config: MemoryConfig) -> int:
    """Bytes of UNet + control that fit resident beside one step's activations (partial residency)."""
    n_tiles, tile_px = _tiles(workload.latent_hw, workload.tile)
    per_call = (1 if config.batch_cfg is False else 2) * min(config.tile_batch or 1, n_tiles)
    act = _sampling_act(workload, tile_px, per_call)
    room = config.budget_bytes - act - _stream_extra(workload, config.chunk_bytes)
    return max(0, min(workload.sampling_bytes, room))
