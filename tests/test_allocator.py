"""glibc's mmap threshold (trainer/allocator.py): what train.malloc_mmap_threshold changes, checked in fresh processes
(mallopt switches glibc's dynamic threshold off for the rest of a process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from epo.config import ConfigError, load_config
from epo.trainer.allocator import _glibc, configure, memory_snapshot, trim_heap

needs_glibc = pytest.mark.skipif(_glibc() is None, reason="mallopt's M_MMAP_THRESHOLD and mallinfo2 are glibc's")

# After a 4 MiB chunk served by mmap is freed, glibc's dynamic threshold rises to 4 MiB, so a 1 MiB request comes
# from the heap; with the threshold fixed it is mapped. Prints the bytes mapped while the 1 MiB block is held.
PROBE = """
import ctypes, json, sys
from epo.trainer.allocator import _glibc, configure, memory_snapshot
line = configure(int(sys.argv[1]), trim=False)
libc = _glibc(); libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(4 << 20))
before = memory_snapshot().mapped_mb
block = libc.malloc(1 << 20)
print(json.dumps({"line": line, "mapped_by_1mib": memory_snapshot().mapped_mb - before}))
"""


def probe(threshold: int, env: dict | None = None) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"} | (env or {})
    out = subprocess.run([sys.executable, "-c", PROBE, str(threshold)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@needs_glibc
def test_a_fixed_threshold_maps_a_block_the_dynamic_one_takes_from_the_heap():
    dynamic, fixed = probe(0), probe(128 * 1024)
    assert dynamic["mapped_by_1mib"] == 0 and dynamic["line"] == "memory: glibc's dynamic mmap threshold"
    assert fixed["mapped_by_1mib"] >= 1.0 and "fixed at 128 KiB" in fixed["line"]


@needs_glibc
def test_the_environment_variable_wins_and_the_line_says_so():
    res = probe(128 * 1024, env={"MALLOC_MMAP_THRESHOLD_": "8388608"})
    assert "MALLOC_MMAP_THRESHOLD_=8388608 (kept" in res["line"]
    assert res["mapped_by_1mib"] == 0  # glibc's own 8 MiB threshold: a 1 MiB block stays in the heap


def test_not_glibc_is_said_not_claimed(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setattr("epo.trainer.allocator._glibc", lambda: None)
    line = configure(131072, trim=True)
    assert "malloc_mmap_threshold not applied (the C library is not glibc)" in line
    assert "malloc_trim not applied (not glibc)" in line


@needs_glibc
def test_trim_gives_the_heaps_free_pages_back():
    """Free holes in the heap stay resident until trimmed: the RSS drop train.malloc_trim buys between updates."""
    import ctypes

    libc = _glibc()
    libc.malloc.restype, libc.free.argtypes, libc.memset.argtypes = (
        ctypes.c_void_p,
        [ctypes.c_void_p],
        [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t],
    )
    blocks = [libc.malloc(64 * 1024) for _ in range(4000)]  # 250 MB of heap chunks (below the mmap threshold)
    for b in blocks:
        libc.memset(b, 1, 64 * 1024)
    for b in blocks[:-1]:  # the last one pins the heap's top: only malloc_trim(0) reaches the pages below it
        libc.free(b)
    before = memory_snapshot().rss_mb
    assert trim_heap()
    assert before - memory_snapshot().rss_mb > 150
    libc.free(blocks[-1])


def test_memory_snapshot_reads_this_process():
    snap = memory_snapshot()
    assert snap.rss_mb > 10 and snap.peak_rss_mb >= snap.rss_mb * 0.5


@pytest.mark.parametrize("value", ["-1", "40000000"])
def test_out_of_range_thresholds_fail_at_load(value):
    with pytest.raises(ConfigError, match="train.malloc_mmap_threshold"):
        load_config("quest_demo_cpu", [f"train.malloc_mmap_threshold={value}"])
