"""train.deterministic: deterministic kernels on, recorded in provenance, and nothing carried into the next run."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from epo.config import load_config
from epo.telemetry.metrics import read_metrics
from epo.telemetry.provenance import read_provenance
from epo.testing import tiny_run
from epo.trainer import setup
from epo.trainer.trainer import Trainer

QUIET = Console(quiet=True)


@pytest.fixture(autouse=True)
def _restore_torch_flags():
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic = before[1]
    setup._DETERMINISM_SET_BY_EPO = False


def _run(tmp_path, name, *overrides, console=QUIET):
    trainer = Trainer(load_config(None, tiny_run("train.total_steps=2", *overrides)), tmp_path / name, console=console)
    enabled_during_run = torch.are_deterministic_algorithms_enabled()
    trainer.train()
    return trainer, enabled_during_run


def _comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


def test_a_deterministic_run_matches_a_default_one_on_cpu_and_leaves_nothing_behind(tmp_path):
    console = Console(record=True, width=200, file=io.StringIO())
    _, on = _run(tmp_path, "det", "train.deterministic=true", console=console)
    assert on and "deterministic kernels (train.deterministic)" in console.export_text()
    assert read_provenance(tmp_path / "det")[0]["deterministic"] is True
    _, still_on = _run(tmp_path, "plain")  # the next run in this process starts without the flag
    assert not still_on
    assert read_provenance(tmp_path / "plain")[0]["deterministic"] is False
    # CPU kernels are deterministic already: the flag changes no number here (on CUDA it is what makes runs repeat)
    assert _comparable(read_metrics(tmp_path / "det")) == _comparable(read_metrics(tmp_path / "plain"))


def test_a_callers_own_deterministic_setting_is_left_alone():
    torch.use_deterministic_algorithms(True)
    setup.use_deterministic_kernels(False)
    assert torch.are_deterministic_algorithms_enabled()
