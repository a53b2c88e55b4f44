"""A tiny training run for tests and smoke benchmarks: the random 2-block Llama built in code (`model.path=tiny`) on
easy quest tasks, a few short turns, no TensorBoard or report, so a whole `Trainer.train()` takes seconds on a CPU.

    from epo.testing import tiny_run
    cfg = load_config(None, tiny_run("train.total_steps=3", "algo.name=ppo"))

`tiny_run(*changes)` is `TINY_RUN` with each "key=value" of `changes` replacing the base value of that key (or
appended when the base does not set it), so a test lists only what it needs to differ and each key appears once.
"""

from __future__ import annotations

TINY_RUN: tuple[str, ...] = (
    "model.path=tiny",
    "env.pool_mode=inline",  # no worker processes: the env steps in the trainer's process
    "env.kwargs.difficulty=easy",
    "env.max_turns=3",
    "env.eval_splits=[iid]",
    "agent.action_prefix=true",  # the tiny random model's actions are parsed without a format to learn
    "agent.max_prompt_tokens=384",
    "rollout.tasks_per_step=2",
    "rollout.group_size=2",
    "rollout.max_new_tokens=5",
    "train.total_steps=2",
    "train.eval_every=0",
    "train.eval_at_start=false",
    "train.eval_episodes=2",
    "train.save_every=1",
    "train.tensorboard=false",
    "train.report=false",
    "optim.warmup_ratio=0",
    "train.precision=fp32",  # not auto (bf16 on avx512_bf16 CPUs): tests compare runs exactly; bf16 tests ask for it
)
"""Dot-list overrides (as for `load_config` or `epo train`) of the tiny run."""


def tiny_run(*changes: str) -> list[str]:
    """`TINY_RUN` with `changes` ("key=value") in place of the base value of the same key, new keys at the end."""
    merged = dict(item.split("=", 1) for item in TINY_RUN)
    for change in changes:
        key, sep, value = change.partition("=")
        if not sep:
            raise ValueError(f"tiny_run: expected key=value, got {change!r}")
        merged[key] = value
    return [f"{key}={value}" for key, value in merged.items()]
