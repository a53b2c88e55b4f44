"""Rich progress: one bar over RL steps (with ETA) and one for the current phase (rollout turns, update, eval)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepProgress:
    def __init__(self, console: Console, total_steps: int, done: int = 0, label: str = "RL steps"):
        self.progress = Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.steps = self.progress.add_task(label, total=total_steps, completed=done, info="")
        self.current = self.progress.add_task("starting", total=1, completed=0, info="")

    def __enter__(self) -> StepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def phase(self, name: str, total: int) -> None:
        """Start a phase; total = expected units (turns for rollouts/evals), 0 = indeterminate."""
        self.progress.reset(self.current, total=total or None, completed=0, description=name, info="")

    def turn(self, turn: int, active: int) -> None:
        """Collector callback after each turn."""
        self.progress.update(self.current, completed=turn + 1, info=f"{active} active envs")

    def step_done(self, summary: str) -> None:
        self.progress.advance(self.steps)
        self.progress.console.print(summary)
