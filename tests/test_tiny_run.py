"""epo.testing.tiny_run: the shared tiny-run overrides, with a test's changes replacing base keys (not repeating them)."""

from __future__ import annotations

import pytest

from epo.config import load_config
from epo.testing import TINY_RUN, tiny_run


def test_changes_replace_base_keys_in_place_and_new_keys_follow():
    out = tiny_run("env.max_turns=7", "algo.name=ppo", "env.kwargs.difficulty=hard")
    keys = [item.split("=", 1)[0] for item in out]
    assert len(keys) == len(set(keys)) == len(TINY_RUN) + 1
    assert keys[: len(TINY_RUN)] == [item.split("=", 1)[0] for item in TINY_RUN] and keys[-1] == "algo.name"
    cfg = load_config(None, out)
    assert (cfg.env.max_turns, cfg.algo.name, cfg.env.kwargs["difficulty"]) == (7, "ppo", "hard")
    assert cfg.model.path == "tiny" and not cfg.train.tensorboard


def test_a_change_without_value_is_refused():
    with pytest.raises(ValueError, match="key=value"):
        tiny_run("train.total_steps")
