"""What `epo report` says about a run's health: env faults (faults.jsonl, its warm start's sft/faults.jsonl, the
per-step counts) and damaged metrics.

metrics.jsonl problems are reported, one line each, instead of failing the report or passing silently:
  * a torn line (not JSON: a crash mid-write, or two processes writing at once) is skipped;
  * a step logged more than once with overlapping keys (two writers, a resume that did not truncate) keeps its
    last record. Records of one step with disjoint keys (e.g. an eval record and a training record) are merged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from epo.telemetry.metrics import decode_line

FAULT_METRICS = (
    ("rollout/env_crashes", "crashed"),
    ("rollout/env_timeouts", "timed out"),
    ("rollout/env_errors", "env errors"),
)
MAX_FAULT_ROWS = 20


def read_metrics_checked(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(records, one warning line per problem) of a metrics.jsonl; records merged per step, sorted by step."""
    path = Path(path)
    issues: list[str] = []
    by_step: dict[int, dict[str, Any]] = {}
    lines_of: dict[int, list[int]] = {}
    overlapping: set[int] = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = decode_line(line)
            step = int(record["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            issues.append(f"{path}:{number}: torn or malformed line (not a JSON record with a step); skipped")
            continue
        if step in by_step and set(by_step[step]) & (set(record) - {"step"}):
            overlapping.add(step)
        by_step.setdefault(step, {}).update(record)
        lines_of.setdefault(step, []).append(number)
    for step in sorted(overlapping):
        where = ", ".join(map(str, lines_of[step]))
        issues.append(
            f"{path}: step {step} logged {len(lines_of[step])} times (lines {where}); the report uses the last"
        )
    return [by_step[s] for s in sorted(by_step)], issues


def fault_totals(records: list[dict[str, Any]]) -> dict[str, float]:
    """Episodes ended by each kind of env fault, summed over the run's steps, and how many steps were retried."""
    totals = {key: 0.0 for key, _ in FAULT_METRICS}
    totals["rollout/batch_retries"] = 0.0
    for r in records:
        for key in totals:
            value = r.get(key)
            if isinstance(value, int | float) and value == value:
                totals[key] += float(value)
    return totals


def faults_section(runs: list[Any]) -> list[str]:
    """Markdown: per-run totals, then the first fault records (worker, reason, task); the warm start's records (the
    oracle's and its evals', phase "warm start ...") come first and are counted apart in the totals."""
    lines = ["## Env faults", ""]
    logged = [r for r in runs if r.faults or any(k in rec for rec in r.records for k, _ in FAULT_METRICS)]
    if not logged:
        return lines + ["None logged (runs before fault logging, or no env fault happened)."]
    lines += [
        "Episodes ended by an env worker crash, a worker timeout (hang) or an exception in the env; they count as "
        "truncated but not towards `rollout/truncated_rate` (the turn limit). Retried steps: steps whose every "
        "episode failed and were collected again. The episode counts are the RL loop's; fault records also "
        "count those of the warm start (`epo sft` into RUN/sft: its oracle and evals), listed with phase "
        '"warm start ...".',
        "",
        "| run | " + " | ".join(name for _, name in FAULT_METRICS) + " | retried steps | fault records |",
        "|---|" + "---|" * (len(FAULT_METRICS) + 2),
    ]
    for run in runs:
        totals = fault_totals(run.records)
        cells = [f"{totals[key]:.0f}" for key, _ in FAULT_METRICS]
        warm = sum(bool(f.get("warm_start")) for f in run.faults)
        records = f"{len(run.faults)}" + (f" ({warm} warm start)" if warm else "")
        lines.append(f"| {run.label} | " + " | ".join(cells) + f" | {totals['rollout/batch_retries']:.0f} | "
                     f"{records} |")  # fmt: skip
    rows = [(run.label, f) for run in runs for f in run.faults]
    if rows:
        lines += ["", "| run | step | phase | worker | reason | task | message |", "|---|---|---|---|---|---|---|"]
        for label, f in rows[:MAX_FAULT_ROWS]:
            message = str(f.get("message", "")).replace("|", "\\|")[:120]
            lines.append(
                f"| {label} | {f.get('step')} | {f.get('phase', '')} | {f.get('worker')} | {f.get('reason')} | "
                f"{f.get('task') or '—'} | {message} |"
            )
        if len(rows) > MAX_FAULT_ROWS:
            more = len(rows) - MAX_FAULT_ROWS
            lines += [
                "",
                f"... and {more} more (see each run's faults.jsonl, and sft/faults.jsonl for its warm start).",
            ]
    return lines


def issues_section(runs: list[Any]) -> list[str]:
    issues = [f"* {run.label}: {issue}" for run in runs for issue in run.issues]
    return ["## Data warnings", "", *issues] if issues else []
