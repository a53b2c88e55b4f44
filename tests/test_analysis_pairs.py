"""experiments/analysis/pairs.py, the script behind RESULTS.md's cross-experiment tests, on a synthetic sweep."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from scipy import stats

SCRIPT = Path(__file__).parents[1] / "experiments" / "analysis" / "pairs.py"
spec = importlib.util.spec_from_file_location("pairs", SCRIPT)
pairs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pairs)


def test_spearman_matches_scipy_and_its_exact_p_counts_permutations():
    x, y = [0.1, 0.5, 0.3, 0.9, 0.7], [1.0, 3.0, 2.0, 5.0, 4.0]  # same order: rho = 1
    rho, p = pairs.spearman_p(x, y)
    assert rho == pytest.approx(stats.spearmanr(x, y).statistic)
    assert p == pytest.approx(1 / 120)  # only the identity permutation reaches rho = 1
    rho, p = pairs.spearman_p(x, [-v for v in y])
    assert rho == pytest.approx(-1.0) and p == pytest.approx(1.0)


def _run(root: Path, method: str, seed: int, wins: list[int], uniform: list[bool]) -> None:
    run = root / method / f"seed{seed}"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "step_000030_iid.json").write_text(json.dumps({"episode_wins": wins}))
    steps = [{"actor/grad_norm": 0.0 if u else 1.0, "rollout/groups_all_won": 1.0 if u else 0.0} for u in uniform]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(s) for s in steps) + "\n")


def test_main_pairs_runs_by_seed_and_drops_unfinished_pairs(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    _run(sweep, "grpo", 0, [1, 0, 0, 0], [True, True, False, False])
    _run(sweep, "grpo_epo", 0, [1, 1, 1, 0], [False] * 4)
    _run(sweep, "grpo", 1, [1, 1, 0, 0], [False] * 4)
    _run(sweep, "grpo_epo", 1, [1, 1, 0, 0], [False] * 4)
    _run(sweep, "grpo", 2, [1, 1, 1, 1], [False] * 4)  # its grpo_epo run never finished
    (sweep / "grpo" / "seed0.log").write_text("a run's log sits beside its directory")
    screening = tmp_path / "screening.csv"
    screening.write_text("first_iid,wins,episodes,seed,wins_per_game\n12,4,8,0,4 0\n16,4,8,1,2 2\n20,8,8,,4 4\n")
    monkeypatch.setattr(sys, "argv", ["pairs.py", str(sweep), "--screening", str(screening)])
    pairs.main()
    out = capsys.readouterr().out
    assert "sweep/seed0: grpo 1/4, grpo_epo 3/4, diff +50.0 points, grpo uniform steps 50%" in out
    assert "sweep/seed2: not finished, pair dropped" in out
    assert "step 30, 2 pairs: +25.0 points" in out and "(one-sided, > 0: " in out
    # expected one-outcome share: seed 0 games at p = 1 and 0 -> 1.0; seed 1 both at p = 0.5 -> 2 * 0.5**4 = 0.125
    assert "H19b predictor per pair: seed0 1.00, seed1 0.12" in out
