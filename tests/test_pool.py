"""EnvPool: process mode == inline mode, and faults (crash, hang, env exception, Ctrl-C) end episodes, not batches."""

from __future__ import annotations

import multiprocessing.connection
import os
import random
import signal
import subprocess
import sys
import time

import psutil
import pytest

from epo.envs import EnvSpec, register
from epo.envs.pool import EnvPool
from epo.errors import EnvResetFailed


class FaultyEnv:
    """Counts steps; magic actions: hang (sleeps), nap (0.5 s), crash (worker exits), raise (env error),
    unpicklable (an info that cannot cross the pipe), spawn (a child process, like ScienceWorld's JVM), win."""

    def __init__(self) -> None:
        self.task, self.count, self.children = "", 0, []

    def reset(self, *, seed=None, options=None):
        self.task, self.count = options["task_id"], 0
        if self.task == "bad":
            raise ValueError("no such task")
        return f"start {self.task}", self._info(won=False)

    def _info(self, won: bool) -> dict:
        return {"task": self.task, "admissible_actions": ["a", "win"], "won": won, "valid": True, "task_type": "t",
                "pid": os.getpid()}  # fmt: skip

    def step(self, action):
        self.count += 1
        info = self._info(won=action == "win")
        if action == "hang":
            time.sleep(600)
        elif action == "nap":
            info["nap_start"] = time.time()  # wall clock: comparable across worker processes
            time.sleep(0.5)
            info["nap_end"] = time.time()
        elif action == "crash":
            os._exit(3)
        elif action == "raise":
            raise RuntimeError("boom")
        elif action == "unpicklable":
            info["callback"] = lambda: None
        elif action == "spawn":
            self.children.append(subprocess.Popen(["sleep", "600"]))
            info["child_pid"] = self.children[-1].pid
        return f"{self.task}:{action}#{self.count}", float(info["won"]), info["won"], False, info

    def expert_action(self):
        if self.task.startswith("gold") and self.count == 0:  # ScienceWorld's first call: seconds to make a gold path
            time.sleep(0.4)
        return "win"

    def close(self):
        pass


def make_faulty() -> FaultyEnv:
    return FaultyEnv()


register(EnvSpec(name="faulty_test", description="test env", make=make_faulty, splits=dict, max_turns=5))


def dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # killed, waiting for a reaper
    except psutil.NoSuchProcess:
        return True


def wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not dead(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return dead(pid)


def play(pool: EnvPool, n_slots: int, steps: int) -> list:
    """Seeded random admissible actions; returns everything the pool said."""
    rng = random.Random(0)
    first = pool.reset([f"train/{i:05d}" for i in range(n_slots)])
    log, infos = [first], {i: info for i, (_, info) in enumerate(first)}
    for _ in range(steps):
        if not pool.active_slots:
            break
        log.append(pool.expert_actions(pool.active_slots))
        outs = pool.step({s: rng.choice(infos[s]["admissible_actions"]) for s in pool.active_slots})
        infos.update({s: out[4] for s, out in outs.items()})
        log.append(outs)
    return log


def test_process_mode_matches_inline_mode():
    with EnvPool("quest", {"difficulty": "easy"}, num_workers=1, mode="inline") as inline:
        expected = play(inline, n_slots=6, steps=20)
    with EnvPool("quest", {"difficulty": "easy"}, num_workers=3) as pool:
        assert play(pool, n_slots=6, steps=20) == expected
        assert sorted({pool.worker_of(s) for s in range(6)}) == [0, 1, 2]


@pytest.fixture
def faulty_pool():
    pool = EnvPool("faulty_test", {}, num_workers=2, step_timeout_s=1.0, reset_timeout_s=10.0)
    yield pool
    pool.close()


def check_truncated(out, reason: str, task: str) -> None:
    obs, reward, terminated, truncated, info = out
    assert (reward, terminated, truncated) == (0.0, False, True)
    assert info["truncated_reason"] == reason and info["error"] and reason in obs
    assert (info["won"], info["valid"], info["admissible_actions"], info["task"]) == (False, False, [], task)


def test_workers_step_in_parallel(faulty_pool):
    faulty_pool.reset(["t0", "t1"])
    outs = faulty_pool.step({0: "nap", 1: "nap"})
    assert [out[0] for out in outs.values()] == ["t0:nap#1", "t1:nap#1"]
    # The two naps overlap in time (no duration threshold, so a slow machine cannot make this flaky).
    naps = [(out[4]["nap_start"], out[4]["nap_end"]) for out in outs.values()]
    assert max(start for start, _ in naps) < min(end for _, end in naps)


def test_killed_worker_truncates_its_slots_and_restarts(faulty_pool):
    pool = faulty_pool
    pool.reset(["t0", "t1", "t2", "t3"])  # worker 0: slots 0, 2; worker 1: slots 1, 3
    old_pid = pool.worker_pids()[0]
    os.kill(old_pid, signal.SIGKILL)
    outs = pool.step({0: "a", 1: "a"})
    check_truncated(outs[0], "worker_crash", "t0")
    assert outs[1][0] == "t1:a#1" and not outs[1][3]
    check_truncated(pool.step({2: "a"})[2], "worker_crash", "t2")  # not stepped then, told now
    assert pool.step({3: "a"})[3][0] == "t3:a#1"
    assert pool.active_slots == [1, 3]
    with pytest.raises(ValueError, match="no live episode"):
        pool.step({0: "a"})
    assert [obs for obs, _ in pool.reset(["t0", "t1", "t2"])] == ["start t0", "start t1", "start t2"]
    outs = pool.step({0: "a", 2: "a"})
    assert outs[0][0] == "t0:a#1" and outs[0][4]["pid"] != old_pid


def test_hanging_env_times_out_without_blocking_the_batch(faulty_pool):
    pool = faulty_pool
    pool.reset(["t0", "t1"])
    start = time.monotonic()
    outs = pool.step({0: "hang", 1: "a"})
    assert time.monotonic() - start < 8.0
    check_truncated(outs[0], "timeout", "t0")
    assert outs[1][0] == "t1:a#1"
    assert pool.step({1: "win"})[1][1:4] == (1.0, True, False)
    assert pool.reset(["t0"])[0][0] == "start t0"


def test_slow_first_expert_calls_of_many_slots_are_not_a_timeout():
    """A worker's slots make their gold paths one after another in one command: 6 x 0.4 s > the 1 s step deadline."""
    with EnvPool("faulty_test", {}, num_workers=1, step_timeout_s=1.0, reset_timeout_s=30.0) as pool:
        pool.reset([f"gold{i}" for i in range(6)])
        assert pool.expert_actions(list(range(6))) == {i: "win" for i in range(6)}
        assert pool.drain_faults() == []


def test_the_step_deadline_is_per_env_call_not_per_batch():
    """6 slots on one worker nap 0.5 s each (3 s in all) under a 1 s step deadline: no timeout; a hang still is one,
    named with the slots done before it."""
    with EnvPool("faulty_test", {}, num_workers=1, step_timeout_s=1.0) as pool:
        pool.reset([f"t{i}" for i in range(6)])
        outs = pool.step({i: "nap" for i in range(6)})
        assert all(not out[3] for out in outs.values()) and pool.drain_faults() == []
        outs = pool.step({0: "a", 1: "a", 2: "hang", 3: "a"})
        assert [outs[i][3] for i in range(4)] == [True] * 4  # the whole worker was restarted
        faults = pool.drain_faults()  # one per live episode it ended, t4 and t5 (not stepped) too
        assert [f.task for f in faults] == [f"t{i}" for i in range(6)], faults
        assert all(f.reason == "timeout" and "2 of its 4 slot(s) done" in f.message for f in faults), faults


def test_release_envs_closes_them_and_the_next_reset_makes_new_ones():
    for mode in ("inline", "process"):
        with EnvPool("faulty_test", {}, num_workers=2, mode=mode) as pool:
            pool.reset(["t0", "t1", "t2"])
            pool.step({0: "a", 1: "a", 2: "a"})
            pool.release_envs()
            assert pool.active_slots == [] and pool.drain_faults() == []
            if mode == "inline":
                assert all(not envs.envs for envs in pool._inline)
            with pytest.raises(ValueError, match="no live episode"):
                pool.step({0: "a"})
            assert pool.reset(["t3", "t4"])[1][0] == "start t4"
            assert pool.step({0: "a"})[0][0] == "t3:a#1"


def test_worker_exit_and_env_exception(faulty_pool):
    pool = faulty_pool
    pool.reset(["t0", "t1", "t2"])
    outs = pool.step({0: "raise", 1: "crash", 2: "a"})
    check_truncated(outs[0], "env_error", "t0")
    assert "RuntimeError: boom" in outs[0][4]["error"]
    check_truncated(outs[1], "worker_crash", "t1")
    assert outs[2][0] == "t2:a#1"  # same worker as slot 0: unaffected by its env's exception
    # the env's exception is a fault with its message, like the crash (so it reaches the console and faults.jsonl)
    faults = {(f.reason, f.task) for f in pool.drain_faults()}
    assert faults == {("env_error", "t0"), ("worker_crash", "t1")}
    assert pool.expert_actions([0, 1, 2]) == {0: None, 1: None, 2: "win"}
    obs_infos = pool.reset(["t0", "bad"])
    assert obs_infos[0][0] == "start t0"
    assert obs_infos[1][1]["truncated_reason"] == "env_error" and "no such task" in obs_infos[1][1]["error"]
    assert [(f.reason, f.task) for f in pool.drain_faults()] == [("env_error", "bad")]
    assert pool.active_slots == [0]
    with pytest.raises(EnvResetFailed, match="every reset failed"):  # an EpoError: one line, not an env fault
        pool.reset(["bad", "bad"])


def test_unpicklable_result_fails_only_its_slot(faulty_pool):
    pool = faulty_pool
    pool.reset(["t0", "t1", "t2"])
    workers = pool.worker_pids()
    outs = pool.step({0: "unpicklable", 2: "a"})  # both on worker 0
    check_truncated(outs[0], "env_error", "t0")
    assert "unpicklable" in outs[0][4]["error"] and outs[2][0] == "t2:a#1"
    assert pool.worker_pids() == workers


def test_env_children_die_with_their_worker_and_on_close():
    pool = EnvPool("faulty_test", {}, num_workers=2, step_timeout_s=1.0)
    pool.reset(["t0", "t1"])
    outs = pool.step({0: "spawn", 1: "spawn"})
    grandchild0, grandchild1 = outs[0][4]["child_pid"], outs[1][4]["child_pid"]
    workers = pool.worker_pids()
    assert not dead(grandchild0) and not dead(grandchild1)
    check_truncated(pool.step({0: "hang"})[0], "timeout", "t0")  # worker 0 is killed with its group
    assert wait_dead(grandchild0) and wait_dead(workers[0]) and not dead(grandchild1)
    pool.close()
    pool.close()  # idempotent
    assert all(wait_dead(pid) for pid in [grandchild1, *workers, *pool.worker_pids()])
    left = [p.cmdline() for p in psutil.Process().children(recursive=True) if not dead(p.pid)]
    assert [cmd for cmd in left if "resource_tracker" not in " ".join(cmd)] == []  # stdlib's, exits with us
    with pytest.raises(RuntimeError, match="closed"):
        pool.reset(["t0"])


def test_keyboard_interrupt_mid_step_shuts_the_pool_down(monkeypatch):
    pool = EnvPool("faulty_test", {}, num_workers=2)
    pool.reset(["t0", "t1"])
    workers = pool.worker_pids()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(multiprocessing.connection, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pool.step({0: "a", 1: "a"})
    assert all(wait_dead(pid) for pid in workers)
    with pytest.raises(RuntimeError, match="closed"):
        pool.step({0: "a"})


def test_workers_exit_when_the_parent_is_killed():
    code = (
        "from epo.envs.pool import EnvPool; import time\n"
        "pool = EnvPool('quest', {}, num_workers=2); pool.reset(['train/00000'])\n"
        "print(' '.join(map(str, pool.worker_pids())), flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
    finally:
        parent.kill()  # SIGKILL: no atexit, no finalizers; the workers' watchdogs must notice
        parent.wait()
    assert len(workers) == 2 and all(wait_dead(pid, timeout=10.0) for pid in workers)


def test_inline_mode_has_the_same_fault_semantics():
    with EnvPool("faulty_test", {}, num_workers=2, mode="inline") as pool:
        pool.reset(["t0", "t1"])
        outs = pool.step({0: "raise", 1: "a"})
        check_truncated(outs[0], "env_error", "t0")
        assert outs[1][0] == "t1:a#1" and pool.worker_pids() == []
        assert pool.expert_actions([0, 1]) == {0: None, 1: "win"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        EnvPool("quest", {}, mode="threads")
    with pytest.raises(ValueError, match="unknown env"):
        EnvPool("no_such_env", {})
    unpicklable = EnvSpec(name="lambda_test", description="", make=lambda: FaultyEnv(), splits=dict, max_turns=5)
    register(unpicklable)
    with pytest.raises(ValueError, match="cannot be sent to a worker"):
        EnvPool("lambda_test", {})
