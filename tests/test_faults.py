"""Env faults during RL (issue 12 items 4, 5): worker crashes/hangs are reported, dead workers are revived before a
step's resets, and a step whose whole batch fails is retried, then stops the run with one line and a checkpoint."""

from __future__ import annotations

import os
import signal

import pytest
from rich.console import Console

from epo.config import load_config
from epo.envs.pool import EnvPool
from epo.telemetry.faults import EnvBatchFailed, FaultLog, read_faults
from epo.telemetry.metrics import read_metrics
from epo.testing import tiny_run
from epo.trainer import setup
from epo.trainer.checkpoint import latest_checkpoint, load_checkpoint
from epo.trainer.trainer import Trainer

BASE = tiny_run(
    "env.pool_mode=process",
    "env.num_workers=1",
    "train.total_steps=3",
    "train.mini_batch_size=64",
    "train.micro_batch_tokens=1500",
)
QUIET = Console(quiet=True)
_REAL_STEP = EnvPool.step


def _capture_pool(monkeypatch) -> list:
    """setup.make_pool, remembering the pools it made."""
    made, make = [], setup.make_pool
    monkeypatch.setattr(setup, "make_pool", lambda cfg: made.append(make(cfg)) or made[-1])
    return made


def _before_step(monkeypatch, hook) -> None:
    """Call hook(trainer, collector) before every RL step."""
    rl_step = Trainer._rl_step

    def wrapped(self, collector, progress):
        hook(self, collector)
        return rl_step(self, collector, progress)

    monkeypatch.setattr(Trainer, "_rl_step", wrapped)


def test_a_worker_killed_between_steps_is_restarted_before_the_resets(monkeypatch, tmp_path):
    pools = _capture_pool(monkeypatch)
    killed = []

    def kill_idle_worker(trainer, collector):
        if trainer.step == 1:
            pid = pools[0].worker_pids()[0]
            os.kill(pid, signal.SIGKILL)
            pools[0]._workers[0].process.join(timeout=10)  # dead before the resets (a kill is not instant)
            killed.append(pid)

    _before_step(monkeypatch, kill_idle_worker)
    result = Trainer(load_config(None, BASE), tmp_path / "run", console=QUIET).train()
    assert result.steps_done == 3 and killed
    rows = [r for r in read_metrics(tmp_path / "run") if "rollout/samples" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["rollout/samples"] > 0 for r in rows)
    assert all(r["rollout/env_crashes"] == 0 and r["rollout/env_timeouts"] == 0 for r in rows)
    faults = read_faults(tmp_path / "run")
    assert [(f["step"], f["worker"], f["reason"], f["task"]) for f in faults] == [(2, 0, "worker_dead", "")]


def _fault_before_pool_steps(monkeypatch, plan: dict[int, tuple[int, int]]) -> list[int]:
    """Before the n-th EnvPool.step call (0-based), send plan[n] = (signal, worker index) to that worker."""
    calls, step = [], EnvPool.step

    def faulty_step(self, actions):
        if len(calls) in plan:
            sig, w = plan[len(calls)]
            os.kill(self.worker_pids()[w], sig)
        calls.append(len(actions))
        return step(self, actions)

    monkeypatch.setattr(EnvPool, "step", faulty_step)
    return calls


def test_crashes_and_hangs_are_logged_and_counted_apart_from_the_turn_limit(monkeypatch, tmp_path, capsys):
    # 4 slots on 2 workers: worker 0 plays slots 0 and 2, worker 1 slots 1 and 3. Step 1: worker 0 crashes at its
    # first turn; step 2: worker 1 hangs (SIGSTOP: it never answers) at its first turn.
    plan = {0: (signal.SIGKILL, 0)}
    calls = _fault_before_pool_steps(monkeypatch, plan)

    def hang_worker_1_at_step_2(trainer, collector):
        if trainer.step == 1:
            plan[len(calls)] = (signal.SIGSTOP, 1)

    _before_step(monkeypatch, hang_worker_1_at_step_2)
    overrides = BASE + ["env.num_workers=2", "env.step_timeout_s=2", "train.total_steps=2"]
    Trainer(load_config(None, overrides), tmp_path / "run", console=Console(width=200)).train()
    rows = [r for r in read_metrics(tmp_path / "run") if "rollout/samples" in r]
    assert [(r["rollout/env_crashes"], r["rollout/env_timeouts"]) for r in rows] == [(2.0, 0.0), (0.0, 2.0)]
    assert rows[0]["rollout/truncated_rate"] <= 0.5 and rows[1]["rollout/truncated_rate"] <= 0.5
    faults = read_faults(tmp_path / "run")
    assert [(f["step"], f["phase"], f["worker"], f["reason"]) for f in faults] == [
        (1, "rollout", 0, "worker_crash"),
        (1, "rollout", 0, "worker_crash"),
        (2, "rollout", 1, "timeout"),
        (2, "rollout", 1, "timeout"),
    ]
    assert all(f["task"].startswith("train/") for f in faults)
    out = capsys.readouterr().out
    assert out.count("env fault:") == 4 and "worker 1 timeout on task train/" in out


def test_a_step_whose_whole_batch_fails_is_retried_then_stops_with_a_checkpoint(monkeypatch, tmp_path):
    # one worker; killed before every pool.step of RL step 2: every episode of every attempt crashes
    killed = {}

    def kill_always_from_step_2(trainer, collector):
        if trainer.step == 1:
            killed["from"] = True

    def step(self, actions):
        if killed:
            os.kill(self.worker_pids()[0], signal.SIGKILL)
        return _REAL_STEP(self, actions)

    monkeypatch.setattr(EnvPool, "step", step)
    _before_step(monkeypatch, kill_always_from_step_2)
    overrides = BASE + ["env.batch_retries=2", "train.save_every=5"]
    trainer = Trainer(load_config(None, overrides), tmp_path / "run", console=QUIET)
    with pytest.raises(EnvBatchFailed, match="every episode of the batch failed .*worker_crash.* 3 attempts") as err:
        trainer.train()
    assert "epo train --resume" in str(err.value) and len(str(err.value).splitlines()) == 1
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt is not None and ckpt.name == "step_000001" and load_checkpoint(ckpt).step == 1
    crashes = [f for f in read_faults(tmp_path / "run") if f["step"] == 2]
    assert len(crashes) == 3 * 4  # 3 attempts x 4 episodes, each logged with its task
    # the checkpoint resumes like the uninterrupted run: same sampler position as after step 1
    monkeypatch.setattr(EnvPool, "step", _REAL_STEP)
    killed.clear()
    resumed = Trainer(load_config(None, overrides), tmp_path / "run", resume=True, console=QUIET)
    resumed.train()
    full = Trainer(load_config(None, overrides), tmp_path / "full", console=QUIET)
    full.train()
    keep = ("rollout/success_rate", "rollout/samples", "actor/pg_loss", "epo/entropy_mean")
    a = [{k: r.get(k) for k in keep} for r in read_metrics(tmp_path / "run")]
    b = [{k: r.get(k) for k in keep} for r in read_metrics(tmp_path / "full")]
    assert a == b


def test_a_step_recovers_when_a_retry_succeeds(monkeypatch, tmp_path):
    calls = _fault_before_pool_steps(monkeypatch, {0: (signal.SIGKILL, 0)})  # only the first attempt of step 1
    overrides = BASE + ["train.total_steps=1", "env.max_turns=1"]
    Trainer(load_config(None, overrides), tmp_path / "run", console=QUIET).train()
    (row,) = [r for r in read_metrics(tmp_path / "run") if "rollout/samples" in r]
    assert row["rollout/batch_retries"] == 1.0 and row["rollout/env_crashes"] == 0.0
    assert calls[:2] == [4, 4]  # the failed attempt, then the retry (the final eval steps after)


def test_a_worker_dying_during_the_resets_loses_no_episode(monkeypatch):
    """A kill racing the revive check: the worker looks alive, then fails the resets; they are retried once."""
    with EnvPool("quest", {"difficulty": "easy"}, num_workers=2) as pool:
        expected = [obs for obs, _ in pool.reset(["train/00000", "train/00001"])]
        os.kill(pool.worker_pids()[1], signal.SIGKILL)
        monkeypatch.setattr(pool, "revive_dead_workers", lambda: [])  # the check ran just before the kill
        out = pool.reset(["train/00000", "train/00001"])
        assert [obs for obs, _ in out] == expected and pool.active_slots == [0, 1]
        assert [(f.worker, f.reason, f.task) for f in pool.drain_faults()] == [(1, "worker_crash", "train/00001")]


def test_a_fault_message_with_brackets_prints_verbatim(tmp_path):
    """Env text is not rich markup: '[red]' and the task's '[iid]' used to vanish from the console line."""
    console = Console(record=True, width=200)
    msg = "bad action ['x'] [red]"
    FaultLog(tmp_path, console.print).record(
        3, "rollout", [dict(worker=0, reason="env_error", task="t[iid]", message=msg)]
    )
    assert console.export_text() == f"env fault: step 3 rollout: worker 0 env_error on task t[iid]: {msg}\n"
    assert read_faults(tmp_path)[0]["message"] == msg


def test_an_env_exception_is_a_fault_with_its_message(monkeypatch, tmp_path, capsys):
    """An exception inside the env ends that episode (env_error) and is logged like a crash: console and
    faults.jsonl carry its message, not only the rollout/env_errors count."""
    from epo.envs.quest.env import QuestEnv

    real_step, calls = QuestEnv.step, []

    def step_raising_once(self, action):
        calls.append(action)
        if len(calls) == 1:
            raise KeyError("door 7 has no key")
        return real_step(self, action)

    monkeypatch.setattr(QuestEnv, "step", step_raising_once)
    overrides = tiny_run("train.total_steps=1")  # inline pool: the env steps in this process
    Trainer(load_config(None, overrides), tmp_path / "run", console=Console(width=200)).train()
    faults = read_faults(tmp_path / "run")
    assert [(f["step"], f["phase"], f["reason"]) for f in faults] == [(1, "rollout", "env_error")]
    assert "KeyError" in faults[0]["message"] and "door 7 has no key" in faults[0]["message"]
    assert faults[0]["task"].startswith("train/")
    assert [r["rollout/env_errors"] for r in read_metrics(tmp_path / "run") if "rollout/samples" in r] == [1.0]
    assert "env fault: step 1 rollout: worker 0 env_error on task train/" in capsys.readouterr().out


def test_a_sampling_error_is_not_called_an_env_fault(monkeypatch, tmp_path):
    """Only env faults stop a step as "fix the env": an error of the model or backend (CUDA out of memory, NaN
    probabilities) keeps its type and traceback."""
    from epo.rollout.backend import HFBackend

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(HFBackend, "generate", out_of_memory)
    with pytest.raises(RuntimeError, match="CUDA out of memory") as info:
        Trainer(load_config(None, tiny_run("train.total_steps=1")), tmp_path / "run", console=QUIET).train()
    assert not isinstance(info.value, EnvBatchFailed)


def test_an_eval_counts_only_turn_limit_endings_as_out_of_turns(monkeypatch):
    """A faulted episode also ends truncated, but it did not run out of turns: eval/<split>/truncated_rate and the
    eval line's "out of turns" count the turn limit only (the fault itself is logged as a fault)."""
    from epo.agent import PromptBuilder
    from epo.config import AgentConfig
    from epo.envs import get_spec
    from epo.envs.quest.env import QuestEnv
    from epo.models import load_model_and_tokenizer
    from epo.rollout.backend import HFBackend
    from epo.rollout.collector import Collector
    from epo.rollout.evaluate import evaluate

    real_step, calls = QuestEnv.step, []

    def step_raising_once(self, action):
        calls.append(action)
        if len(calls) == 1:
            raise KeyError("door 7 has no key")
        return real_step(self, action)

    monkeypatch.setattr(QuestEnv, "step", step_raising_once)
    model, tok = load_model_and_tokenizer("tiny")
    cfg = AgentConfig(action_prefix=True, max_prompt_tokens=1024)
    tasks = get_spec("quest").splits(difficulty="easy")["iid"][:3]
    with EnvPool("quest", {"difficulty": "easy"}, num_workers=1, mode="inline") as pool:
        prompts = PromptBuilder(tok, cfg, list_older_actions=False, env_name="quest")
        collector = Collector(pool, HFBackend(model, tok), prompts, tok, cfg, max_turns=2)  # too few to win
        res = evaluate(collector, "iid", tasks, temperature=1.0, max_new_tokens=4, seed=0)
    assert res.episode_wins == [0, 0, 0]  # 1 ended by the env fault, 2 by the turn limit
    assert res.truncated_rate == pytest.approx(2 / 3)
    assert res.metrics()["eval/iid/truncated_rate"] == pytest.approx(2 / 3)
    assert "out of turns 66.7%" in res.line()


def _fake_eval_collector(faults: list):
    """What evaluate_splits touches of a collector: on_turn, max_turns and pool.drain_faults()."""
    from types import SimpleNamespace

    pool = SimpleNamespace(drain_faults=lambda: [faults.pop(0)] if faults else [])
    return SimpleNamespace(on_turn=None, max_turns=3, pool=pool)


def test_split_evals_report_env_faults_in_the_rl_loops_wording(monkeypatch, tmp_path):
    """`epo eval` (and the warm start's evals) print an eval's env faults as FaultLog does ("env fault: [step k]
    eval <split>: worker W ..."), not as "env worker W ..."; and a split that raises still hands its faults over."""
    from epo.envs.pool import PoolFault
    from epo.rollout.evaluate import EvalResult
    from epo.trainer import split_eval

    cfg = load_config(None, tiny_run())
    res = EvalResult("iid", 1, 0.0, 0.0, 0.9, mean_turns=1.0, invalid_rate=0.0, truncated_rate=0.0)
    monkeypatch.setattr(split_eval, "evaluate_split", lambda *a: res)
    fault = PoolFault(worker=0, reason="timeout", task="iid/00002", message="no answer [red]")
    for rl_step, where in ((None, "eval iid"), (4, "step 4 eval iid")):
        console = Console(record=True, width=300)
        split_eval.evaluate_splits(cfg, _fake_eval_collector([fault]), {"iid": ["iid/00002"]}, ["iid"], 1, console,
                                   "eval", rl_step=rl_step)  # fmt: skip
        lines = [ln for ln in console.export_text().splitlines() if "env fault" in ln]
        assert lines == [f"env fault: {where}: worker 0 timeout on task iid/00002: no answer [red]"]

    def raising(*a):
        raise RuntimeError("backend died")

    monkeypatch.setattr(split_eval, "evaluate_split", raising)
    got = []
    with pytest.raises(RuntimeError, match="backend died"):
        split_eval.evaluate_splits(cfg, _fake_eval_collector([fault]), {"iid": ["x"]}, ["iid"], 1, QUIET, "eval",
                                   on_faults=lambda split, faults: got.append((split, faults)))  # fmt: skip
    assert got == [("iid", [fault])]


def test_keep_faults_drops_the_records_of_stages_run_again(tmp_path):
    from epo.telemetry.faults import keep_faults

    log = FaultLog(tmp_path, QUIET.print)
    for phase in ("eval iid before SFT", "oracle", "eval iid after SFT"):
        log.record(0, phase, [dict(worker=0, reason="timeout", task="t", message="m")])
    with open(tmp_path / "faults.jsonl", "a") as f:
        f.write('{"step": 0, "pha')  # torn last line
    assert keep_faults(tmp_path, lambda rec: rec["phase"].endswith("before SFT")) == 3
    assert [f["phase"] for f in read_faults(tmp_path)] == ["eval iid before SFT"]
    assert keep_faults(tmp_path / "absent", lambda rec: True) == 0
