"""No accepted option is a silent no-op: an option without effect in the given combination is refused with one line
before anything runs, a dry run refuses what the run would, and help texts say what the options really do."""

from __future__ import annotations

import types

import typer
import yaml
from typer.testing import CliRunner

from epo.cli import app

runner = CliRunner()


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def _help(command: str, param: str) -> str:
    cmd = typer.main.get_command(app).commands[command]
    return " ".join(next(p for p in cmd.params if p.name == param).help.split())


def _grid(tmp_path, seeds=(0, 1)):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"base": "quest_demo_cpu", "seeds": list(seeds), "methods": {"a": [], "b": []}}))
    return path


# ----------------------------------------------------------------------------- epo sweep


def test_sweep_refuses_cpus_per_run_without_ray(tmp_path):
    grid, out = _grid(tmp_path), str(tmp_path / "s")
    line = _one_error_line(runner.invoke(app, ["sweep", str(grid), "--out", out, "--cpus-per-run", "2", "--dry-run"]))
    assert "--cpus-per-run acts only with --ray" in line
    ok = runner.invoke(app, ["sweep", str(grid), "--out", out, "--ray", "--cpus-per-run", "2", "--dry-run"])
    assert ok.exit_code == 0 and "4 to run (dry run)" in ok.output, ok.output


def test_a_dry_run_refuses_what_the_run_would(tmp_path):
    grid, out = _grid(tmp_path), tmp_path / "s"
    dry = ["sweep", str(grid), "--out", str(out), "--dry-run"]
    assert "--jobs must be >= 1" in _one_error_line(runner.invoke(app, [*dry, "--jobs", "0"]))
    assert "with --ray" in _one_error_line(runner.invoke(app, [*dry, "--ray", "--jobs", "2"]))
    assert "--gpus-per-run" in _one_error_line(runner.invoke(app, [*dry, "--gpus-per-run", "-1"]))
    assert not out.exists()
    from epo.sweep import load_grid
    from epo.sweep.runner import prepare

    prepare(load_grid(grid), out)
    saved = (out / "sweep.yaml").read_text()
    line = _one_error_line(runner.invoke(app, [*dry, "rollout.temperature=0.5"]))  # another grid in this dir
    assert f"{out}: holds a different grid ({out / 'sweep.yaml'})" in line
    extended = runner.invoke(app, ["sweep", str(_grid(tmp_path, seeds=(0, 1, 2))), "--out", str(out), "--dry-run"])
    assert extended.exit_code == 0 and "0 done, 6 to run (dry run)" in extended.output, extended.output
    assert (out / "sweep.yaml").read_text() == saved  # a dry run writes nothing


# ----------------------------------------------------------------------------- epo ablate


def test_ablate_refuses_a_coefficient_of_a_regulariser_it_does_not_run(tmp_path):
    run = str(tmp_path / "run")
    line = _one_error_line(runner.invoke(app, ["ablate", run, "--step", "1", "--reg", "none", "--entropy-coef", "1"]))
    assert "--entropy-coef acts only on the 'entropy' regulariser" in line
    line = _one_error_line(runner.invoke(app, ["ablate", run, "--step", "1", "--reg", "entropy", "--kl-coef", "1"]))
    assert "--kl-coef acts only on the 'kl' regulariser" in line
    for ok in (["--reg", "kl", "--kl-coef", "1"], ["--kl-coef", "1", "--entropy-coef", "1"]):  # run: past the check
        assert "not a run dir" in _one_error_line(runner.invoke(app, ["ablate", run, "--step", "1", *ok]))
    assert "algo.entropy_coef, else its epo.entropy_coef" in _help("ablate", "entropy_coef")


# ----------------------------------------------------------------------------- epo train / sft


def test_train_refuses_run_dir_with_a_run_name_or_output_dir_override(tmp_path):
    base = ["train", "--run-dir", str(tmp_path / "r"), "env.name=nowhere"]
    line = _one_error_line(runner.invoke(app, [*base, "train.run_name=mine"]))
    assert "--run-dir names the run dir, so train.run_name would be ignored" in line
    line = _one_error_line(runner.invoke(app, [*base, "train.output_dir=elsewhere"]))
    assert "train.output_dir would be ignored" in line
    assert "unknown env 'nowhere'" in _one_error_line(runner.invoke(app, base))  # other overrides: past the check


def test_sft_prints_a_next_command_that_keeps_the_overrides(tmp_path, monkeypatch):
    out = tmp_path / "sft"
    fake = types.SimpleNamespace(interrupted=False, out_dir=out)
    monkeypatch.setattr("epo.api.sft", lambda *a, **k: fake)
    result = runner.invoke(app, ["sft", "-c", "quest_demo_cpu", "--out", str(out), "sft.epochs=3"])
    assert result.exit_code == 0, result.output
    assert f"epo train --config {out / 'config.yaml'} init_from={out}" in result.output
    result = runner.invoke(app, ["sft", "-c", "quest_demo_cpu", "--out", str(out)])  # the preset is the config
    assert f"epo train --config quest_demo_cpu init_from={out}" in result.output


# ----------------------------------------------------------------------------- epo eval


def test_eval_refuses_a_flag_and_an_override_that_set_one_key_differently():
    fail_fast = "env.name=nowhere"  # old code ran on to this error
    for flag, override in [
        (["--episodes", "2"], "train.eval_episodes=3"),
        (["--temperature", "0.5"], "train.eval_temperature=0.7"),
        (["--split", "iid"], "env.eval_splits=[ood]"),
        (["--model", "tiny"], "init_from=other"),
    ]:
        line = _one_error_line(runner.invoke(app, ["eval", *flag, override, fail_fast]))
        key = override.split("=")[0]
        assert f"{flag[0]} {flag[1]} and the override {override} set {key} differently; give one of them" in line
    same = ["-n", "2", "train.eval_episodes=2", "--split", "iid", "env.eval_splits=[iid]", "--temperature", "0.5"]
    line = _one_error_line(runner.invoke(app, ["eval", *same, "train.eval_temperature=0.50", fail_fast]))
    assert "unknown env 'nowhere'" in line  # the same value twice: past the check


def test_eval_refuses_as_step_when_greedy(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00garbage")  # old code got as far as loading it
    for temp in (["--temperature", "0"], ["train.eval_temperature=0"]):
        line = _one_error_line(runner.invoke(app, ["eval", "--model", str(broken), "--as-step", "3", *temp]))
        assert "--as-step sets the eval's sampling seed, which greedy decoding (temperature 0) does not use" in line
    text = _help("eval", "as_step")
    assert text.startswith("Only sets the sampling seed") and "which it does not check" in text


# ----------------------------------------------------------------------------- epo config show / envs / report


def test_config_show_doc_shows_the_presets_values():
    result = runner.invoke(app, ["config", "show", "alfworld_grpo_epo", "--doc", "train.run_name=mine"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith('train.run_name = "mine"  # ') for line in lines), result.output
    assert any(line.startswith('env.name = "alfworld"  # ') for line in lines)  # the preset's, not the default
    assert any(line.startswith("diag: ") for line in lines)  # a section: its doc, its keys follow


def test_envs_debug_shows_the_traceback_of_an_unavailable_env(monkeypatch):
    import epo.envs

    real = epo.envs.get_spec

    def get_spec(name):
        if name == "quest":
            raise ImportError("no questlib")
        return real(name)

    monkeypatch.setattr(epo.envs, "get_spec", get_spec)
    plain = runner.invoke(app, ["envs"])
    assert plain.exit_code == 0 and "unavailable" in plain.output and "questlib" in plain.output
    assert "Traceback" not in plain.output
    debug = runner.invoke(app, ["--debug", "envs"])
    assert debug.exit_code == 0 and "Traceback (most recent call last)" in debug.output, debug.output
    assert "ImportError: no questlib" in debug.output and "in get_spec" in debug.output


def test_report_help_names_sweep_dirs():
    assert "or one sweep dir (`epo sweep` output) to aggregate over seeds" in _help("report", "run_dirs")


def test_the_python_evaluate_refuses_an_argument_and_an_override_that_disagree():
    import pytest

    from epo import api
    from epo.config import ConfigError

    with pytest.raises(ConfigError, match="episodes=2 and the override train.eval_episodes=3 set"):
        api.evaluate("quest_demo_cpu", ["train.eval_episodes=3"], episodes=2)
    with pytest.raises(Exception, match="unknown env .nowhere."):  # agreeing values pass the check
        api.evaluate("quest_demo_cpu", ["train.eval_episodes=2", "env.name=nowhere"], episodes=2)
