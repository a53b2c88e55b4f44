"""CLI smoke through typer's test runner: every command, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from epo.cli import app
from epo.testing import tiny_run

runner = CliRunner()
TINY = tiny_run(
    "model.trainable_layers=1",
    "train.eval_at_start=true",
    "env.max_turns=2",
    "rollout.max_new_tokens=4",
    "agent.max_prompt_tokens=320",
    "train.total_steps=1",
    "train.mini_batch_size=8",
    "train.report=true",
    "sft.warm_start=false",
)


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("train", "sft", "eval", "report", "envs", "presets", "config"):
        assert cmd in result.output


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "epo", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "sweep" in result.stdout and "train" in result.stdout


def test_envs_and_presets():
    result = runner.invoke(app, ["envs"])
    assert result.exit_code == 0 and "quest" in result.output and "alfworld" in result.output
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0 and "quest_demo_cpu" in result.output and "alfworld_grpo_epo" in result.output


def test_config_show_applies_overrides():
    result = runner.invoke(app, ["config", "show", "quest_demo_cpu", "epo.mode=reference"])
    assert result.exit_code == 0
    assert "mode: reference" in result.output
    result = runner.invoke(app, ["config", "show", "quest_demo_cpu", "--doc"])
    assert result.exit_code == 0 and "epo.kappa_high" in result.output


def test_config_docs_print_brackets_verbatim():
    result = runner.invoke(app, ["config", "show", "--doc"])
    assert result.exit_code == 0 and "`epo[vllm]`" in result.output  # not eaten as rich markup


def test_bad_inputs_give_one_line_errors(tmp_path):
    assert "epo.nope" in _one_error_line(runner.invoke(app, ["config", "show", "quest_demo_cpu", "epo.nope=1"]))
    assert "no_such" in _one_error_line(runner.invoke(app, ["train", "--config", "no_such"]))
    line = _one_error_line(runner.invoke(app, ["train", "--config", "quest_demo_cpu", *TINY, "env.name=nowhere"]))
    assert "unknown env 'nowhere'" in line
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00garbage")
    line = _one_error_line(runner.invoke(app, ["eval", "--config", "quest_demo_cpu", "--model", str(broken), *TINY]))
    assert "broken.gguf" in line
    assert "not a run dir" in _one_error_line(runner.invoke(app, ["train", "--resume", str(tmp_path)]))
    assert "metrics.jsonl" in _one_error_line(runner.invoke(app, ["report", str(tmp_path)]))


def test_train_eval_report_round_trip(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", "quest_demo_cpu", "--run-dir", str(run), *TINY])
    assert result.exit_code == 0, result.output
    assert result.output.count("precision: ") == 1  # once per command, warm-start SFT included
    assert (run / "metrics.jsonl").is_file() and (run / "report").is_dir()
    gains = json.loads((run / "before_after.json").read_text())["iid"]
    assert gains["end_of_rl"]["episodes"] == 2 and 0.0 <= gains["p_rl_gain"] <= 1.0
    assert "RL gain" in result.output
    assert "## Before and after training" in (run / "report" / "summary.md").read_text()
    out = tmp_path / "eval.json"
    result = runner.invoke(
        app, ["eval", "--config", "quest_demo_cpu", *TINY, "--split", "iid", "-n", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["splits"]["iid"]["episodes"] == 2
    assert "iid: success" in result.output and "iid: iid" not in result.output  # the split named once per table
    assert saved["provenance"]["phase"] == "eval" and saved["provenance"]["precision"] == "fp32"
    assert saved["provenance"]["env"] == "quest" and saved["provenance"]["torch"]
    result = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "rep").glob("*.png"))
