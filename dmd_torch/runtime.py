"""Process settings for the library's own programs (training, evaluation, benchmarks).

Exact evaluation runs the same few-megabyte temporaries chunk after chunk
(:data:`dmd_torch.evaluation.MAX_BATCH_ELEMENTS` per batch). With glibc's default ``malloc`` the
memory they free is handed back to the kernel at the end of each chunk (heap trimming; blocks
above the dynamic ``mmap`` threshold are unmapped), so the next chunk page-faults all of it in
again: on a 2-core machine that costs exact evaluation 2-3x of its time.
:func:`tune_allocator` keeps freed memory in the process instead (``mallopt``: blocks up to
32 MiB from the heap, which is trimmed only when more than 256 MiB at its top is free), so RSS
stays at the peak of one chunk. The scripts call it; code that imports the library runs in its
user's process and keeps that process's settings unless it calls it itself. It does nothing off
glibc, and it leaves glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
environment settings alone where they are set.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["tune_allocator", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

MMAP_THRESHOLD = 32 * 2**20
"""Blocks up to this size come from the heap (glibc's dynamic threshold stops growing here too)."""
TRIM_THRESHOLD = 256 * 2**20
"""The heap is returned to the kernel only when more than this is free at its top."""

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_allocator() -> bool:
    """Keeps freed memory for reuse within the process (glibc ``mallopt``; see the module docstring).

    Returns:
        True if the settings were applied; False off Linux/glibc, if ``mallopt`` refused them, or
        if the environment sets glibc's own thresholds (those are kept).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _ENV):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return ok and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
