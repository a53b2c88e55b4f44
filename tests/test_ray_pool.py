"""env.executor=ray: the env pool's workers as Ray actors on a local 2-CPU Ray instance.

A Ray-pool rollout equals a local-pool rollout for the same seeds; an actor killed mid-episode ends its episodes
truncated ("worker_crash") and is replaced; a hanging env times out ("timeout") without blocking the batch.
"""

from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'epo[ray]')")

import torch  # noqa: E402

import test_pool  # noqa: E402  (registers the faulty_test env; its helpers check the same fault semantics)
from epo.config import load_config  # noqa: E402
from epo.envs.pool import EnvPool  # noqa: E402
from epo.envs.ray_pool import RayEnvPool  # noqa: E402
from epo.rollout.types import SamplingParams  # noqa: E402
from epo.trainer import setup  # noqa: E402
from test_pool import check_truncated, play  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.cloudpickle.register_pickle_by_value(test_pool)  # actors cannot import the tests directory
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_pool_plays_like_the_local_pool():
    with EnvPool("quest", {"difficulty": "easy"}, num_workers=1, mode="inline") as inline:
        expected = play(inline, n_slots=4, steps=12)
    with RayEnvPool("quest", {"difficulty": "easy"}, num_workers=2, num_cpus_per_worker=0.5) as pool:
        assert play(pool, n_slots=4, steps=12) == expected
        assert len(set(pool.worker_pids())) == 2


def test_ray_pool_rollout_equals_local_pool_rollout():
    """The trainer's path: setup.make_pool from the config, the collector, the tiny model sampling with one seed."""
    overrides = ["model.path=tiny", "env.kwargs.difficulty=easy", "env.max_turns=3", "agent.action_prefix=true",
                 "agent.max_prompt_tokens=384", "rollout.max_new_tokens=5", "env.num_workers=2"]  # fmt: skip
    rollouts = {}
    for executor in ("local", "ray"):
        ray_only = ["env.ray_num_cpus=0.5"] if executor == "ray" else []
        cfg = load_config(None, [*overrides, f"env.executor={executor}", *ray_only])
        torch.manual_seed(0)
        model, tokenizer = setup.load_policy(cfg, torch.device("cpu"))
        with setup.make_pool(cfg) as pool:
            assert isinstance(pool, RayEnvPool) == (executor == "ray")
            collector = setup.make_collector(cfg, pool, model, tokenizer)
            torch.manual_seed(1)
            with torch.no_grad():
                rollouts[executor] = collector.collect(
                    ["train/00000", "train/00001"], 2, SamplingParams(1.0, 1.0, 0, 5)
                )
    local, remote = rollouts["local"], rollouts["ray"]
    assert [t.__dict__ for t in local.trajectories] == [t.__dict__ for t in remote.trajectories]
    assert [s.__dict__ for s in local.samples] == [s.__dict__ for s in remote.samples]
    assert len(local.samples) > 4


@pytest.fixture
def faulty_ray_pool():
    pool = RayEnvPool("faulty_test", {}, num_workers=2, step_timeout_s=3.0, num_cpus_per_worker=0.5)
    yield pool
    pool.close()


def kill_and_wait(actor, timeout_s: float = 60.0) -> None:
    """ray.kill only asks Ray to kill the actor: a call made right after it may still be served (a race seen in
    CI). Wait until the actor refuses calls, so the pool's next step really meets a dead actor."""
    ray.kill(actor)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.pid.remote(), timeout=10.0)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:  # dying: ask again
            pass
        time.sleep(0.1)
    raise AssertionError(f"the actor was still serving calls {timeout_s:.0f} s after ray.kill")


def test_killed_actor_truncates_its_episodes_and_is_replaced(faulty_ray_pool):
    pool = faulty_ray_pool
    pool.reset(["t0", "t1", "t2", "t3"])  # actor 0: slots 0, 2; actor 1: slots 1, 3
    assert pool.step({0: "a", 1: "a"})[0][0] == "t0:a#1"  # mid-episode
    old_pid = pool.worker_pids()[0]
    kill_and_wait(pool.actors()[0])
    outs = pool.step({0: "a", 1: "a"})
    check_truncated(outs[0], "worker_crash", "t0")
    assert outs[1][0] == "t1:a#2" and not outs[1][3]
    check_truncated(pool.step({2: "a"})[2], "worker_crash", "t2")  # not stepped then, told now
    assert pool.step({3: "a"})[3][0] == "t3:a#1"
    # the crash is reported for the fault log like the local pool's: one PoolFault per episode it ended
    faults = pool.drain_faults()
    assert sorted((f.worker, f.reason, f.task) for f in faults) == [
        (0, "worker_crash", "t0"),
        (0, "worker_crash", "t2"),
    ]
    assert pool.drain_faults() == []
    pool.reset(["t0", "t1"])  # the replacement actor serves again
    assert pool.step({0: "win"})[0][2] and pool.worker_pids()[0] != old_pid


def test_actor_killed_between_episodes_loses_no_reset(faulty_ray_pool):
    """A dead idle actor fails its reset, is replaced, and the reset is retried once on the new actor."""
    pool = faulty_ray_pool
    pool.reset(["t0", "t1"])
    kill_and_wait(pool.actors()[0])
    outs = pool.reset(["t2", "t3"])
    assert len(outs) == 2
    assert pool.step({0: "a"})[0][0] == "t2:a#1"
    assert [f.reason for f in pool.drain_faults()] == ["worker_crash"]


def test_hanging_env_times_out_and_env_errors_stay_per_slot(faulty_ray_pool):
    pool = faulty_ray_pool
    pool.reset(["t0", "t1", "t2"])
    outs = pool.step({0: "hang", 1: "a"})
    check_truncated(outs[0], "timeout", "t0")
    assert outs[1][0] == "t1:a#1"
    check_truncated(pool.step({2: "a"})[2], "timeout", "t2")  # same actor as slot 0: its episode ended too
    check_truncated(pool.step({1: "raise"})[1], "env_error", "t1")


def test_the_deadline_is_per_env_call_and_an_unpicklable_reply_fails_its_slot():
    """As the local pool: 8 slots on one actor nap 0.5 s each (4 s in all) under a 3 s step deadline: no timeout,
    since the actor streams each slot's reply; a hang is a timeout named with the slots done before it."""
    with RayEnvPool("faulty_test", {}, num_workers=1, step_timeout_s=3.0, num_cpus_per_worker=0.5) as pool:
        pool.reset([f"t{i}" for i in range(8)])
        outs = pool.step({i: "nap" for i in range(8)})
        assert all(not out[3] for out in outs.values()) and pool.drain_faults() == []
        outs = pool.step({0: "unpicklable", 1: "a"})  # the local pool's rule, not cloudpickle's: same run either way
        check_truncated(outs[0], "env_error", "t0")
        assert "unpicklable" in outs[0][4]["error"] and outs[1][0] == "t1:a#2"
        outs = pool.step({1: "a", 2: "a", 3: "hang", 4: "a"})
        assert [outs[i][3] for i in range(1, 5)] == [True] * 4  # the whole actor was replaced
        faults = [f for f in pool.drain_faults() if f.reason == "timeout"]  # one per live episode it ended
        assert [f.task for f in faults] == [f"t{i}" for i in range(1, 8)], faults
        assert all("2 of its 4 slot(s) done" in f.message for f in faults), faults
