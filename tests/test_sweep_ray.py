"""`epo sweep --ray`: each run a Ray task on a local 2-CPU instance (the runs are stand-in commands here: the
miniature grid's real runs are tested without Ray in test_sweep.py), and the GPU reservation checks."""

from __future__ import annotations

import sys

import pytest
import yaml

from epo.config import ConfigError
from epo.sweep import load_grid, runner
from epo.sweep.runner import read_status, run_sweep


def _grid(tmp_path, *overrides: str):
    path = tmp_path / "grid.yaml"
    raw = {"base": "quest_demo_cpu", "overrides": list(overrides), "seeds": [0, 1], "methods": {"a": [], "b": []}}
    path.write_text(yaml.safe_dump(raw))
    return load_grid(path)


def test_ray_runs_every_run_as_a_task_and_records_each(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'epo[ray]')")
    show = "import os, sys; print('run', sys.argv[1], 'CUDA_VISIBLE_DEVICES=' + repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"
    fake = lambda grid, run, sweep_dir: [sys.executable, "-c", show, run.run_id]  # noqa: E731
    monkeypatch.setattr(runner, "train_command", fake)
    lines: list[str] = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        status = run_sweep(_grid(tmp_path), tmp_path / "s", ray=True, echo=lines.append)
    finally:
        ray.shutdown()
    assert sorted(status) == ["a/seed0", "a/seed1", "b/seed0", "b/seed1"]
    assert all(v["state"] == "done" for v in status.values()) and read_status(tmp_path / "s") == status
    assert "submitted 4 runs to Ray (1.0 CPU, 0.0 GPU each)" in lines
    assert "run b/seed1 CUDA_VISIBLE_DEVICES=" in (tmp_path / "s" / "b" / "seed1.log").read_text()


def test_gpu_reservations_are_checked_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ConfigError, match="add --gpus-per-run 1"):
        run_sweep(_grid(tmp_path, "model.device=cuda"), tmp_path / "s", ray=True)
    with pytest.raises(ConfigError, match="1 x --jobs 2: needs 2 groups of a whole number of GPUs, and 1 are visible"):
        run_sweep(_grid(tmp_path), tmp_path / "s", gpus_per_run=1, jobs=2)
    assert not (tmp_path / "s").exists()  # refused before the sweep dir was made
    lines: list[str] = []
    runner.check_gpus(_grid(tmp_path), _grid(tmp_path).runs(), True, 0.0, lines.append)
    assert lines == ["--ray without --gpus-per-run: Ray hides GPUs from the runs, so model.device=auto trains on CPU"]
    runner.check_gpus(_grid(tmp_path, "model.device=cuda"), _grid(tmp_path).runs(), True, 1.0, lines.append)
    assert len(lines) == 1  # a GPU reserved per run: nothing to say


def test_local_lanes_each_get_their_own_gpus(tmp_path, monkeypatch):
    """--jobs 2 --gpus-per-run 2 on a (pretend) 4-GPU machine: every run sees two GPUs, and runs at once never
    share one (the stand-in runs overlap in time: each waits until both lanes have started)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    show = (
        "import os, pathlib, sys, time; d = pathlib.Path(sys.argv[1]); "
        "(d / sys.argv[2].replace('/', '_')).write_text(os.environ['CUDA_VISIBLE_DEVICES']); "
        "t = time.time(); [time.sleep(0.05) for _ in range(100) if len(list(d.iterdir())) < 2 and time.time() - t < 5]"
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    fake = lambda grid, run, sweep_dir: [sys.executable, "-c", show, str(marks), run.run_id]  # noqa: E731
    monkeypatch.setattr(runner, "train_command", fake)
    status = run_sweep(_grid(tmp_path), tmp_path / "s", jobs=2, gpus_per_run=2)
    assert all(v["state"] == "done" for v in status.values()) and len(status) == 4
    seen = {p.name: p.read_text() for p in marks.iterdir()}
    assert set(seen.values()) == {"0,1", "2,3"}  # two lanes, two disjoint pairs of GPUs
    assert seen["a_seed0"] != seen["b_seed0"]  # the first two runs ran at once, on different GPUs
