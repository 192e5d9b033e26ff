"""Freed heap goes back to the OS after a run (glibc keeps it, and the webui process's RSS would grow)."""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest

from supir_engine.memory import host_heap

linux_glibc = pytest.mark.skipif(host_heap._malloc_trim() is None, reason="needs Linux with glibc")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@linux_glibc
def test_freed_heap_chunks_leave_the_resident_set():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # Freeing one large mapped chunk raises glibc's mmap threshold: chunks below it then come from the heap,
    # as a run's per-layer weight copies do, and stay there when freed.
    libc.free(libc.malloc(16 << 20))
    chunks = [libc.malloc(2 << 20) for _ in range(128)]
    for chunk in chunks:
        ctypes.memset(chunk, 1, 2 << 20)
    keep = libc.malloc(3 << 20)  # above the freed chunks: the heap's top cannot simply shrink
    ctypes.memset(keep, 1, 3 << 20)
    for chunk in chunks:
        libc.free(chunk)
    before = rss_bytes()
    assert host_heap.release_free_heap()
    assert before - rss_bytes() > 128 << 20  # most of the 256 MiB freed
    libc.free(keep)


def test_each_run_ends_by_releasing_the_heap_even_when_it_fails(monkeypatch, tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from supir_engine import pipeline as pipeline_module
    from supir_engine.model_cache import InMemorySDXL, ModelCache
    from supir_engine.settings import UpscaleSettings
    from supir_engine.tiny import random_state_dict, save_checkpoint, split_state_dict

    sdxl, supir = split_state_dict(random_state_dict(seed=1))
    model = ModelCache().get(
        InMemorySDXL(sdxl, "t"), save_checkpoint(supir, tmp_path / "SUPIR-v0Q.safetensors")
    )
    calls = []
    monkeypatch.setattr(pipeline_module, "release_free_heap", lambda: calls.append(1) or True)
    pipe = pipeline_module.SUPIRPipeline(model, torch.device("cpu"))
    image = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    pipe.upscale(image, UpscaleSettings(scale=2, steps=1, min_size=64, seed=1))
    assert calls == [1]

    def boom(*args, **kwargs):
        raise RuntimeError("stage failed")

    monkeypatch.setattr(pipe, "_upscale", boom)
    with pytest.raises(RuntimeError):
        pipe.upscale(image, UpscaleSettings(scale=2, steps=1, min_size=64, seed=1))
    assert calls == [1, 1]
