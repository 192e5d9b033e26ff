"""Page-locked staging for streamed weights: a few pinned buffers per device, allocated once and reused.

A host-to-device copy is asynchronous only from page-locked RAM. Rather than locking the weights
themselves (gigabytes, locked and unlocked every run), each streamed chunk is copied on the host into
one of ``BUFFERS`` pinned buffers and sent to the device from there on the caller's side stream. An
event recorded after a buffer's copies is waited for before that buffer is written again, so the host
fills one buffer while the device reads another.

Pinned RAM held: ``BUFFERS`` x the largest power of two not above the chunk size (the pinned allocator
rounds every request up to a power of two, so other sizes would lock more than they use): 3 x 64 MiB =
192 MiB for the default 96 MiB chunks, one ring per device, kept until ``release_staging``. A chunk
larger than a buffer, or a tensor larger than a buffer, goes through several buffers in turn.
Where pinned memory cannot be had (no CUDA, a pinned-memory limit as on WSL), weights are copied from
pageable memory instead, and that is logged once per device.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import torch
from torch._guards import detect_fake_mode

from .config import MiB

log = logging.getLogger(__name__)

BUFFERS = 3
ALIGN = 256  # byte offset of each tensor in a buffer (the alignment the copy kernels like)
MIN_BUFFER_BYTES = MiB

Allocate = Callable[[int], torch.Tensor]
NewEvent = Callable[[], object]
Launch = Callable[[torch.Tensor, torch.Tensor], None]  # (device bytes, pinned bytes): an async copy


def _pinned(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


def _cuda_event() -> object:
    return torch.cuda.Event()


def _async_copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    dst.copy_(src, non_blocking=True)


def buffer_bytes_for(chunk_bytes: int) -> int:
    """Size of one staging buffer for ``chunk_bytes`` chunks: a power of two, at least 1 MiB."""
    return max(MIN_BUFFER_BYTES, 1 << (max(1, chunk_bytes).bit_length() - 1))


def _align(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a contiguous tensor, flat."""
    return t.reshape(-1).view(torch.uint8)


class StagingRing:
    """``count`` page-locked byte buffers that carry tensors to ``device`` asynchronously.

    ``allocate``, ``new_event`` and ``launch`` default to pinned ``torch.empty``, ``torch.cuda.Event`` and
    ``dst.copy_(src, non_blocking=True)``; tests pass stand-ins to run on the CPU.
    """

    def __init__(
        self,
        device: torch.device | str,
        buffer_bytes: int,
        count: int = BUFFERS,
        *,
        allocate: Allocate | None = None,
        new_event: NewEvent | None = None,
        launch: Launch | None = None,
    ):
        if buffer_bytes < ALIGN or count < 1:
            raise ValueError(
                f"a staging ring needs at least one buffer of at least {ALIGN} bytes, got {count} x "
                f"{buffer_bytes}: pass a larger chunk size"
            )
        self.device = torch.device(device)
        self.buffer_bytes = buffer_bytes
        self._new_event, self._launch = new_event or _cuda_event, launch or _async_copy
        allocate = allocate or _pinned
        self._buffers = [allocate(buffer_bytes) for _ in range(count)]
        self._events: list[object | None] = [None] * count
        self._next = 0
        self._lock = threading.Lock()

    @property
    def pinned_bytes(self) -> int:
        return sum(b.nelement() for b in self._buffers)

    def send(self, tensors: Sequence[torch.Tensor], stream: object) -> list[torch.Tensor]:
        """Device copies of ``tensors`` (contiguous, same dtype and shape), copied on ``stream``.

        The copies are launched, not finished: the caller makes its compute stream wait for ``stream``
        before using them (and must be inside ``torch.cuda.stream(stream)`` so that they are allocated
        and launched there).
        """
        with self._lock:
            if not self._buffers:  # released meanwhile: pageable copies
                return [t.to(self.device, non_blocking=True) for t in tensors]
            copies = []
            batch = _Filling(self, stream)
            try:
                for t in tensors:
                    src = _as_bytes(t if t.is_contiguous() else t.contiguous())
                    dst = torch.empty(t.shape, dtype=t.dtype, device=self.device)
                    batch.put(src, _as_bytes(dst))
                    copies.append(dst)
            finally:  # copies already launched are waited for before their buffer is reused, even on error
                batch.close()
            return copies

    def release(self) -> None:
        """Wait for every copy still reading a buffer, then drop the buffers."""
        with self._lock:
            for i in range(len(self._buffers)):
                self._wait(i)
            self._buffers = []

    def _take(self) -> int:
        """The next buffer, once the copies that last read it are done."""
        index = self._next
        self._wait(index)
        self._next = (index + 1) % len(self._buffers)
        return index

    def _wait(self, index: int) -> None:
        event, self._events[index] = self._events[index], None
        if event is not None:
            event.synchronize()

    def _sent(self, index: int, stream: object) -> None:
        event = self._new_event()
        event.record(stream)
        self._events[index] = event


class _Filling:
    """One ``send``: packs tensors into buffers in turn, each tensor at an aligned offset."""

    def __init__(self, ring: StagingRing, stream: object):
        self.ring, self.stream = ring, stream
        self.index: int | None = None
        self.used = 0

    def put(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        size, done = src.nelement(), 0
        while done < size:
            room = self.ring.buffer_bytes - self.used
            # A tensor that fits in one buffer is never split; a larger one fills buffer after buffer.
            if self.index is None or room < min(size - done, self.ring.buffer_bytes):
                self._next_buffer()
                room = self.ring.buffer_bytes
            n = min(room, size - done)
            staged = self.ring._buffers[self.index][self.used : self.used + n]
            staged.copy_(src[done : done + n])
            self.ring._launch(dst[done : done + n], staged)
            done += n
            self.used = _align(self.used + n)

    def _next_buffer(self) -> None:
        self.close()
        self.index, self.used = self.ring._take(), 0

    def close(self) -> None:
        if self.index is not None and self.used > 0:
            self.ring._sent(self.index, self.stream)
        self.index = None


# ------------------------------------------------------------------------------------------ one per device

_rings: dict[torch.device, StagingRing] = {}
_unavailable: set[torch.device] = set()  # pinning failed there: copies come from pageable memory
_rings_lock = threading.Lock()


def _indexed(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def ring_for(device: torch.device | str, chunk_bytes: int) -> StagingRing | None:
    """The staging ring for ``device`` sized for ``chunk_bytes`` chunks; None where RAM cannot be pinned.

    Made once per device and kept across runs; a different chunk size replaces it.
    """
    if detect_fake_mode() is not None:  # a shape-only memory benchmark: there is no RAM to pin
        return None
    device = _indexed(torch.device(device))
    size = buffer_bytes_for(chunk_bytes)
    with _rings_lock:
        ring = _rings.get(device)
        if ring is not None and ring.buffer_bytes == size:
            return ring
        if device in _unavailable:
            return None
        if ring is not None:
            del _rings[device]
            ring.release()
        try:
            ring = StagingRing(device, size)
        except RuntimeError as exc:  # no CUDA driver, or the OS refused to lock that much RAM
            _unavailable.add(device)
            log.warning(
                "could not page-lock %d MiB of RAM for streaming weights to %s (%s); copying from pageable "
                "memory instead, which does not overlap copies with computation",
                BUFFERS * size // MiB,
                device,
                exc,
            )
            return None
        _rings[device] = ring
        log.info("page-locked %d MiB of RAM for streaming weights to %s", ring.pinned_bytes // MiB, device)
        return ring


def pinned_bytes() -> int:
    """Page-locked RAM held by the staging rings of every device."""
    with _rings_lock:
        return sum(ring.pinned_bytes for ring in _rings.values())


def release_staging() -> None:
    """Free every staging ring (after its copies finish) and try pinning again on next use."""
    with _rings_lock:
        rings = list(_rings.values())
        _rings.clear()
        _unavailable.clear()
    for ring in rings:
        ring.release()
