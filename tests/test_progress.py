"""Progress where rich cannot draw: a log file or pipe gets a status line every heartbeat instead of nothing."""

import io
import time

from rich.console import Console

from epo.telemetry.progress import StepProgress


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=200), buf


def test_status_names_steps_phase_and_turns():
    console, _ = _console(False)
    progress = StepProgress(console, total_steps=20, done=3, label="SFT steps", heartbeat_s=0)
    progress.phase("eval iid", 50)
    progress.turn(11, active=6)
    line = progress.status()
    assert "SFT steps 3/20" in line and "eval iid 12/50" in line and "6 active envs" in line, line
    progress.phase("update", 0)  # indeterminate phase: no count
    assert "· update ·" in progress.status()


def test_a_log_file_gets_heartbeat_lines_while_a_phase_runs():
    console, buf = _console(False)
    with StepProgress(console, total_steps=2, heartbeat_s=0.05) as progress:
        progress.phase("rollout", 24)
        progress.turn(4, active=8)
        deadline = time.monotonic() + 10
        while "rollout 5/24" not in buf.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "RL steps 0/2 · rollout 5/24, 8 active envs" in buf.getvalue()


def test_a_terminal_gets_no_heartbeat_lines():
    console, buf = _console(True)
    progress = StepProgress(console, total_steps=2, heartbeat_s=0.05)
    assert progress._heartbeat is None  # rich redraws the bars in place there


def test_the_final_bars_show_no_count_for_an_indeterminate_phase():
    console, buf = _console(False)
    with StepProgress(console, total_steps=2, label="SFT steps", heartbeat_s=0) as progress:
        progress.phase("behaviour cloning", 0)
        progress.step_done("step 1")
        progress.step_done("step 2")
    assert "2/2" in buf.getvalue() and "0/?" not in buf.getvalue(), buf.getvalue()
