"""Device memory policy: where each weight lives while SUPIR runs, and in which dtype it is stored.

* The RAM copy of every weight is the source of truth and is never written. Making a module resident
  puts *device copies* of its tensors into the module (in their storage dtype); offloading puts the
  RAM tensors back and drops the copies, with no device-to-host copy. The layers (models/ops.py) upcast
  whatever weight they hold to the compute dtype just in time, so fp8 storage works on every device, and
  a weight that is not resident is copied for the one layer that needs it: every policy computes the
  same values, the policies differ only in what is copied when.
* Policies: ``full`` keeps every weight a run has used resident until the run ends; ``stages`` (the
  default) keeps only the current stage's modules; ``blocks`` streams the UNet, control and text
  encoder layers through the device in chunks, in execution order, the next chunk copied on a side CUDA
  stream (from page-locked RAM) while the current one computes, and with ``resident_bytes`` keeps that
  much of them resident (partial residency). ``auto`` (see ``plan``) picks the policy, the resident
  bytes, the sampler and VAE tiles and batched or sequential CFG from the free device memory.
* On the CPU every policy is a no-op: the weights already are where the computation runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from itertools import product

import torch
from torch import nn

from .errors import DeviceMemoryError

log = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30

POLICIES = ("full", "stages", "blocks", "auto")
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8": torch.float8_e4m3fn,
}
# With fp8 storage, vectors (biases, norm scales, 0.1 % of the bytes) keep this dtype.
FP8_VECTOR_DTYPE = torch.float16
DEFAULT_CHUNK_BYTES = 96 * MiB
# Between free device memory and what a plan may use: CUDA context extras, cuBLAS/cuDNN workspaces and
# allocator fragmentation (typically 5-15 % above the bytes of live tensors).
DEFAULT_MARGIN_BYTES = 256 * MiB
ALLOCATOR_OVERHEAD = 1.15

Transfer = Callable[[torch.Tensor], torch.Tensor]
Observer = Callable[[str, str], None]  # (event, stage); events: "begin", "ready", "end"


# ------------------------------------------------------------------------------------------ storage dtypes


def storage_dtype(storage: str | torch.dtype) -> torch.dtype:
    if isinstance(storage, torch.dtype):
        return storage
    try:
        return STORAGE_DTYPES[storage.lower()]
    except KeyError:
        raise ValueError(
            f"storage dtype must be one of {', '.join(STORAGE_DTYPES)}, got {storage!r}"
        ) from None


def is_storage_only(dtype: torch.dtype) -> bool:
    """True for dtypes that store weights but are not computed in (float8)."""
    return dtype.is_floating_point and dtype.itemsize == 1


def tensor_storage_dtype(shape: Sequence[int], storage: torch.dtype) -> torch.dtype:
    """fp8 stores matrices and kernels only; vectors keep 16 bits (they cost nothing and round worst)."""
    if is_storage_only(storage) and len(shape) < 2:
        return FP8_VECTOR_DTYPE
    return storage


def _stored(t: torch.Tensor, storage: torch.dtype) -> torch.Tensor:
    dtype = tensor_storage_dtype(t.shape, storage)
    if t.is_meta:  # weightless model (benchmarks): uninitialised RAM, or fake RAM under a fake-tensor mode
        return torch.empty(t.shape, dtype=dtype, device="cpu")
    return t if t.dtype == dtype else t.to(dtype)


def convert_storage(module: nn.Module, storage: str | torch.dtype) -> nn.Module:
    """Give every floating tensor of ``module`` its storage dtype (new tensors; the old ones are untouched).

    Meta tensors become uninitialised CPU tensors, so a model built on the meta device can be run
    (under a fake-tensor mode, to measure memory) without any weights.
    """
    dtype = storage_dtype(storage)
    done: dict[int, torch.Tensor] = {}
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for name, t in table.items():
                if t is None or not (t.is_floating_point() or t.is_meta):
                    continue
                if id(t) not in done:
                    new = _stored(t, dtype) if t.is_floating_point() else torch.empty_like(t, device="cpu")
                    done[id(t)] = (
                        nn.Parameter(new, requires_grad=False) if isinstance(t, nn.Parameter) else new
                    )
                table[name] = done[id(t)]
    return module


def apply_storage(
    model: nn.Module, storage: str | torch.dtype, vae_dtype: torch.dtype = torch.bfloat16
) -> None:
    """Storage dtypes of a SUPIRModel: ``storage`` for UNet, control and text, ``vae_dtype`` for the VAE.

    The VAE is never stored in fp16 (it overflows to NaN) nor fp8.
    """
    if vae_dtype == torch.float16 or is_storage_only(vae_dtype):
        raise ValueError("the VAE must be stored in bfloat16 or float32 (fp16 overflows in this VAE)")
    convert_storage(model.model, storage)
    convert_storage(model.conditioner, storage)
    convert_storage(model.first_stage_model, vae_dtype)
    if model.denoiser.sigmas.is_meta:
        model.denoiser.reset()


def tensor_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of the distinct tensors of ``modules`` (tied tensors counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            seen[id(t)] = t.nelement() * t.element_size()
    return sum(seen.values())


# ------------------------------------------------------------------------------------------ configuration


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
    prefetch, pin_memory: copy the next chunk ahead, on a side stream, from page-locked RAM (CUDA).
    batch_cfg: run cond and uncond as one batch (True) or one after the other (False: half the activation
        memory); None = batched, or chosen by ``auto``.
    tile_batch: sampler tiles evaluated in one network call; each call streams the non-resident weights
        once, so with ``blocks`` and tiles this divides the bytes streamed per step. None = 1, or chosen
        by ``auto``.
    """

    policy: str = "stages"
    budget_bytes: int | None = None
    resident_bytes: int | None = None
    margin_bytes: int = DEFAULT_MARGIN_BYTES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    prefetch: bool = True
    pin_memory: bool = True
    batch_cfg: bool | None = None
    tile_batch: int | None = None

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
    """``policy`` (None: ``stages``) planning with ``budget_gib`` GiB of device memory (None: all free)."""
    return MemoryConfig(
        policy=policy or "stages", budget_bytes=None if budget_gib is None else int(budget_gib * GiB)
    )


def free_device_bytes(device: torch.device) -> int | None:
    """Bytes this process could still allocate on ``device``; None when unbounded (CPU) or unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "mps":
        return torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory()
    return None


def device_budget(device: torch.device, config: MemoryConfig) -> int | None:
    """What a plan may use on ``device``: the configured budget, or free memory less margin and overhead."""
    if config.budget_bytes is not None:
        return config.budget_bytes
    free = free_device_bytes(device)
    if free is None:
        return None
    return max(0, int((free - config.margin_bytes) / ALLOCATOR_OVERHEAD))


# ------------------------------------------------------------------------------------------ placement


@dataclass(eq=False)
class _Slot:
    """One tensor entry of a module (``_parameters`` or ``_buffers``) and its RAM tensor."""

    table: dict
    name: str
    original: torch.Tensor

    @property
    def key(self) -> tuple[int, str]:
        return id(self.table), self.name

    @property
    def nbytes(self) -> int:
        return self.original.nelement() * self.original.element_size()

    def install(self, copy: torch.Tensor) -> None:
        if isinstance(self.original, nn.Parameter):
            copy = nn.Parameter(copy, requires_grad=False)
        self.table[self.name] = copy

    def restore(self) -> None:
        self.table[self.name] = self.original


def _module_slots(module: nn.Module, recurse: bool = True) -> list[_Slot]:
    slots, seen = [], set()
    for sub in module.modules() if recurse else [module]:
        for table in (sub._parameters, sub._buffers):
            for name, t in table.items():
                if t is not None and (id(table), name) not in seen:
                    seen.add((id(table), name))
                    slots.append(_Slot(table, name, t))
    return slots


def _slots_of(modules: Iterable[nn.Module]) -> list[_Slot]:
    slots: dict[tuple[int, str], _Slot] = {}
    for module in modules:
        for slot in _module_slots(module):
            slots.setdefault(slot.key, slot)
    return list(slots.values())


class _Placement:
    """Device copies installed in modules, reference-counted per slot; tied tensors share one copy."""

    def __init__(self, transfer: Transfer):
        self.transfer = transfer
        self._refs: Counter[tuple[int, str]] = Counter()
        self._installed: dict[tuple[int, str], _Slot] = {}
        self._copies: dict[int, torch.Tensor] = {}  # id(RAM tensor) -> its device copy
        self._users: Counter[int] = Counter()

    def acquire(self, slots: Sequence[_Slot], copies: Sequence[torch.Tensor] | None = None) -> None:
        for i, slot in enumerate(slots):
            if self._refs[slot.key] == 0:
                tid = id(slot.original)
                if tid not in self._copies:
                    copy = copies[i] if copies is not None else self.transfer(slot.original)
                    self._copies[tid] = copy
                if self._copies[tid] is not slot.original:
                    slot.install(self._copies[tid])
                self._installed[slot.key] = slot
                self._users[tid] += 1
            self._refs[slot.key] += 1

    def release(self, slots: Iterable[_Slot]) -> None:
        for slot in slots:
            if self._refs[slot.key] == 0:
                continue
            self._refs[slot.key] -= 1
            if self._refs[slot.key] == 0:
                self._drop(slot.key)

    def _drop(self, key: tuple[int, str]) -> None:
        slot = self._installed.pop(key)
        del self._refs[key]
        slot.restore()
        tid = id(slot.original)
        self._users[tid] -= 1
        if self._users[tid] == 0:
            del self._users[tid], self._copies[tid]

    def release_all(self) -> None:
        for key in list(self._installed):
            self._drop(key)

    def holds(self, slot: _Slot) -> bool:
        return slot.key in self._installed

    @property
    def resident_bytes(self) -> int:
        return sum(c.nelement() * c.element_size() for c in self._copies.values())


# ------------------------------------------------------------------------------------------ copies ahead


class _Copier:
    """Makes device copies now, or ahead of time (on a side stream on CUDA, ordered by an event)."""

    def __init__(self, device: torch.device, transfer: Transfer, side_stream: bool):
        self.transfer = transfer
        self.device = device
        self.stream = torch.cuda.Stream(device) if side_stream else None

    def ahead(self, tensors: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], object]:
        if self.stream is None:
            return [self.transfer(t) for t in tensors], None
        with torch.cuda.stream(self.stream):
            copies = [self.transfer(t) for t in tensors]
        event = torch.cuda.Event()
        event.record(self.stream)
        return copies, event

    def ready(self, copies: Sequence[torch.Tensor], event: object) -> None:
        """Make the compute stream wait for copies made ahead, and keep their memory until it is done."""
        if event is None:
            return
        current = torch.cuda.current_stream(self.device)
        current.wait_event(event)
        for c in copies:
            c.record_stream(current)


class _HostPins:
    """Page-locks RAM tensors in place (cudaHostRegister: no copy) so that host-to-device copies are async."""

    def __init__(self) -> None:
        self._pointers: list[int] = []

    def pin(self, tensors: Iterable[torch.Tensor]) -> None:
        cudart = torch.cuda.cudart()
        seen = set()
        for t in tensors:
            if t.device.type != "cpu" or t.is_pinned():
                continue
            storage = t.untyped_storage()
            ptr, size = storage.data_ptr(), storage.nbytes()
            if ptr in seen or size == 0:
                continue
            seen.add(ptr)
            if int(cudart.cudaHostRegister(ptr, size, 0)) == 0:
                self._pointers.append(ptr)
        if len(self._pointers) < len(seen):
            log.info(
                "page-locked %d of %d weight tensors; the rest stream from pageable memory",
                len(self._pointers),
                len(seen),
            )

    def unpin(self) -> None:
        if not self._pointers:
            return
        torch.cuda.synchronize()  # no copy from these pages may still be in flight
        cudart = torch.cuda.cudart()
        for ptr in self._pointers:
            cudart.cudaHostUnregister(ptr)
        self._pointers = []


# ------------------------------------------------------------------------------------------ streaming


def _leaves(roots: Iterable[nn.Module]) -> list[nn.Module]:
    """Modules holding tensors of their own, in definition order (roughly execution order)."""
    seen, leaves = set(), []
    for root in roots:
        for module in root.modules():
            own = any(t is not None for t in [*module._parameters.values(), *module._buffers.values()])
            if own and id(module) not in seen:
                seen.add(id(module))
                leaves.append(module)
    return leaves


def _chunked(leaves: Sequence[nn.Module], slots: Mapping[int, list[_Slot]], limit: int) -> list[list[int]]:
    """Consecutive leaves (indices) grouped into chunks of at most ``limit`` bytes (a larger leaf alone)."""
    chunks: list[list[int]] = []
    size = limit
    for i, leaf in enumerate(leaves):
        nbytes = sum(s.nbytes for s in slots[id(leaf)])
        if size + nbytes > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += nbytes
    return chunks


class _Streamer:
    """Streams the layers of some networks through the device, chunk by chunk, in execution order.

    A forward pre-hook on every leaf module loads the leaf's chunk (dropping the previous one) and copies
    the next chunk ahead. Chunks start in definition order; after the first complete evaluation (the first
    leaf runs again) they are rebuilt in the recorded execution order, so prefetching then always guesses
    right. Correctness never depends on the guess: a weight that is not resident is copied by its layer.
    """

    def __init__(
        self,
        placement: _Placement,
        copier: _Copier,
        roots: Sequence[nn.Module],
        resident_bytes: int,
        chunk_bytes: int,
        prefetch: bool,
    ):
        self.placement = placement
        self.copier = copier
        self.chunk_bytes = chunk_bytes
        self.prefetch = prefetch
        leaves = _leaves(roots)
        self._slots = {id(leaf): _module_slots(leaf, recurse=False) for leaf in leaves}
        self.resident: list[_Slot] = []
        self.streamed: list[nn.Module] = []
        for leaf in leaves:
            nbytes = sum(s.nbytes for s in self._slots[id(leaf)])
            if nbytes <= resident_bytes:
                resident_bytes -= nbytes
                self.resident += self._slots[id(leaf)]
            else:
                resident_bytes = 0  # keep a prefix resident: one contiguous run, streamed in order after it
                self.streamed.append(leaf)
        placement.acquire(self.resident)
        self._order: list[nn.Module] = []
        self._recorded: set[int] = set()
        self._recording = True
        self._current: int | None = None
        self._pending: tuple[int, list[torch.Tensor], object] | None = None
        self._build(self.streamed)
        self._hooks = [leaf.register_forward_pre_hook(partial(self._enter, leaf)) for leaf in self.streamed]

    def slots(self, leaf: nn.Module) -> list[_Slot]:
        return self._slots[id(leaf)]

    def _build(self, order: Sequence[nn.Module], rest: Sequence[nn.Module] = ()) -> None:
        """Chunks of ``order`` (cycled through by prefetching), then of ``rest`` (leaves not seen running)."""
        self._leaves = [*order, *rest]
        chunks = _chunked(order, self._slots, self.chunk_bytes)
        self._cycle = len(chunks)
        first = len(order)
        chunks += [[first + i for i in c] for c in _chunked(rest, self._slots, self.chunk_bytes)]
        self._chunks = [[s for i in chunk for s in self._slots[id(self._leaves[i])]] for chunk in chunks]
        self._chunk_of = {id(self._leaves[i]): c for c, chunk in enumerate(chunks) for i in chunk}

    def _enter(self, leaf: nn.Module, module: nn.Module, args: object) -> None:
        if self._recording:
            self._record(leaf)
        index = self._chunk_of[id(leaf)]
        if index != self._current:
            self._switch(index)

    def _record(self, leaf: nn.Module) -> None:
        if self._order and leaf is self._order[0]:
            self._recording = False
            self._drop_loaded()
            self._build(self._order, [m for m in self.streamed if id(m) not in self._recorded])
            log.debug("streaming %d chunks in recorded order", len(self._chunks))
        elif id(leaf) not in self._recorded:
            self._recorded.add(id(leaf))
            self._order.append(leaf)

    def _switch(self, index: int) -> None:
        if self._current is not None:
            self.placement.release(self._chunks[self._current])
            self._current = None
        pending, self._pending = self._pending, None
        copies = None
        if pending is not None and pending[0] == index:
            copies = pending[1]
            self.copier.ready(copies, pending[2])
        del pending  # a wrong guess is freed before the chunk is loaded
        self.placement.acquire(self._chunks[index], copies)
        self._current = index
        if self.prefetch and index < self._cycle and self._cycle > 1:
            nxt = (index + 1) % self._cycle
            slots = self._chunks[nxt]
            self._pending = (nxt, *self.copier.ahead([s.original for s in slots]))

    def _drop_loaded(self) -> None:
        if self._current is not None:
            self.placement.release(self._chunks[self._current])
        self._current = self._pending = None

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._drop_loaded()
        self.placement.release(self.resident)


# ------------------------------------------------------------------------------------------ residency


def _default_transfer(device: torch.device) -> Transfer:
    if device.type == "mps":  # MPS has no float8: upcast fp8 weights on the way
        return lambda t: (t.to(FP8_VECTOR_DTYPE) if is_storage_only(t.dtype) else t).to(device)
    return lambda t: t.to(device, non_blocking=True)


class Residency:
    """Puts each stage's weights on the device according to a policy (module docstring).

    ``transfer`` makes a device copy of a RAM tensor (default ``t.to(device)``); tests pass a recording
    copier to watch residency on the CPU. ``observer(event, stage)`` is told "begin" (before the stage's
    weights are placed), "ready" (after) and "end" (after they are dropped).
    """

    def __init__(
        self,
        device: torch.device | str,
        policy: str = "stages",
        *,
        resident_bytes: int = 0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        prefetch: bool = True,
        pin_memory: bool = True,
        transfer: Transfer | None = None,
        observer: Observer | None = None,
    ):
        if policy not in ("full", "stages", "blocks"):
            raise ValueError(f"residency policy must be full, stages or blocks, got {policy!r}")
        self.device = torch.device(device)
        self.policy = policy
        self.resident_bytes_limit = resident_bytes
        self.chunk_bytes = chunk_bytes
        self.observer = observer
        # On the CPU the weights already are where the computation runs: nothing to do.
        self.active = transfer is not None or self.device.type != "cpu"
        cuda = self.device.type == "cuda" and transfer is None
        self.placement = _Placement(transfer or _default_transfer(self.device))
        self.copier = _Copier(self.device, self.placement.transfer, side_stream=cuda and prefetch)
        self.prefetch = prefetch
        self.pin_memory = pin_memory and cuda

    @contextlib.contextmanager
    def stage(
        self, name: str, modules: Sequence[nn.Module], streamed: Sequence[nn.Module] = ()
    ) -> Iterator[None]:
        """Run a stage with ``modules`` resident; ``streamed`` ones are streamed under ``blocks``."""
        self._notify("begin", name)
        if not self.active:
            self._notify("ready", name)
            try:
                yield
            finally:
                self._notify("end", name)
            return
        stream = self.policy == "blocks" and bool(streamed)
        slots = _slots_of(modules if stream else [*modules, *streamed])
        streamer, pins = None, _HostPins() if stream and self.pin_memory else None
        try:
            self.placement.acquire(slots)
            if stream:
                streamer = self._streamer(streamed, pins)
            self._notify("ready", name)
            yield
        finally:
            if streamer is not None:
                streamer.close()
            if pins is not None:
                pins.unpin()
            if self.policy != "full":  # ``full`` keeps its copies until release()
                self.placement.release(slots)
            self._notify("end", name)

    def _streamer(self, roots: Sequence[nn.Module], pins: _HostPins | None) -> _Streamer:
        streamer = _Streamer(
            self.placement, self.copier, roots, self.resident_bytes_limit, self.chunk_bytes, self.prefetch
        )
        if pins is not None:  # only what is streamed needs page-locked RAM
            try:
                pins.pin(s.original for leaf in streamer.streamed for s in streamer.slots(leaf))
            except (RuntimeError, AttributeError) as exc:  # no CUDA runtime bindings: pageable copies
                log.info("could not page-lock weights (%s); streaming from pageable memory", exc)
        return streamer

    def release(self) -> None:
        """Drop every device copy (what ``full`` kept, and anything a failed stage left)."""
        self.placement.release_all()

    @property
    def resident_bytes(self) -> int:
        return self.placement.resident_bytes

    def _notify(self, event: str, stage: str) -> None:
        if self.observer is not None:
            self.observer(event, stage)


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


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

    @classmethod
    def of(
        cls,
        model: nn.Module,
        output_hw: tuple[int, int],
        settings: object,
        dtype: torch.dtype,
        vae_dtype: torch.dtype = torch.bfloat16,
    ) -> Workload:
        vae = model.first_stage_model
        weights = [*model.model.parameters(), *model.conditioner.parameters()]
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
            "vae_tiles": self.vae_tiles,
            "budget_bytes": self.budget_bytes,
            "estimated_peak_bytes": self.estimated_peak_bytes,
        }


# Activation bytes and FLOPs of SUPIR-v0 pieces, measured with ``bench/vram.py --calibrate`` (fake CUDA,
# fp16 UNet/control, bf16 VAE, flash / memory-efficient attention). Other architectures scale them by their
# channel counts. They are estimates for planning; the margin absorbs their error.
SAMPLING_ACT_PER_PX = 18_300  # bytes per latent pixel of a tile and per batch element (cond or uncond)
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

SAMPLER_TILES = (None, 224, 192, 160, 128, 96, 64, 48, 32)  # latent px; stride = tile // 2
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


def _tiles(latent_hw: tuple[int, int], tile: tuple[int, int] | None) -> tuple[int, int]:
    """(number of tiles, latent pixels of one tile); untiled is one tile of the whole latent."""
    from .tiling import tile_extent, tile_grid

    h, w = latent_hw
    if tile is None:
        return 1, h * w
    th, tw = tile_extent(h, w, tile[0])
    return len(tile_grid(h, w, tile[0], tile[1])), th * tw


def _step_flops(work: Workload, n_tiles: int, tile_px: int) -> float:
    """FLOPs of one sampler step (cond and uncond) over all tiles."""
    per_tile = SAMPLING_FLOPS_LINEAR * tile_px + SAMPLING_FLOPS_QUADRATIC * tile_px**2
    return 2 * n_tiles * per_tile * (work.unet_channels / 320) ** 2


def _sampling_act(work: Workload, tile_px: int, batch: int) -> int:
    scale = work.unet_channels / 320 * work.compute_itemsize / 2
    latent_state = 16 * 4 * 4 * work.latent_hw[0] * work.latent_hw[1]  # fp32 latents of the sampler loop
    return int(SAMPLING_ACT_PER_PX * scale * tile_px * batch) + latent_state


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
            act = _sampling_act(work, tile_px, (2 if batch_cfg else 1) * tile_batch)
            flops = _step_flops(work, n_tiles, tile_px) * (1 if batch_cfg else SEQUENTIAL_CFG_SLOWDOWN)
            passes = -(-n_tiles // tile_batch) * (1 if batch_cfg else 2)
            for policy in ("full", "stages", "blocks"):
                if policy != "blocks" and tile_batch > 1:
                    continue  # resident weights are not streamed: nothing to save, only memory to spend
                option = _option(work, budget, policy, tile, batch_cfg, act, extra)
                if option is None:
                    continue
                streamed = work.sampling_bytes - option.resident if policy == "blocks" else 0
                loads = _total_bytes(work) + (0 if policy == "full" else work.vae_bytes["decode"])
                cost = work.steps * (flops + FLOPS_PER_STREAMED_BYTE * passes * streamed)
                yield replace(option, cost=cost + FLOPS_PER_STREAMED_BYTE * loads, tile_batch=tile_batch)


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
    peak = max(sampling, text, vae_peak + others)
    return _Option(policy, resident, batch_cfg, tile, vae_tiles, peak, 0.0)


def _estimate(
    work: Workload, policy: str, resident: int, batch_cfg: bool, chunk_bytes: int, tile_batch: int = 1
) -> int:
    """Estimated peak of a fixed arrangement (the user's tiles as they are)."""
    n_tiles, tile_px = _tiles(work.latent_hw, work.tile)
    act = _sampling_act(work, tile_px, (2 if batch_cfg else 1) * min(tile_batch, n_tiles))
    sampling, text, others = _peaks(work, policy, act, _stream_extra(work, chunk_bytes), resident)
    vae = _vae_peak(work, work.vae_tiles, max(work.vae_bytes.values(), default=0))
    return max(sampling, text, vae + others)


def plan(workload: Workload, budget: int, config: MemoryConfig) -> MemoryPlan:
    """The fastest arrangement whose estimated peak fits ``budget`` bytes.

    Tries full / stages / blocks with as much resident as fits, every sampler tile (untiled first) with
    batched or sequential CFG, and for each the largest VAE tiles that fit; the cost is FLOPs (tile
    overlap included) plus streamed weight bytes at FLOPS_PER_STREAMED_BYTE. Raises DeviceMemoryError
    naming the budget and the smallest need when nothing fits.
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
    best = min(fitting, key=lambda o: (o.cost, o.peak))
    log.info(
        "memory plan for a budget of %s: %s, resident %s, tile %s (%d per call), VAE tiles %s, %s CFG, "
        "estimated peak %s",
        _gib(budget),
        best.policy,
        _gib(best.resident),
        best.tile,
        best.tile_batch,
        best.vae_tiles,
        "batched" if best.batch_cfg else "sequential",
        _gib(best.peak),
    )
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
    )


def plan_memory(workload: Workload, config: MemoryConfig, device: torch.device) -> MemoryPlan:
    """Resolve ``config`` for this workload on ``device``: ``auto`` plans (see ``plan``), others are fixed."""
    budget = device_budget(device, config)
    if config.policy == "auto":
        if budget is None:  # the CPU: nothing to plan
            return _fixed_plan(workload, config, "stages", None)
        return plan(workload, budget, config)
    return _fixed_plan(workload, config, config.policy, budget)


def _fixed_plan(workload: Workload, config: MemoryConfig, policy: str, budget: int | None) -> MemoryPlan:
    resident = config.resident_bytes
    if resident is None and policy == "blocks" and config.budget_bytes is not None:
        resident = _room_for_resident(workload, config)
    batch_cfg = config.batch_cfg is not False
    n_tiles, _ = _tiles(workload.latent_hw, workload.tile)
    tile_batch = min(config.tile_batch or 1, n_tiles)
    estimate = _estimate(workload, policy, resident or 0, batch_cfg, config.chunk_bytes, tile_batch)
    if budget is not None and estimate > budget:
        log.warning(
            "the %s policy needs about %s of device memory but %s is available: expect an out-of-memory "
            "error; the 'auto' policy plans within the free memory",
            policy,
            _gib(estimate),
            _gib(budget),
        )
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
    )


def _room_for_resident(workload: Workload, config: MemoryConfig) -> int:
    """Bytes of UNet + control that fit resident beside one step's activations (partial residency)."""
    n_tiles, tile_px = _tiles(workload.latent_hw, workload.tile)
    per_call = (1 if config.batch_cfg is False else 2) * min(config.tile_batch or 1, n_tiles)
    act = _sampling_act(workload, tile_px, per_call)
    room = config.budget_bytes - act - _stream_extra(workload, config.chunk_bytes)
    return max(0, min(workload.sampling_bytes, room))
