"""Rich progress: one bar over steps (with ETA) and one for the current phase (rollout turns, update, eval).

On a terminal rich redraws the bars in place. Where the console is a log file or a pipe (`nohup`, SLURM, CI) rich
draws nothing until the end, so a status line is printed every `heartbeat_s` seconds instead, as tqdm does for files.
"""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

HEARTBEAT_S = 60.0


class _CountColumn(MofNCompleteColumn):
    """'done/total'; blank for an indeterminate phase (update, behaviour cloning), where rich would print '0/?'."""

    def render(self, task) -> Text:
        return Text("") if task.total is None else super().render(task)


class StepProgress:
    def __init__(
        self,
        console: Console,
        total_steps: int,
        done: int = 0,
        label: str = "RL steps",
        heartbeat_s: float = HEARTBEAT_S,
    ):
        self.progress = Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(),
            _CountColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.steps = self.progress.add_task(label, total=total_steps, completed=done, info="")
        self.current = self.progress.add_task("starting", total=1, completed=0, info="")
        self.t0 = time.monotonic()
        plain = not console.is_terminal  # rich's live display is off: nothing would show until the end
        self._heartbeat = _Heartbeat(heartbeat_s, self.print_status) if plain and heartbeat_s > 0 else None

    def __enter__(self) -> StepProgress:
        self.progress.start()
        if self._heartbeat is not None:
            self._heartbeat.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        self.progress.stop()

    def phase(self, name: str, total: int) -> None:
        """Start a phase; total = expected units (turns for rollouts/evals), 0 = indeterminate."""
        self.progress.reset(self.current, total=total or None, completed=0, description=name, info="")
        if not total:  # reset() keeps the old total when given None: clear it, or "update" shows the rollout's "0/24"
            next(t for t in self.progress.tasks if t.id == self.current).total = None

    def turn(self, turn: int, active: int) -> None:
        """Collector callback after each turn."""
        self.progress.update(self.current, completed=turn + 1, info=f"{active} active envs")

    def step_done(self, summary: str) -> None:
        self.progress.advance(self.steps)
        self.progress.console.print(summary)

    def status(self) -> str:
        """One line: steps done, the current phase and how far it is, time since start."""
        tasks = {t.id: t for t in self.progress.tasks}
        steps, cur = tasks[self.steps], tasks[self.current]
        phase = f"{cur.description} {int(cur.completed)}/{int(cur.total)}" if cur.total else cur.description
        info = f", {cur.fields['info']}" if cur.fields.get("info") else ""
        elapsed = time.monotonic() - self.t0
        return (
            f"[{time.strftime('%H:%M:%S')}] {steps.description} {int(steps.completed)}/{int(steps.total or 0)} · "
            f"{phase}{info} · {int(elapsed // 60)}m{int(elapsed % 60):02d}s"
        )

    def print_status(self) -> None:
        self.progress.console.print(self.status(), highlight=False, soft_wrap=True)


class _Heartbeat:
    """Calls `beat` every `interval` seconds from a daemon thread until stopped."""

    def __init__(self, interval: float, beat):
        self.interval, self.beat = interval, beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="epo-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()
