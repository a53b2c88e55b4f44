"""docs/METRICS.md and the code agree on what a metric is; report aliases map old names onto current ones."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from epo.report.data import ALIASES, RunData
from epo.rollout.collector import episode_score, prompt_fit_metrics
from epo.rollout.evaluate import summarize
from epo.rollout.types import Trajectory
from epo.trainer.allocator import reset_peak_rss
from epo.trainer.trainer import _peak_memory, _rollout_metrics

DOCS = Path(__file__).resolve().parents[1] / "docs" / "METRICS.md"


def _doc_row(key: str) -> str:
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith(f"| `{key}` |")]
    assert len(rows) == 1, f"docs/METRICS.md: one table row for {key}"
    return rows[0]


def test_return_mean_is_win_reward_times_won_without_penalties():
    trajs = [
        Trajectory(0, 0, "a", "x", length=4, won=True, episode_return=10.0, invalid_turns=3),
        Trajectory(1, 0, "a", "x", length=5, won=False, episode_return=0.0, invalid_turns=5),
    ]
    metrics = _rollout_metrics(SimpleNamespace(trajectories=trajs, samples=[]))
    assert metrics["rollout/return_mean"] == 5.0  # the 8 invalid turns' penalties are not subtracted
    row = _doc_row("rollout/return_mean")
    assert "won" in row and "not part of R" in row


def test_aliases_map_other_names_to_the_key():
    for key, names in ALIASES.items():
        assert key not in names, f"ALIASES[{key!r}] lists the key itself"
    run = RunData(Path("."), "old", records=[{"step": 1, "critic/explained_variance": 0.25}])
    steps, values = run.series("critic/explained_var")
    assert steps.tolist() == [1] and values.tolist() == [0.25]


def test_group_outcomes_count_groups_that_all_lost_or_all_won():
    def traj(i, group, won):
        return Trajectory(i, group, str(group), "x", length=3, won=won, episode_return=10.0 * won)

    trajs = [traj(0, 0, True), traj(1, 0, False), traj(2, 1, False), traj(3, 1, False), traj(4, 2, True)]
    trajs += [traj(5, 3, True), traj(6, 3, True)]
    metrics = _rollout_metrics(SimpleNamespace(trajectories=trajs, samples=[]))
    # groups 0 (mixed), 1 (all lost), 3 (all won); group 2 has one trajectory and compares nothing
    assert metrics["rollout/groups_all_lost"] == metrics["rollout/groups_all_won"] == 1 / 3
    for key in ("rollout/groups_all_lost", "rollout/groups_all_won", "actor/adv_shaping_share"):
        assert "GRPO" in _doc_row(key)


def test_peak_memory_is_logged_on_cuda_only_and_reset_each_step(monkeypatch):
    monkeypatch.setattr("epo.trainer.trainer.memory_metrics", lambda: {})  # host memory: the test below
    assert _peak_memory(torch.device("cpu")) == {}
    peaks, resets = [3 * 2**30], []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: peaks[-1])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: resets.append(device))
    assert _peak_memory(torch.device("cuda", 0)) == {"perf/max_memory_allocated_gb": 3.0}
    assert resets == [torch.device("cuda", 0)]  # the next step's peak is its own
    assert "CUDA only" in _doc_row("perf/max_memory_allocated_gb")


@pytest.mark.skipif(not reset_peak_rss(), reason="no writable /proc/self/clear_refs (not Linux): no per-step RSS peak")
def test_host_memory_peak_is_the_steps_own():
    cpu = torch.device("cpu")
    _peak_memory(cpu)  # starts this "step"
    spike = b"x" * (300 * 2**20)  # 300 MB touched, then freed (glibc returns a mapped chunk at free)
    del spike
    during = _peak_memory(cpu)
    after = _peak_memory(cpu)  # a step without the spike
    assert during["perf/peak_rss_gb"] - after["perf/peak_rss_gb"] > 0.25
    assert after["perf/rss_gb"] <= after["perf/peak_rss_gb"] + 0.01
    for key in ("perf/rss_gb", "perf/peak_rss_gb", "perf/malloc_heap_free_gb"):
        assert "this process" in _doc_row(key)


def test_prompt_truncation_rates_are_per_turn_and_documented():
    trajs = [
        Trajectory(0, 0, "a", "x", length=6, shortened_prompts=3, actions_cut_prompts=1),
        Trajectory(1, 0, "a", "x", length=2),
    ]
    metrics = prompt_fit_metrics(trajs)
    assert metrics == {"rollout/prompt_shortened_rate": 3 / 8, "rollout/prompt_actions_cut_rate": 1 / 8}
    logged = _rollout_metrics(SimpleNamespace(trajectories=trajs, samples=[]))  # what each RL step logs
    assert {k: logged[k] for k in metrics} == metrics
    for key in metrics:
        assert "agent.max_prompt_tokens" in _doc_row(key)


def test_eval_truncated_rate_is_logged_and_documented():
    trajs = [Trajectory(0, 0, "a", "x", length=3, truncated=True, truncated_reason="max_turns")]
    trajs.append(Trajectory(1, 1, "b", "x", length=1, truncated=True, truncated_reason="worker_crash"))
    assert summarize("iid", trajs).metrics()["eval/iid/truncated_rate"] == 0.5
    assert "env fault" in _doc_row("eval/<split>/truncated_rate")


def test_eval_prompt_shortened_rate_is_logged_shown_and_documented():
    trajs = [Trajectory(0, 0, "a", "x", length=6, shortened_prompts=3), Trajectory(1, 0, "a", "x", length=2)]
    result = summarize("iid", trajs)
    assert result.metrics()["eval/iid/prompt_shortened_rate"] == 3 / 8
    assert "prompts shortened 37.5%" in result.line()
    assert "prompts shortened" not in summarize("iid", trajs[1:]).line()  # said only when it happened
    assert "agent.max_prompt_tokens" in _doc_row("eval/<split>/prompt_shortened_rate")


def test_progress_score_is_logged_shown_and_documented_where_the_env_has_one():
    trajs = [Trajectory(0, 0, "a", "x", length=3, score=50.0), Trajectory(1, 0, "a", "x", length=2, score=10.0)]
    trajs.append(Trajectory(2, 1, "b", "x", length=1))  # ended by a fault before its first step: counts 0
    logged = _rollout_metrics(SimpleNamespace(trajectories=trajs, samples=[]))
    assert logged["rollout/score_mean"] == 20.0
    result = summarize("iid", trajs)
    assert result.metrics()["eval/iid/score_mean"] == 20.0 and result.episode_scores == [50.0, 10.0, 0.0]
    assert result.score_ci_low < 20.0 < result.score_ci_high  # Student-t over the 3 episodes
    assert result.per_type["x"]["score"] == 20.0  # `epo eval`'s per-task-type table shows it too
    assert f"mean score 20.0 [95% CI {result.score_ci_low:.1f}-{result.score_ci_high:.1f}]" in result.line()
    no_score = [Trajectory(0, 0, "a", "x", length=3)]  # quest, ALFWorld: no metric, nothing said
    assert "rollout/score_mean" not in _rollout_metrics(SimpleNamespace(trajectories=no_score, samples=[]))
    assert not any("score" in k for k in summarize("iid", no_score).metrics())
    assert "score" not in summarize("iid", no_score).line()
    assert episode_score(-100) == 0.0 and episode_score(35) == 35.0  # a failed task's negative score counts 0
    assert "ScienceWorld" in _doc_row("rollout/score_mean") and "episode_scores" in _doc_row("eval/<split>/score_mean")
