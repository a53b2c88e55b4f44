"""Overrides that shrink any example to seconds (tiny random model, 1 RL step): `--smoke` or EPO_EXAMPLE_SMOKE=1.
tests/test_examples.py runs every example this way."""

from __future__ import annotations

import os

SMOKE = [
    "model.path=tiny",
    "model.trainable_layers=0",
    "env.max_turns=3",
    "env.num_workers=1",
    "env.pool_mode=inline",
    "agent.max_prompt_tokens=512",
    "rollout.tasks_per_step=2",
    "rollout.group_size=2",
    "rollout.max_new_tokens=5",
    "train.total_steps=1",
    "train.eval_episodes=2",
    "train.micro_batch_tokens=1500",
    "train.tensorboard=false",
    "train.report=false",
    "sft.warm_start=false",
]


def smoke(flag: bool) -> list[str]:
    """The smoke overrides when asked for (flag or EPO_EXAMPLE_SMOKE=1), else none."""
    return list(SMOKE) if flag or os.environ.get("EPO_EXAMPLE_SMOKE") == "1" else []
