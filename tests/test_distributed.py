"""Data parallel on torch.distributed (gloo, CPU, 2 real processes) equals one process with the same global batch.

The harness (dist_harness.py) makes both runs play the same episodes. After two RL steps the logged metrics
(losses, grad norms, EPO terms, success rates), the last mini-batch's gradients, the weights and the EPO entropy
history must agree to float tolerance, for GRPO+EPO and PPO+EPO. Rank 0's checkpoint of a 2-process run resumed
on 1 process and continued on 2 must give the same next-step metrics.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console

from dist_harness import (
    RL_STEPS,
    assert_same_metrics,
    assert_same_result,
    join_process_group,
    one_and_two_processes,
    resume_here,
    run_on_two,
    spawn,
)
from epo.config import load_config
from epo.telemetry.metrics import read_metrics
from epo.testing import tiny_run
from epo.trainer import distributed
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


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case once on 1 process and on 2 processes."""
    root = tmp_path_factory.mktemp("dist")
    yield root, *one_and_two_processes(_run, root, sorted(CASES))
    shutil.rmtree(root, ignore_errors=True)  # ~1 GB of checkpoints: CI machines have small disks


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_equal_one(runs, case):
    root, single, double = runs
    assert_same_metrics(root / f"{case}_1p", root / f"{case}_2p", [1, 2])
    assert_same_result(single[case], double[case])
    # the two ranks hold identical weights (replicated data parallel), and the update moved them
    rank1 = torch.load(root / f"{case}_2p_rank1.pt")
    assert torch.equal(double[case]["params"], rank1["params"])
    # the rollout really was split: both ranks' episodes are in the global batch (4 tasks -> 2 per rank)
    rows = [r for r in read_metrics(root / f"{case}_2p") if "rollout/samples" in r]
    assert rows[0]["rollout/samples"] >= _config(case).rollout.tasks_per_step * _config(case).rollout.group_size


def test_resume_on_a_different_number_of_processes(runs, tmp_path):
    """The step-2 checkpoints of the 1- and 2-process GRPO+EPO runs, each continued to step 3 on 1 and on 2
    processes (2->1, 2->2, 1->2, 1->1): the same step-3 metrics every way."""
    root, _, _ = runs
    case = "grpo_epo"
    dirs = {}
    for src in ("1p", "2p"):
        for dst in ("1p", "2p"):
            dirs[src, dst] = tmp_path / f"from{src}_on{dst}"
            shutil.copytree(root / f"{case}_{src}", dirs[src, dst])
    resume_here(_run, case, [dirs[src, "1p"] for src in ("1p", "2p")])
    run_on_two(_run, tmp_path, [(case, str(dirs[src, "2p"]), True) for src in ("1p", "2p")])
    reference = dirs["2p", "2p"]  # continuing the 2-process run as it was
    for run_dir in dirs.values():
        assert_same_metrics(reference, run_dir, [1, 2, 3])


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

    join_process_group(rank, world, port)
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
    spawn(_collectives_worker, str(tmp_path))
    assert not (tmp_path / "taken" / ".lock").exists()  # refusing a dir never writes to it
