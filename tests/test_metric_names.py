"""docs/METRICS.md and the code agree on what a metric is; report aliases map old names onto current ones."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from epo.report.data import ALIASES, RunData
from epo.rollout.types import Trajectory
from epo.trainer.trainer import _rollout_metrics

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
