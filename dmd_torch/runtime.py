"""Process settings: the exact solvers' thread policy, the allocator of the library's programs, Ctrl-C.

**Threads.** The exact solvers work on batches of at most :data:`MAX_BATCH_ELEMENTS` numbers,
too small for torch's intra-op threads to pay: with torch's
default thread count (2 on a 2-core machine) exact evaluation ran 2.7-7.5x slower than with one
thread (``scripts/bench_threads.py``, docs/benchmarks.md).
So :func:`dmd_torch.evaluate`, :func:`dmd_torch.evaluation.objective_values`,
:func:`dmd_torch.evaluation.ic_audit` and :meth:`dmd_torch.AMA.outcome` run inside
:func:`exact_threads`: one thread while a batch fits that bound, the caller's count for larger
problems, and the caller's count restored afterwards. :func:`set_exact_threads` changes the
policy process-wide (``None``: never touch the thread count).

**Allocator.**
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

**Ctrl-C.** A ``KeyboardInterrupt`` raised inside another library's locked section can leave its
lock taken or its queue's count off: a SIGINT landing in TensorBoard's ``SummaryWriter.add_scalar``
made the writer's ``close()`` wait forever (2 of 100 tries). :func:`interrupts_deferred` runs such
a block with SIGINT held back and delivers it when the block ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["tune_allocator", "exact_threads", "set_exact_threads", "interrupts_deferred", "MAX_BATCH_ELEMENTS", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

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


#: Elements (profiles x problems x states x actions) of one batched exact solve.
MAX_BATCH_ELEMENTS = 500_000
_EXACT_THREADS: int | None = 1


def set_exact_threads(threads: int | None) -> None:
    """Sets the thread count of the exact solvers' entry points (default 1; ``None``: the
    caller's count, untouched)."""
    global _EXACT_THREADS
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"exact threads must be a positive int or None, got {threads!r}")
    _EXACT_THREADS = threads


@contextlib.contextmanager
def exact_threads(setting: Any) -> Iterator[None]:
    """Runs the block with the exact solvers' thread policy (module docstring) for ``setting`` (a
    :class:`~dmd_torch.envs.Setting`): the policy's count when one profile's ``n + 1`` problems fit
    a batch (``(n + 1) S A <= MAX_BATCH_ELEMENTS``), else the caller's; restored on exit."""
    S, A = setting.mdp.shape
    before = torch.get_num_threads()
    want = _EXACT_THREADS if (setting.n_agents + 1) * S * A <= MAX_BATCH_ELEMENTS else None
    if want is None or want == before:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Runs the block with SIGINT (Ctrl-C) held back: a SIGINT during it is raised again, to the
    handler in place before, when the block ends. Off the main thread (where Python runs signal
    handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)
