"""Residency and streaming: which weights are on the device while a stage runs.


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
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from . import staging
from .config import DEFAULT_CHUNK_BYTES
from .storage import FP8_VECTOR_DTYPE, is_storage_only

log = logging.getLogger(__name__)

Transfer = Callable[[torch.Tensor], torch.Tensor]
Observer = Callable[[str, str], None]  # (event, stage); events: "begin", "ready", "end"


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
    """Makes device copies now, or ahead of time (on a side stream on CUDA, ordered by an event).

    With ``staging_bytes`` (CUDA), copies made ahead go through the device's page-locked staging ring
    (``staging``), sized for chunks of that many bytes; without one they come from pageable RAM.
    """

    def __init__(
        self,
        device: torch.device,
        transfer: Transfer,
        side_stream: bool,
        staging_bytes: int | None = None,
        count: Callable[[int], None] | None = None,
    ):
        self.transfer = transfer
        self.device = device
        self._count = count  # told the bytes of copies that bypass ``transfer`` (the staging ring)
        self.stream = torch.cuda.Stream(device) if side_stream else None
        self._staging_bytes = staging_bytes if side_stream else None

    def ahead(self, tensors: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], object]:
        if self.stream is None:
            return [self.transfer(t) for t in tensors], None
        ring = None if self._staging_bytes is None else staging.ring_for(self.device, self._staging_bytes)
        with torch.cuda.stream(self.stream):
            if ring is not None:
                copies = ring.send(tensors, self.stream)
                if self._count is not None:
                    self._count(sum(t.nelement() * t.element_size() for t in tensors))
            else:
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


def _units(roots: Sequence[nn.Module]) -> tuple[list[list[nn.Module]], bool]:
    """Leaves grouped into units that are never split across chunks, in execution order when known.

    A root with ``segments()`` (the networks' stepped forms) gives one unit per segment, in execution
    order; any other root one unit per leaf, in definition order. Also whether every root gave segments.
    """
    units, seen, known = [], set(), True
    for root in roots:
        segments = getattr(root, "segments", None)
        if segments is None:
            known = False
            parts = [[leaf] for leaf in _leaves([root])]
        else:
            parts = [_leaves(segment) for segment in segments()]
            parts.append(_leaves([root]))  # anything no segment names, last
        for part in parts:
            unit = [leaf for leaf in part if id(leaf) not in seen]
            seen.update(id(leaf) for leaf in unit)
            if unit:
                units.append(unit)
    return units, known


def _chunked(sizes: Sequence[int], limit: int) -> list[list[int]]:
    """Consecutive units (indices) grouped into chunks of at most ``limit`` bytes (a larger unit alone)."""
    chunks: list[list[int]] = []
    size = limit
    for i, nbytes in enumerate(sizes):
        if size + nbytes > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += nbytes
    return chunks


class _Streamer:
    """Streams the layers of some networks through the device, chunk by chunk, in execution order.

    A forward pre-hook on every leaf module loads the leaf's chunk (dropping the previous one) and copies
    the next chunk ahead. Networks that list their ``segments()`` are chunked in execution order from
    the start, a chunk always holding whole segments, so evaluations run in lockstep (segment by segment,
    round-robin) load each chunk once per pass. Other networks start in definition order; after their
    first complete evaluation (the first leaf runs again) they are rebuilt in the recorded execution
    order. Correctness never depends on the order: a weight that is not resident is copied by its layer.
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
        units, known = _units(roots)
        leaves = [leaf for unit in units for leaf in unit]
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
        streamed = {id(leaf) for leaf in self.streamed}
        units = [kept for unit in units if (kept := [leaf for leaf in unit if id(leaf) in streamed])]
        self._order: list[nn.Module] = []
        self._recorded: set[int] = set()
        self._recording = not known
        self._current: int | None = None
        self._pending: tuple[int, list[torch.Tensor], object] | None = None
        self._build(units)
        self._hooks = [leaf.register_forward_pre_hook(partial(self._enter, leaf)) for leaf in self.streamed]

    @property
    def chunks(self) -> list[list[nn.Module]]:
        """The leaves of each chunk, in streaming order."""
        return [list(chunk) for chunk in self._chunk_leaves]

    def _build(self, order: Sequence[Sequence[nn.Module]], rest: Sequence[Sequence[nn.Module]] = ()) -> None:
        """Chunks of the units ``order`` (cycled through by prefetching), then of ``rest`` (not seen run)."""

        def size(unit: Sequence[nn.Module]) -> int:
            return sum(s.nbytes for leaf in unit for s in self._slots[id(leaf)])

        def leaves(units: Sequence[Sequence[nn.Module]], chunks: list[list[int]]) -> list[list[nn.Module]]:
            return [[leaf for i in chunk for leaf in units[i]] for chunk in chunks]

        self._chunk_leaves = leaves(order, _chunked([size(u) for u in order], self.chunk_bytes))
        self._cycle = len(self._chunk_leaves)
        self._chunk_leaves += leaves(rest, _chunked([size(u) for u in rest], self.chunk_bytes))
        self._chunks = [[s for leaf in chunk for s in self._slots[id(leaf)]] for chunk in self._chunk_leaves]
        self._chunk_of = {id(leaf): c for c, chunk in enumerate(self._chunk_leaves) for leaf in chunk}

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
            rest = [[m] for m in self.streamed if id(m) not in self._recorded]
            self._build([[m] for m in self._order], rest)
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
    weights are placed), "ready" (after) and "end" (after they are dropped). ``bytes_to_device`` counts
    the weight bytes copied to the device per stage (placement and prefetch; the innermost stage).
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
        self.bytes_to_device: Counter[str] = Counter()
        self._stages: list[str] = []
        self.placement = _Placement(self._counted(transfer or _default_transfer(self.device)))
        self.pin_memory = pin_memory and cuda
        self.copier = _Copier(
            self.device,
            self.placement.transfer,
            side_stream=cuda and prefetch,
            staging_bytes=chunk_bytes if self.pin_memory else None,
            count=self._count,
        )
        self.prefetch = prefetch

    @contextlib.contextmanager
    def stage(
        self, name: str, modules: Sequence[nn.Module], streamed: Sequence[nn.Module] = ()
    ) -> Iterator[None]:
        """Run a stage with ``modules`` resident; ``streamed`` ones are streamed under ``blocks``."""
        self._notify("begin", name)
        self._stages.append(name)
        try:
            yield from self._stage(name, modules, streamed)
        finally:
            self._stages.pop()

    def _count(self, nbytes: int) -> None:
        self.bytes_to_device[self._stages[-1] if self._stages else ""] += nbytes

    def _counted(self, transfer: Transfer) -> Transfer:
        def copy(t: torch.Tensor) -> torch.Tensor:
            self._count(t.nelement() * t.element_size())
            return transfer(t)

        return copy

    def _stage(
        self, name: str, modules: Sequence[nn.Module], streamed: Sequence[nn.Module]
    ) -> Iterator[None]:
        if not self.active:
            self._notify("ready", name)
            try:
                yield
            finally:
                self._notify("end", name)
            return
        stream = self.policy == "blocks" and bool(streamed)
        slots = _slots_of(modules if stream else [*modules, *streamed])
        streamer = None
        try:
            self.placement.acquire(slots)
            if stream:
                streamer = self._streamer(streamed)
            self._notify("ready", name)
            yield
        finally:
            if streamer is not None:
                streamer.close()
            if self.policy != "full":  # ``full`` keeps its copies until release()
                self.placement.release(slots)
            self._notify("end", name)

    def _streamer(self, roots: Sequence[nn.Module]) -> _Streamer:
        return _Streamer(
            self.placement, self.copier, roots, self.resident_bytes_limit, self.chunk_bytes, self.prefetch
        )

    def release(self) -> None:
        """Drop every device copy (what ``full`` kept, and anything a failed stage left)."""
        self.placement.release_all()

    @property
    def resident_bytes(self) -> int:
        return self.placement.resident_bytes

    def _notify(self, event: str, stage: str) -> None:
        if self.observer is not None:
            self.observer(event, stage)
