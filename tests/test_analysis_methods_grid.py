"""experiments/analysis/methods_grid.py, the script behind Experiment 10 (docs/RESULTS.md), on a synthetic sweep."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from test_analysis_late_phase import _run

SCRIPT = Path(__file__).parents[1] / "experiments" / "analysis" / "methods_grid.py"
spec = importlib.util.spec_from_file_location("methods_grid", SCRIPT)
methods_grid = importlib.util.module_from_spec(spec)
spec.loader.exec_module(methods_grid)


def _sweep(root: Path) -> Path:
    sweep = root / "sweep"
    sweep.mkdir()
    grid = {"seeds": [0, 1, 2], "baseline": "grpo", "methods": {"grpo": [], "bonus": [], "ppo": []}}
    (sweep / "sweep.yaml").write_text(yaml.safe_dump(grid))
    _run(sweep, "grpo", 0, {0: 1, 2: 2, 4: 2})
    _run(sweep, "bonus", 0, {0: 1, 2: 3, 4: 4})
    _run(sweep, "ppo", 0, {0: 1, 2: 0, 4: 0}, invalid=0.95)  # collapsed: nothing won, almost every action invalid
    _run(sweep, "grpo", 1, {0: 2, 2: 2, 4: 3})
    _run(sweep, "bonus", 1, {0: 2, 2: 4, 4: 4})
    _run(sweep, "ppo", 1, {0: 2, 2: 0, 4: 3}, invalid=0.5)  # a 0% eval with valid actions is not a collapse
    _run(sweep, "grpo", 2, {0: 1, 2: 2, 4: 2})
    _run(sweep, "bonus", 2, {0: 1, 2: 2, 4: 2})  # seed 2's ppo never ran: the seed is not whole
    for seed, ev in ((0, [0.9, -0.1, 0.0, 0.2]), (1, [0.9, 0.3, 0.5, 0.4])):  # steps 1-4; the median from step 2
        rows = [{"step": i + 1, "critic/explained_var": v} for i, v in enumerate(ev)]
        (sweep / "ppo" / f"seed{seed}" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    for method in ("grpo", "bonus"):
        for seed in (0, 1):
            (sweep / method / f"seed{seed}" / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    return sweep


def test_methods_grid_uses_whole_seeds_and_compares_every_method_with_the_baseline(tmp_path, monkeypatch, capsys):
    sweep = _sweep(tmp_path)
    out_csv = tmp_path / "evals.csv"
    argv = ["methods_grid.py", str(sweep), "--steps", "0", "2", "4", "--succ-steps", "2", "4", "--pair", "bonus:ppo"]
    argv += ["--median", "critic/explained_var:2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--csv", str(out_csv)])
    methods_grid.main()
    out = capsys.readouterr().out
    assert "2 whole seeds (every method at every eval): [0, 1]" in out
    # pooled over seeds 0-1: grpo 3/8 at step 0, 5/8 at step 4; RL gain per seed +25 and +25 points (no spread)
    assert "| grpo | 37.5% [" in out and "| 62.5% [" in out and "| +25.0 [+25.0, +25.0] | 0/2 |" in out
    assert "| ppo |" in out and "| 1/2 |" in out.split("| ppo |")[1].splitlines()[0]
    # bonus - grpo at step 4: +50 and +25 points; Succ. (mean of steps 2 and 4): +37.5 and +37.5 points
    assert "bonus - grpo, step 4: +37.5 points" in out
    assert "bonus - grpo, Succ.: +37.5 points [+37.5, +37.5] over 2 pairs, t p = n/a" in out
    assert "bonus - ppo, Succ.*: +50.0 points" in out  # best evals: bonus 100, 100; ppo 25, 75
    assert "seed 1: bonus 50 100 100, grpo 50 50 75, ppo 50 0 75" in out  # the grid file's method order
    # medians over steps 2-4: seed 0 0.0, seed 1 0.4 -> 0.2 over seeds; GRPO logs no critic
    assert "ppo: 0.2 (runs: 0, 0.4)" in out and "grpo: not logged" in out
    rows = out_csv.read_text().splitlines()
    assert rows[0] == "seed,method,wins_step0,wins_step2,wins_step4,episodes,collapsed"
    assert "0,ppo,1,0,0,4,1" in rows and "1,ppo,2,0,3,4,0" in rows and len(rows) == 7


def test_methods_grid_refuses_an_unknown_method(tmp_path, monkeypatch):
    sweep = _sweep(tmp_path)
    monkeypatch.setattr(sys, "argv", ["methods_grid.py", str(sweep), "--steps", "0", "2", "4", "--pair", "sac:grpo"])
    with pytest.raises(SystemExit, match="unknown methods"):
        methods_grid.main()
