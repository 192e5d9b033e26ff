"""Give the process's freed heap back to the operating system after a run.

A run makes many short-lived host allocations of a few MiB (a stage's weights upcast for a CPU device,
staging copies, tiled-VAE maps). glibc keeps freed chunks of that size in its heap rather than unmapping
them, so a webui process would keep gigabytes of resident memory it no longer uses after every SUPIR run.
``malloc_trim`` returns them; elsewhere (macOS, Windows, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """True when freed heap memory was handed back to the OS."""
    trim = _malloc_trim()
    if trim is None:
        return False
    return bool(trim(0))
