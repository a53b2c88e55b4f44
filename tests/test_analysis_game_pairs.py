"""experiments/analysis/game_pairs.py (Experiment 12's estimates) on a synthetic sweep: evals paired game by game."""

import importlib.util
import json
import sys
from pathlib import Path

from epo.rollout.evaluate import EvalResult

SCRIPT = Path(__file__).parents[1] / "experiments" / "analysis" / "game_pairs.py"
spec = importlib.util.spec_from_file_location("game_pairs", SCRIPT)
game_pairs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(game_pairs)


def _run(sweep: Path, method: str, seed: int, evals: dict[int, list[int]], entropy: list[float]) -> None:
    run = sweep / method / f"seed{seed}"
    (run / "eval").mkdir(parents=True)
    games = ["g1", "g2", "g1", "g3"]  # g1 drawn twice: its two episodes pair in order
    for step, wins in evals.items():
        result = EvalResult("iid", len(wins), sum(wins) / len(wins), 0.0, 1.0, 1.0, 0.0, 0.0)
        result.episode_tasks, result.episode_wins = games, wins
        result.save(run / "eval" / f"step_{step:06d}_iid.json")
    steps = [
        {
            "step": i + 1,
            "actor/grad_norm": 1.0,
            "epo/entropy_mean": h,
            "rollout/groups_all_won": float(i == 0),
            "rollout/groups_all_lost": 0.0,
        }
        for i, h in enumerate(entropy)
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(s) for s in steps) + "\n")
    (sweep / method / f"seed{seed}.log").write_text("a run's log beside its directory")


def test_gain_and_difference_pair_by_seed_and_game(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    _run(sweep, "grpo", 0, {0: [0, 0, 1, 0], 12: [1, 0, 1, 0]}, [0.1, 0.2])
    _run(sweep, "grpo_epo", 0, {0: [0, 0, 1, 0], 12: [1, 1, 1, 1]}, [0.1, 0.3])
    _run(sweep, "grpo_epo", 1, {0: [0, 0, 0, 0]}, [0.1])  # unfinished, and its grpo run never started
    out_csv = tmp_path / "runs.csv"
    monkeypatch.setattr(sys, "argv", ["game_pairs.py", str(sweep), "--csv", str(out_csv)])
    game_pairs.main()
    out = capsys.readouterr().out
    assert "grpo seed 0: step 0 1/4 = 25.0%" in out and "step 12 2/4 = 50.0%" in out
    assert "gradient-free steps 50%" in out  # the first of 2 steps had every group won
    assert "RL gain, grpo (step 12 - step 0): +25.0 points" in out and "n = 4 pairs" in out
    assert "RL gain, grpo_epo (step 12 - step 0): +75.0 points" in out  # seed 1 has no step-12 eval: left out
    assert "grpo_epo - grpo at step 12: +50.0 points" in out and "n = 4 pairs" in out
    assert "grpo_epo seed 1: step 0 0/4 = 0.0%" in out and "step 12 -" in out
    rows = out_csv.read_text().splitlines()
    assert rows[0].startswith("method,seed,steps,entropy_mean,entropy_var,gradient_free,wins_step0")
    assert len(rows) == 4


def test_each_comparison_is_also_given_over_seeds(tmp_path, monkeypatch, capsys):
    """Pairs within a seed are clustered: the seed-level line has n = seeds, and says when there are too few."""
    sweep = tmp_path / "sweep"
    for seed, (base_end, arm_end) in enumerate([([1, 0, 1, 0], [1, 1, 1, 1]), ([0, 0, 1, 0], [1, 0, 1, 1])]):
        _run(sweep, "grpo", seed, {0: [0, 0, 1, 0], 12: base_end}, [0.1])
        _run(sweep, "grpo_epo", seed, {0: [0, 0, 1, 0], 12: arm_end}, [0.1])
    monkeypatch.setattr(sys, "argv", ["game_pairs.py", str(sweep)])
    game_pairs.main()
    out = capsys.readouterr().out
    # per seed: +50 points (seed 0) and +50 points (seed 1): mean +50, no spread, so no t p; sign-flip p = 0.5
    assert "grpo_epo - grpo at step 12: +50.0 points" in out and "n = 8 pairs" in out
    assert "  over seeds: +50.0 points [+50.0, +50.0], n = 2 seeds, t p = n/a, sign-flip p = 0.500" in out
    (sweep / "grpo" / "seed1" / "eval" / "step_000012_iid.json").unlink()
    game_pairs.main()
    assert "  over seeds: - (fewer than 2 seeds)" in capsys.readouterr().out
