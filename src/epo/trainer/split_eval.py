"""Evaluate a policy on several splits outside the RL loop (`epo eval`, the warm start's before/after evals),
with a progress bar over splits and turns and env faults reported as they are drained."""

from __future__ import annotations

from collections.abc import Callable

import torch
from rich.console import Console

from epo.config import Config
from epo.envs.pool import PoolFault
from epo.rollout.evaluate import EvalResult, eval_task_ids, evaluate
from epo.telemetry.faults import FaultLog
from epo.telemetry.progress import StepProgress
from epo.trainer.distributed import rollout_seed


class EvalStopped(Exception):
    """A stop signal (Ctrl-C, SIGTERM) arrived during an eval that is cheaper to run again than to wait for: the
    eval was abandoned after the current turn and nothing of it was kept."""


def stop_checking(on_turn, stop, what: str):
    """Wrap a collector's per-turn callback so that a requested stop (a GracefulExit) abandons the eval after this
    turn, with no env request in flight. stop=None: on_turn unchanged."""
    if stop is None:
        return on_turn

    def checked(turn: int, active: int) -> None:
        if on_turn is not None:
            on_turn(turn, active)
        if stop.requested:
            raise EvalStopped(f"{what} stopped at turn {turn + 1}")

    return checked


def eval_sampling_seed(cfg: Config, rl_step: int | None = None) -> int:
    """The seed an eval samples with: train.seed + 1 for the warm start's evals and `epo eval`; the RL loop's eval
    at step k its own stream of (train.seed + 1, k), so `epo eval --model RUN/checkpoints/step_k --as-step k` replays
    that step's logged eval."""
    return cfg.train.seed + 1 if rl_step is None else rollout_seed(cfg.train.seed + 1, rl_step)


def evaluate_split(cfg: Config, collector, split: str, task_ids: list[str], episodes: int, seed: int) -> EvalResult:
    """`episodes` of one split, drawn from its `task_ids` with the eval seed train.seed + 1 and sampled with `seed`
    (the eval's own stream, see rollout/evaluate.py); the one per-split eval of `epo eval`, the warm start and the
    RL loop's periodic evals."""
    ids = eval_task_ids(task_ids, episodes, seed=cfg.train.seed + 1)
    with torch.no_grad():
        return evaluate(collector, split, ids, cfg.train.eval_temperature, cfg.rollout.max_new_tokens, seed=seed)


def no_win_note(evals: dict[str, EvalResult]) -> str | None:
    """A line for the start of RL when the step-0 eval won no episode on any split. RL learns from won against lost
    episodes: until a training episode wins, the advantage holds only the per-turn shaping (GRPO: every group all
    lost), so an hours-long run can end where its warm start began (docs/RESULTS.md, the ALFWorld CPU preset)."""
    if not evals or any(res.success > 0 for res in evals.values()):
        return None
    n = sum(res.episodes for res in evals.values())
    return (
        f"the step-0 eval won 0 of {n} episodes ({', '.join(evals)}): until a training episode wins, RL has no outcome "
        "signal and its advantage holds only the per-turn shaping (invalid penalty, format bonus; watch "
        "rollout/groups_all_lost and rollout/success_rate); a warm start that wins some games (e.g. more sft.episodes) "
        "gives it one"
    )


def evaluate_splits(
    cfg: Config,
    collector,
    split_ids: dict[str, list[str]],
    names: list[str],
    episodes: int,
    console: Console,
    label: str,
    stop=None,
    done: dict[str, EvalResult] | None = None,
    on_split: Callable[[dict[str, EvalResult]], None] | None = None,
    rl_step: int | None = None,
    on_faults: Callable[[str, list[PoolFault]], None] | None = None,
) -> dict[str, EvalResult]:
    """`episodes` of each split in `names` (task ids from `split_ids`), sampled with `eval_sampling_seed(cfg,
    rl_step)` (its own stream: see rollout/evaluate.py, so a split's result does not depend on which splits ran
    before it). Each
    result is printed as '  LABEL: <split line>'. stop: a GracefulExit whose signal abandons the eval after the
    current turn (raises EvalStopped). done: splits already evaluated (kept, not run again); on_split: called with
    the finished splits after each one, so a caller can persist them before a later split is stopped.
    on_faults(split, faults): the env faults of each split, also of one that raised or was stopped (the warm start
    logs them to OUT/faults.jsonl); default: a console line each, worded as the RL loop's (`FaultLog`), phase
    "eval <split>" at step rl_step (no step when None). The RL loop's own evals call `evaluate_split`, not this."""
    if on_faults is None:
        console_only = FaultLog(None, console.print)
        on_faults = lambda split, faults: console_only.record(rl_step, f"eval {split}", faults)  # noqa: E731
    out: dict[str, EvalResult] = {k: v for k, v in (done or {}).items() if k in names}
    with StepProgress(console, len(names), len(out), label=label) as progress:
        try:
            for split in [n for n in names if n not in out]:
                collector.on_turn = stop_checking(progress.turn, stop, f"{label} {split}")
                progress.phase(f"eval {split}", collector.max_turns)
                seed = eval_sampling_seed(cfg, rl_step)
                try:
                    out[split] = evaluate_split(cfg, collector, split, split_ids[split], episodes, seed)
                finally:  # episodes a crashed or hung env worker ended (lost), also when the eval did not finish
                    on_faults(split, collector.pool.drain_faults())
                progress.step_done(f"  {label}: {out[split].line()}")
                if on_split is not None:
                    on_split(dict(out))
        finally:
            collector.on_turn = None
    return out
