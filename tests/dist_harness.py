"""The 2-process harness shared by test_distributed.py (DDP) and test_fsdp.py (FSDP2), on gloo, CPU.

Both runs play the same episodes: generation goes through a backend whose response depends only on the prompt
(sampled generation draws from per-rank RNG streams, so it cannot match a single process token for token); the
episodes, GRPO groups and everything after them are the real code. A test module passes its own `run(case,
run_dir, resume, stop_after) -> dict` (a module-level function, so that spawned workers can import it).
"""

from __future__ import annotations

import math
import os
import socket
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from epo.telemetry.metrics import read_metrics
from epo.trainer import distributed, setup

RL_STEPS = 2  # run to step 2 (of 3) and stop with a checkpoint; the resume tests play step 3
SKIP_KEYS = ("time/", "perf/")
REPLIES = ["look</action>", "inventory</action>", "go north</action>", "open door</action>", "xyzzy"]
Run = Callable[..., dict]  # run(case, run_dir, resume=False, stop_after=RL_STEPS) -> what the comparison needs
Job = tuple[str, str, bool]  # (case, run dir, resume)


class PromptHashBackend:
    """Deterministic stand-in for sampling: the reply is a function of the prompt tokens only (crc32, not hash():
    hash() is salted per process)."""

    def __init__(self, tokenizer):
        self.replies = [tokenizer.encode(r, add_special_tokens=False) for r in REPLIES]

    def generate(self, prompts, params):
        return [list(self.replies[zlib.crc32(str(p).encode()) % len(self.replies)]) for p in prompts]


@contextmanager
def prompt_hash_generation() -> Iterator[None]:
    """Every collector the trainer builds inside this block generates with PromptHashBackend."""
    make = setup.make_collector

    def make_collector(cfg, pool, model, tokenizer, console=None):
        collector = make(cfg, pool, model, tokenizer, console)
        collector.backend = PromptHashBackend(tokenizer)
        return collector

    patch = pytest.MonkeyPatch()
    patch.setattr(setup, "make_collector", make_collector)
    try:
        yield
    finally:
        patch.undo()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_process_group(rank: int, world: int, port: int) -> None:
    """The environment torchrun would set, and one thread per rank (2 ranks on 2 cores)."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)


def spawn(worker: Callable, *args, world: int = 2) -> None:
    """worker(rank, world, port, *args) on `world` fresh processes."""
    mp.start_processes(worker, args=(world, free_port(), *args), nprocs=world, start_method="spawn")


def _run_worker(rank: int, world: int, port: int, run: Run, out: str, jobs: list[Job]) -> None:
    join_process_group(rank, world, port)
    with prompt_hash_generation():
        for case, run_dir, resume in jobs:
            state = run(case, Path(run_dir), resume=resume, stop_after=None if resume else RL_STEPS)
            torch.save(state, Path(out) / f"{Path(run_dir).name}_rank{rank}.pt")
    distributed.shutdown()


def run_on_two(run: Run, out: Path, jobs: list[Job]) -> None:
    """The jobs on 2 processes (one spawn for all: imports are the slow part); each rank's result in `out`."""
    spawn(_run_worker, run, str(out), jobs)


def resume_here(run: Run, case: str, run_dirs: list[Path]) -> None:
    """Continue each run dir to the end on this (single) process."""
    with prompt_hash_generation():
        for run_dir in run_dirs:
            run(case, run_dir, resume=True, stop_after=None)


def one_and_two_processes(run: Run, root: Path, cases: list[str]) -> tuple[dict, dict]:
    """Every case to step RL_STEPS on 1 process (here) and on 2: ({case: result}, {case: rank 0's result})."""
    with prompt_hash_generation():
        single = {case: run(case, root / f"{case}_1p") for case in cases}
    run_on_two(run, root, [(case, str(root / f"{case}_2p"), False) for case in cases])
    return single, {case: torch.load(root / f"{case}_2p_rank0.pt") for case in cases}


def _close(a: float, b: float) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)


def assert_same_metrics(dir_a: Path, dir_b: Path, steps: list[int]) -> None:
    rows_a = {r["step"]: r for r in read_metrics(dir_a) if "actor/pg_loss" in r}
    rows_b = {r["step"]: r for r in read_metrics(dir_b) if "actor/pg_loss" in r}
    assert sorted(rows_a) == sorted(rows_b) == steps
    for step in steps:
        a, b = rows_a[step], rows_b[step]
        assert sorted(a) == sorted(b), f"step {step}: different metric keys"
        for key in a:
            if key.startswith(SKIP_KEYS):
                continue
            va, vb = a[key], b[key]
            if isinstance(va, list):
                assert len(va) == len(vb) and all(_close(x, y) for x, y in zip(va, vb)), (step, key, va, vb)
            else:
                assert _close(va, vb), (step, key, va, vb)


def assert_same_result(one: dict, two: dict) -> None:
    """1 process vs 2: the last mini-batch's gradients, the weights and the EPO entropy history."""
    assert torch.allclose(one["grads"], two["grads"], rtol=1e-4, atol=1e-6), (one["grads"] - two["grads"]).abs().max()
    assert one["grads"].abs().sum() > 0
    # Weights: equal to 1e-6 but for a few. Adam divides by sqrt(v), so where a gradient is ~0 the last bits of a sum
    # reduced in another order (one process vs a reduce-scatter; AVX-512 vs AVX2 kernels) change that weight's step by
    # up to lr (1e-3 here). Seen on an avx512 CPU: 1 and 126 of 3.2M weights off by 4e-6 and 1e-4; none on AVX2.
    diff = (one["params"] - two["params"]).abs()
    off = int((diff > 1e-6).sum())
    assert off <= 1e-4 * diff.numel() and float(diff.max()) < 1e-3, (off, diff.numel(), diff.max())
    assert one["history"]["num_updates"] == two["history"]["num_updates"] == RL_STEPS
    for t, stat in one["history"]["stats"].items():
        assert stat == pytest.approx(two["history"]["stats"][t], rel=1e-5), t
