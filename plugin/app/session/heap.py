"""Returning the freed heap to the operating system before a live session starts.

glibc keeps memory that was freed (by model loading, graph export, the warm-up render, or,
in a test run, whatever ran before) mapped in the process until a later `free()` happens to
make it trimmable; that `free()` then unmaps it all at once. Unmapping gigabytes takes the
kernel 100 ms or more, spent by whichever thread freed the last block — while it holds the
GIL, so the pacer misses its ticks. Trimming once before the warm-up pays that cost before
the session is live, and the warm-up maps again (and keeps) what the live path needs, instead of
its first ticks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)


def release_free_heap() -> bool:
    """Give every free page of the C heap back to the OS (glibc ``malloc_trim(0)``, all arenas).

    Returns True if glibc released memory, False if there was nothing to release or the C
    library is not glibc (macOS, Windows, musl: nothing is done there)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        log.debug("malloc_trim is not available: the freed heap stays mapped")
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))
