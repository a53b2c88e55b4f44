"""Replays each run of a sweep through epo's cascade monitor with today's thresholds (Experiment 10, docs/RESULTS.md).

Runs keep `warnings.jsonl` as the code that trained them logged it; when the monitor's thresholds change, this shows
what it says now about the same metrics. Prints each run's warnings now and then, and per kind the runs that get it.

    python experiments/analysis/replay_monitor.py SWEEP_DIR
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import yaml

from epo.telemetry.monitor import CascadeMonitor


def replay(run: Path) -> list[tuple[str, int]]:
    """(kind, step) of each warning the monitor raises now on the run's logged RL steps."""
    total_steps = yaml.safe_load((run / "config.yaml").read_text())["train"]["total_steps"]
    monitor = CascadeMonitor(total_steps)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rl_steps = [r for r in rows if "actor/entropy" in r]  # eval-only rows carry no training metrics
    return [(w.kind, w.step) for r in rl_steps for w in monitor.update(r["step"], r)]


def logged(run: Path) -> list[str]:
    """The warning kinds the run logged when it trained."""
    path = run / "warnings.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return sorted({json.loads(line)["kind"] for line in lines if line.strip()})


def runs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/seed*/metrics.jsonl"))


def main(argv: list[str] | None = None) -> dict[str, Counter]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    args = parser.parse_args(argv)
    now, then = Counter(), Counter()
    for run in runs(args.sweep):
        warnings = replay(run)
        was = logged(run)
        now.update({kind for kind, _ in warnings})
        then.update(was)
        shown = ", ".join(f"{kind}@{step}" for kind, step in warnings) or "-"
        print(f"{run.parent.name}/{run.name}: now {shown} | logged {', '.join(was) or '-'}")
    n = len(runs(args.sweep))
    for kind in sorted(set(now) | set(then)):
        print(f"{kind}: {now[kind]} of {n} runs now, {then[kind]} as logged")
    return {"now": now, "logged": then}


if __name__ == "__main__":
    main()
