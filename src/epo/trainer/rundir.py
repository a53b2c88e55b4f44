"""Who may write a run directory, what may change when a run is resumed, and how an interrupted run ends.

Ownership. A process owns RUN_DIR while it holds an exclusive `fcntl.flock` on RUN_DIR/.lock, which also holds its
PID. The kernel drops the lock when the process ends for any reason (exception, SIGKILL, power loss of the
process), so a lock left by a dead process is stale by construction: the next owner takes it over and says so.
A second process asking for the same dir is refused with one line naming the owner's PID. A new run checks that
the dir is empty *before* writing anything (the lock file included), so refusing a dir never changes it.

    with own_run_dir(run_dir, resume=False):   # RunDirError if owned by another process or not empty
        ...                                    # nested calls for the same dir in the same process are no-ops

Resume policy (docs/RELIABILITY.md, "Run directories and resume"). The keys in `RESUME_ALLOWED` change how the
run continues (learning rate, schedule length, eval/checkpoint cadence, logging, workers, memory knobs) and may
be overridden on `--resume`; each change is printed and appended to RUN_DIR/resumes.jsonl. Every other key is
locked: it changes what the checkpoint holds or means (algorithm, model, LoRA, value model, EPO history, the
task stream...), and changing it is refused with one line naming the key.

Exit codes of `epo train`: 0 done; 2 an error the user can fix (one line); 3 stopped by its own cascade monitor
(`diag.monitor_action=stop`) after its checkpoint and report; 130 stopped by SIGINT and 143 stopped by SIGTERM
(128 + signal number, the shell convention) after saving a checkpoint, with the resume command printed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import shlex
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epo.config import Config, load_config
from epo.errors import ResumeConfigError, RunDirError
from epo.fsio import fsync_dir, fsync_file

LOCK_FILE = ".lock"
RESUMES_FILE = "resumes.jsonl"
CONFIG_FILE = "config.yaml"
RUN_MARKERS = (CONFIG_FILE, "metrics.jsonl", "checkpoints")

EXIT_ERROR = 2
EXIT_MONITOR_STOP = 3
"""Exit code of a run its cascade monitor stopped (`diag.monitor_action=stop`): not a crash (1/2), not a Ctrl-C
(130/143), so a script or `epo sweep` can tell "the run chose to stop" from "someone stopped it"."""
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""Exit code of a run stopped gracefully by a signal (after its checkpoint): 128 + the signal number."""

RESUME_ALLOWED: tuple[str, ...] = (
    "optim.lr",
    "optim.value_lr",
    "optim.weight_decay",
    "optim.grad_clip",
    "optim.warmup_ratio",
    "optim.min_lr_ratio",
    "train.total_steps",
    "train.eval_every",
    "train.eval_at_start",
    "train.eval_episodes",
    "train.eval_temperature",
    "train.save_every",
    "train.keep_last",
    "train.micro_batch_tokens",
    "train.tensorboard",
    "train.wandb",
    "train.report",
    "train.deterministic",
    "train.malloc_mmap_threshold",  # memory vs speed, not results: the recovery after an out-of-memory kill
    "train.malloc_trim",
    "env.num_workers",
    "env.pool_mode",
    "env.step_timeout_s",
    "rollout.generation_batch_size",
    "model.device",
    "model.gradient_checkpointing",
    "model.logprob_chunk_tokens",
)
"""Config keys a resumed run may change. Learning-rate keys are applied to the restored optimizer and scheduler
(the schedule is recomputed at the checkpoint's step); train.deterministic when the resumed process starts; all
others are read afresh every step."""


# ----------------------------------------------------------------------------- ownership


@dataclass
class _Lock:
    path: Path
    fd: int
    depth: int = 1


_HELD: dict[str, _Lock] = {}


def _key(run_dir: Path) -> str:
    return str(run_dir.resolve())


def is_run_dir(path: Path) -> bool:
    return any((path / m).exists() for m in RUN_MARKERS)


def _contents(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE) if path.is_dir() else []


def _check_new(path: Path) -> None:
    """A new run needs a missing or empty dir. Read-only: a refused dir is left exactly as it was."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--run-dir {path}: exists and is not a directory")
    if is_run_dir(path):
        raise RunDirError(
            f"--run-dir {path}: already holds a run; continue it with `epo train --resume {shlex.quote(str(path))}` "
            "or choose a new --run-dir"
        )
    if _contents(path):
        raise RunDirError(f"--run-dir {path}: not empty ({', '.join(_contents(path)[:3])}...); choose a new --run-dir")


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"--run-dir {path}: cannot create it ({e.strerror})") from None


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _try_lock(path: Path, fd: int) -> None:
    """flock the fd or raise RunDirError naming the owner. Filesystems without flock fall back to the PID check."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        pid = _read_pid(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            owner = f"PID {pid}" if pid else "a process that has not written its PID yet"
            raise RunDirError(
                f"{path}: in use by another epo process ({owner}); wait for it to end or stop it first"
            ) from None
        if pid and pid != os.getpid() and _pid_alive(pid):  # no flock here (e.g. some network filesystems)
            raise RunDirError(f"{path}: in use by another epo process (PID {pid}; no file locking here)") from None


def _lock(path: Path, create: bool) -> int:
    """Open RUN_DIR/.lock and flock it; nothing is written yet (a refused dir stays as it was)."""
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except OSError as e:  # read-only or foreign dir: the user can fix it
        raise RunDirError(f"{path}: cannot open {LOCK_FILE} ({e.strerror})") from None
    try:
        _try_lock(path, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _stamp(path: Path, fd: int, on_stale: Callable[[str], None]) -> _Lock:
    """Write our PID into the held lock file (after saying whose stale lock it replaces)."""
    previous = _read_pid(fd)
    if previous and previous != os.getpid():
        on_stale(
            f"{path}: taking over the stale lock of PID {previous}: that process ended without a clean exit (killed, "
            "e.g. by the kernel's out-of-memory killer, or its machine stopped); work after its last checkpoint is redone"
        )
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.fsync(fd)
    return _Lock(path, fd)


def _unlock(fd: int, clear: bool) -> None:
    """clear=True: empty the file first (an empty lock file marks a clean exit; a PID left in it, a crash)."""
    with contextlib.suppress(OSError):
        if clear:
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def own_run_dir(
    run_dir: str | Path, resume: bool = False, on_stale: Callable[[str], None] | None = None
) -> Iterator[Path]:
    """Hold RUN_DIR exclusively for the `with` block (see module doc). resume=False: the dir must be new or empty;
    resume=True: it must hold a run (config.yaml). Raises RunDirError with one line otherwise."""
    path = Path(run_dir)
    held = _HELD.get(_key(path)) if path.exists() else None
    if held is not None:  # this process already owns it (the pipeline, then its Trainer)
        held.depth += 1
        try:
            yield path
        finally:
            held.depth -= 1
        return
    on_stale = on_stale or (lambda msg: None)
    if resume:
        if not (path / CONFIG_FILE).is_file():
            raise RunDirError(f"--resume {path}: no {CONFIG_FILE} there (not a run dir)")
        fd = _lock(path, create=True)
    else:
        # An existing lock file: name a live owner first. Then check, and only then write anything.
        fd = _lock(path, create=False) if (path / LOCK_FILE).is_file() else None
        try:
            _check_new(path)
            _mkdir(path)
            fd = _lock(path, create=True) if fd is None else fd
            _check_new(path)  # a run created between the first check and the lock
        except BaseException:
            if fd is not None:
                _unlock(fd, clear=False)
            raise
    lock = _stamp(path, fd, on_stale)
    _HELD[_key(path)] = lock
    try:
        yield path
    finally:
        del _HELD[_key(path)]
        _unlock(lock.fd, clear=True)


def owner_pid(run_dir: str | Path) -> int | None:
    """PID of the process holding RUN_DIR, or None if nobody holds it (a PID left by a dead process is stale)."""
    lock_path = Path(run_dir) / LOCK_FILE
    if not lock_path.is_file():
        return None
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_pid(fd)
    finally:
        os.close(fd)
    return None


# ----------------------------------------------------------------------------- resume policy


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every config field (dicts and lists are single values)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flat(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def resume_changes(saved: Config, wanted: Config, run_dir: str | Path) -> dict[str, tuple[Any, Any]]:
    """key -> (saved, wanted) for every changed key; ResumeConfigError naming the locked keys that changed.

    The one change that is not the user's: a warm-start run killed during behaviour cloning saved init_from='';
    its warm start then becomes init_from=RUN_DIR/sft, as in the original run."""
    before, after = _flat(saved), _flat(wanted)
    if saved.sft.warm_start and not saved.init_from and wanted.init_from == str(Path(run_dir) / "sft"):
        before["init_from"] = wanted.init_from
    changes = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    locked = [k for k in changes if k not in RESUME_ALLOWED]
    if locked:
        shown = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in locked)
        raise ResumeConfigError(
            f"{shown}: cannot change on --resume (the checkpoint depends on it; start a new run to change it; "
            "allowed: lr, schedule, total steps, eval/save cadence, logging, workers, device)"
        )
    return changes


def saved_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"--resume {run_dir}: no {CONFIG_FILE} there (not a run dir)")
    return load_config(path)


def log_resume(run_dir: Path, step: int, changes: dict[str, tuple[Any, Any]], say: Callable[[str], None]) -> None:
    """Print the overrides and append one line to RUN_DIR/resumes.jsonl (every resume, with or without changes)."""
    for key, (old, new) in changes.items():
        say(f"resume override: {key} {old!r} -> {new!r}")
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "step": step,
        "pid": os.getpid(),
        "overrides": {k: {"from": old, "to": new} for k, (old, new) in changes.items()},
    }
    with open(run_dir / RESUMES_FILE, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def resume_command(run_dir: str | Path) -> str:
    return f"epo train --resume {shlex.quote(str(run_dir))}"


# ----------------------------------------------------------------------------- atomic output dirs


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temp dir next to `final`; on success fsync its files and rename it to `final` (replacing an old one
    only after the new one is complete). On failure the temp dir is removed and `final` is untouched."""
    from epo.trainer.checkpoint import _move_into_place

    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                fsync_file(p)
        fsync_dir(tmp)
        _move_into_place(tmp, final)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise


def apply_optim_overrides(optimizer, scheduler, lr: float, weight_decay: float) -> None:
    """After loading a checkpoint's optimizer/scheduler state (which carries the old lr and weight decay), use the
    configured ones: base lr and weight decay of every group, and the current lr recomputed by the schedule at the
    restored step. Unchanged values give back exactly the restored lr (the same product the scheduler computes)."""
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = lr
        group["weight_decay"] = weight_decay
        group["lr"] = lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
