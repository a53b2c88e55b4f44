"""Evaluate a policy on several splits outside the RL loop (`epo eval`, the warm start's before/after evals),
with a progress bar over splits and turns and env faults reported as they are drained."""

from __future__ import annotations

import torch
from rich.console import Console

from epo.config import Config
from epo.rollout.evaluate import EvalResult, eval_task_ids, evaluate
from epo.telemetry.progress import StepProgress


def evaluate_split(cfg: Config, collector, split: str, task_ids: list[str], episodes: int, seed: int) -> EvalResult:
    """`episodes` of one split, drawn from its `task_ids` with the eval seed train.seed + 1 and sampled with `seed`
    (the eval's own stream, see rollout/evaluate.py); the one per-split eval of `epo eval`, the warm start and the
    RL loop's periodic evals."""
    ids = eval_task_ids(task_ids, episodes, seed=cfg.train.seed + 1)
    with torch.no_grad():
        return evaluate(collector, split, ids, cfg.train.eval_temperature, cfg.rollout.max_new_tokens, seed=seed)


def evaluate_splits(
    cfg: Config,
    collector,
    split_ids: dict[str, list[str]],
    names: list[str],
    episodes: int,
    console: Console,
    label: str,
) -> dict[str, EvalResult]:
    """`episodes` of each split in `names` (task ids from `split_ids`), sampled with the eval seed train.seed + 1 (its
    own stream: see rollout/evaluate.py). Each result is printed as '  LABEL: <split line>'."""
    out: dict[str, EvalResult] = {}
    with StepProgress(console, len(names), label=label) as progress:
        collector.on_turn = progress.turn
        try:
            for split in names:
                progress.phase(f"eval {split}", collector.max_turns)
                out[split] = evaluate_split(cfg, collector, split, split_ids[split], episodes, cfg.train.seed + 1)
                for fault in collector.pool.drain_faults():  # episodes a crashed or hung env worker ended (lost)
                    console.print(f"[yellow]env fault:[/] {label} {split}: {fault.line()}", soft_wrap=True)
                progress.step_done(f"  {label}: {out[split].line()}")
        finally:
            collector.on_turn = None
    return out
