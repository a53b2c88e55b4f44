"""Crash-safe file writes: a file is either its old or its new whole self, never torn (temp file + fsync + rename).
Run dirs, checkpoints, sweep status and configs all go through here."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (the directory entry, not only the file's bytes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temp file next to `path`, fsync it and rename it over `path`. A failed write (a full disk)
    leaves `path` as it was and removes the temp file. The temp name holds the process and thread, so concurrent
    writers (env workers filling one cache, sweeps sharing a status.json) never share a temp file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        tmp.write_text(text)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
