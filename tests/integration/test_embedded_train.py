"""One short warm start + RL run on the embedded SmolLM2-135M (the real model, the real pipeline)."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from epo.config import load_config
from epo.telemetry.metrics import read_metrics
from epo.trainer.pipeline import train_pipeline

pytestmark = pytest.mark.integration


def test_embedded_model_warm_start_and_one_rl_step(tmp_path):
    cfg = load_config(
        "quest_demo_cpu",
        [
            "env.pool_mode=inline",
            "env.max_turns=12",
            "env.eval_splits=[iid]",
            "sft.episodes=2",
            "sft.epochs=1",
            "sft.batch_size=8",
            "sft.eval_episodes=0",
            "rollout.tasks_per_step=1",
            "rollout.group_size=2",
            "rollout.max_new_tokens=12",
            "train.total_steps=1",
            "train.eval_episodes=1",
            "train.tensorboard=false",
        ],
    )
    result = train_pipeline(cfg, tmp_path / "run", console=Console(quiet=True))
    assert result.steps_done == 1
    assert (tmp_path / "run" / "sft" / "export" / "config.json").is_file()
    step = [r for r in read_metrics(tmp_path / "run") if "actor/pg_loss" in r]
    assert len(step) == 1
    for key in ("actor/pg_loss", "epo/entropy_mean", "epo/P", "epo/beta", "actor/grad_norm"):
        assert math.isfinite(step[0][key]), key
    assert 0.0 < step[0]["epo/entropy_mean"] < 11.0  # nats; log(49152) = 10.8 is the uniform maximum
    assert (tmp_path / "run" / "report" / "summary.md").is_file()
    assert (tmp_path / "run" / "final" / "config.json").is_file()
