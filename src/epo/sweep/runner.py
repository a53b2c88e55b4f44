"""Run a grid: each run is its own `epo train` process (a crash or OOM ends that run, not the sweep).

Resumable: SWEEP_DIR/status.json records each finished run; a rerun skips those, resumes runs that have a run dir
(`epo train --resume`), and starts the rest. Runs go one after another, `jobs` at a time on this machine (each run
with OMP_NUM_THREADS = cores // jobs unless set, so N runs do not oversubscribe the cores), or as Ray tasks
(`ray=True`, needs the `ray` extra; RAY_ADDRESS or a local instance), each asking for `cpus_per_run` CPUs so Ray
packs them.
Each run's console output goes to SWEEP_DIR/<method>/seed<s>.log.

Stop signals: each run is its own session, so the sweep alone receives Ctrl-C (or a SIGTERM sent to it or to its
process group) and forwards it to the running runs exactly once; they checkpoint and exit 130/143, the sweep starts
no further run and exits the same way. A second signal is forwarded again and, as with `epo train`, aborts at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from epo.config import ConfigError
from epo.fsio import atomic_write_text
from epo.sweep.grid import GRID_FILE, Grid, RunSpec
from epo.trainer.rundir import EXIT_INTERRUPTED, EXIT_MONITOR_STOP

INTERRUPTED = tuple(EXIT_INTERRUPTED.values())  # a run stopped by Ctrl-C / SIGTERM after its checkpoint (130, 143)
FINISHED = ("done", "stopped")
"""States a rerun leaves alone: done, or stopped by its own monitor (exit 3; rerunning would only stop it again)."""


def run_state(exit_code: int) -> str:
    """done (0), stopped by its monitor (3), interrupted by a signal (130/143, resumed by a rerun), else failed."""
    if exit_code == 0:
        return "done"
    if exit_code == EXIT_MONITOR_STOP:
        return "stopped"
    return "interrupted" if exit_code in INTERRUPTED else "failed"


class SweepStopped(Exception):
    """A stop signal ended the sweep: the running runs checkpointed, no further run was started."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code  # 128 + the signal number, as `epo train` exits


_RUNNING: set[subprocess.Popen] = set()  # the runs of this process now going, for forwarding stop signals
_FORWARDED: list[int] = []  # the stop signal already forwarded: a run that starts just after it gets it too
_RUNNING_LOCK = threading.Lock()


STATUS_FILE = "status.json"


def train_command(grid: Grid, run: RunSpec, sweep_dir: Path) -> list[str]:
    """The exact `epo train` command line of one run (a resume when its run dir already holds a config)."""
    run_dir = run.run_dir(sweep_dir)
    cli = [sys.executable, "-m", "epo.cli", "train"]
    if (run_dir / "config.yaml").is_file():
        return [*cli, "--resume", str(run_dir)]
    return [*cli, "--config", grid.base, "--run-dir", str(run_dir), *run.overrides]


def read_status(sweep_dir: Path) -> dict[str, dict]:
    path = Path(sweep_dir) / STATUS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"{path}: unreadable (torn write?); delete it to re-check every run") from None
    return data if isinstance(data, dict) else {}


def _record_status(sweep_dir: Path, run_id: str, entry: dict) -> None:
    """Add one run's entry to status.json: read, update, replace under an exclusive lock, so sweeps running other
    parts of the grid into the same SWEEP_DIR (`--methods`) at the same time keep each other's entries."""
    with open(Path(sweep_dir) / f".{STATUS_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        status = read_status(sweep_dir)
        status[run_id] = entry
        atomic_write_text(Path(sweep_dir) / STATUS_FILE, json.dumps(status, indent=1, sort_keys=True))


def prepare(grid: Grid, sweep_dir: Path, echo: Callable[[str], None] = lambda line: None, write: bool = True) -> None:
    """Create SWEEP_DIR with the grid; refuse a directory that holds a different grid. write=False (`--dry-run`):
    the same refusals, nothing created or updated."""
    saved = sweep_dir / GRID_FILE
    if saved.is_file():
        old = yaml.safe_load(saved.read_text())
        same = old == grid.to_dict()
        if not same and not _moved_base(old, grid, saved, echo, write) and not _extended(old, grid, saved, echo, write):
            raise ConfigError(
                f"{sweep_dir}: holds a different grid ({saved}); use another --out, or the same grid and command-line "
                "overrides (adding seeds or methods is allowed; changing what a finished run ran is not)"
            )
    elif write:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(yaml.safe_dump(grid.to_dict(), sort_keys=False))


def _moved_base(old: dict, grid: Grid, saved: Path, echo: Callable[[str], None], write: bool) -> bool:
    """True when the saved grid is this one with its base preset file at another path (the sweep dir or the checkout
    was moved to another machine or folder): same file name, and the same text where the old path still exists.
    Then sweep.yaml is updated to the new path, and the move is printed."""
    new = grid.to_dict()
    old_base, new_base = Path(str(old.get("base", ""))), Path(grid.base)
    if {**old, "base": grid.base} != new or old_base.name != new_base.name or not new_base.is_file():
        return False
    if old_base.is_file() and old_base.read_text() != new_base.read_text():
        return False
    if write:
        saved.write_text(yaml.safe_dump(new, sort_keys=False))
    echo(f"{saved}: base preset moved from {old_base} to {new_base}; sweep.yaml updated")
    return True


def _extended(old: dict, grid: Grid, saved: Path, echo: Callable[[str], None], write: bool) -> bool:
    """True when this grid only adds seeds or methods to the saved one (more seeds for a tighter interval, another
    arm against the same baseline) or lists the same ones in another order: every run the saved grid defined keeps
    its exact overrides, so the runs already done stay valid. Then sweep.yaml is updated and the change printed."""
    new = grid.to_dict()
    rest = ("seeds", "methods", "per_seed")
    old_methods, old_per_seed = old.get("methods", {}), old.get("per_seed", {})
    same_rest = {k: v for k, v in old.items() if k not in rest} == {k: v for k, v in new.items() if k not in rest}
    kept_seeds = set(old.get("seeds", [])) <= set(grid.seeds)
    kept_methods = all(grid.methods.get(m) == list(o) for m, o in old_methods.items())
    kept_per_seed = all(list(grid.per_seed.get(s, [])) == list(old_per_seed.get(s, [])) for s in old.get("seeds", []))
    if not (same_rest and kept_seeds and kept_methods and kept_per_seed):
        return False
    added_seeds = [s for s in grid.seeds if s not in old.get("seeds", [])]
    added_methods = [m for m in grid.methods if m not in old_methods]
    if write:
        atomic_write_text(saved, yaml.safe_dump(new, sort_keys=False))
    if not added_seeds and not added_methods:  # the same runs listed in another order: they run in the new one
        echo(f"{saved}: the same runs in another order; the runs not yet done follow the new order")
        return True
    what = [f"seeds {added_seeds}"] * bool(added_seeds) + [f"methods {added_methods}"] * bool(added_methods)
    echo(f"{saved}: grid extended with {' and '.join(what)}; the runs it already held are kept")
    return True


def run_one(cmd: list[str], log_path: str, env: dict[str, str] | None = None) -> int:
    """Run one `epo train` process, its output appended to log_path; returns its exit code."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        # a session of its own: a terminal's Ctrl-C or a SIGTERM to the sweep's group reaches the sweep only, which
        # forwards it once (two signals would make the run abort without its checkpoint)
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        with _RUNNING_LOCK:
            _RUNNING.add(proc)
            if _FORWARDED:  # the sweep was stopped between deciding to start this run and starting it
                proc.send_signal(_FORWARDED[-1])
        try:
            return proc.wait()
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)


def _forward(signum: int) -> None:
    with _RUNNING_LOCK:
        _FORWARDED.append(signum)
        for proc in _RUNNING:
            if proc.poll() is None:
                proc.send_signal(signum)


def _install_stop_handlers(on_signal: Callable[[int], None]) -> dict:
    """SIGINT/SIGTERM call on_signal (main thread only, where Python delivers signals); returns the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        old[signum] = signal.signal(signum, lambda s, _frame: on_signal(s))
    return old


def run_env(jobs: int) -> dict[str, str]:
    """The environment of each run: with `jobs` runs at once, each gets cores // jobs torch threads (unless the
    user set OMP_NUM_THREADS), since N runs with all-core thread pools are many times slower than N x 1 thread."""
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def plan(grid: Grid, status: dict[str, dict], methods: list[str] | None = None) -> tuple[list[RunSpec], list[RunSpec]]:
    """(the runs chosen by `methods`, those of them not yet finished by `status`): what a (re)run of the sweep does."""
    unknown = sorted(set(methods or []) - set(grid.methods))
    if unknown:
        raise ConfigError(f"--methods: {', '.join(unknown)} not in the grid ({', '.join(grid.methods)})")
    chosen = [r for r in grid.runs() if not methods or r.method in methods]
    return chosen, [r for r in chosen if status.get(r.run_id, {}).get("state") not in FINISHED]


def finished_line(chosen: list[RunSpec], pending: list[RunSpec], status: dict[str, dict]) -> str:
    """'X done' or 'X done, Y stopped by their monitor': what a rerun leaves alone."""
    finished = {r.run_id for r in chosen} - {r.run_id for r in pending}
    stopped = sum(status[run_id].get("state") == "stopped" for run_id in finished)
    line = f"{len(finished) - stopped} done"
    return line + (f", {stopped} stopped by their monitor" if stopped else "")


def run_sweep(
    grid: Grid,
    sweep_dir: str | Path,
    ray: bool = False,
    cpus_per_run: float = 1.0,
    echo: Callable[[str], None] = print,
    jobs: int = 1,
    methods: list[str] | None = None,
    gpus_per_run: float = 0.0,
) -> dict[str, dict]:
    """Run every pending run of the grid (of `methods` only, when given: a grid can be run in parts, into the same
    SWEEP_DIR, so the parts stay paired); returns the status ({run_id: {state, exit_code, seconds}})."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if ray and jobs != 1:
        raise ConfigError("--jobs is for this machine; with --ray, Ray packs the runs by --cpus-per-run")
    sweep_dir = Path(sweep_dir)
    status = read_status(sweep_dir)
    chosen, pending = plan(grid, status, methods)  # before prepare: a bad --methods leaves no sweep dir behind
    check_gpus(grid, chosen, ray, gpus_per_run, echo)
    gpu_slots = None if ray else local_gpu_slots(jobs, gpus_per_run)  # None, or a CUDA_VISIBLE_DEVICES per lane
    prepare(grid, sweep_dir, echo)
    echo(f"sweep {sweep_dir}: {finished_line(chosen, pending, status)}, {len(pending)} to run")
    todo = [(r, train_command(grid, r, sweep_dir), str(sweep_dir / r.method / f"seed{r.seed}.log")) for r in pending]

    lock = threading.Lock()  # with jobs > 1, runs finish on several threads

    def record(run: RunSpec, code: int, seconds: float) -> None:
        with lock:
            state = run_state(code)
            status[run.run_id] = {"state": state, "exit_code": code, "seconds": seconds}
            _record_status(sweep_dir, run.run_id, status[run.run_id])
            said = {
                "done": "done",
                "stopped": f"stopped by its monitor (exit {code}, checkpoint and report kept; not rerun)",
                "interrupted": f"interrupted (exit {code}, checkpoint kept)",
            }
            echo(f"{run.run_id}: {said.get(state, f'FAILED (exit {code})')} in {seconds:.0f} s")

    if ray:
        _run_on_ray(todo, cpus_per_run, gpus_per_run, record, echo)
        return status
    env = run_env(jobs)
    # A stop signal (forwarded to the runs, which checkpoint and exit 130/143) or a run that exits so on its own
    # starts no further run. Without this the queued runs would all still run, one after another, for hours.
    stop = threading.Event()
    exit_code = [130]

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            exit_code[0] = 128 + signum
            echo(f"{signal.Signals(signum).name}: stopping the running runs after their checkpoints (again: abort)")
        stop.set()
        _forward(signum)

    def one(i: int, run: RunSpec, cmd: list[str], log: str) -> None:
        if stop.is_set():
            return
        echo(f"[{i}/{len(todo)}] {run.run_id}: {' '.join(cmd[1:])}  (log: {log})")
        start = time.monotonic()
        if gpu_slots is None:
            code = run_one(cmd, log, env)
        else:  # this run's own GPU(s) while it runs
            slot = gpu_slots.get()
            try:
                code = run_one(cmd, log, {**env, "CUDA_VISIBLE_DEVICES": slot})
            finally:
                gpu_slots.put(slot)
        record(run, code, time.monotonic() - start)
        if code in INTERRUPTED and not stop.is_set():
            exit_code[0] = code
            stop.set()

    _FORWARDED.clear()
    old_handlers = _install_stop_handlers(on_signal)
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        for future in [pool.submit(one, i, *job) for i, job in enumerate(todo, 1)]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)
        _FORWARDED.clear()
    if n_stopped := sum(status.get(r.run_id, {}).get("state") == "stopped" for r, _, _ in todo):
        echo(f"{n_stopped} run(s) stopped by their monitor (diag.monitor_action=stop): listed, not averaged")
    if stop.is_set():
        raise SweepStopped(
            "sweep stopped; rerun the same command to resume the interrupted run(s) and the rest", exit_code[0]
        )
    return status


def visible_gpus() -> list[str]:
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES where set, else every GPU torch sees."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def local_gpu_slots(jobs: int, gpus_per_run: float) -> queue.Queue | None:
    """--gpus-per-run G with --jobs N on one machine: N disjoint groups of G of the visible GPUs, one per lane, so
    runs at once never share a GPU (without it every run would see every GPU and use the first)."""
    if not gpus_per_run:
        return None
    gpus = visible_gpus()
    if gpus_per_run != int(gpus_per_run) or jobs * int(gpus_per_run) > len(gpus):
        raise ConfigError(
            f"--gpus-per-run {gpus_per_run:g} x --jobs {jobs}: needs {jobs} groups of a whole number of GPUs, and "
            f"{len(gpus)} are visible ({','.join(gpus) or 'none'})"
        )
    g = int(gpus_per_run)
    slots: queue.Queue = queue.Queue()
    for lane in range(jobs):
        slots.put(",".join(gpus[lane * g : (lane + 1) * g]))
    return slots


def check_gpus(grid: Grid, runs: list[RunSpec], ray: bool, gpus_per_run: float, echo: Callable[[str], None]) -> None:
    """Ray sets CUDA_VISIBLE_DEVICES="" in a task that reserves no GPU, so its run could not see one: refuse
    model.device=cuda there, and say that model.device=auto will mean the CPU."""
    if gpus_per_run < 0:
        raise ConfigError(f"--gpus-per-run: GPUs for each run (>= 0), got {gpus_per_run:g}")
    if not ray or gpus_per_run > 0 or not runs:
        return
    devices = {grid.config(r).model.device for r in runs}
    if any(d.startswith("cuda") for d in devices):
        raise ConfigError(
            "model.device=cuda with --ray: Ray hides the GPUs from a run that reserves none; add --gpus-per-run 1"
        )
    if "auto" in devices:
        echo("--ray without --gpus-per-run: Ray hides GPUs from the runs, so model.device=auto trains on CPU")


def _run_on_ray(jobs, cpus_per_run: float, gpus_per_run: float, record, echo) -> None:
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs Ray: pip install 'epo[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run)(_timed_run)
    futures = {remote.remote(cmd, log): run for run, cmd, log in jobs}
    echo(f"submitted {len(futures)} runs to Ray ({cpus_per_run} CPU, {gpus_per_run} GPU each)")
    while futures:
        ready, _ = ray.wait(list(futures), num_returns=1)
        code, seconds = ray.get(ready[0])
        record(futures.pop(ready[0]), code, seconds)


def _timed_run(cmd: list[str], log: str) -> tuple[int, float]:
    start = time.monotonic()
    return run_one(cmd, log), time.monotonic() - start
