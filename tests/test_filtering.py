"""Dynamic sampling (rollout.filter_groups): which groups count as mixed, how rounds refill the batch, and a trainer
step that keeps only mixed groups."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from epo.config import ConfigError, load_config
from epo.rollout.collector import Collector, RolloutResult
from epo.rollout.filtering import concat, dynamic_sample, mixed_groups
from epo.rollout.types import Trajectory, TurnSample
from epo.telemetry.metrics import read_metrics
from epo.testing import tiny_run
from epo.trainer.trainer import Trainer

QUIET = Console(quiet=True)


def _rollout(returns_per_group: list[list[float]], tasks: list[str] | None = None) -> RolloutResult:
    """One collection: group g's trajectory i has return returns_per_group[g][i] and two turn samples."""
    samples, trajs = [], []
    for g, returns in enumerate(returns_per_group):
        for r in returns:
            tid = len(trajs)
            task = tasks[g] if tasks else f"t{g}"
            trajs.append(Trajectory(tid, g, task, "x", length=2, won=r > 0, episode_return=r))
            samples += [TurnSample([1], [2], k, tid, g, reward=r) for k in range(2)]
    return RolloutResult(samples, trajs, {"gen_tokens": 10.0, "gen_s": 2.0, "gen_tokens_per_s": 5.0})


def test_mixed_groups_are_those_whose_returns_differ():
    rollout = _rollout([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [10.0, 10.0 + 1e-9], [0.0, 0.5]])
    assert mixed_groups(rollout) == [1, 4]  # all lost, all won and a rounding difference are one outcome


def test_concat_renumbers_ids_densely_and_leaves_the_parts_alone():
    a, b = _rollout([[0.0, 10.0]]), _rollout([[10.0, 10.0], [0.0, 10.0]])
    both = concat([a, b])
    assert [t.group_id for t in both.trajectories] == [0, 0, 1, 1, 2, 2]
    assert [t.traj_id for t in both.trajectories] == [0, 1, 2, 3, 4, 5]
    assert [s.traj_id for s in both.samples] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [t.group_id for t in b.trajectories] == [0, 0, 1, 1]  # the part is unchanged
    assert both.stats["gen_tokens"] == 20.0 and both.stats["gen_tokens_per_s"] == 5.0


def _script(rounds: list[list[list[float]]]):
    """A collect(tasks, round) that plays `rounds[round]` (its first len(tasks) groups) and records the tasks."""
    asked: list[list[str]] = []

    def collect(tasks, round_):
        asked.append(list(tasks))
        return _rollout(rounds[round_][: len(tasks)], tasks)

    return collect, asked


def _sampler():
    counter = iter(range(1000))
    return lambda n: [f"task{next(counter)}" for _ in range(n)]


def test_rounds_refill_only_the_missing_groups_with_fresh_tasks():
    collect, asked = _script(
        [
            [[0.0, 0.0], [0.0, 10.0], [10.0, 10.0]],  # round 0: 1 of 3 groups mixed
            [[10.0, 0.0], [0.0, 0.0]],  # round 1: 1 of the 2 missing
            [[0.0, 10.0]],  # round 2: the last one
        ]
    )
    batch, played, stats = dynamic_sample(collect, _sampler(), n_groups=3, max_rounds=4)
    assert asked == [["task0", "task1", "task2"], ["task3", "task4"], ["task5"]]
    assert (stats.rounds, stats.groups_kept, stats.groups_played, stats.episodes_played) == (3, 3, 6, 12)
    assert [t.task_id for t in batch.trajectories] == ["task1", "task1", "task3", "task3", "task5", "task5"]
    assert sorted({s.group_id for s in batch.samples}) == [0, 1, 2] and len(batch.samples) == 12
    assert len(played.trajectories) == 12


def test_a_round_with_more_mixed_groups_than_needed_keeps_the_first():
    collect, _ = _script([[[0.0, 10.0], [10.0, 0.0], [0.0, 10.0]]])
    batch, _, stats = dynamic_sample(collect, _sampler(), n_groups=2, max_rounds=1)
    assert (stats.rounds, stats.groups_kept) == (1, 2)
    assert [t.task_id for t in batch.trajectories] == ["task0", "task0", "task1", "task1"]


def test_no_mixed_group_in_any_round_trains_on_the_last_round_unfiltered():
    collect, asked = _script([[[0.0, 0.0], [10.0, 10.0]], [[0.0, 0.0], [0.0, 0.0]]])
    batch, played, stats = dynamic_sample(collect, _sampler(), n_groups=2, max_rounds=2)
    assert asked == [["task0", "task1"], ["task2", "task3"]]
    assert (stats.rounds, stats.groups_kept, stats.episodes_played) == (2, 0, 8)
    assert [t.task_id for t in batch.trajectories] == ["task2", "task2", "task3", "task3"]


def test_too_few_mixed_groups_after_the_last_round_trains_on_those_found():
    collect, _ = _script([[[0.0, 0.0], [0.0, 10.0]], [[0.0, 0.0]]])
    batch, _, stats = dynamic_sample(collect, _sampler(), n_groups=2, max_rounds=2)
    assert (stats.rounds, stats.groups_kept) == (2, 1)
    assert [t.task_id for t in batch.trajectories] == ["task1", "task1"]


def test_filter_groups_is_a_grpo_option():
    with pytest.raises(ConfigError, match="rollout.filter_groups"):
        load_config(None, tiny_run("algo.name=ppo", "rollout.filter_groups=true"))
    with pytest.raises(ConfigError, match="rollout.filter_max_rounds"):
        load_config(None, tiny_run("rollout.filter_groups=true", "rollout.filter_max_rounds=0"))
    with pytest.raises(ConfigError, match="only used with rollout.filter_groups=true"):
        load_config(None, tiny_run("rollout.filter_max_rounds=2"))  # would be a silent no-op


BASE = tiny_run(
    "algo.name=grpo",
    "epo.mode=off",
    "rollout.tasks_per_step=2",
    "rollout.group_size=2",
    "rollout.filter_groups=true",
    "rollout.filter_max_rounds=3",
    "train.eval_at_start=false",
    "train.eval_every=0",
    "train.mini_batch_size=64",
    "train.save_rollouts=true",
    "agent.invalid_penalty=0",  # outcome advantages only: a group that all lost has advantage 0
)


def test_a_trainer_step_updates_on_the_mixed_groups_only(tmp_path, monkeypatch):
    """The tiny random policy never wins, so the test makes the first trajectory of each collection's first group
    win: every collection then has exactly one mixed group, and 2 groups take 2 rounds (2 tasks, then 1)."""
    original = Collector.collect

    def one_winner(self, tasks, group_size, params, **kwargs):
        rollout = original(self, tasks, group_size, params, **kwargs)
        if group_size == 1:  # the final eval: left as played
            return rollout
        first = rollout.trajectories[0]
        first.won, first.episode_return = True, 10.0
        for s in rollout.samples:
            if s.traj_id == first.traj_id:
                s.reward += 10.0
        return rollout

    monkeypatch.setattr(Collector, "collect", one_winner)
    cfg = load_config(None, BASE + ["train.total_steps=1"])
    Trainer(cfg, tmp_path / "run", console=QUIET).train()
    (row,) = [r for r in read_metrics(tmp_path / "run") if "actor/pg_loss" in r]
    assert (row["rollout/filter_rounds"], row["rollout/filter_groups_kept"]) == (2.0, 2.0)
    assert row["rollout/filter_episodes_played"] == 6.0  # 2 groups of 2, then 1 group of 2
    assert row["rollout/success_rate"] == pytest.approx(2 / 6)  # over every episode played
    assert row["actor/grad_norm"] > 0  # both kept groups carry an outcome advantage
    samples = json.loads((tmp_path / "run" / "rollouts" / "step_000001.json").read_text())["samples"]
    assert row["rollout/samples"] == len(samples)
    assert sorted({s["group_id"] for s in samples}) == [0, 1]
    rewards = {}
    for s in samples:
        rewards.setdefault(s["group_id"], set()).add(s["reward"] >= 10.0)
    assert all(outcomes == {True, False} for outcomes in rewards.values())  # each kept group won and lost


def test_a_step_that_finds_no_mixed_group_trains_on_its_last_collection(tmp_path):
    cfg = load_config(None, BASE + ["train.total_steps=1", "rollout.filter_max_rounds=2"])
    Trainer(cfg, tmp_path / "run", console=QUIET).train()
    (row,) = [r for r in read_metrics(tmp_path / "run") if "actor/pg_loss" in r]
    assert (row["rollout/filter_rounds"], row["rollout/filter_groups_kept"]) == (2.0, 0.0)
    assert row["rollout/filter_episodes_played"] == 8.0
    assert row["rollout/groups_all_lost"] == 1.0
    assert row["actor/grad_norm"] == 0.0  # GRPO without filtering would learn nothing from it either
