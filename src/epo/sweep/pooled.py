"""Episode counts pooled over a method's seeds, from each run's saved evals (eval/step_<step>_<split>.json).

Per-seed means (aggregate.py) answer "does the method differ"; the pooled counts say how often, in episodes: wins per
eval step with a Wilson interval, and, where a split has few distinct tasks (practised-games experiments), wins per
task from the first to the last eval, which shows which games were learnt or lost.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from epo.report.data import RunData
from epo.rollout.evaluate import wilson_interval

MAX_TASKS_SHOWN = 16  # a per-task table of the full task distribution would be thousands of rows with one episode each

# {method: {split: {step: {task: [wins, episodes]}}}}
Counts = dict[str, dict[str, dict[int, dict[str, list[int]]]]]


def pooled_counts(runs: dict[str, dict[int, RunData]], splits: list[str]) -> tuple[Counts, list[str]]:
    """(counts, the eval files that could not be read: left out and named in the report, not fatal)."""
    counts: Counts = {}
    unreadable: list[str] = []
    for method, by_seed in runs.items():
        per_split = counts.setdefault(method, {})
        for split in splits:
            steps: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
            for run in by_seed.values():
                for path in sorted((run.path / "eval").glob(f"step_*_{split}.json")):
                    episodes = _episodes(path)
                    if episodes is None:
                        unreadable.append(str(path))
                        continue
                    per_task = steps[int(path.name.split("_")[1])]  # step_<step>_<split>.json
                    for task, won in episodes:
                        per_task[task][0] += won
                        per_task[task][1] += 1
            if steps:
                per_split[split] = {s: dict(t) for s, t in sorted(steps.items())}
    return counts, unreadable


def _episodes(path: Path) -> list[tuple[str, int]] | None:
    """[(task, won)] of one saved eval; None when the file is torn or its lists do not pair up."""
    try:
        saved = json.loads(path.read_text())
        tasks, wins = saved["episode_tasks"], saved["episode_wins"]
        if len(tasks) != len(wins):
            return None
        return [(str(task), int(won)) for task, won in zip(tasks, wins, strict=True)]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_csv(path: Path, counts: Counts) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "split", "step", "task", "wins", "episodes"])
        for method, per_split in counts.items():
            for split, steps in per_split.items():
                for step, tasks in steps.items():
                    for task, (wins, n) in sorted(tasks.items()):
                        w.writerow([method, split, step, task, wins, n])


def render(counts: Counts, unreadable: list[str]) -> list[str]:
    """Markdown: pooled wins per eval step, then per task where a split has at most MAX_TASKS_SHOWN tasks."""
    lines = ["## Episodes pooled over seeds", ""]
    if unreadable:
        lines += [f"Left out, unreadable or without episode lists: {', '.join(unreadable)}.", ""]
    lines += ["| method | split | step | wins / episodes | success [95% Wilson] |"]
    lines.append("|---|---|---|---|---|")
    for method, per_split in counts.items():
        for split, steps in per_split.items():
            for step, tasks in steps.items():
                wins, n = (sum(c[i] for c in tasks.values()) for i in (0, 1))
                lo, hi = wilson_interval(wins, n)
                lines.append(
                    f"| {method} | {split} | {step} | {wins} / {n} | {100 * wins / n:.1f}% [{100 * lo:.1f}–{100 * hi:.1f}] |"
                )
    for method, per_split in counts.items():
        for split, steps in per_split.items():
            tasks = sorted({t for per_task in steps.values() for t in per_task})
            if len(tasks) > MAX_TASKS_SHOWN:
                continue
            head = " → ".join(f"step {s}" for s in steps)
            lines += ["", f"Wins per task, `{method}` on {split} ({head}; wins / episodes):", ""]
            lines += ["| task | " + head + " |", "|---|---|"]
            for task in tasks:
                cells = [f"{steps[s][task][0]}/{steps[s][task][1]}" if task in steps[s] else "-" for s in steps]
                lines.append(f"| {task} | " + " → ".join(cells) + " |")
    return lines + [""]
