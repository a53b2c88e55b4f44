"""experiments/analysis/late_phase.py, the script behind Experiment 9 (docs/RESULTS.md), on a synthetic sweep."""

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "experiments" / "analysis" / "late_phase.py"
spec = importlib.util.spec_from_file_location("late_phase", SCRIPT)
late_phase = importlib.util.module_from_spec(spec)
spec.loader.exec_module(late_phase)


def _run(
    root: Path, method: str, seed: int, wins_per_step: dict[int, int], episodes: int = 4, invalid: float = 0.1
) -> None:
    """One run's eval files: wins per eval step out of `episodes`, with `invalid` as every eval's invalid-action rate."""
    (root / method / f"seed{seed}" / "eval").mkdir(parents=True)
    for step, wins in wins_per_step.items():
        saved = {"episode_wins": [1] * wins + [0] * (episodes - wins), "success": wins / episodes}
        saved["invalid_rate"] = invalid
        (root / method / f"seed{seed}" / "eval" / f"step_{step:06d}_iid.json").write_text(json.dumps(saved))


def test_late_phase_pairs_finished_runs_and_measures_the_late_changes(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    _run(sweep, "grpo", 0, {0: 1, 2: 2, 4: 2})
    _run(sweep, "grpo_epo", 0, {0: 1, 2: 2, 4: 4})
    _run(sweep, "grpo", 1, {0: 1, 2: 3, 4: 2})
    _run(sweep, "grpo_epo", 1, {0: 1, 2: 3, 4: 3})
    _run(sweep, "grpo", 2, {0: 1, 2: 3, 4: 4})
    _run(sweep, "grpo_epo", 2, {0: 1, 2: 3})  # stopped before its last eval: the pair is left out
    monkeypatch.setattr(sys, "argv", ["late_phase.py", str(sweep), "--steps", "0", "2", "4"])
    late_phase.main()
    out = capsys.readouterr().out
    assert "2 finished pairs: seeds [0, 1]" in out
    assert "grpo pooled: step 0: 2/8 = 25.0%" in out and "step 4: 4/8 = 50.0%" in out
    # GRPO's change step 2 -> 4: 0 and -25 points; EPO - GRPO at step 4: +50 and +25 points
    assert "Q1 grpo change step 2 -> 4: -12.5 points" in out
    assert "Q2 grpo_epo - grpo at step 4: +37.5 points" in out
    assert "in the change step 2 -> 4: +37.5 points" in out
