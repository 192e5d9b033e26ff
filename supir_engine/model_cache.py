"""Loaded SUPIR models kept in RAM between runs, host-independent.

A model is two parts: the SDXL base (UNet, VAE, text encoders) and SUPIR's own weights (control model,
projections, denoise encoder). The cache keeps at most one of each and assembles the model from them
without copying (the assembled model's parameters share the parts' storage). So:

- the same request twice costs nothing;
- switching SUPIR-v0Q <-> v0F keeps the SDXL tensors and reads only the SUPIR file;
- switching the SDXL base keeps SUPIR's tensors and reads only the base.

The SDXL base may be tensors a host already holds (``InMemorySDXL``), e.g. the checkpoint a web UI has
loaded: they are used as they are (same storage, whatever their dtype, float8 included) and never
modified. The host gives them an identity ``token``; an entry is reused only while the token and the
tensors' storage are unchanged. A host that is going to move or free those tensors calls
``release_shared()`` first, so that the cache never pins a stale copy.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoints import (
    SUPIR_COMPONENTS,
    LoadOptions,
    StateDictSource,
    component_of,
    load_supir,
    normalise_keys,
)
from .memory.storage import FP8_SCALE_SUFFIX
from .models import SUPIRModel

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class InMemorySDXL:
    """SDXL base tensors owned by the host, in checkpoint key layout, identified by ``token``."""

    tensors: Mapping[str, torch.Tensor] = field(compare=False, repr=False)
    token: Hashable = None
    name: str = "<in-memory SDXL>"


SDXLSource = str | Path | InMemorySDXL | None


def file_key(path: str | Path) -> tuple[str, int, int]:
    """Identity of a file's contents as far as a cache needs: resolved path, size, modification time."""
    resolved = Path(path).expanduser().resolve()
    stat = resolved.stat()
    return str(resolved), stat.st_size, stat.st_mtime_ns


def is_supir_key(key: str) -> bool:
    component = component_of(key)
    return component is not None and component in SUPIR_COMPONENTS


def split_model(model: SUPIRModel) -> tuple[Tensors, Tensors]:
    """(SDXL base tensors, SUPIR tensors) of a loaded model, sharing its storage."""
    base: Tensors = {}
    supir: Tensors = {}
    state = model.state_dict()
    # fp8 scales are non-persistent buffers: kept beside their tensors so that reassembly finds them.
    state.update((k, t) for k, t in model.named_buffers() if k.endswith(FP8_SCALE_SUFFIX))
    for key in normalise_keys(state):  # computed buffers (sigmas, token positions) are rebuilt on assembly
        if component_of(key) is not None:
            (supir if is_supir_key(key) else base)[key] = state[key]
    return base, supir


def storage_sample(tensors: Mapping[str, torch.Tensor], count: int = 4) -> tuple[tuple[str, int], ...]:
    """A cheap fingerprint of where a few tensors live; changes when a host replaces them."""
    keys = sorted(tensors)[:: max(1, len(tensors) // count)][:count]
    return tuple((k, tensors[k].data_ptr()) for k in keys)


@dataclass
class _Part:
    key: tuple
    tensors: Tensors
    shared: bool  # host-owned tensors (InMemorySDXL): never ours to keep past release_shared()

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


@dataclass
class CacheEvent:
    """What one ``get`` did, for logs and status pages."""

    base: str  # "hit", "loaded" or "merged" (a single file holding both parts)
    supir: str
    seconds: float


class ModelCache:
    """One SDXL base part, one SUPIR part, and the model assembled from them. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._base: _Part | None = None
        self._supir: _Part | None = None
        self._model: tuple[tuple, SUPIRModel] | None = None
        self.last_event: CacheEvent | None = None

    # ---------------------------------------------------------------------------------------- keys

    @staticmethod
    def base_key(sdxl: SDXLSource, supir: str | Path, options: LoadOptions) -> tuple:
        if isinstance(sdxl, InMemorySDXL):
            return ("memory", sdxl.token, storage_sample(sdxl.tensors), options)
        if sdxl is None:
            return ("merged", file_key(supir), options)
        return ("file", file_key(sdxl), options)

    @staticmethod
    def supir_key(supir: str | Path, options: LoadOptions) -> tuple:
        return ("file", file_key(supir), options)

    # ---------------------------------------------------------------------------------------- use

    def get(self, sdxl: SDXLSource, supir: str | Path, options: LoadOptions | None = None) -> SUPIRModel:
        """The model for this base and SUPIR file, loading only the part that is not cached.

        ``sdxl=None`` means the SUPIR file holds the base too (a merged checkpoint).
        """
        options = options or LoadOptions()
        with self._lock:
            start = time.perf_counter()
            base_key, supir_key = self.base_key(sdxl, supir, options), self.supir_key(supir, options)
            if self._model is not None and self._model[0] == (base_key, supir_key):
                self.last_event = CacheEvent("hit", "hit", 0.0)
                return self._model[1]
            self._model = None  # the previous assembly goes before anything new is read
            base_hit = self._base is not None and self._base.key == base_key
            supir_hit = self._supir is not None and self._supir.key == supir_key
            if not base_hit:
                self._drop_base()
            if not supir_hit:
                self._drop_supir()
            model = self._assemble(sdxl, supir, options, base_hit, supir_hit)
            self._store(model, base_key, supir_key, shared=isinstance(sdxl, InMemorySDXL))
            self.last_event = CacheEvent(
                "hit" if base_hit else ("merged" if sdxl is None else "loaded"),
                "hit" if supir_hit else "loaded",
                time.perf_counter() - start,
            )
            log.info(
                "SUPIR model ready (base %s, SUPIR %s) in %.1f s",
                self.last_event.base,
                self.last_event.supir,
                self.last_event.seconds,
            )
            return model

    def _assemble(
        self, sdxl: SDXLSource, supir: str | Path, options: LoadOptions, base_hit: bool, supir_hit: bool
    ) -> SUPIRModel:
        if sdxl is None:  # one merged file: its two parts always come and go together
            model, _ = load_supir(None, supir, options)
            return model
        supir_source = StateDictSource(self._supir.tensors, "<cached SUPIR>") if supir_hit else supir
        if base_hit:
            base_source = StateDictSource(self._base.tensors, "<cached base>")
        elif isinstance(sdxl, InMemorySDXL):
            base_source = StateDictSource(sdxl.tensors, sdxl.name)
        else:
            base_source = sdxl
        model, _ = load_supir(base_source, supir_source, options)
        return model

    def _store(self, model: SUPIRModel, base_key: tuple, supir_key: tuple, shared: bool) -> None:
        base, supir = split_model(model)
        self._base = _Part(base_key, base, shared)
        self._supir = _Part(supir_key, supir, False)
        self._model = ((base_key, supir_key), model)

    # ---------------------------------------------------------------------------------------- release

    def _drop_base(self) -> None:
        self._base = None
        self._model = None

    def _drop_supir(self) -> None:
        self._supir = None
        self._model = None

    def release(self) -> None:
        """Forget everything; the RAM goes back once no pipeline holds the model any more.

        The page-locked staging buffers of weight streaming (memory/staging.py) are freed with it.
        """
        from .memory import release_staging

        with self._lock:
            self._base = self._supir = self._model = None
        release_staging()
        gc.collect()

    def release_shared(self) -> bool:
        """Forget what references host-owned tensors (the base part and the model). True if anything was."""
        with self._lock:
            if self._base is None or not self._base.shared:
                return False
            self._drop_base()
        gc.collect()
        return True

    def describe(self) -> dict[str, Any]:
        """What is cached, for status pages."""
        with self._lock:
            return {
                "model_loaded": self._model is not None,
                "base": _describe_part(self._base),
                "supir": _describe_part(self._supir),
                "last_load_seconds": None if self.last_event is None else round(self.last_event.seconds, 2),
            }


def _describe_part(part: _Part | None) -> dict[str, Any] | None:
    if part is None:
        return None
    kind, ident = part.key[0], part.key[1]
    return {
        "source": ident[0] if kind in ("file", "merged") else kind,
        "shared_with_host": part.shared,
        "tensors": len(part.tensors),
        "bytes_owned": 0 if part.shared else part.nbytes,
    }
