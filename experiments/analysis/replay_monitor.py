"""Replays each run of a sweep through epo's cascade monitor with today's thresholds (Experiment 10, docs/RESULTS.md).

Runs keep `warnings.jsonl` as the code that trained them logged it; when the monitor's thresholds change, this shows
what it says now about the same metrics. Prints each run's warnings now and then, and per kind the runs that get it.

    python experiments/analysis/replay_monitor.py SWEEP_DIR
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from epo.report.data import RunData, load_run
from epo.telemetry.monitor import CascadeMonitor


def replay(run: RunData) -> list[tuple[str, int]]:
    """(kind, step) of each warning the monitor raises now on the run's logged RL steps."""
    monitor = CascadeMonitor(int(run.config["train.total_steps"]))
    rl_steps = [r for r in run.records if "actor/entropy" in r]  # eval-only rows carry no training metrics
    return [(w.kind, w.step) for r in rl_steps for w in monitor.update(r["step"], r)]


def logged(run: RunData) -> list[str]:
    """The warning kinds the run logged when it trained."""
    return sorted({str(w.get("kind")) for w in run.warnings})


def main(argv: list[str] | None = None) -> dict[str, Counter]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    args = parser.parse_args(argv)
    now, then = Counter(), Counter()
    runs = [
        load_run(p.parent, f"{p.parent.parent.name}/{p.parent.name}")
        for p in sorted(args.sweep.glob("*/seed*/metrics.jsonl"))
    ]
    for run in runs:
        warnings = replay(run)
        was = logged(run)
        now.update({kind for kind, _ in warnings})
        then.update(was)
        shown = ", ".join(f"{kind}@{step}" for kind, step in warnings) or "-"
        print(f"{run.label}: now {shown} | logged {', '.join(was) or '-'}")
    n = len(runs)
    for kind in sorted(set(now) | set(then)):
        print(f"{kind}: {now[kind]} of {n} runs now, {then[kind]} as logged")
    return {"now": now, "logged": then}


if __name__ == "__main__":
    main()
