"""`epo eval --as-step K` on a run's step-K checkpoint replays the RL loop's logged eval of step K: the same games
sampled with the same stream, so a number in a run's report can be checked, and re-measured on another split."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from epo import api
from epo.config import ConfigError, load_config
from epo.testing import tiny_run
from epo.trainer.trainer import Trainer

QUIET = Console(quiet=True)


def _played(result) -> dict:
    """What was played: everything but the wall time."""
    return {k: v for k, v in result.__dict__.items() if k != "seconds"}


def test_epo_eval_as_step_replays_the_logged_eval_of_that_step(tmp_path):
    run = tmp_path / "run"
    # temperature 1: the random tiny model's sampling decides the transcripts, so a different stream shows
    changes = ("train.total_steps=1", "train.eval_every=1", "train.eval_episodes=4", "train.eval_temperature=1.0")
    Trainer(load_config(None, tiny_run(*changes)), run, console=QUIET).train()
    logged = json.loads((run / "eval" / "step_000001_iid.json").read_text())
    logged.pop("seconds")
    ckpt = run / "checkpoints" / "step_000001"
    replay = api.evaluate(run / "config.yaml", model=ckpt, as_step=1, console=QUIET)["iid"]
    assert _played(replay) == logged
    other = api.evaluate(run / "config.yaml", model=ckpt, console=QUIET)["iid"]  # the warm start's stream
    assert other.episode_tasks == logged["episode_tasks"]  # the same games ...
    assert other.transcripts != logged["transcripts"]  # ... sampled with another stream
    with pytest.raises(ConfigError, match="--as-step: must be >= 0"):
        api.evaluate(run / "config.yaml", model=ckpt, as_step=-1, console=QUIET)
