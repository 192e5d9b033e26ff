"""How a run may use device memory: the policy, the budget, and what the device has free."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

MiB = 1 << 20
GiB = 1 << 30

POLICIES = ("full", "stages", "blocks", "auto")
DEFAULT_CHUNK_BYTES = 96 * MiB
# Between free device memory and what a plan may use: CUDA context extras, cuBLAS/cuDNN workspaces and
# allocator fragmentation (typically 5-15 % above the bytes of live tensors).
DEFAULT_MARGIN_BYTES = 256 * MiB
ALLOCATOR_OVERHEAD = 1.15


@dataclass(frozen=True)
class MemoryConfig:
    """How the pipeline uses device memory.

    policy: ``full``, ``stages``, ``blocks`` or ``auto`` (module docstring). With ``auto``, sampler and
        VAE tiles left as None in the UpscaleSettings are chosen by the plan (tiles given are kept); the
        result's settings record what was used.
    budget_bytes: device bytes a run may use; None = free device memory minus the margin. ``auto`` plans
        within it; ``blocks`` fills it with resident layers when ``resident_bytes`` is None.
    resident_bytes: with ``blocks``: bytes of streamed networks kept resident (0 = stream everything).
    margin_bytes: kept free besides the allocator overhead factor.
    chunk_bytes: size of one streamed chunk (two are on the device at once: current and prefetched).
    prefetch, pin_memory: copy the next chunk ahead, on a side stream, through a small page-locked staging
        ring (CUDA; see ``staging``: 3 x 64 MiB of RAM for 96 MiB chunks).
    batch_cfg: run cond and uncond as one batch (True) or one after the other (False: half the activation
        memory); None = batched, or chosen by ``auto``.
    tile_batch: sampler tiles evaluated in one network call; each call streams the non-resident weights
        once, so with ``blocks`` and tiles this divides the bytes streamed per step. None = 1, or chosen
        by ``auto``.
    lockstep: evaluate all network calls of a sampler step together, segment by segment, so that streamed
        weights pass once per step, not once per call (``blocks`` with several calls per step: tiles, or
        sequential CFG); every call's skip activations are then live at once. None = when it fits the
        budget (free memory when none is given), or chosen by ``auto``.
    """

    policy: str = "auto"
    budget_bytes: int | None = None
    resident_bytes: int | None = None
    margin_bytes: int = DEFAULT_MARGIN_BYTES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    prefetch: bool = True
    pin_memory: bool = True
    batch_cfg: bool | None = None
    tile_batch: int | None = None
    lockstep: bool | None = None

    def __post_init__(self) -> None:
        if self.tile_batch is not None and self.tile_batch < 1:
            raise ValueError(f"tile_batch must be at least 1, got {self.tile_batch}")
        if self.policy not in POLICIES:
            raise ValueError(f"memory policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, got {self.chunk_bytes}")

    def replace(self, **changes: object) -> MemoryConfig:
        return replace(self, **changes)


def memory_config(value: MemoryConfig | str | None) -> MemoryConfig:
    if value is None:
        return MemoryConfig()
    return MemoryConfig(policy=value) if isinstance(value, str) else value


def budget_config(policy: str | None, budget_gib: float | None) -> MemoryConfig:
    """``policy`` (None: ``auto``) planning with ``budget_gib`` GiB of device memory (None: all free)."""
    return MemoryConfig(
        policy=policy or "auto", budget_bytes=None if budget_gib is None else int(budget_gib * GiB)
    )


def free_device_bytes(device: torch.device) -> int | None:
    """Bytes this process could still allocate on ``device``; None when unbounded (CPU) or unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "mps":
        return torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory()
    return None


def available_host_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """RAM available to a new allocation without swapping; None when the platform does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the kernel writes kB (KiB)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def device_budget(device: torch.device, config: MemoryConfig) -> int | None:
    """What a plan may use on ``device``: the configured budget, or free memory less margin and overhead."""
    if config.budget_bytes is not None:
        return config.budget_bytes
    free = free_device_bytes(device)
    if free is None:
        return None
    return max(0, int((free - config.margin_bytes) / ALLOCATOR_OVERHEAD))


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"
