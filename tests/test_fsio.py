"""fsio.atomic_write_text: the old file or the new one, never half of one, and no temp file left by a failed write."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from epo.fsio import atomic_write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "status.json"
    atomic_write_text(target, "old")
    original = Path.write_text

    def half_then_disk_full(self, text, *args, **kwargs):
        original(self, text[:1], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(target, "new and longer")
    monkeypatch.undo()
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["status.json"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["status.json"]
