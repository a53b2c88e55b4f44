"""A full disk while writing a checkpoint: one line naming the path and the bytes needed; the previous checkpoint
stays valid (issue 12 item 6)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from collections import namedtuple

import pytest
import torch

from epo.trainer import checkpoint
from epo.trainer.checkpoint import CheckpointError, DiskFullError, load_checkpoint, save_checkpoint


def _save(run_dir, step: int, size: int = 1000):
    weights = {"w": torch.arange(size, dtype=torch.float32)}
    return save_checkpoint(
        run_dir, step, model_state=weights, optimizer_states={"policy": {"exp_avg": weights["w"] * 2}}
    )


def _assert_previous_intact(run_dir) -> None:
    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000001"]
    assert load_checkpoint(run_dir).step == 1


def test_enospc_from_the_weights_writer_is_one_line(tmp_path, monkeypatch):
    _save(tmp_path, 1)

    def full_disk(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\0" * 100)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(DiskFullError) as err:
        _save(tmp_path, 2)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and isinstance(err.value, CheckpointError)
    assert "no space left on device" in message and str(tmp_path / "checkpoints") in message
    assert "needs about 8.0 kB" in message  # 2 x 1000 float32 (weights + optimizer)
    assert "step_000001 is still valid" in message
    _assert_previous_intact(tmp_path)


def test_torch_writer_position_error_on_a_full_disk_is_reported_as_disk_full(tmp_path, monkeypatch):
    """torch.save on a full disk fails with '... unexpected pos 5248 vs 5140' (no errno): free space decides."""
    _save(tmp_path, 1)

    def torn(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed\nunexpected pos 5248 vs 5140")  # fmt: skip

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.torch, "save", torn)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 512, 512))
    with pytest.raises(DiskFullError, match=r"needs about 8.0 kB, 512 B free"):
        _save(tmp_path, 2)
    _assert_previous_intact(tmp_path)


def test_other_write_errors_are_not_called_disk_full(tmp_path, monkeypatch):
    _save(tmp_path, 1)

    def broken(tensors, path, metadata=None):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(OSError, match="I/O error") as err:
        _save(tmp_path, 2)
    assert not isinstance(err.value, DiskFullError)
    _assert_previous_intact(tmp_path)


REAL_DISK = """
import sys
from pathlib import Path
import torch
from epo.trainer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
run = Path(sys.argv[1])
w = {"w": torch.zeros(60_000)}  # 240 kB of weights + 240 kB of optimizer state: the second save cannot fit
save_checkpoint(run, 1, model_state=w, optimizer_states={"p": {"m": w["w"]}})
try:
    save_checkpoint(run, 2, model_state=w, optimizer_states={"p": {"m": w["w"]}})
except CheckpointError as e:
    print("ERROR", e)
print("LOADED", load_checkpoint(run).step)
"""


def test_a_real_full_tmpfs(tmp_path):
    """A 700 kB tmpfs in a user+mount namespace: a real ENOSPC from the real writers."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs util-linux `unshare` to mount a private tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(textwrap.dedent(REAL_DISK))
    probe = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unprivileged user+mount namespaces are not allowed here ({probe.stderr.decode().strip()[:80]})")
    cmd = f"mount -t tmpfs -o size=700k tmpfs {mnt} && {sys.executable} {script} {mnt / 'run'}"
    out = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", cmd],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[-1] == "LOADED 1", out.stdout
    (error,) = [line for line in lines if line.startswith("ERROR")]
    assert "no space left on device" in error and "needs about" in error and "step_000001 is still valid" in error
