"""Giving device memory back after a failed run, before the host moves its own model back.

A propagating exception's traceback keeps every frame of the failed call alive, and with them the
activations in their locals: a host that restored its model at that point could run out of memory itself.
"""

from __future__ import annotations

import gc
import traceback

import torch


def is_out_of_memory(exc: BaseException) -> bool:
    """A device allocation failure: CUDA/XPU's OutOfMemoryError, or the RuntimeError MPS raises."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower() and "MPS" in str(exc)


def drop_frames(exc: BaseException | None, keep_traceback: bool = True) -> None:
    """Let go of what the frames in ``exc``'s traceback (and in those of its chain) hold.

    Clearing a frame drops its locals, but a frame still holds its function, and a closure such as the
    one ``nn.Module`` calls its hooks through keeps the forward's arguments. With ``keep_traceback=False``
    the traceback itself is dropped too, after it was added to the exception as text (still printed
    with it).
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        if tb is not None:
            if not keep_traceback:
                lines = "".join(traceback.format_tb(tb)).rstrip()
                exc.add_note(f"Traceback (its frames were released to free device memory):\n{lines}")
            traceback.clear_frames(tb)
            if not keep_traceback:
                exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


def empty_device_cache(device: torch.device) -> None:
    """Collect unreachable tensors and hand the allocator's cached blocks back to the driver."""
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
