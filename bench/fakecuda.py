"""A fake ``cuda`` device that measures peak device memory and FLOPs on a machine without a GPU.

Inside ``with FakeCuda() as fc:`` every tensor is a torch fake tensor (shape, dtype and strides, no data),
so each op only works out the metadata of its result, and ``torch.cuda`` answers as if one device were
present. Device memory is counted the way ``torch.cuda.memory_allocated`` counts it: every storage on the
device, rounded up to the caching allocator's 512-byte blocks, from the op that creates it until Python
drops its last view. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``.

    with FakeCuda(total_memory=8 << 30) as fc:
        net = build().to("cuda")
        with fc.phase("forward"):
            net(torch.randn(1, 3, 64, 64, device="cuda"))
    fc.peak_bytes, fc.phases["forward"].peak_bytes, fc.flops

``F.scaled_dot_product_attention`` on the device runs the fused kernel a recent GPU would choose
(``fc.attention_kernels`` counts them), and ``torch.cuda``'s memory queries report the tracked figures.

Not counted: the CUDA context, reserved but unused allocator memory, cuBLAS/cuDNN workspaces, and any
overlap between streams (streams and events are sequential stand-ins). Code under measurement must not
branch on tensor values (``.item()``, ``if t > 0``): fake tensors have none. Measure inference under
``torch.no_grad()`` or ``torch.inference_mode()``: with autograd on, the FLOP counter's module hooks form
reference cycles that keep inputs alive until the garbage collector runs.
"""

from __future__ import annotations

import contextlib
import types
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

GRANULE = 512  # every block of the CUDA caching allocator is a multiple of this
aten = torch.ops.aten
_ABSENT = object()


def device_bytes(nbytes: int) -> int:
    """Bytes the caching allocator hands out for a request of ``nbytes``."""
    return -(-nbytes // GRANULE) * GRANULE


@dataclass
class PhaseStats:
    """One labelled phase; entering the same label again adds to it."""

    label: str
    calls: int = 0
    peak_bytes: int = 0  # highest live device bytes while the phase was open (absolute, not an increase)
    flops: int = 0


class _NoDeviceInitMode(FakeTensorMode):
    # FakeTensorMode touches the real driver when torch.cuda.is_available() says True, which we patch.
    @property
    def avoid_device_init(self) -> bool:  # type: ignore[override]
        return True


class _SerialStream:
    """Stands in for torch.cuda.Stream and torch.cuda.Event: fake work runs in order, nothing overlaps."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.device = torch.device("cuda", 0)

    def __enter__(self) -> _SerialStream:
        return self

    def record_event(self, event: _SerialStream | None = None) -> _SerialStream:
        return event or _SerialEvent()

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: _SerialStream) -> float:
        return 0.0

    def _nothing(self, *args: Any, **kwargs: Any) -> None:
        return None

    __exit__ = wait_stream = wait_event = record = wait = synchronize = _nothing


class _SerialEvent(_SerialStream):
    """Stands in for torch.cuda.Event (a class of its own: dynamo indexes torch.cuda by identity)."""


def _returns(value: Any) -> Callable[..., Any]:
    """A new function object each call: dynamo indexes torch.cuda by function identity."""
    return lambda *args, **kwargs: value


class _ByteCounter(TorchDispatchMode):
    """Top dispatch mode: hands every tensor an op returns to the tracker; fakes page-locked copies."""

    def __init__(self, tracker: FakeCuda) -> None:
        super().__init__()
        self.tracker = tracker

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten.is_pinned.default:
            return self.tracker._is_pinned(args[0])
        if func is aten._pin_memory.default:  # no fake kernel: the pinned copy is a plain CPU copy
            out = aten.clone.default(args[0])
            self.tracker._pinned(out)
            return out
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.tracker._saw(t)
        if kwargs.get("pin_memory") and isinstance(out, torch.Tensor):
            self.tracker._pinned(out)
        return out


class _FusedAttention(TorchFunctionMode):
    """Runs F.scaled_dot_product_attention on the device as the fused kernel a real GPU would pick.

    Left alone, the fake backend takes the math path, which materialises the full N x N scores in fp32.
    """

    def __init__(self, tracker: FakeCuda) -> None:
        super().__init__()
        self.tracker = tracker

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention or func is torch._C._nn.scaled_dot_product_attention:
            out = self._attention(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)

    def _attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor | None:
        """The fused kernel's output (SDPA's own arguments), or None to let SDPA take its math path."""
        q, k, v, mask = query, key, value, attn_mask
        if q.device.type != "cuda":
            return None
        kernels = self.tracker.attention_kernels
        if q.dim() != 4 or enable_gqa or not q.shape[1] == k.shape[1] == v.shape[1]:
            kernels["math"] += 1
            return None
        if torch.is_autocast_enabled("cuda"):  # autocast would cast SDPA's inputs; the fused ops it skips
            low = torch.get_autocast_dtype("cuda")
            q, k, v = (
                t.to(low) if t.is_floating_point() and t.dtype != torch.float64 else t for t in (q, k, v)
            )
            if mask is not None and mask.is_floating_point():
                mask = mask.to(low)
        half = q.dtype in (torch.float16, torch.bfloat16)
        d, dv = q.shape[-1], v.shape[-1]
        backends = torch.backends.cuda
        flash = half and mask is None and d == dv and d % 8 == 0 and d <= 256 and backends.flash_sdp_enabled()
        align = 8 if half else 4
        efficient = (
            q.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and d % align == 0
            and dv % align == 0
            and backends.mem_efficient_sdp_enabled()
        )
        if not (flash or efficient):
            kernels["math"] += 1
            return None
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        if flash:
            kernels["flash"] += 1
            return aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, scale=scale)[0]
        kernels["efficient"] += 1
        if mask is not None:
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(
                    ~mask, float("-inf")
                )
            mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        # With 16-bit outputs and value heads wider than 128, the kernel accumulates in an fp32 buffer.
        accumulator = None
        if half and dv > 128:
            accumulator = torch.empty(q.shape[0], q.shape[2], q.shape[1], dv, device=q.device)
        out = aten._scaled_dot_product_efficient_attention(
            q, k, v, mask, False, dropout_p, is_causal, scale=scale
        )
        del accumulator
        return out[0]


class FakeCuda:
    """Context manager: a fake CUDA device of ``total_memory`` bytes with live-byte and FLOP accounting."""

    def __init__(self, total_memory: int = 80 << 30, name: str = "fake CUDA device") -> None:
        self.total_memory = int(total_memory)
        self.name = name
        self.current_bytes = 0
        self.peak_bytes = 0
        self.peak_phase_path: list[str] = []
        self.phases: dict[str, PhaseStats] = {}
        self.attention_kernels: Counter[str] = Counter()
        self._torch_peak = 0  # what the patched torch.cuda.max_memory_allocated reports
        self._live: dict[int, tuple[weakref.ref, int]] = {}  # storage id -> (ref, counted bytes)
        self._pinned_storages: dict[int, weakref.ref] = {}
        self._open: list[PhaseStats] = []
        self._flops = FlopCounterMode(display=False)
        self._stack: contextlib.ExitStack | None = None
        self._undo: list[tuple[Any, str, Any]] = []  # (owner, attribute, previous value or _ABSENT)

    # ------------------------------------------------------------------ results

    @property
    def flops(self) -> int:
        return int(self._flops.get_total_flops())

    @contextlib.contextmanager
    def phase(self, label: str) -> Iterator[PhaseStats]:
        """Label a region; phases nest, and their peaks and FLOPs accumulate per label."""
        stats = self.phases.setdefault(label, PhaseStats(label))
        stats.calls += 1
        stats.peak_bytes = max(stats.peak_bytes, self.current_bytes)
        flops_before = self.flops
        self._open.append(stats)
        try:
            yield stats
        finally:
            self._open.remove(stats)
            stats.flops += self.flops - flops_before

    def reset_peak(self) -> None:
        """Start the overall peak (and torch.cuda's) again from the bytes live now."""
        self.peak_bytes = self._torch_peak = self.current_bytes
        self.peak_phase_path = [p.label for p in self._open]

    # ------------------------------------------------------------------ byte accounting

    def _change(self, delta: int) -> None:
        self.current_bytes += delta
        now = self.current_bytes
        if delta <= 0:
            return
        self._torch_peak = max(self._torch_peak, now)
        for stats in self._open:
            stats.peak_bytes = max(stats.peak_bytes, now)
        if now > self.peak_bytes:
            self.peak_bytes = now
            self.peak_phase_path = [p.label for p in self._open]

    def _saw(self, t: torch.Tensor) -> None:
        if t.device.type != "cuda":
            return
        storage = t.untyped_storage()
        key, size = storage._cdata, device_bytes(storage.nbytes())
        known = self._live.get(key)
        if known is None:
            # A storage's Python object lives exactly as long as the storage, whatever views come and go.
            self._live[key] = (weakref.ref(storage, self._release(key)), size)
            self._change(size)
        elif known[1] != size:  # resized in place (resize_, out= ops)
            self._live[key] = (known[0], size)
            self._change(size - known[1])

    def _release(self, key: int) -> Callable[[weakref.ref], None]:
        def freed(_: weakref.ref) -> None:
            entry = self._live.pop(key, None)
            if entry is not None:
                self._change(-entry[1])

        return freed

    def _pinned(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        self._pinned_storages[key] = weakref.ref(storage, lambda _: self._pinned_storages.pop(key, None))

    def _is_pinned(self, t: torch.Tensor) -> bool:
        return t.device.type == "cpu" and t.untyped_storage()._cdata in self._pinned_storages

    # ------------------------------------------------------------------ torch.cuda stand-ins

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._undo.append((owner, name, vars(owner).get(name, _ABSENT)))
        setattr(owner, name, value)

    def _unpatch(self) -> None:
        while self._undo:
            owner, name, old = self._undo.pop()
            if old is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, old)

    def _patch_cuda(self) -> None:
        cuda, patch = torch.cuda, self._patch
        properties = types.SimpleNamespace(
            name=self.name, total_memory=self.total_memory, major=9, minor=0, multi_processor_count=132
        )

        def reset_peak_memory_stats(*args: Any, **kwargs: Any) -> None:
            self._torch_peak = self.current_bytes

        values = {"is_available": True, "device_count": 1, "current_device": 0, "is_bf16_supported": True}
        values |= {"get_device_name": self.name, "get_device_capability": (9, 0)}
        values |= {"get_device_properties": properties, "_exchange_device": 0, "_maybe_exchange_device": 0}
        nothing = ("init", "_lazy_init", "set_device", "synchronize", "empty_cache", "ipc_collect")
        nothing += ("manual_seed", "manual_seed_all", "set_stream")
        values |= dict.fromkeys(nothing)
        for name, value in values.items():
            patch(cuda, name, _returns(value))
        patch(cuda, "memory_allocated", lambda *a, **k: self.current_bytes)
        patch(cuda, "memory_reserved", lambda *a, **k: self.current_bytes)
        patch(cuda, "max_memory_allocated", lambda *a, **k: self._torch_peak)
        patch(cuda, "max_memory_reserved", lambda *a, **k: self._torch_peak)
        patch(cuda, "reset_peak_memory_stats", reset_peak_memory_stats)
        patch(
            cuda, "mem_get_info", lambda *a, **k: (self.total_memory - self.current_bytes, self.total_memory)
        )
        patch(cuda, "Stream", _SerialStream)
        patch(cuda, "Event", _SerialEvent)
        patch(cuda, "current_stream", lambda *a, **k: _SerialStream())
        patch(cuda, "default_stream", lambda *a, **k: _SerialStream())
        patch(cuda, "stream", lambda *a, **k: contextlib.nullcontext())
        patch(torch.Tensor, "record_stream", lambda tensor, stream: None)

    # ------------------------------------------------------------------ enter / exit

    def __enter__(self) -> FakeCuda:
        if self._stack is not None:
            raise RuntimeError("FakeCuda is not re-entrant")
        import torch._dynamo  # noqa: F401  (indexes torch.cuda's functions: it must see the real ones first)

        with contextlib.ExitStack() as stack:
            fake = _NoDeviceInitMode(allow_non_fake_inputs=True)
            # The converter's memo holds a weakref to each fake tensor, and nn.Module._apply (module.to,
            # .half, .cuda) swaps fake parameters with torch.utils.swap_tensors, which refuses tensors
            # that have weakrefs. The memo only saves re-converting the same real tensor: switch it off.
            fake.fake_tensor_converter.set_tensor_memo = lambda tensor, fake_tensor: None
            FakeTensorMode.cache_clear()  # a class-level cache: nothing may carry over between sessions
            stack.callback(FakeTensorMode.cache_clear)
            stack.callback(self._unpatch)
            self._patch_cuda()
            stack.enter_context(fake)
            stack.enter_context(self._flops)
            stack.enter_context(_ByteCounter(self))
            stack.enter_context(_FusedAttention(self))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(*exc)
        # Storages that outlive the session no longer change the figures.
        self._live.clear()
        self._pinned_storages.clear()
