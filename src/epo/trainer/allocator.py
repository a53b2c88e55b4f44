"""glibc's malloc and large CPU tensors: where a training process's host memory goes, and two knobs on it.

PyTorch's CPU allocator takes every tensor from malloc. glibc serves a request above its mmap threshold with a
mapping of its own, returned to the kernel at free, and smaller ones from the brk heap. The threshold is dynamic:
each free of a mapped chunk raises it to that chunk's size (up to 32 MiB on 64-bit), so after the first backward
pass the multi-MB activation tensors of long-prompt micro-batches come from the heap, whose freed holes fragment
and stay resident. Behaviour cloning of the ScienceWorld preset grew that way from 9 to 15 GB (docs/RESULTS.md,
Experiment 16b). Measured (bench/bench_malloc.py, docs/BENCHMARKS.md "## Memory: glibc's mmap threshold"):

    train.malloc_trim=true (default)   malloc_trim(0) after each RL update and after cloning: the heap's free pages go
                                       back to the kernel while rollouts and evals run (RSS 10 -> 2.8 GB between
                                       steps); the next update faults them in again (1.11x per cloning step when
                                       trimmed after every one; once per RL step, a few seconds)
    train.malloc_mmap_threshold=N      mallopt(M_MMAP_THRESHOLD, N) at start-up, which also ends the dynamic rule:
                                       131072 lowered cloning's peak 0.66x, at 1.71x its step time (every large
                                       tensor is a fresh mapping, its pages faulted in)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from dataclasses import dataclass

M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h
ENV_VAR = "MALLOC_MMAP_THRESHOLD_"  # glibc reads it at start-up; a user who set it keeps it


@functools.cache  # find_library runs ldconfig: once per process, not per step
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (the one with mallopt's M_MMAP_THRESHOLD, malloc_trim, mallinfo2), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):  # macOS, musl: no gnu_get_libc_version
        return None
    return libc


_applied: str | None = None  # the line of this process's last configure call
_trim = False  # trim_after_phase gives free heap pages back (train.malloc_trim, on glibc)


def applied_line() -> str | None:
    """What `configure` did in this process (None: not called), for the run's log and provenance."""
    return _applied


def configure(mmap_threshold: int, trim: bool) -> str:
    """Apply train.malloc_mmap_threshold and train.malloc_trim to this process. Returns the line saying what was
    done, for the run's log: nothing is changed silently, and nothing is claimed where it was not applied."""
    global _applied, _trim
    libc = _glibc()
    _trim = trim and libc is not None
    parts = [_mmap_threshold(libc, mmap_threshold)]
    if trim:
        parts.append(
            "free heap pages returned after each update (train.malloc_trim)"
            if _trim
            else "train.malloc_trim not applied (not glibc)"
        )
    _applied = "memory: " + "; ".join(parts)
    return _applied


def _mmap_threshold(libc: ctypes.CDLL | None, nbytes: int) -> str:
    if ENV_VAR in os.environ:
        used = "unused" if nbytes else "0"
        return f"mmap threshold from {ENV_VAR}={os.environ[ENV_VAR]} (kept; train.malloc_mmap_threshold {used})"
    if nbytes <= 0:
        return "glibc's dynamic mmap threshold" if libc is not None else "the C library's own allocator (not glibc)"
    if libc is None:
        return "train.malloc_mmap_threshold not applied (the C library is not glibc)"
    if libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(nbytes)) != 1:
        return f"glibc refused mmap threshold {nbytes} (mallopt failed; the dynamic threshold stays)"
    return f"glibc mmap threshold fixed at {nbytes // 1024} KiB (train.malloc_mmap_threshold)"


def trim_heap() -> bool:
    """Give the free pages of glibc's heap back to the kernel (malloc_trim(0): the holes inside it too, not just its
    top). False where the C library is not glibc."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(ctypes.c_size_t(0)) >= 0)


def trim_after_phase() -> None:
    """At the end of an update or of cloning: trim the heap if train.malloc_trim asked for it (and glibc has it)."""
    if _trim:
        trim_heap()


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


@dataclass(frozen=True)
class MemorySnapshot:
    rss_mb: float  # resident now (0 where /proc is not there)
    peak_rss_mb: float  # resident at its highest since the start or the last reset_peak_rss (VmHWM)
    heap_mb: float | None  # glibc: bytes in the brk heap and its arenas (mallinfo2.arena)
    heap_free_mb: float | None  # glibc: of which free (fordblks): holes that stay resident
    mapped_mb: float | None  # glibc: bytes in chunks served by their own mmap (hblkhd)


def memory_snapshot() -> MemorySnapshot:
    """This process's resident memory and, on glibc, where malloc holds it."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        rss, peak = (int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))
    except (OSError, KeyError, ValueError):
        rss = peak = 0.0
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return MemorySnapshot(rss, peak, None, None, None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    mb = 1024 * 1024
    return MemorySnapshot(rss, peak, info.arena / mb, info.fordblks / mb, info.hblkhd / mb)


def reset_peak_rss() -> bool:
    """Start a new peak (VmHWM) from the current RSS, so each step reports its own (Linux >= 4.0: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_metrics() -> dict[str, float]:
    """perf/ metrics of host memory: resident at the end of the step, its peak during it, and (glibc) the free holes
    malloc keeps resident in its heap: the fragmentation a fixed mmap threshold prevents."""
    snap = memory_snapshot()
    if not snap.rss_mb:
        return {}
    out = {"perf/rss_gb": snap.rss_mb / 1024, "perf/peak_rss_gb": snap.peak_rss_mb / 1024}
    if snap.heap_free_mb is not None:
        out["perf/malloc_heap_free_gb"] = snap.heap_free_mb / 1024
    return out
