"""Data parallel on torch.distributed (gloo, CPU, 2 real processes) equals one process with the same global batch.

Both runs play the same episodes: generation goes through a backend whose response depends only on the prompt
(sampled generation draws from per-rank RNG streams, so it cannot match a single process token for token); the
episodes, GRPO groups and everything after them are the real code. After two RL steps the logged metrics (losses,
grad norms, EPO terms, success rates), the last mini-batch's gradients, the weights and the EPO entropy history
must agree to float tolerance, for GRPO+EPO and PPO+EPO. Rank 0's checkpoint of a 2-process run resumed on 1
process and continued on 2 must give the same next-step metrics.
"""

from __future__ import annotations

import math
import os
import socket
import zlib
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from rich.console import Console

from epo.config import load_config
from epo.telemetry.metrics import read_metrics
from epo.testing import tiny_run
from epo.trainer import distributed, setup
from epo.trainer.distributed import shard_bounds
from epo.trainer.trainer import Trainer

BASE = tiny_run(
    "rollout.tasks_per_step=4",
    "train.total_steps=3",
    "train.micro_batch_tokens=1200",
    "optim.lr=1e-3",
)
CASES = {
    # several mini-batches: separate old-policy pass, sharded and gathered
    "grpo_epo": ["algo.name=grpo", "rollout.group_size=2", "epo.mode=on", "epo.smoothing_coef=1.0",
                 "train.mini_batch_size=6"],
    # one on-policy pass: the entropies entering the EPO history come from every rank's loss forward
    "grpo_epo_single_pass": ["algo.name=grpo", "rollout.group_size=2", "epo.mode=on", "epo.smoothing_coef=1.0",
                             "train.mini_batch_size=64", "algo.kl_coef=0.01"],
    "ppo_epo": ["algo.name=ppo", "rollout.group_size=1", "epo.mode=on", "epo.smoothing_coef=1.0",
                "train.mini_batch_size=5", "train.ppo_epochs=2"],
    # the critic as a head on the policy's hidden states, trained by the policy's backward
    "ppo_shared_epo": ["algo.name=ppo", "model.value_model=shared", "rollout.group_size=1", "epo.mode=on",
                       "train.mini_batch_size=64"],
}  # fmt: skip
RL_STEPS = 2  # run to step 2 (of 3) and stop with a checkpoint; the resume test plays step 3
SKIP_KEYS = ("time/", "perf/")
REPLIES = ["look</action>", "inventory</action>", "go north</action>", "open door</action>", "xyzzy"]


class PromptHashBackend:
    """Deterministic stand-in for sampling: the reply is a function of the prompt tokens only (crc32, not hash():
    hash() is salted per process)."""

    def __init__(self, tokenizer):
        self.replies = [tokenizer.encode(r, add_special_tokens=False) for r in REPLIES]

    def generate(self, prompts, params):
        return [list(self.replies[zlib.crc32(str(p).encode()) % len(self.replies)]) for p in prompts]


def _patch_backend(monkeypatch_setattr) -> None:
    make = setup.make_collector

    def make_collector(cfg, pool, model, tokenizer, console=None):
        collector = make(cfg, pool, model, tokenizer, console)
        collector.backend = PromptHashBackend(tokenizer)
        return collector

    monkeypatch_setattr(setup, "make_collector", make_collector)


def _config(case: str):
    return load_config(None, BASE + CASES[case])


def _run(case: str, run_dir: Path, resume: bool = False, stop_after: int | None = RL_STEPS) -> dict:
    """Train (or resume) and return what the comparison needs (rank 0's view is the logged one)."""
    trainer = Trainer(_config(case), run_dir, resume=resume, console=Console(quiet=True))
    trainer.train(stop_after=stop_after)
    trainable = [p for p in trainer.policy.parameters() if p.requires_grad]
    return {
        "params": torch.cat([p.detach().flatten() for p in trainer.policy.parameters()]),
        "grads": torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in trainable]),
        "history": trainer.history.state_dict(),
    }


def _worker(rank: int, world: int, port: int, out: str, jobs: list[tuple[str, str, bool]]) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    _patch_backend(lambda obj, name, value: setattr(obj, name, value))
    for case, run_dir, resume in jobs:
        state = _run(case, Path(run_dir), resume=resume, stop_after=None if resume else RL_STEPS)
        torch.save(state, Path(out) / f"{Path(run_dir).name}_rank{rank}.pt")
    distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world: int, out: Path, jobs: list[tuple[str, str, bool]]) -> None:
    mp.start_processes(_worker, args=(world, _free_port(), str(out), jobs), nprocs=world, start_method="spawn")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case once on 1 process (here) and on 2 processes (one spawn for all cases: imports are the slow part)."""
    root = tmp_path_factory.mktemp("dist")
    mp_ = pytest.MonkeyPatch()
    _patch_backend(mp_.setattr)
    try:
        single = {case: _run(case, root / f"{case}_1p") for case in CASES}
    finally:
        mp_.undo()
    _spawn(2, root, [(case, str(root / f"{case}_2p"), False) for case in CASES])
    double = {case: torch.load(root / f"{case}_2p_rank0.pt") for case in CASES}
    return root, single, double


def _close(a: float, b: float) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)


def _assert_same_metrics(dir_a: Path, dir_b: Path, steps: list[int]) -> None:
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


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_equal_one(runs, case):
    root, single, double = runs
    _assert_same_metrics(root / f"{case}_1p", root / f"{case}_2p", [1, 2])
    one, two = single[case], double[case]
    assert torch.allclose(one["grads"], two["grads"], rtol=1e-4, atol=1e-6), (one["grads"] - two["grads"]).abs().max()
    assert torch.allclose(one["params"], two["params"], atol=1e-6)
    assert one["history"]["num_updates"] == two["history"]["num_updates"] == RL_STEPS
    for t, stat in one["history"]["stats"].items():
        assert stat == pytest.approx(two["history"]["stats"][t], rel=1e-5), t
    # the two ranks hold identical weights (replicated data parallel), and the update moved them
    rank1 = torch.load(root / f"{case}_2p_rank1.pt")
    assert torch.equal(two["params"], rank1["params"])
    # the rollout really was split: both ranks' episodes are in the global batch (4 tasks -> 2 per rank)
    rows = [r for r in read_metrics(root / f"{case}_2p") if "rollout/samples" in r]
    assert rows[0]["rollout/samples"] >= _config(case).rollout.tasks_per_step * _config(case).rollout.group_size


def test_resume_on_a_different_number_of_processes(runs, tmp_path):
    """The step-2 checkpoints of the 1- and 2-process GRPO+EPO runs, each continued to step 3 on 1 and on 2
    processes (2->1, 2->2, 1->2, 1->1): the same step-3 metrics every way."""
    import shutil

    root, _, _ = runs
    case = "grpo_epo"
    dirs = {}
    for src in ("1p", "2p"):
        for dst in ("1p", "2p"):
            dirs[src, dst] = tmp_path / f"from{src}_on{dst}"
            shutil.copytree(root / f"{case}_{src}", dirs[src, dst])
    mp_ = pytest.MonkeyPatch()
    _patch_backend(mp_.setattr)
    try:
        for src in ("1p", "2p"):
            _run(case, dirs[src, "1p"], resume=True, stop_after=None)
    finally:
        mp_.undo()
    _spawn(2, tmp_path, [(case, str(dirs[src, "2p"]), True) for src in ("1p", "2p")])
    reference = dirs["2p", "2p"]  # continuing the 2-process run as it was
    for run_dir in dirs.values():
        _assert_same_metrics(reference, run_dir, [1, 2, 3])


def test_shard_bounds_cover_every_task_once():
    for n in range(0, 9):
        for world in (1, 2, 3, 4):
            chunks = [shard_bounds(n, world, r) for r in range(world)]
            assert [i for s, e in chunks for i in range(s, e)] == list(range(n))


# ---------------------------------------------------------------------------------------------------- main's run-dir
# ownership, fault retries and NaN-safe metrics under 2 processes (no model: the collectives only)
def _fake_rollout(rank: int, ok: bool):
    """One task's episode of this rank: a finished one, or one ended by a worker crash with no turn samples."""
    from epo.rollout.collector import RolloutResult
    from epo.rollout.types import Trajectory, TurnSample

    traj = Trajectory(
        0, 0, f"task{rank}", "t", length=1, truncated=not ok, truncated_reason="" if ok else "worker_crash"
    )
    samples = [TurnSample([1], [2], 0, 0, 0, reward=1.0)] if ok else []
    return RolloutResult(samples, [traj], {})


def _collectives_worker(rank: int, world: int, port: int, root: str) -> None:
    from epo.errors import RunDirError
    from epo.telemetry.faults import collect_with_retries
    from epo.trainer.rundir import owner_pid
    from epo.trainer.update import MetricMeans

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    distributed.init_from_env("cpu", timeout_s=120)  # a hang fails the test instead of blocking it
    new, taken = Path(root) / "new", Path(root) / "taken"
    # only rank 0 takes the lock (rank 1 would be refused by it); both enter the block once rank 0 owns the dir
    with distributed.own_run_dir_on_main(new) as path:
        pids = distributed.all_gather_objects(os.getpid())
        assert path == new and owner_pid(new) == pids[0]  # rank 0's PID on every rank: rank 1 never locked
        distributed.barrier()
    # an existing run without --resume: rank 0 is refused, and so is every other rank (no hang)
    with pytest.raises(RunDirError, match="taken"), distributed.own_run_dir_on_main(taken):
        raise AssertionError("entered a refused run dir")
    # whether a step failed entirely is decided on the gathered batch: all ranks retry, or go on, together
    plans = {0: [False, False, True], 1: [False, True, True]}  # attempt 0 fails on both ranks, attempt 1 only on 0
    attempts = iter(plans[rank])
    failed = []
    rollout, retries = collect_with_retries(
        lambda: distributed.gather_rollout(_fake_rollout(rank, next(attempts))), 2, lambda a, _r: failed.append(a)
    )
    assert (retries, failed, len(rollout.samples), len(rollout.trajectories)) == (1, [0], 1, 2)
    # every rank's faults reach rank 0, tagged with their rank
    mine = [{"worker": 0, "reason": "timeout", "task": f"t{rank}", "message": "m"}]
    assert [(f["rank"], f["task"]) for f in distributed.gather_faults(mine)] == [(0, "t0"), (1, "t1")]
    # metrics: global weighted means over both ranks' micro-batches, NaN entries skipped, maxima over ranks
    means = MetricMeans()
    if rank == 0:
        means.add({"a": 1.0, "ev": float("nan"), "r_max": 3.0}, weight=1.0)
    else:
        means.add({"a": 4.0, "ev": 0.5, "r_max": 2.0}, weight=2.0)
        means.add({"a": 7.0, "ev": float("nan"), "r_max": 5.0}, weight=1.0)
    out = means.result()
    assert out == {"a": pytest.approx((1 + 8 + 7) / 4), "ev": 0.5, "r_max": 5.0}, out
    assert distributed.run_on_main(lambda: rank) == 0
    distributed.shutdown()


def test_run_dir_faults_and_metrics_across_two_processes(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.yaml").write_text("x: 1\n")  # a run is there
    mp.start_processes(_collectives_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    assert not (tmp_path / "taken" / ".lock").exists()  # refusing a dir never writes to it
