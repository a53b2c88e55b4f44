"""Env faults in a run: logged (console + RUN_DIR/faults.jsonl), counted per step, and whole-batch failures retried.

    faults = FaultLog(run_dir, console.print, resume_step)      # resume_step: drop records after it (exact resume)
    rollout, retries = collect_with_retries(lambda: collector.collect(...), env.batch_retries, on_failed)
    faults.record(step, "rollout", pool.drain_faults())
    metrics.update(fault_metrics(rollout.trajectories))

A worker crash or hang ends its episodes as truncated (epo.envs.pool); these counts keep them apart from the turn
limit, so `rollout/truncated_rate` means "ran out of turns" only. A step whose every episode ended by a fault has
nothing to learn from: it is collected again (same tasks), at most `env.batch_retries` times, then the run stops
with `EnvBatchFailed` (one line) after making sure a valid checkpoint of the last finished step exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.markup import escape

from epo.errors import EpoError
from epo.fsio import atomic_write_text
from epo.telemetry.metrics import decode_line, encode_line, read_jsonl, truncate_after

FAULTS_FILE = "faults.jsonl"
CRASH_REASONS = ("worker_crash", "worker_dead")
TIMEOUT_REASONS = ("timeout",)
ERROR_REASONS = ("env_error",)
FAULT_REASONS = CRASH_REASONS + TIMEOUT_REASONS + ERROR_REASONS


class EnvBatchFailed(EpoError, RuntimeError):
    """Every episode of a step failed, also after the configured retries (one line)."""


def is_fault(traj: Any) -> bool:
    return bool(traj.truncated) and traj.truncated_reason in FAULT_REASONS


def batch_failed(rollout: Any) -> bool:
    """Nothing to learn from: no turn samples, or every trajectory ended by an env fault."""
    trajs = rollout.trajectories
    return not rollout.samples or (bool(trajs) and all(is_fault(t) for t in trajs))


def fault_metrics(trajs: list[Any]) -> dict[str, float]:
    """Episodes of this step ended by a worker crash, a worker timeout (hang) or an exception in the env."""
    count = {key: 0.0 for key in ("crashes", "timeouts", "errors")}
    for t in trajs:
        if not t.truncated:
            continue
        reason = t.truncated_reason
        key = "crashes" if reason in CRASH_REASONS else "timeouts" if reason in TIMEOUT_REASONS else None
        key = key or ("errors" if reason in ERROR_REASONS else None)
        if key:
            count[key] += 1
    return {f"rollout/env_{k}": v for k, v in count.items()}


def turn_limit_rate(trajs: list[Any]) -> float:
    """Fraction of trajectories truncated by the turn limit or the env's own rule, not by a fault."""
    return sum(bool(t.truncated) and not is_fault(t) for t in trajs) / max(len(trajs), 1)


def collect_with_retries(
    collect: Callable[[], Any], retries: int, on_failed: Callable[[int, Any], None] | None = None
) -> tuple[Any, int]:
    """collect() until its batch is not `batch_failed`, at most 1 + retries times; returns (rollout, retries used).

    on_failed(attempt, rollout) is called after each failed attempt (e.g. to log); the last failure raises."""
    for attempt in range(retries + 1):
        rollout = collect()
        if not batch_failed(rollout):
            return rollout, attempt
        if on_failed is not None:
            on_failed(attempt, rollout)
    reasons = sorted({t.truncated_reason for t in rollout.trajectories if t.truncated_reason}) or ["no turn samples"]
    raise EnvBatchFailed(
        f"env: every episode of the batch failed ({', '.join(reasons)}) in {retries + 1} attempts "
        f"(env.batch_retries={retries}); see faults.jsonl"
    )


class FaultLog:
    """RUN_DIR/faults.jsonl: one {"step", "phase", "worker", "reason", "task", "message"} per fault, plus a console
    line each. Resuming from step k drops records after k, like metrics.jsonl. run_dir=None: the console lines
    only (`epo eval`, which has no run dir); there step may be None (the line then names no step)."""

    def __init__(self, run_dir: str | Path | None, print_line: Callable[[str], None], resume_step: int | None = None):
        self.path = None if run_dir is None else Path(run_dir) / FAULTS_FILE
        self.print_line = print_line
        if resume_step is not None and self.path is not None:
            truncate_after(self.path, resume_step)

    def record(self, step: int | None, phase: str, faults: Iterable[Any]) -> int:
        """Log PoolFaults (or dicts with worker, reason, task, message); returns how many."""
        lines = []
        for f in faults:
            rec = f if isinstance(f, dict) else {"worker": f.worker, "reason": f.reason, "task": f.task,
                                                 "message": f.message}  # fmt: skip
            if self.path is not None:
                lines.append(encode_line({"step": int(step), "phase": phase, **rec}) + "\n")
            self.print_line(fault_line(step, phase, rec))
        if lines:
            with open(self.path, "a") as out:
                out.writelines(lines)
        return len(lines)


def fault_line(step: int | None, phase: str, rec: dict[str, Any]) -> str:
    """The console line of one fault record (rich markup; the env's text is escaped, not read as markup)."""
    on = f" on task {rec['task']}" if rec.get("task") else ""
    where = phase if step is None else f"step {step} {phase}"
    return "[yellow]env fault:[/] " + escape(f"{where}: worker {rec['worker']} {rec['reason']}{on}: {rec['message']}")


def keep_faults(run_dir: str | Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Atomically rewrite RUN_DIR/faults.jsonl with only the records `keep` accepts (a line that is not a JSON
    record is dropped too); returns how many were dropped. For a stage that runs again on resume (the warm start's
    oracle and evals), so that its faults are not logged twice."""
    path = Path(run_dir) / FAULTS_FILE
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = decode_line(line)
        except (ValueError, AttributeError):  # a torn line, or JSON that is not an object
            rec = None
        if isinstance(rec, dict) and keep(rec):
            kept.append(line + "\n")
        else:
            dropped += 1
    atomic_write_text(path, "".join(kept))
    return dropped


def read_faults(run_dir: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / FAULTS_FILE)
