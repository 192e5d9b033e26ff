"""Resumable sampling: the sampler's state saved to a folder while it runs, picked up by the next run.

A state is one safetensors file per job, named by the job's key: a SHA-256 of everything that decides
the sampled latent (the settings as the memory plan applied them, the input image's bytes, the weights'
identity, the device type and compute dtypes, CFG batching and tile batching). It holds the latent after
``step`` steps, DPM++ 2M's previous prediction, and the CPU generator's state; the step, total, seed and a
summary of the settings are JSON in its header. Nothing is unpickled: a file that does not parse, or
does not match the job, is ignored with a message and the run starts from step 0.

Files are written to a temporary name and renamed (a crash never leaves half a state under a job's
name), dropped when the job completes, and the oldest are deleted when the folder exceeds its limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as save_tensors

from .resume_options import ResumeOptions
from .sampling import SamplerStart

log = logging.getLogger(__name__)

FORMAT = "supir-resume-1"
SUFFIX = ".supir-state.safetensors"


def image_digest(image: Any) -> str:
    """SHA-256 of a PIL image's mode, size and pixel bytes."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def job_key(fields: Mapping[str, Any]) -> str:
    """SHA-256 of ``fields`` as canonical JSON (the settings, image digest, weights, device policy)."""
    text = json.dumps({"format": FORMAT, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class SavedState:
    """A sampler state read from disk."""

    step: int
    total: int
    seed: int
    x: torch.Tensor
    old: torch.Tensor | None
    rng: torch.Tensor

    def start(self) -> SamplerStart:
        return SamplerStart(self.step, self.x, self.old)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def encode_state(state: SavedState, meta: Mapping[str, Any]) -> bytes:
    tensors = {"x": state.x, "rng": state.rng}
    if state.old is not None:
        tensors["old"] = state.old
    tensors = {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}
    if "old" in tensors and tensors["old"].data_ptr() == tensors["x"].data_ptr():
        tensors["old"] = tensors["old"].clone()  # DPM++ 2M's last step returns its prediction as x
    header = {**meta, "step": state.step, "total": state.total, "seed": state.seed}
    return save_tensors(tensors, metadata={"supir": json.dumps(header, default=str)})


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a state file; ValueError when it is not one."""
    try:
        with safe_open(str(path), "pt") as f:
            text = (f.metadata() or {}).get("supir")
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ValueError(f"not a readable safetensors file ({exc})") from exc
    if text is None:
        raise ValueError("no SUPIR header")
    header = json.loads(text)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"format {header.get('format') if isinstance(header, dict) else '?'}, not {FORMAT}")
    return header


def read_state(path: Path) -> tuple[SavedState, dict[str, Any]]:
    header = read_header(path)
    with safe_open(str(path), "pt") as f:
        names = set(f.keys())
        tensors = {k: f.get_tensor(k) for k in names}
    if not {"x", "rng"} <= names:
        raise ValueError("the latent or the generator state is missing")
    step, total, seed = int(header["step"]), int(header["total"]), int(header["seed"])
    return SavedState(step, total, seed, tensors["x"], tensors.get("old"), tensors["rng"]), header


def state_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*" + SUFFIX)) if folder.is_dir() else []


def prune(folder: Path, max_bytes: int, keep: Path | None = None) -> list[Path]:
    """Delete the oldest states (never ``keep``) until the folder's states fit ``max_bytes``."""
    files = []
    for path in state_files(folder):
        with contextlib.suppress(OSError):
            stat = path.stat()
            files.append((stat.st_mtime_ns, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    removed = []
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        if path == keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        total -= size
        removed.append(path)
    if removed:
        log.info("resume: removed %d old saved state(s) to stay under %d bytes", len(removed), max_bytes)
    return removed


def differing(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))


@dataclass
class ResumeJob:
    """The resume bookkeeping of one upscale: which file, what to check on load, when to save.

    ``fields`` are what the key hashes; ``fields["settings"]`` (a dict) and ``fields["image"]`` also go in
    the header, to say why a state of the same image did not match.
    """

    options: ResumeOptions
    fields: dict[str, Any]
    sampler: str
    total: int
    shape: tuple[int, ...]
    key: str = field(init=False)
    messages: list[str] = field(default_factory=list)
    _last_save: float = field(default_factory=time.monotonic, init=False)
    _saved_step: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.key = job_key(self.fields)

    @property
    def path(self) -> Path:
        return Path(self.options.folder) / (self.key + SUFFIX)

    def _ignore(self, why: str) -> None:
        message = f"saved state {self.path.name} ignored ({why}); sampling starts from step 0"
        log.warning("resume: %s", message)
        self.messages.append(message)

    def load(self, rng_size: int) -> SavedState | None:
        """The saved state of this job, or None (with a message saying why when one was there)."""
        if not self.path.exists():
            self._explain_miss()
            return None
        try:
            state, header = read_state(self.path)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            self._ignore(f"unreadable: {exc}")
            return None
        problem = self._mismatch(state, header, rng_size)
        if problem:
            self._ignore(problem)
            return None
        self._saved_step = state.step
        return state

    def _mismatch(self, state: SavedState, header: Mapping[str, Any], rng_size: int) -> str | None:
        if header.get("key") != self.key:
            return "it belongs to another job"
        if header.get("sampler") != self.sampler or state.total != self.total:
            saved = f"{header.get('sampler')} with {state.total} steps"
            return f"saved for {saved}, not {self.sampler} with {self.total}"
        if not 1 <= state.step <= self.total:
            return f"step {state.step} is outside 1..{self.total}"
        if tuple(state.x.shape) != self.shape or state.x.dtype != torch.float32:
            return f"latent {tuple(state.x.shape)} {state.x.dtype}, expected {self.shape} torch.float32"
        if self.sampler == "restore_dpmpp_2m" and (state.old is None or state.old.shape != state.x.shape):
            return "DPM++ 2M's previous prediction is missing"
        if state.rng.dtype != torch.uint8 or state.rng.numel() != rng_size:
            return "the generator state does not fit this generator"
        return None

    def _explain_miss(self) -> None:
        """Say why a state of the same image (saved with other settings or weights) is not used."""
        for path in state_files(Path(self.options.folder)):
            try:
                header = read_header(path)
            except (ValueError, OSError):
                continue
            if header.get("image") != self.fields.get("image"):
                continue
            current = {k: v for k, v in self.fields.items() if k not in ("settings", "image")}
            saved = dict(header.get("job", {}))
            changed = differing(header.get("settings", {}), self.fields.get("settings", {}))
            changed += differing(saved, current)
            if changed:
                where = f"{path.name}, step {header.get('step')}/{header.get('total')}"
                message = (
                    f"a saved state of this image ({where}) was made with different "
                    f"{', '.join(changed)}; it is not used. Upscale with the same "
                    "settings to resume it"
                )
                log.info("resume: %s", message)
                self.messages.append(message)

    def due(self, step: int, now: float | None = None) -> bool:
        """Whether the state after ``step`` done steps should be saved."""
        if step <= self._saved_step:
            return False
        every, seconds = self.options.every_steps, self.options.every_seconds
        if every is not None and step % every == 0:
            return True
        now = time.monotonic() if now is None else now
        return seconds is not None and now - self._last_save >= seconds

    def save(self, state: SavedState) -> int:
        """Write the state (atomically); returns its size in bytes (0 when it exceeds the size limit)."""
        header = {
            "format": FORMAT,
            "key": self.key,
            "sampler": self.sampler,
            "image": self.fields.get("image"),
            "settings": self.fields.get("settings", {}),
            "job": {k: v for k, v in self.fields.items() if k not in ("settings", "image")},
            "saved_at": time.time(),
        }
        data = encode_state(state, header)
        if len(data) > self.options.max_bytes:
            log.warning(
                "resume: a state of %d bytes exceeds the limit of %d bytes; not saved (raise the limit to "
                "make this job resumable)",
                len(data),
                self.options.max_bytes,
            )
            return 0
        folder = Path(self.options.folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, data)
        self._saved_step, self._last_save = state.step, time.monotonic()
        prune(folder, self.options.max_bytes, keep=self.path)
        log.debug("resume: saved step %d/%d to %s (%d bytes)", state.step, state.total, self.path, len(data))
        return len(data)

    def drop(self) -> None:
        """Forget the state: the job completed."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
