"""experiments/analysis/replay_monitor.py (Experiment 10's monitor replay, docs/RESULTS.md) on synthetic runs."""

import importlib.util
import json
from pathlib import Path

import yaml

SCRIPT = Path(__file__).parents[1] / "experiments" / "analysis" / "replay_monitor.py"
spec = importlib.util.spec_from_file_location("replay_monitor", SCRIPT)
replay_monitor = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replay_monitor)


def _run(sweep: Path, name: str, entropy: list[float], success: float, logged: list[str]) -> None:
    run = sweep / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"total_steps": len(entropy)}}))
    rows = [{"step": 0, "eval/iid/success": 0.5}]  # an eval-only row: no training metrics, not replayed
    rows += [
        {"step": k + 1, "actor/entropy": h, "epo/entropy_mean": h, "rollout/success_rate": success}
        for k, h in enumerate(entropy)
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (run / "warnings.jsonl").write_text("".join(json.dumps({"kind": k, "step": 1}) + "\n" for k in logged))


def test_replay_names_an_early_collapse_and_leaves_a_steady_run_alone(tmp_path, capsys):
    steady = [0.2] * 40
    collapse = [0.2] * 2 + [0.05] * 38  # falls to a quarter of its start in the early phase while nothing is won
    _run(tmp_path, "grpo/seed0", steady, success=0.6, logged=["late_oscillation"])
    _run(tmp_path, "grpo/seed1", collapse, success=0.0, logged=[])

    counts = replay_monitor.main([str(tmp_path)])

    assert counts["now"]["early_collapse"] == 1
    assert counts["now"]["late_oscillation"] == 0
    assert counts["logged"]["late_oscillation"] == 1
    out = capsys.readouterr().out
    assert "grpo/seed0: now - | logged late_oscillation" in out
    assert "grpo/seed1: now early_collapse@" in out
    assert "late_oscillation: 0 of 2 runs now, 1 as logged" in out
