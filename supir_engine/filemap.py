"""Give back the RAM of memory-mapped checkpoint pages once their tensors have been copied.

Reading a tensor from a memory-mapped file brings its pages into our resident set. After the
tensor has been cast into its own storage those pages are dead weight, but the kernel keeps
them mapped until the file is closed, so peak RSS would reach model size + file size. On Linux
we drop them with madvise(MADV_DONTNEED); elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import sys

import torch

log = logging.getLogger(__name__)

_MADV_DONTNEED = 4
_PAGE = mmap.PAGESIZE


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


_LIBC = _libc()


def file_mappings(path: str | os.PathLike) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of ``path`` (empty where unsupported)."""
    if _LIBC is None:
        return []
    target = os.path.realpath(path)
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == target:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((start, end))
    return ranges


def release_pages(tensor: torch.Tensor, mappings: list[tuple[int, int]]) -> None:
    """Drop the resident pages under ``tensor`` if (and only if) they belong to ``mappings``.

    Only read-only use of a file mapping makes this safe: the pages are re-read from the file
    if touched again, so nothing is lost. Anonymous memory is never touched.
    """
    if _LIBC is None or not mappings or tensor.device.type != "cpu":
        return
    begin = tensor.untyped_storage().data_ptr()
    end = begin + tensor.untyped_storage().nbytes()
    for map_start, map_end in mappings:
        lo, hi = max(begin, map_start), min(end, map_end)
        lo -= lo % _PAGE
        hi = min(map_end, hi + (-hi % _PAGE))
        if lo < hi and _LIBC.madvise(lo, hi - lo, _MADV_DONTNEED) != 0:
            log.debug("madvise failed with errno %d", ctypes.get_errno())
