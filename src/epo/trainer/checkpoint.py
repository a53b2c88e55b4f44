"""Checkpoints that survive crashes, plus exact RNG capture and a Ctrl-C helper.

Layout of one run:

    runs/<name>/checkpoints/
        latest                      one line: the name of the newest complete checkpoint
        step_000010/
            model.safetensors       full weights (or adapter_model.safetensors for a LoRA adapter)
            value.safetensors       PPO critic, if any
            optim.pt                {"optimizers": {...}, "schedulers": {...}}
            state.pt                {"step", "extra", "rng"}: EPO history, monitor, task sampler, counters
            config.yaml             the resolved config
            MANIFEST.json           sha256 + size of every other file; written last

Crash safety: a checkpoint is written into a hidden temp dir next to its final place, every file is fsynced, and
only then is the dir renamed to `step_XXXXXX` (rename is atomic on POSIX). The `latest` pointer is replaced
atomically afterwards, and old checkpoints are pruned only after that. A crash at any point leaves every
checkpoint that was complete before it untouched; a leftover temp dir is garbage and is removed by the next save.

Recovery: `load_checkpoint(run_dir)` verifies checksums; if the newest checkpoint is damaged it warns and falls
back to the previous valid one. `load_checkpoint(checkpoint_dir)` on a damaged checkpoint fails with one line.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from epo.errors import EpoError
from epo.fsio import atomic_write_text, fsync_dir, fsync_file

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
MANIFEST_FILE = "MANIFEST.json"
MODEL_FILE = "model.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
VALUE_FILE = "value.safetensors"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(EpoError, RuntimeError):
    """A missing, partial or corrupted checkpoint (always one line)."""


class DiskFullError(CheckpointError):
    """The disk filled up while a checkpoint was written: one line with the path, the bytes needed and the free
    bytes. The half-written temp dir is removed; every earlier checkpoint is untouched."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    model_state: dict[str, torch.Tensor] | None
    """Policy weights (CPU tensors) or only the LoRA adapter's (`is_adapter`)."""
    is_adapter: bool
    value_state: dict[str, torch.Tensor] | None
    optimizer_states: dict[str, Any]
    scheduler_states: dict[str, Any]
    extra_state: dict[str, Any]
    rng: dict[str, Any]
    config_yaml: str
    manifest: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy (legacy global), torch CPU and all CUDA generators, as plain types + tensors."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`; CUDA states are restored only when CUDA is available here too."""
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    keys = np.asarray(np_state["keys"].numpy() if torch.is_tensor(np_state["keys"]) else np_state["keys"])
    np.random.set_state(
        (np_state["name"], keys.astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    """random.setstate needs tuples all the way down (lists may come back from serialisation)."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


# ----------------------------------------------------------------------------- save


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor] | None,
    optimizer_states: dict[str, Any],
    scheduler_states: dict[str, Any] | None = None,
    extra_state: dict[str, Any] | None = None,
    rng: dict[str, Any] | None = None,
    config_yaml: str = "",
    value_state: dict[str, torch.Tensor] | None = None,
    is_adapter: bool = False,
    extra_files: dict[str, str | bytes] | None = None,
    write_files: Callable[[Path], None] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write run_dir/checkpoints/step_{step:06d} atomically, point `latest` at it, prune to `keep_last`.

    model_state: weights to store as safetensors (adapter_model.safetensors when is_adapter, else model.safetensors);
        None if `write_files` writes the model itself (e.g. `model.save_pretrained`).
    extra_state: EPO history, monitor, task sampler, counters... Allowed leaves: str, int, float, bool, None,
        torch tensors, in dicts/lists/tuples (so loading can use torch's safe `weights_only` unpickler).
    extra_files: small files written verbatim (adapter_config.json, tokenizer files...).
    write_files: callback that writes more files into the (temporary) checkpoint dir.
    Returns the final checkpoint dir.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last: must be >= 1, got {keep_last}")
    ckpt_root = Path(run_dir) / CHECKPOINTS_DIR
    ckpt_root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(ckpt_root)
    name = f"step_{step:06d}"
    tmp = ckpt_root / f".tmp-{name}-{os.getpid()}"
    final = ckpt_root / name
    needed = _tensor_bytes([model_state, value_state, optimizer_states, extra_state])
    try:
        tmp.mkdir()
        if model_state is not None:
            _save_safetensors(model_state, tmp / (ADAPTER_FILE if is_adapter else MODEL_FILE), step)
        if value_state is not None:
            _save_safetensors(value_state, tmp / VALUE_FILE, step)
        optim = {
            "optimizers": _sanitize(optimizer_states, "optimizer_states"),
            "schedulers": _sanitize(scheduler_states or {}, "scheduler_states"),
        }
        _torch_save(optim, tmp / "optim.pt", "optimizer_states")
        rng = rng if rng is not None else capture_rng_state()
        state = {
            "step": step,
            "is_adapter": is_adapter,
            "extra": _sanitize(extra_state or {}, "extra_state"),
            "rng": rng,
        }
        _torch_save(state, tmp / "state.pt", "extra_state")
        (tmp / "config.yaml").write_text(config_yaml)
        for rel, content in (extra_files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(content.encode() if isinstance(content, str) else content)
        if write_files is not None:
            write_files(tmp)
        _write_manifest(tmp, step)  # last: its presence marks the checkpoint complete
        fsync_dir(tmp)
        _move_into_place(tmp, final)
    except BaseException as error:
        free = _free_bytes(ckpt_root)  # before the temp dir is removed: what the writer saw
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_disk_full(error, free, needed):
            raise DiskFullError(_disk_full_message(final, needed, free)) from None
        raise
    atomic_write_text(ckpt_root / LATEST_FILE, name + "\n")
    _prune(ckpt_root, keep_last, newest=final)
    return final


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors inside nested dicts/lists: what a checkpoint of them needs on disk, roughly."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


_DISK_FULL_TEXT = ("no space left on device", "storagefull", "os error 28", "disk quota exceeded")


def _is_disk_full(error: BaseException, free: int | None, needed: int) -> bool:
    """ENOSPC/EDQUOT anywhere in the error chain (safetensors wraps it in its own error text), or a write error
    that lost the errno (torch.save's "unexpected pos 5248 vs 5140") while less than `needed` bytes are free."""
    e: BaseException | None = error
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(e).lower() for text in _DISK_FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return isinstance(error, OSError | RuntimeError) and free is not None and free < needed


def _disk_full_message(final: Path, needed: int, free: int | None) -> str:
    pointer = final.parent / LATEST_FILE
    previous = pointer.read_text().strip() if pointer.is_file() else ""
    kept = f"the previous checkpoint {previous} is still valid" if previous else "no earlier checkpoint exists"
    free_text = f", {_human_bytes(free)} free" if free is not None else ""
    return (
        f"no space left on device writing checkpoint {final}: needs about {_human_bytes(needed)}{free_text}; "
        f"{kept}. Free some space (or set train.keep_last lower) and resume"
    )


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, step: int) -> None:
    # safetensors refuses tensors that share memory (tied embeddings): store each as its own contiguous copy.
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[key] = t.clone() if ptr in seen else t
        seen.add(ptr)
    save_file(out, str(path), metadata={"step": str(step)})


def _torch_save(obj: Any, path: Path, what: str) -> None:
    try:
        torch.save(obj, path)
    except (OSError, RuntimeError):  # a write failure (e.g. a full disk), not an unpicklable object
        raise
    except Exception as e:  # e.g. a lambda somewhere in a state dict
        raise ValueError(f"{what}: cannot be saved ({type(e).__name__}: {str(e).splitlines()[0]})") from None


_SAFE_LEAVES = (str, int, float, bool, type(None), torch.Tensor)


def _sanitize(obj: Any, where: str) -> Any:
    """Numpy scalars -> Python scalars; reject anything torch's weights_only unpickler would refuse at resume time."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, _SAFE_LEAVES):
        return obj
    if isinstance(obj, dict):
        return {k: _sanitize(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_sanitize(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise ValueError(f"{where}: {type(obj).__name__} cannot be checkpointed (use lists, numbers, strings or tensors)")


def _write_manifest(tmp: Path, step: int) -> None:
    files = {
        str(p.relative_to(tmp)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    for rel in files:
        fsync_file(tmp / rel)
    manifest = {"format_version": FORMAT_VERSION, "step": step, "files": files}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    fsync_file(tmp / MANIFEST_FILE)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename tmp -> final. Re-saving an existing step: the old dir is moved aside first, deleted after."""
    trash = None
    if final.exists():
        trash = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, trash)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _prune(ckpt_root: Path, keep_last: int, newest: Path) -> None:
    """Keep `newest` and the keep_last-1 newest checkpoints before it. Checkpoints with a higher step (left by an
    abandoned run that was resumed from an earlier step) are never deleted here: they are finished checkpoints."""
    older = [p for p in list_checkpoints(ckpt_root.parent) if checkpoint_step(p) < checkpoint_step(newest)]
    for p in older[: max(0, len(older) - (keep_last - 1))]:
        shutil.rmtree(p, ignore_errors=True)


def _remove_stale_temp_dirs(ckpt_root: Path) -> None:
    for p in ckpt_root.iterdir():
        if p.is_dir() and (p.name.startswith(".tmp-") or p.name.startswith(".old-")):
            shutil.rmtree(p, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- find / verify / load


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint dir's name (step_000012 -> 12; -1 for another name)."""
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m else -1


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Finished-looking checkpoint dirs of a run (valid or not), oldest step first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)), key=checkpoint_step)


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Return the manifest of a complete, uncorrupted checkpoint dir; raise CheckpointError otherwise."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{path}: {MANIFEST_FILE} is unreadable") from None
    for rel, meta in files.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"{path}: missing file {rel}")
        if f.stat().st_size != meta["bytes"] or _sha256(f) != meta["sha256"]:
            raise CheckpointError(f"{path}: checksum mismatch in {rel} (file is corrupted)")
    return manifest


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest *valid* checkpoint of a run (pointer first, then older ones), or None. Warns on fallback."""
    candidates = _candidates_newest_first(Path(run_dir))
    for i, cand in enumerate(candidates):
        try:
            verify_checkpoint(cand)
        except CheckpointError as e:
            nxt = candidates[i + 1].name if i + 1 < len(candidates) else "none left"
            warnings.warn(f"skipping damaged checkpoint: {e}; falling back to {nxt}", RuntimeWarning, stacklevel=2)
            continue
        return cand
    return None


def _candidates_newest_first(run_dir: Path) -> list[Path]:
    """The `latest` pointer's target, then every older checkpoint (newest first). Without a pointer: all."""
    all_ckpts = list_checkpoints(run_dir)[::-1]
    pointer = run_dir / CHECKPOINTS_DIR / LATEST_FILE
    name = pointer.read_text().strip() if pointer.is_file() else ""
    target = run_dir / CHECKPOINTS_DIR / name
    if not name or not _STEP_DIR.match(name):
        return all_ckpts
    return [target] + [p for p in all_ckpts if checkpoint_step(p) < checkpoint_step(target)]


def load_checkpoint(path_or_run_dir: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint dir (strict) or the latest valid checkpoint of a run dir (with fallback, see module doc)."""
    path = Path(path_or_run_dir)
    if path.name == LATEST_FILE and path.is_file():
        path = path.parent.parent
    if path.name == CHECKPOINTS_DIR and not (path / MANIFEST_FILE).exists():
        path = path.parent
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if (path / CHECKPOINTS_DIR).is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path}: no valid checkpoint in {path / CHECKPOINTS_DIR}")
        path = found
    elif not (path / MANIFEST_FILE).exists() and not _STEP_DIR.match(path.name):
        raise CheckpointError(f"{path}: neither a checkpoint dir nor a run dir with {CHECKPOINTS_DIR}/")
    manifest = verify_checkpoint(path)
    return _read_contents(path, manifest, map_location)


def _read_contents(path: Path, manifest: dict[str, Any], map_location) -> Checkpoint:
    optim = _torch_load(path / "optim.pt", map_location)
    state = _torch_load(path / "state.pt", "cpu")
    is_adapter = bool(state.get("is_adapter", False))
    model_file = path / (ADAPTER_FILE if is_adapter else MODEL_FILE)
    return Checkpoint(
        path=path,
        step=int(state["step"]),
        model_state=load_file(str(model_file)) if model_file.is_file() else None,
        is_adapter=is_adapter,
        value_state=load_file(str(path / VALUE_FILE)) if (path / VALUE_FILE).is_file() else None,
        optimizer_states=optim["optimizers"],
        scheduler_states=optim["schedulers"],
        extra_state=state["extra"],
        rng=state["rng"],
        config_yaml=(path / "config.yaml").read_text() if (path / "config.yaml").is_file() else "",
        manifest=manifest,
    )


def _torch_load(path: Path, map_location) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0]})") from None


# ----------------------------------------------------------------------------- Ctrl-C


class GracefulExit:
    """Turn the first SIGINT/SIGTERM into a flag; a second signal aborts at once.

        with GracefulExit() as stop:
            for step in ...:
                train_one_step()
                if stop.requested:
                    save_checkpoint(...); break

    Handlers are installed only in the main thread (Python's rule); elsewhere this is a no-op flag.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, message: Callable[[str], None] | None = None) -> None:
        self.requested = False
        self.signal_name = ""
        self._message = message or (lambda s: warnings.warn(s, RuntimeWarning, stacklevel=2))
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulExit:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.requested:  # second signal: stop now
            self.__exit__()
            self._message(f"{name} received again: aborting now without saving; checkpoints already written are kept")
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.requested = True
        self.signal_name = name
        self._message(f"{name} received: finishing this step, saving a checkpoint, then exiting (again to abort now)")
