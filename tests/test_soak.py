"""Smoke test of the soak benchmark (bench/soak.py): a few steps with idle-worker kills and a SIGTERM/resume cycle."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load_soak():
    sys.path.insert(0, str(BENCH))  # soak.py imports its sibling `common`
    try:
        spec = importlib.util.spec_from_file_location("epo_bench_soak", BENCH / "soak.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_soak_runs_a_few_steps_with_kills_and_a_resume(tmp_path):
    soak = _load_soak()
    assert soak.kill_plan(300, 20, seed=0) and all(1 <= s <= 300 for s in soak.kill_plan(300, 20, seed=0))
    res = soak.soak(steps=3, kill_every=1, sigterm_at=2, seed=0, workdir=tmp_path)
    assert res["legs"] == 2 and res["kills"] == [1, 2, 3]
    assert res["no_lost_step"] and res["metrics_equal"] and res["kills_logged"], res
    assert res["episodes_lost_to_faults"] == 0
    assert "| every step 1..3 logged exactly once | yes |" in soak.render(res, "python bench/soak.py --steps 3")
