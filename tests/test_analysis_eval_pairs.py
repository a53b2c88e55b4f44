"""experiments/analysis/eval_pairs.py: two evals of the same games, paired with an exact McNemar test."""

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from epo.rollout.evaluate import EvalResult

SCRIPT = Path(__file__).parents[1] / "experiments" / "analysis" / "eval_pairs.py"
spec = importlib.util.spec_from_file_location("eval_pairs", SCRIPT)
eval_pairs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eval_pairs)


def _result(split: str, tasks: list[str], wins: list[int]) -> EvalResult:
    n = len(wins)
    return EvalResult(split, n, sum(wins) / n, 0.0, 1.0, 10.0, 0.0, 0.0, episode_tasks=tasks, episode_wins=wins)


def test_a_run_dirs_step_0_eval_against_an_epo_eval_json(tmp_path, capsys):
    tasks = [f"g{i}" for i in range(8)]
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    for split, wins in (("iid", [0] * 8), ("ood", [1, 0, 0, 0, 0, 0, 0, 0])):
        (run / "eval" / f"step_000000_{split}.json").write_text(json.dumps(asdict(_result(split, tasks, wins))))
    variant = {"iid": [1, 1, 0, 1, 0, 0, 1, 0], "ood": [0, 1, 0, 0, 0, 0, 0, 0]}
    splits = {s: asdict(_result(s, tasks, w)) for s, w in variant.items()}
    (tmp_path / "v.json").write_text(json.dumps({"provenance": {}, "splits": splits}))

    result = eval_pairs.main([str(run), str(tmp_path / "v.json"), "--json", str(tmp_path / "out.json")])
    assert (result["iid"]["base_wins"], result["iid"]["variant_wins"]) == (0, 4)
    assert result["iid"]["mcnemar_p_two_sided"] == pytest.approx(2 / 16)  # 4 discordant games, all one way
    assert (result["ood"]["only_base"], result["ood"]["only_variant"]) == (1, 1)
    assert result["ood"]["mcnemar_p_two_sided"] == 1.0
    assert result["all"]["games"] == 16 and result["all"]["only_variant"] == 5 and result["all"]["only_base"] == 1
    assert result["all"]["mcnemar_p_two_sided"] == pytest.approx(2 * 7 / 64)  # P(X <= 1), X ~ Bin(6, 1/2), doubled
    assert json.loads((tmp_path / "out.json").read_text()) == result
    assert "variant 4/8" in capsys.readouterr().out


def test_evals_of_different_games_are_refused(tmp_path):
    a = {"iid": _result("iid", ["g1", "g2"], [0, 1])}
    with pytest.raises(SystemExit, match="different games"):
        eval_pairs.pair_evals(a, {"iid": _result("iid", ["g2", "g1"], [0, 1])})
    with pytest.raises(SystemExit, match="no split"):
        eval_pairs.pair_evals(a, {"ood": _result("ood", ["g1", "g2"], [0, 1])})
