"""Before/after significance: McNemar's exact test for paired evals (same tasks), Fisher's for unpaired ones."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from rich.console import Console

from epo.report.data import BEFORE_AFTER_FILE
from epo.report.summary import _before_after_section
from epo.rollout.evaluate import fisher_one_sided, gain_test, mcnemar_one_sided, summarize
from epo.rollout.types import Trajectory
from epo.trainer.pipeline import _print_before_after


def test_mcnemar_exact_by_hand():
    assert mcnemar_one_sided(5, 0) == pytest.approx(1 / 32)  # all 5 discordant pairs improved: 0.5^5
    assert mcnemar_one_sided(8, 2) == pytest.approx((45 + 10 + 1) / 1024)  # P(X >= 8), X ~ Bin(10, 1/2)
    assert mcnemar_one_sided(6, 1) == pytest.approx((7 + 1) / 128)  # scipy binomtest(6, 7, alternative=greater)
    assert mcnemar_one_sided(0, 3) == 1.0
    assert mcnemar_one_sided(0, 0) == 1.0  # no discordant pair: no evidence


def _eval(split: str, tasks: list[str], wins: list[int]):
    trajs = [
        Trajectory(traj_id=k, group_id=k, task_id=t, task_type="x", length=3, won=bool(w))
        for k, (t, w) in enumerate(zip(tasks, wins))
    ]
    return summarize(split, trajs)


def test_eval_results_carry_per_task_outcomes():
    res = _eval("iid", ["a", "b", "c"], [1, 0, 1])
    assert res.episode_tasks == ["a", "b", "c"] and res.episode_wins == [1, 0, 1]


def test_gain_test_pairs_the_same_tasks():
    tasks = [f"t{k}" for k in range(8)]
    # 2 -> 5 wins: 4 tasks gained, 1 lost, 1 won both times
    before = _eval("iid", tasks, [1, 1, 0, 0, 0, 0, 0, 0])
    after = _eval("iid", tasks, [1, 0, 1, 1, 1, 1, 0, 0])
    p, test = gain_test(before, after)
    assert test == "McNemar" and p == pytest.approx(mcnemar_one_sided(4, 1)) and p == pytest.approx(6 / 32)
    assert p != pytest.approx(fisher_one_sided(2, 8, 5, 8))
    other = _eval("iid", [f"u{k}" for k in range(8)], after.episode_wins)  # different tasks: unpaired
    assert gain_test(before, other) == (pytest.approx(fisher_one_sided(2, 8, 5, 8)), "Fisher")


def test_before_after_tables_name_the_test(tmp_path):
    tasks = ["a", "b", "c", "d"]
    start, end = _eval("iid", tasks, [0, 0, 0, 1]), _eval("iid", tasks, [1, 1, 1, 1])
    zero_shot = _eval("iid", ["x", "y", "z", "w"], [0, 0, 0, 0])
    result = SimpleNamespace(evals={0: {"iid": start}, 2: {"iid": end}}, run_dir=tmp_path)
    console = Console(record=True, width=200)
    _print_before_after(console, {"iid": zero_shot}, result)
    printed = console.export_text()
    assert "p=0.125, McNemar" in printed and "Fisher" in printed
    rows = json.loads((tmp_path / BEFORE_AFTER_FILE).read_text())["iid"]
    assert rows["test_rl_gain"] == "McNemar" and rows["p_rl_gain"] == pytest.approx(1 / 8)
    assert rows["test_total_gain"] == "Fisher"
    lines = _before_after_section([SimpleNamespace(label="run", before_after={"iid": rows})])
    table = "\n".join(lines)
    assert "0.125 (McNemar)" in table and "(Fisher)" in table and "McNemar (paired" in table


def test_before_after_tables_carry_the_progress_score_where_the_env_has_one(tmp_path):
    tasks = ["a", "b"]
    start = summarize(
        "iid", [Trajectory(k, k, t, "x", length=3, score=s) for k, (t, s) in enumerate(zip(tasks, [0, 20]))]
    )
    end = summarize(
        "iid", [Trajectory(k, k, t, "x", length=3, score=s) for k, (t, s) in enumerate(zip(tasks, [40, 60]))]
    )
    result = SimpleNamespace(evals={0: {"iid": start}, 2: {"iid": end}}, run_dir=tmp_path)
    console = Console(record=True, width=200)
    _print_before_after(console, {}, result)
    printed = console.export_text()
    assert "score 10.0" in printed and "score 50.0" in printed and "progress score" in printed
    rows = json.loads((tmp_path / BEFORE_AFTER_FILE).read_text())["iid"]
    assert rows["end_of_rl"]["mean_score"] == 50.0 and len(rows["end_of_rl"]["score_ci"]) == 2
    table = "\n".join(_before_after_section([SimpleNamespace(label="run", before_after={"iid": rows})]))
    assert "n=2, score 10.0" in table and "n=2, score 50.0" in table
    assert _eval("iid", tasks, [0, 1]).mean_score is None  # quest, ALFWorld: no score, no column text
