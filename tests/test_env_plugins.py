"""Plug-in envs: the public conformance check accepts the built-in quest world and the example plug-in, and
rejects envs that break each rule of the TextEnv contract."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from epo.envs import EnvSpec, get_spec
from epo.envs.testing import EnvCheckError, check_env

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield
    sys.modules.pop("guess_env", None)


def test_quest_passes_the_conformance_check():
    report = check_env("quest", {"difficulty": "easy"}, tasks=3)
    assert len(report.played) == 3 and report.expert_wins == report.expert_episodes == 3
    assert report.splits == {"train": 2000, "iid": 200, "ood": 200}


def test_example_plugin_env_loads_by_module_path_and_passes(examples_on_path):
    spec = get_spec("guess_env:SPEC")
    assert spec.name == "guess"
    report = check_env("guess_env:SPEC", {"high": 64}, split="test", tasks=4)
    assert report.expert_wins == 4 and "OK" in str(report)


class _Good:
    """A one-action game: 'win' wins. Subclasses break one rule each."""

    def __init__(self):
        self.task = ""

    def info(self, won=False, **extra):
        return {"task": f"do {self.task}", "admissible_actions": ["win", "wait"], "won": won, "task_type": "t", **extra}

    def reset(self, *, seed=None, options=None):
        self.task = options["task_id"]
        return f"start {self.task}", self.info()

    def step(self, action):
        won = action == "win"
        return "ok", float(won), won, False, self.info(won, valid=action in ("win", "wait"))

    def expert_action(self):
        return "win"

    def close(self):
        pass


class _RewardWithoutWin(_Good):
    def step(self, action):
        obs, _, term, trunc, info = super().step(action)
        return obs, 0.5, term, trunc, info


class _Random(_Good):
    count = 0

    def reset(self, *, seed=None, options=None):
        _Random.count += 1
        obs, info = super().reset(options=options)
        return f"{obs} #{_Random.count}", info


class _AcceptsAnything(_Good):
    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        return obs, r, term, trunc, {**info, "valid": True}


class _NoValid(_Good):
    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        del info["valid"]
        return obs, r, term, trunc, info


class _LazyExpert(_Good):
    def expert_action(self):
        return "wait"


def _spec(cls, make=None) -> EnvSpec:
    return EnvSpec(cls.__name__, "test", make or globals()[f"make{cls.__name__}"], lambda: {"train": ["a", "b"]}, 3)


def make_Good():
    return _Good()


def make_RewardWithoutWin():
    return _RewardWithoutWin()


def make_Random():
    return _Random()


def make_AcceptsAnything():
    return _AcceptsAnything()


def make_NoValid():
    return _NoValid()


def make_LazyExpert():
    return _LazyExpert()


def test_a_conforming_env_passes():
    assert check_env(_spec(_Good)).expert_wins == 2


@pytest.mark.parametrize(
    "cls, message",
    [
        (_RewardWithoutWin, "must be 1.0 on a win"),
        (_Random, "not deterministic"),
        (_AcceptsAnything, "must be False for an action that is not a command"),
        (_NoValid, "bool 'valid'"),
        (_LazyExpert, "the expert did not win"),
    ],
)
def test_each_broken_rule_is_named(cls, message):
    with pytest.raises(EnvCheckError, match=message):
        check_env(_spec(cls))


def test_lazy_expert_is_allowed_when_only_a_hint():
    assert check_env(_spec(_LazyExpert), expert_must_win=False).expert_wins == 0


def test_unpicklable_factory_is_rejected():
    with pytest.raises(EnvCheckError, match="do not pickle"):
        check_env(_spec(_Good, make=lambda: _Good()))
