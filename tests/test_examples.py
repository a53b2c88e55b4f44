"""Every example in examples/ runs in miniature (`--smoke`: tiny random model, 1 RL step) through the public API,
and the API's config handling and laziness hold."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import epo
from epo.telemetry.metrics import read_metrics

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def example(monkeypatch):
    """Load examples/NAME.py as its script would see the world (its folder on sys.path); return its main."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delenv("EPO_EXAMPLE_SMOKE", raising=False)
    loaded = set(sys.modules)
    yield lambda name: runpy.run_path(str(EXAMPLES / f"{name}.py"))["main"]
    for mod in set(sys.modules) - loaded:  # guess_env, custom_reward, _smoke: fresh for the next example
        if mod in ("guess_env", "custom_reward", "_smoke"):
            del sys.modules[mod]


def _trained_one_step(result: epo.TrainResult) -> None:
    assert result.steps_done == 1 and (result.run_dir / "final" / "config.json").is_file()
    rows = read_metrics(result.run_dir)
    assert any(row.get("step") == 1 and "actor/pg_loss" in row for row in rows), rows


def test_train_from_python(example, tmp_path):
    result = example("train_from_python")(["--smoke", "--run-dir", str(tmp_path / "run")])
    _trained_one_step(result)
    saved = epo.load_config(result.run_dir / "config.yaml")
    assert saved.train.seed == 1 and saved.model.path == "tiny"  # the fields set in code reached the run
    assert list(result.evals[1]) == ["iid"]


def test_custom_env(example, tmp_path):
    result = example("custom_env")(["--smoke", "--run-dir", str(tmp_path / "run")])
    _trained_one_step(result)
    saved = epo.load_config(result.run_dir / "config.yaml")
    assert saved.env.name == "guess_env:SPEC" and saved.env.kwargs == {"high": 16}
    assert saved.env.pool_mode == "process"  # the plug-in ran in worker processes
    assert result.evals[1]["test"].episodes == 2


def test_custom_reward(example, tmp_path):
    result = example("custom_reward")(["--smoke", "--run-dir", str(tmp_path / "run")])
    _trained_one_step(result)
    assert epo.load_config(result.run_dir / "config.yaml").agent.reward == "custom_reward:fast_win_reward"
    from custom_reward import fast_win_reward  # the function the run used, checked on a synthetic win

    from epo.rollout.rewards import Episode, TurnRecord
    from epo.rollout.types import Trajectory

    turns = [TurnRecord(i, "", "", i == 0, True, 0.0) for i in range(20)]
    out = fast_win_reward(Episode(Trajectory(0, 0, "t", "k", length=20, won=True), turns), saved_agent())
    assert out.episode_return == pytest.approx(7.5) and out.turn_rewards[:2] == pytest.approx([7.4, 7.5])


def saved_agent():
    return epo.load_config(None, []).agent


def test_evaluate_saved(example):
    results = example("evaluate_saved")(["--smoke", "--split", "iid"])
    assert list(results) == ["iid"] and results["iid"].episodes == 2


def test_config_objects_are_copied_overridden_and_validated():
    cfg = epo.Config()
    out = epo.as_config(cfg, ["rollout.group_size=4"])
    assert out.rollout.group_size == 4 and cfg.rollout.group_size == 8 and out is not cfg
    cfg.algo.name = "nope"
    with pytest.raises(epo.ConfigError, match="algo.name: 'nope' is not one of grpo, ppo"):
        epo.train(cfg)
    with pytest.raises(epo.ConfigError, match="rollout.nope"):
        epo.as_config(epo.Config(), ["rollout.nope=1"])


def test_import_epo_is_lazy_and_exports_the_api():
    code = "import sys, epo; assert 'torch' not in sys.modules; from epo import Config, Trainer, evaluate, sft"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(Path(epo.__file__).parents[1])})
    for name in epo.__all__:
        assert getattr(epo, name) is not None, name
    with pytest.raises(AttributeError):
        epo.no_such_name  # noqa: B018
