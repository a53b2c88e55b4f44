"""`epo report` on damaged metrics (torn lines, duplicate steps) and on runs with env faults."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from epo.cli import app
from epo.report.data import load_run


def _write_run(run_dir, lines: list[str], faults: list[dict] = ()) -> None:
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    if faults:
        (run_dir / "faults.jsonl").write_text("".join(json.dumps(f) + "\n" for f in faults))


def _rec(step: int, **kw) -> str:
    return json.dumps({"step": step, "rollout/success_rate": 0.5, "epo/entropy_mean": 1.0, **kw})


def test_torn_lines_and_duplicate_steps_give_one_warning_each(tmp_path):
    run = tmp_path / "run"
    lines = [
        json.dumps({"step": 0, "eval/iid/success": 0.0}),  # eval record and training record of step ... 0 and 1:
        _rec(1),
        _rec(2, **{"rollout/success_rate": 0.25}),
        '{"step": 3, "rollout/succ',  # torn (a crash mid-write), then the run went on
        _rec(3),
        _rec(2, **{"rollout/success_rate": 0.75}),  # a second writer logged step 2 again
        json.dumps({"step": 3, "eval/iid/success": 1.0}),  # disjoint keys: merged, not a duplicate
        '{"step": 4, "roll',  # torn last line
    ]
    _write_run(run, lines)
    data = load_run(run)
    assert [r["step"] for r in data.records] == [0, 1, 2, 3]
    assert data.records[2]["rollout/success_rate"] == 0.75  # the last record of a duplicated step
    assert data.records[3]["eval/iid/success"] == 1.0 and data.records[3]["rollout/success_rate"] == 0.5
    assert len(data.issues) == 3
    assert "metrics.jsonl:4: torn" in data.issues[0] and "metrics.jsonl:8: torn" in data.issues[1]
    assert "step 2 logged 2 times (lines 3, 6)" in data.issues[2]
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warned) == 3 and "step 2 logged 2 times" in warned[2]
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "## Data warnings" in summary and summary.count("torn or malformed line") == 2


def test_report_shows_env_faults(tmp_path):
    run = tmp_path / "run"
    crash = {"step": 1, "phase": "rollout", "worker": 0, "reason": "worker_crash", "task": "train/00003",
             "message": "worker 0 died (exit code -9; EOFError)"}  # fmt: skip
    hang = {**crash, "step": 2, "worker": 1, "reason": "timeout", "message": "worker 1 did not answer 'step'"}
    counts = [
        {"rollout/env_crashes": 2.0, "rollout/env_timeouts": 0.0, "rollout/env_errors": 0.0},
        {"rollout/env_crashes": 0.0, "rollout/env_timeouts": 1.0, "rollout/env_errors": 0.0,
         "rollout/batch_retries": 1.0},
    ]  # fmt: skip
    _write_run(run, [_rec(1, **counts[0]), _rec(2, **counts[1])], [crash, crash, hang])
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "warning:" not in result.output
    summary = (run / "report" / "summary.md").read_text()
    section = summary.split("## Env faults")[1].split("## ")[0]
    assert "| run | 2 | 1 | 0 | 1 | 3 |" in section
    assert "| run | 2 | rollout | 1 | timeout | train/00003 |" in section
    assert "## Data warnings" not in summary


def test_report_lists_the_warm_starts_faults_with_the_runs(tmp_path):
    """`epo train` with a warm start logs the oracle's and its evals' env faults to RUN/sft/faults.jsonl: the run's
    report lists them in its Env faults section, labelled as the warm start's, before the RL loop's own."""
    run = tmp_path / "run"
    rl = {"step": 1, "phase": "rollout", "worker": 0, "reason": "worker_crash", "task": "train/00003",
          "message": "worker 0 died (exit code -9; EOFError)"}  # fmt: skip
    _write_run(run, [_rec(1, **{"rollout/env_crashes": 1.0})], [rl])
    (run / "sft").mkdir()
    oracle = {**rl, "step": 0, "phase": "oracle", "reason": "env_error", "message": "KeyError: door 7"}
    before = {**oracle, "phase": "eval iid before SFT", "task": "iid/00001", "reason": "timeout"}
    (run / "sft" / "faults.jsonl").write_text("".join(json.dumps(f) + "\n" for f in (oracle, before)))
    data = load_run(run)
    assert [f["phase"] for f in data.faults] == ["warm start oracle", "warm start eval iid before SFT", "rollout"]
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "warning:" not in result.output  # as for the RL loop's faults: the section, no console alert
    section = (run / "report" / "summary.md").read_text().split("## Env faults")[1].split("## ")[0]
    assert "| run | 1 | 0 | 0 | 0 | 3 (2 warm start) |" in section
    assert "| run | 0 | warm start oracle | 0 | env_error | train/00003 | KeyError: door 7 |" in section
    assert "| run | 0 | warm start eval iid before SFT | 0 | timeout | iid/00001 |" in section
    assert "| run | 1 | rollout | 0 | worker_crash | train/00003 |" in section


def test_a_damaged_faults_file_is_a_data_warning_not_a_failed_report(tmp_path):
    """A torn line in faults.jsonl (or the warm start's) used to fail `epo report` (ValueError); now the line is
    skipped with one warning (console and Data warnings), and the other records are shown."""
    run = tmp_path / "run"
    crash = {"step": 1, "phase": "rollout", "worker": 0, "reason": "worker_crash", "task": "t", "message": "m"}
    _write_run(run, [_rec(1)])
    (run / "faults.jsonl").write_text('{"step": 1, "pha\n' + json.dumps(crash) + "\n")
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "faults.jsonl:1: torn or malformed line" in warned[0]
    summary = (run / "report" / "summary.md").read_text()
    assert "| run | 1 | rollout | 0 | worker_crash | t | m |" in summary and "## Data warnings" in summary
