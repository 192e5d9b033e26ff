"""Page-locked staging ring, on the CPU: stand-in streams and events make its copies run late, the way a
side stream would, so reusing a buffer before its copies are done shows up as wrong bytes."""

from __future__ import annotations

import ast
import contextlib
import logging
from pathlib import Path

import pytest
import torch

from supir_engine.memory import Residency, residency, staging
from supir_engine.memory.config import MiB
from supir_engine.memory.staging import ALIGN, StagingRing

ROOT = Path(__file__).resolve().parents[1]


class LateStream:
    """A stream whose copies run only when an event recorded after them is waited for (or at ``finish``)."""

    def __init__(self) -> None:
        self.queue: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.done = 0

    def launch(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        self.queue.append((dst, src, src.clone()))

    def run_until(self, upto: int) -> None:
        for dst, src, staged in self.queue[self.done : upto]:
            # The host must not have written the buffer again before this copy read it.
            assert torch.equal(src, staged), "a staging buffer was refilled while a copy from it was pending"
            dst.copy_(src)
        self.done = max(self.done, upto)

    def finish(self) -> None:
        self.run_until(len(self.queue))


class LateEvent:
    log: list[tuple[str, int]] = []

    def __init__(self) -> None:
        self.stream: LateStream | None = None
        self.upto = 0

    def record(self, stream: LateStream) -> None:
        self.stream, self.upto = stream, len(stream.queue)
        LateEvent.log.append(("record", id(self)))

    def synchronize(self) -> None:
        LateEvent.log.append(("wait", id(self)))
        self.stream.run_until(self.upto)


def late_ring(stream: LateStream, buffer_bytes: int, count: int, allocations: list[int] | None = None):
    def allocate(n: int) -> torch.Tensor:
        if allocations is not None:
            allocations.append(n)
        return torch.full((n,), 0xEE, dtype=torch.uint8)

    return StagingRing(
        "cpu", buffer_bytes, count, allocate=allocate, new_event=LateEvent, launch=stream.launch
    )


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    flat = lambda t: t.contiguous().reshape(-1).view(torch.uint8)  # noqa: E731
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(flat(a), flat(b))


@pytest.fixture(autouse=True)
def fresh_rings():
    staging.release_staging()
    LateEvent.log.clear()
    yield
    staging.release_staging()


def test_copies_arrive_byte_exact_in_pieces_and_packed():
    stream = LateStream()
    ring = late_ring(stream, buffer_bytes=1024, count=2)
    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(7, 5, generator=g).half(),
        torch.randn(300, generator=g).to(torch.float8_e4m3fn),
        torch.randn(40, 33, generator=g),  # 5280 bytes: bigger than a buffer, sent in pieces
        torch.tensor(123456789, dtype=torch.int64),
        torch.rand(17, generator=g) > 0.5,
        torch.empty(0, 3),
        torch.randn(6, 4, generator=g).t(),  # not contiguous
        torch.randn(3, generator=g, dtype=torch.float64),
    ]
    first = ring.send(tensors[:4], stream)
    second = ring.send(tensors[4:], stream)
    stream.finish()
    for sent, got in zip(tensors, first + second, strict=True):
        assert same_bytes(sent, got)
    # Every buffer was reused (2 buffers, 5+ KiB sent), each time only after its event was waited for.
    waits = [e for e in LateEvent.log if e[0] == "wait"]
    assert len(waits) >= 4


def test_a_buffer_is_written_again_only_after_its_copies_are_done():
    stream = LateStream()
    ring = late_ring(stream, buffer_bytes=1024, count=2)
    chunks = [torch.full((256,), float(i)) for i in range(5)]  # 1 KiB each: one buffer per send
    sent = [ring.send([c], stream)[0] for c in chunks]
    stream.finish()  # LateStream checks that no pending copy's buffer was overwritten
    assert all(same_bytes(c, s) for c, s in zip(chunks, sent, strict=True))
    waits = [e for e in LateEvent.log if e[0] == "wait"]
    assert len(waits) == 3  # sends 3, 4 and 5 reuse a buffer; sends 1 and 2 find theirs unused


def test_copies_launched_before_an_error_still_guard_their_buffer():
    stream = LateStream()
    ring = late_ring(stream, buffer_bytes=1024, count=1)
    first = torch.arange(64.0)
    with pytest.raises(AttributeError):
        ring.send([first, "not a tensor"], stream)
    later = ring.send([torch.arange(100.0, 164.0)], stream)[0]  # the same buffer: must wait for the first
    stream.finish()
    assert torch.equal(later, torch.arange(100.0, 164.0))


def test_a_released_ring_still_copies():
    stream = LateStream()
    ring = late_ring(stream, buffer_bytes=1024, count=2)
    ring.release()
    t = torch.randn(10)
    assert ring.pinned_bytes == 0 and same_bytes(ring.send([t], stream)[0], t)


def test_each_tensor_starts_at_an_aligned_offset():
    offsets = []
    stream = LateStream()
    ring = late_ring(stream, buffer_bytes=4096, count=1)
    base = ring._buffers[0].data_ptr()

    def launch(dst: torch.Tensor, src: torch.Tensor) -> None:
        offsets.append(src.data_ptr() - base)
        dst.copy_(src)

    ring._launch = launch
    ring.send([torch.ones(3), torch.ones(5, dtype=torch.float16), torch.ones(1)], stream)
    assert offsets == [0, ALIGN, 2 * ALIGN]


def test_buffers_are_powers_of_two_not_above_the_chunk():
    assert staging.buffer_bytes_for(96 * MiB) == 64 * MiB
    assert staging.buffer_bytes_for(64 * MiB) == 64 * MiB
    assert staging.buffer_bytes_for(1000) == staging.MIN_BUFFER_BYTES


# ------------------------------------------------------------------------------------------ wired in


class StandInStream:
    def __init__(self, *args: object) -> None:
        pass

    def wait_event(self, event: object) -> None:
        pass


class StandInEvent:
    def record(self, stream: object = None) -> None:
        pass

    def synchronize(self) -> None:
        pass


@pytest.fixture
def cuda_on_cpu(monkeypatch):
    """``Residency("cuda")`` on the CPU: streams and events are stand-ins, device copies are CPU tensors."""
    monkeypatch.setattr(torch.cuda, "Stream", StandInStream)
    monkeypatch.setattr(torch.cuda, "Event", StandInEvent)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: StandInStream())
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: None)
    monkeypatch.setattr(residency, "_default_transfer", lambda device: torch.clone)
    monkeypatch.setattr(staging, "_indexed", lambda device: torch.device("cpu"))
    allocations: list[int] = []

    def pinned(n: int) -> torch.Tensor:
        allocations.append(n)
        return torch.empty(n, dtype=torch.uint8)

    monkeypatch.setattr(staging, "_pinned", pinned)
    sends = []
    real_send = StagingRing.send
    monkeypatch.setattr(StagingRing, "send", lambda ring, t, s: sends.append(len(t)) or real_send(ring, t, s))
    return allocations, sends


def streamed_runs(runs: int) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(32, 32) for _ in range(6)])
    x = torch.randn(2, 32)
    with torch.no_grad():
        expected = net(x)
        for _ in range(runs):
            res = Residency("cuda", "blocks", chunk_bytes=2 * 32 * 33 * 4, pin_memory=True)
            with res.stage("sampling", [], streamed=[net]):
                for _ in range(3):  # the first pass records the order, the others prefetch in it
                    assert torch.equal(net(x), expected)


def test_streaming_goes_through_one_ring_allocated_once_across_runs(cuda_on_cpu):
    allocations, sends = cuda_on_cpu
    streamed_runs(2)
    assert allocations == [staging.MIN_BUFFER_BYTES] * staging.BUFFERS  # not again for the second run
    assert len(sends) >= 4 and sum(sends) > 0
    assert staging.pinned_bytes() == staging.BUFFERS * staging.MIN_BUFFER_BYTES
    staging.release_staging()
    assert staging.pinned_bytes() == 0


def test_when_ram_cannot_be_pinned_weights_stream_from_pageable_memory_logged_once(
    cuda_on_cpu, monkeypatch, caplog
):
    allocations, sends = cuda_on_cpu
    tries = []

    def refuse(n: int) -> torch.Tensor:
        tries.append(n)
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(staging, "_pinned", refuse)
    with caplog.at_level(logging.WARNING, logger=staging.__name__):
        streamed_runs(2)
    assert len(tries) == 1 and sends == []
    warnings = [r for r in caplog.records if "pageable" in r.getMessage()]
    assert len(warnings) == 1 and "out of memory" in warnings[0].getMessage()
    assert staging.pinned_bytes() == 0


def test_pin_memory_off_uses_no_ring(cuda_on_cpu):
    allocations, sends = cuda_on_cpu
    res = Residency("cuda", "blocks", chunk_bytes=1024, pin_memory=False)
    net = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 32))
    with torch.no_grad(), res.stage("sampling", [], streamed=[net]):
        net(torch.randn(1, 32))
        net(torch.randn(1, 32))
    assert allocations == [] and sends == []


def test_shape_only_benchmarks_pin_nothing():
    from bench.fakecuda import FakeCuda

    with FakeCuda():
        assert staging.ring_for("cuda", 96 * MiB) is None
    assert staging.pinned_bytes() == 0


# ------------------------------------------------------------------------------------------ whole engine

# torch.cuda calls that act on "the current device" when given none: with --device-id 1 that is the
# wrong card.
DEVICE_CALLS = {
    "synchronize",
    "mem_get_info",
    "current_stream",
    "default_stream",
    "Stream",
    "memory_allocated",
    "memory_reserved",
    "max_memory_allocated",
    "reset_peak_memory_stats",
    "get_device_properties",
    "get_device_capability",
}


def _cuda_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Attribute) and owner.attr == "cuda":
                yield node


def test_every_cuda_device_call_names_its_device_and_nothing_registers_host_memory():
    deviceless, registers = [], []
    for path in [*ROOT.glob("supir_engine/**/*.py"), *ROOT.glob("sd_webui_supir/**/*.py")]:
        tree = ast.parse(path.read_text(), str(path))
        for call in _cuda_calls(tree):
            if call.func.attr in DEVICE_CALLS and not call.args and not call.keywords:
                deviceless.append(f"{path.relative_to(ROOT)}:{call.lineno} {call.func.attr}()")
        registers += [
            f"{path.relative_to(ROOT)}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr == "cudaHostRegister"
        ]
    assert deviceless == []
    # Registering RAM that other allocations share pages with fails (and leaves CUDA's error set).
    assert registers == []
