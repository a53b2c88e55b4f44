"""`epo sweep` and the sweep report: grid validation, resumable running, aggregation and paired statistics."""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from epo.cli import app
from epo.config import ConfigError
from epo.sweep import load_grid
from epo.sweep.aggregate import base_label, comparisons
from epo.sweep.grid import parse_grid
from epo.sweep.runner import prepare, read_status, run_env, run_sweep, train_command
from epo.sweep.stats import fmt_p, paired, sign_flip_p, summarize
from epo.testing import tiny_run

runner = CliRunner()
TINY = tiny_run(
    "model.trainable_layers=0",
    "env.max_turns=2",
    "rollout.tasks_per_step=1",
    "rollout.max_new_tokens=4",
    "agent.max_prompt_tokens=320",
    "train.eval_every=1",
    "train.mini_batch_size=8",
    "sft.warm_start=false",
)


def _grid_file(tmp_path, **extra):
    raw = {
        "base": "quest_demo_cpu",
        "overrides": TINY,
        "seeds": [0, 1],
        "methods": {"grpo": ["epo.mode=off"], "grpo_epo": ["epo.mode=on"]},
        **extra,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ----------------------------------------------------------------------------- statistics


def test_summary_uses_a_student_t_interval():
    s = summarize([0.2, 0.4, 0.6])
    assert s.mean == pytest.approx(0.4) and s.std == pytest.approx(0.2)
    half = 4.302652729911275 * 0.2 / math.sqrt(3)  # t_{0.975, 2}
    assert (s.ci_low, s.ci_high) == pytest.approx((0.4 - half, 0.4 + half))
    assert summarize([0.5]).ci_low == 0.5 and summarize([]) is None


def test_sign_flip_p_is_exact():
    # all 4 differences positive: only the all-plus and all-minus assignments reach |mean| -> 2/16
    assert sign_flip_p(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(2 / 16)
    assert sign_flip_p(np.array([1.0, -1.0])) == pytest.approx(1.0)
    d = np.random.default_rng(1).normal(0.3, 1.0, size=9)  # against a brute force over all 512 assignments
    brute = [abs(sum(x if (k >> i) & 1 else -x for i, x in enumerate(d))) >= abs(d.sum()) - 1e-9 for k in range(512)]
    assert sign_flip_p(d) == pytest.approx(sum(brute) / 512)


def test_sign_flip_p_on_many_pairs_is_monte_carlo_and_close_to_exact():
    # 28 pairs (Experiment 8) once enumerated 2^28 rows and was killed for memory; beyond 20 it samples
    d = np.random.default_rng(2).normal(0.4, 1.0, size=21)
    exact = sign_flip_p(d)  # 2^21 assignments, chunked
    assert sign_flip_p(d, exact_max=0) == pytest.approx(exact, abs=0.006)  # 200,000 draws: s.e. <= 0.0011
    p28 = sign_flip_p(np.random.default_rng(3).normal(0.0, 1.0, size=28))
    assert 0.0 < p28 <= 1.0


def test_paired_uses_shared_seeds_and_welch_otherwise():
    base = {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4}
    method = {0: 0.2, 1: 0.35, 2: 0.35, 3: 0.6}
    c = paired(method, base)
    d = np.array([0.1, 0.15, 0.05, 0.2])
    assert c.test == "paired" and c.n == 4 and c.diff == pytest.approx(d.mean())
    t = d.mean() / (d.std(ddof=1) / 2)
    assert t == pytest.approx(math.sqrt(15))  # mean 0.125, sd sqrt(1/240)
    # Student t with 3 dof has a closed-form CDF: F(t) = 1/2 + (u / (1 + u^2) + atan(u)) / pi, u = t / sqrt(3)
    u = t / math.sqrt(3)
    assert c.p_t == pytest.approx(2 * (0.5 - (u / (1 + u * u) + math.atan(u)) / math.pi))  # = 0.0305
    assert c.p_perm == pytest.approx(2 / 16)
    unpaired = paired({10: 0.5, 11: 0.7}, {0: 0.1, 1: 0.2})
    assert unpaired.test == "welch" and unpaired.p_perm is None


def test_p_is_not_reported_where_the_t_test_is_undefined():
    # every paired difference equal (here +25 points, and 0): t = x/0 or 0/0, no p; the sign-flip p still exists
    same = paired({0: 50.0, 1: 75.0, 2: 25.0}, {0: 25.0, 1: 50.0, 2: 0.0})
    assert same.p_t is None and same.diff == 25.0 and same.ci_low == same.ci_high == 25.0
    assert same.p_perm == pytest.approx(2 / 8) and fmt_p(same.p_t) == "n/a"
    assert paired({0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.0}).p_t is None
    constant = paired({10: 0.5, 11: 0.5}, {0: 0.1, 1: 0.1})  # Welch with both groups constant
    assert constant.test == "welch" and constant.p_t is None
    assert fmt_p(0.0306) == "0.031" and fmt_p(0.0012, ".2g") == "0.0012"


# ----------------------------------------------------------------------------- grid


def test_grid_expands_methods_by_seeds(tmp_path):
    grid = load_grid(_grid_file(tmp_path))
    runs = grid.runs()
    assert [r.run_id for r in runs] == ["grpo/seed0", "grpo_epo/seed0", "grpo/seed1", "grpo_epo/seed1"]
    assert runs[-1].overrides[-2:] == ("epo.mode=on", "train.seed=1")
    assert grid.config(runs[1]).epo.mode == "on" and grid.config(runs[1]).train.seed == 0


def test_per_seed_overrides_apply_to_every_method_of_that_seed(tmp_path):
    """A seed may bring its own task set (per_seed), and the methods stay paired on it."""
    path = _grid_file(tmp_path, per_seed={1: ["env.kwargs.num_iid=4", "env.kwargs.first_iid=8"]})
    grid = load_grid(path)
    by_id = {r.run_id: r for r in grid.runs()}
    assert "env.kwargs.first_iid=8" not in by_id["grpo/seed0"].overrides
    for method in ("grpo", "grpo_epo"):
        run = by_id[f"{method}/seed1"]  # common, then the seed's, then the method's overrides
        assert run.overrides == (
            *TINY,
            "env.kwargs.num_iid=4",
            "env.kwargs.first_iid=8",
            *grid.methods[method],
            "train.seed=1",
        )
        assert grid.config(run).env.kwargs["first_iid"] == 8
    assert load_grid(path).to_dict() == grid.to_dict() and grid.to_dict()["per_seed"] == {1: grid.per_seed[1]}
    assert "per_seed" not in load_grid(_grid_file(tmp_path)).to_dict()  # sweeps saved before per_seed still match


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"seeds": [0], "methods": {"a": []}}, "base"),
        ({"base": "quest_demo_cpu", "seeds": [], "methods": {"a": []}}, "seeds"),
        ({"base": "quest_demo_cpu", "seeds": [0, 0], "methods": {"a": []}}, "duplicates"),
        ({"base": "quest_demo_cpu", "seeds": [0], "methods": {"a": ["train.seed=3"]}}, "train.seed"),
        ({"base": "quest_demo_cpu", "seeds": [0], "methods": {"a": []}, "baseline": "b"}, "baseline"),
        ({"base": "quest_demo_cpu", "seeds": [0], "methods": {"a b": []}}, "names"),
        ({"base": "quest_demo_cpu", "seeds": [0], "methods": {"a": ["epo.mode=maybe"]}}, "method 'a': epo.mode"),
        ({"base": "quest_demo_cpu", "seeds": [0], "methods": {"a": []}, "sedes": 1}, "unknown key"),
        ({"base": "quest_demo_cpu", "seeds": [0], "methods": {"a": []}, "per_seed": {3: []}}, "per_seed.3: not one"),
        ({"base": "quest_demo_cpu", "seeds": [0], "methods": {"a": []}, "per_seed": {0: "x=1"}}, "per_seed.0: must"),
        (
            {"base": "quest_demo_cpu", "seeds": [0], "methods": {"a": []}, "per_seed": {0: ["train.seed=2"]}},
            "train.seed",
        ),
        (
            {"base": "quest_demo_cpu", "seeds": [0, 1], "methods": {"a": []}, "per_seed": {1: ["env.nope=1"]}},
            "env.nope",
        ),
    ],
)
def test_bad_grids_fail_with_one_line(tmp_path, raw, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_grid(raw, tmp_path)
    assert "\n" not in str(err.value)


def test_command_line_overrides_join_every_run_and_are_saved_with_the_grid(tmp_path):
    path = _grid_file(tmp_path)
    grid = load_grid(path, extra=["rollout.temperature=0.7"])
    assert all(r.overrides[len(TINY)] == "rollout.temperature=0.7" for r in grid.runs())  # after the grid's common
    assert grid.config(grid.runs()[1]).rollout.temperature == 0.7
    prepare(grid, tmp_path / "s")
    assert yaml.safe_load((tmp_path / "s" / "sweep.yaml").read_text())["overrides"][-1] == "rollout.temperature=0.7"
    with pytest.raises(ConfigError, match="holds a different grid"):
        prepare(load_grid(path), tmp_path / "s")  # a resume without them would run another grid
    with pytest.raises(ConfigError, match="epo.mode is set by the grid's method grpo, method grpo_epo"):
        load_grid(path, extra=["epo.mode=off"])  # the method's value would win: refused, not ignored
    cli = ["sweep", str(path), "rollout.temperature=0.7", "--out", str(tmp_path / "d"), "--dry-run"]
    result = runner.invoke(app, cli)
    assert result.exit_code == 0 and "rollout.temperature=0.7" in result.output, result.output
    result = runner.invoke(app, [*cli[:2], "rollout.temperature", *cli[3:]])
    assert result.exit_code == 2 and "expected key=value" in result.output, result.output


def test_train_command_resumes_a_started_run(tmp_path):
    grid = load_grid(_grid_file(tmp_path))
    run = grid.runs()[0]
    assert "--run-dir" in train_command(grid, run, tmp_path / "s")
    run.run_dir(tmp_path / "s").mkdir(parents=True)
    (run.run_dir(tmp_path / "s") / "config.yaml").write_text("{}")
    assert train_command(grid, run, tmp_path / "s")[-2:] == ["--resume", str(run.run_dir(tmp_path / "s"))]


def test_dry_run_prints_list_overrides_as_written(tmp_path):
    grid_path = tmp_path / "g.yaml"
    grid_path.write_text(
        yaml.safe_dump({"base": "quest_demo_cpu", "seeds": [0], "methods": {"a": ["env.eval_splits=[iid]"]}})
    )
    result = runner.invoke(app, ["sweep", str(grid_path), "--out", str(tmp_path / "s"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "env.eval_splits=[iid]" in result.output  # not eaten as console markup


def test_dry_run_shows_what_a_rerun_does(tmp_path):
    grid_path, out = tmp_path / "g.yaml", tmp_path / "s"
    grid_path.write_text(yaml.safe_dump({"base": "quest_demo_cpu", "seeds": [0, 1], "methods": {"a": [], "b": []}}))
    out.mkdir()
    (out / "status.json").write_text(json.dumps({"a/seed0": {"state": "done", "exit_code": 0, "seconds": 1.0}}))
    (out / "a" / "seed1").mkdir(parents=True)
    (out / "a" / "seed1" / "config.yaml").write_text("{}")  # started, interrupted
    result = runner.invoke(app, ["sweep", str(grid_path), "--out", str(out), "--dry-run", "--methods", "a"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].endswith("1 done, 1 to run (dry run)")
    assert lines[1:] == [f"-m epo.cli train --resume {out / 'a' / 'seed1'}"]
    assert not (out / "sweep.yaml").exists()  # a dry run writes nothing


# ----------------------------------------------------------------------------- end to end (miniature grid)


def test_miniature_sweep_runs_resumes_and_aggregates(tmp_path):
    grid_path, out = _grid_file(tmp_path), tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", str(grid_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    status = read_status(out)
    assert sorted(status) == ["grpo/seed0", "grpo/seed1", "grpo_epo/seed0", "grpo_epo/seed1"]
    assert all(v["state"] == "done" for v in status.values())
    summary = (out / "report" / "summary.md").read_text()
    assert "| grpo_epo | 2 |" in summary and "paired" in summary
    results = json.loads((out / "report" / "results.json").read_text())
    assert (
        results["summary"]["grpo"]["iid/succ_max"]["n"] == 2 and results["summary"]["grpo"]["iid/succ_last"]["n"] == 2
    )
    assert set(results["tests"]) == {"grpo_epo"}  # every method against the baseline (the first)
    # EPO runs log band fractions, the baseline does not
    assert results["summary"]["grpo_epo"]["frac_above"] is not None and results["summary"]["grpo"]["frac_above"] is None
    assert results["summary"]["grpo"]["uniform_steps"]["n"] == 2 and "uniform_steps" in summary
    assert (out / "report" / "success_curves.png").stat().st_size > 0
    assert (out / "report" / "per_seed.csv").read_text().count("\n") == 5
    # episodes pooled over seeds, per eval step and task, add up to what the runs' saved evals hold
    per_task = list(csv.DictReader((out / "report" / "per_task.csv").open()))
    saved = [json.loads(p.read_text()) for p in out.glob("grpo/seed*/eval/step_*_iid.json")]
    grpo_iid = [r for r in per_task if r["method"] == "grpo" and r["split"] == "iid"]
    assert sum(int(r["wins"]) for r in grpo_iid) == sum(sum(d["episode_wins"]) for d in saved)
    assert sum(int(r["episodes"]) for r in grpo_iid) == sum(len(d["episode_wins"]) for d in saved) > 0
    assert "## Episodes pooled over seeds" in summary and "Wins per task, `grpo` on iid" in summary
    assert "## Health: monitor warnings, collapses and env faults" in summary and "| grpo | 2 |" in summary
    torn = next(out.glob("grpo/seed0/eval/step_*_iid.json"))
    torn.write_text(torn.read_text()[:40])  # a torn eval file is named and left out, the report still written
    rep = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "torn")])
    assert (
        rep.exit_code == 0
        and f"unreadable or without episode lists: {torn}" in (tmp_path / "torn" / "summary.md").read_text()
    )
    # a rerun finds everything done and starts nothing
    again = runner.invoke(app, ["sweep", str(grid_path), "--out", str(out)])
    assert again.exit_code == 0 and "4 done, 0 to run" in again.output
    # `epo report SWEEP_DIR` aggregates the same way
    rep = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0 and (tmp_path / "rep" / "summary.md").is_file()
    # a run that did not finish (here: marked failed) is listed, not averaged with the finished ones
    status = read_status(out)
    status["grpo_epo/seed1"]["state"] = "failed"
    (out / "status.json").write_text(json.dumps(status))
    rep = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "rep2")])
    assert (
        rep.exit_code == 0
        and "started, not finished): grpo_epo/seed1 (failed, exit 0)" in (tmp_path / "rep2" / "summary.md").read_text()
    )
    assert json.loads((tmp_path / "rep2" / "results.json").read_text())["summary"]["grpo_epo"]["iid/succ_max"]["n"] == 1
    # where the runs were computed: one machine here; a run resumed on another machine makes the report say so
    assert "Computed on: " in summary and [len(ids) for ids in results["machines"].values()] == [4]
    prov = out / "grpo" / "seed1" / "provenance.jsonl"
    moved = {**json.loads(prov.read_text().splitlines()[0]), "device_name": "Other CPU", "from_step": 1}
    prov.write_text(prov.read_text() + json.dumps(moved) + "\n")
    rep = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "mixed")])
    assert rep.exit_code == 0 and "not all computed alike" in (tmp_path / "mixed" / "summary.md").read_text()
    # a run that collapsed (won an eval, then won nothing with >90% invalid actions) is said on the console too
    metrics = out / "grpo" / "seed0" / "metrics.jsonl"
    evals = [{"step": 98, "eval/iid/success": 0.5}, {"step": 99, "eval/iid/success": 0.0, "eval/iid/invalid_rate": 1.0}]
    metrics.write_text(metrics.read_text() + "".join(json.dumps(r) + "\n" for r in evals))
    rep = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "collapsed")])
    assert rep.exit_code == 0 and "grpo: 1 collapsed run(s) (seed 0)" in rep.output


def test_uniform_steps_counts_steps_without_a_mixed_group(tmp_path):
    from epo.report.data import load_run
    from epo.sweep.aggregate import seed_numbers

    groups = [(1.0, 0.0), (0.5, 0.5), (0.5, 0.0), (0.0, 0.0)]  # (all lost, all won) per step: steps 1-2 uniform
    rows = [
        {"step": i + 1, "rollout/groups_all_lost": a, "rollout/groups_all_won": b} for i, (a, b) in enumerate(groups)
    ]
    rows[2]["rollout/filter_rounds"] = 3
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    numbers = seed_numbers(load_run(tmp_path), [])
    assert numbers["uniform_steps"] == 0.5 and numbers["filter_rounds"] == 3


def test_the_progress_score_is_aggregated_only_where_runs_logged_it(tmp_path):
    from epo.report.data import load_run
    from epo.sweep.aggregate import render, seed_numbers

    rows = [{"step": 0, "eval/iid/success": 0.0, "eval/iid/score_mean": 8.0}]
    rows.append({"step": 2, "eval/iid/success": 0.0, "eval/iid/score_mean": 21.5})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert seed_numbers(load_run(tmp_path), ["iid"])["iid/score_last"] == 21.5
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/iid/success": 0.5}) + "\n")
    assert "iid/score_last" not in seed_numbers(load_run(tmp_path), ["iid"])  # quest, ALFWorld: no column
    grid = {"base": "quest_grpo_cpu", "overrides": [], "seeds": [0, 1], "baseline": "grpo", "unfinished": []}
    score = summarize([20.0, 23.0]).as_dict()
    for summary, shown in (({"grpo": {"iid/score_last": score}}, True), ({"grpo": {}}, False)):
        text = render({"grid": grid, "splits": ["iid"], "summary": summary, "tests": {}}, [])
        assert ("iid/score_last" in text) == shown


def test_a_failing_run_is_reported_and_retried(tmp_path):
    methods = {"ok": ["train.total_steps=1"], "bad": ["env.kwargs.no_such_knob=1"]}
    grid_path, out = _grid_file(tmp_path, methods=methods, seeds=[0]), tmp_path / "s"
    part = runner.invoke(app, ["sweep", str(grid_path), "--out", str(out), "--methods", "ok"])  # a grid in parts
    assert part.exit_code == 0 and "0 done, 1 to run" in part.output and "bad/seed0" not in read_status(out)
    result = runner.invoke(app, ["sweep", str(grid_path), "--out", str(out), "--jobs", "2"])
    assert result.exit_code == 2 and "1 run(s) failed: bad/seed0" in result.output
    assert "1 done, 1 to run" in result.output  # the first part is kept
    assert read_status(out)["bad/seed0"]["state"] == "failed" and read_status(out)["ok/seed0"]["state"] == "done"
    assert "no_such_knob" in (out / "bad" / "seed0.log").read_text()
    again = runner.invoke(app, ["sweep", str(grid_path), "--out", str(out)])
    assert again.exit_code == 2 and "1 done, 1 to run" in again.output
    # the report lists the run that failed before its first step (it has no metrics.jsonl to aggregate)
    rep = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    assert "bad/seed0 (failed, exit 2, no step logged)" in (tmp_path / "rep" / "summary.md").read_text()


def test_an_interrupted_run_stops_the_sweep_and_a_rerun_resumes(tmp_path, monkeypatch):
    """Ctrl-C reaches every process of the terminal's group: the run checkpoints and exits 130, and the sweep must
    start no further run (before, the queued runs all ran on)."""
    import epo.sweep.runner as sweep_runner

    methods = {"a": ["train.total_steps=1"], "b": ["train.total_steps=1"]}
    grid_path, out = _grid_file(tmp_path, methods=methods, seeds=[0]), tmp_path / "s"
    started = []
    monkeypatch.setattr(sweep_runner, "run_one", lambda cmd, log, env=None: started.append(cmd) or 130)
    result = runner.invoke(app, ["sweep", str(grid_path), "--out", str(out)])
    assert result.exit_code == 130 and "sweep stopped" in result.output and "rerun the same command" in result.output
    assert len(started) == 1  # the second run was never started
    assert read_status(out)["a/seed0"] == {**read_status(out)["a/seed0"], "state": "interrupted", "exit_code": 130}
    assert "b/seed0" not in read_status(out)
    monkeypatch.setattr(sweep_runner, "run_one", lambda cmd, log, env=None: started.append(cmd) or 0)
    status = sweep_runner.run_sweep(load_grid(grid_path), out, echo=lambda line: None)  # the rerun runs both
    assert len(started) == 3 and {v["state"] for v in status.values()} == {"done"}


def test_a_run_its_monitor_stops_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """Exit 3 (diag.monitor_action=stop) is the run's own decision, not a Ctrl-C: the sweep records it as stopped,
    starts the next run, and a rerun leaves it alone (it would only stop again); the report lists it, unaveraged."""
    import epo.sweep.runner as sweep_runner

    methods = {"a": ["train.total_steps=1"], "b": ["train.total_steps=1"]}
    grid_path, out = _grid_file(tmp_path, methods=methods, seeds=[0]), tmp_path / "s"
    started = []
    monkeypatch.setattr(sweep_runner, "run_one", lambda cmd, log, env=None: started.append(cmd) or 3)
    lines = []
    status = sweep_runner.run_sweep(load_grid(grid_path), out, echo=lines.append)
    assert len(started) == 2 and {v["state"] for v in status.values()} == {"stopped"}
    assert any("a/seed0: stopped by its monitor (exit 3" in line for line in lines)
    assert "2 run(s) stopped by their monitor" in lines[-1]
    again = []
    sweep_runner.run_sweep(load_grid(grid_path), out, echo=again.append)
    assert len(started) == 2 and "0 done, 2 stopped by their monitor, 0 to run" in again[0]
    rep = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 2 and "no report" in rep.output, rep.output
    assert "a/seed0 (stopped by its monitor, exit 3, no step logged)" in " ".join(rep.output.split())


CHILD = """
import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
def stop(signum, _frame):
    with open(out / "signals", "a") as f:
        f.write(f"{signum}\\n")
    time.sleep(0.3)  # a checkpoint takes a moment: a second forwarded signal would land here
    sys.exit(128 + signum)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
import os
(out / "ready").write_text(str(os.getsid(0)))
time.sleep(60)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_to_the_sweep_reaches_each_run_once(tmp_path, monkeypatch, signum):
    """A signal sent to the sweep alone used to leave its runs going. The sweep forwards it, once; the runs are their own
    sessions, so a signal to the sweep's whole group (a terminal's Ctrl-C, `kill -- -PGID`) cannot reach them a
    second time, which would abort their checkpoint."""
    import epo.sweep.runner as sweep_runner

    methods = {"a": ["train.total_steps=1"], "b": ["train.total_steps=1"]}
    grid_path, out = _grid_file(tmp_path, methods=methods, seeds=[0]), tmp_path / "s"
    monkeypatch.setattr(sweep_runner, "train_command", lambda g, r, d: [sys.executable, "-c", CHILD, str(tmp_path)])

    def send_when_ready():
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signum)  # the sweep only (a group signal here would also hit make/pytest's parents)

    handler_before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=send_when_ready, daemon=True).start()
    with pytest.raises(sweep_runner.SweepStopped) as stopped:
        run_sweep(load_grid(grid_path), out, echo=lambda line: None)
    assert stopped.value.exit_code == 128 + signum
    assert (tmp_path / "signals").read_text().split() == [str(int(signum))]
    assert read_status(out) == {"a/seed0": {**read_status(out)["a/seed0"], "state": "interrupted"}}
    assert int((tmp_path / "ready").read_text()) != os.getsid(0)  # its own session: out of reach of group signals
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the sweep's handlers are gone afterwards


def test_parallel_jobs_split_the_cores_and_bad_counts_fail(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert run_env(4)["OMP_NUM_THREADS"] == "2" and "OMP_NUM_THREADS" not in run_env(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert run_env(4)["OMP_NUM_THREADS"] == "3"  # the user's setting wins
    grid = load_grid(_grid_file(tmp_path))
    with pytest.raises(ConfigError, match="--jobs must be >= 1"):
        run_sweep(grid, tmp_path / "s", jobs=0)
    with pytest.raises(ConfigError, match="--methods: nope not in the grid"):
        run_sweep(grid, tmp_path / "s", methods=["nope"])
    with pytest.raises(ConfigError, match="with --ray"):
        run_sweep(grid, tmp_path / "s", ray=True, jobs=2)


def test_compare_adds_paired_comparisons_and_rejects_unknown_methods(tmp_path):
    methods = {"grpo": [], "ppo": ["algo.name=ppo"], "ppo_epo": ["algo.name=ppo", "epo.mode=on"]}
    grid = parse_grid(
        {"base": "quest_demo_cpu", "seeds": [0], "methods": methods, "compare": {"ppo_epo": "ppo"}},
        tmp_path,
        check_configs=False,
    )
    assert comparisons(grid.to_dict()) == [("ppo", "grpo"), ("ppo_epo", "grpo"), ("ppo_epo", "ppo")]
    for bad, message in [
        ({"ppo_epo": ["nope"]}, "'nope' is not one of the methods"),
        ({"ppo": "ppo"}, "compared with itself"),
        (["ppo"], "must be a mapping"),
    ]:
        raw = {"base": "quest_demo_cpu", "seeds": [0], "methods": methods, "compare": bad}
        with pytest.raises(ConfigError, match=message):
            parse_grid(raw, tmp_path, check_configs=False)


def test_a_sweep_dir_refuses_another_grid(tmp_path):
    out = tmp_path / "s"
    prepare(load_grid(_grid_file(tmp_path)), out)
    prepare(load_grid(_grid_file(tmp_path)), out)  # the same grid again: fine (a resume)
    with pytest.raises(ConfigError, match="holds a different grid"):
        prepare(load_grid(_grid_file(tmp_path, seeds=[5])), out)


def test_a_sweep_dir_takes_more_seeds_and_methods_but_not_a_change_to_a_run_it_holds(tmp_path):
    out, said = tmp_path / "s", []
    prepare(load_grid(_grid_file(tmp_path)), out)
    more = {"grpo": ["epo.mode=off"], "grpo_epo": ["epo.mode=on"], "bonus": ["algo.entropy_coef=0.01"]}
    more_grid = functools.partial(_grid_file, tmp_path, baseline="grpo")  # the default baseline is the first method
    prepare(load_grid(more_grid(seeds=[0, 1, 2], methods=more)), out, said.append)
    saved = yaml.safe_load((out / "sweep.yaml").read_text())
    assert saved["seeds"] == [0, 1, 2] and set(saved["methods"]) == {"grpo", "grpo_epo", "bonus"}
    assert said == [
        f"{out / 'sweep.yaml'}: grid extended with seeds [2] and methods ['bonus']; the runs it already held are kept"
    ]
    prepare(load_grid(more_grid(seeds=[0, 1, 2], methods=more)), out)  # now the saved grid: a resume
    changed = [
        {"seeds": [0, 1, 2, 3], "methods": {**more, "grpo": ["epo.mode=off", "optim.lr=1e-4"]}},  # a done run changed
        {"seeds": [0, 2, 3], "methods": more},  # seed 1 dropped
        {"seeds": [0, 1, 2], "methods": {"grpo": ["epo.mode=off"], "bonus": ["algo.entropy_coef=0.01"]}},  # one dropped
        {"seeds": [0, 1, 2, 3], "methods": more, "per_seed": {1: ["env.kwargs.num_iid=4"]}},  # seed 1's runs changed
        {"seeds": [0, 1, 2, 3], "methods": more, "overrides": [*TINY, "optim.lr=1e-4"]},  # every run changed
    ]
    for extra in changed:
        with pytest.raises(ConfigError, match="holds a different grid"):
            prepare(load_grid(more_grid(**extra)), out)
    said.clear()
    prepare(load_grid(more_grid(seeds=[2, 1, 0], methods=more)), out, said.append)  # only the order: the same runs
    assert yaml.safe_load((out / "sweep.yaml").read_text())["seeds"] == [2, 1, 0]
    assert said == [f"{out / 'sweep.yaml'}: the same runs in another order; the runs not yet done follow the new order"]
    prepare(load_grid(more_grid(seeds=[0, 1, 2, 3], methods=more, per_seed={3: ["env.kwargs.num_iid=4"]})), out)


def test_a_sweep_dir_resumes_from_another_checkout_of_the_same_base_preset(tmp_path):
    preset = (Path(__file__).parents[1] / "configs" / "quest_demo_cpu.yaml").read_text()
    first, second = tmp_path / "checkout1", tmp_path / "checkout2"
    for checkout in (first, second):
        checkout.mkdir()
        (checkout / "mine.yaml").write_text(preset)
    out = tmp_path / "s"
    prepare(load_grid(_grid_file(first, base="mine.yaml")), out)
    said = []
    prepare(load_grid(_grid_file(second, base="mine.yaml")), out, said.append)  # same grid and preset, another folder
    assert yaml.safe_load((out / "sweep.yaml").read_text())["base"] == str((second / "mine.yaml").resolve())
    assert len(said) == 1 and "base preset moved" in said[0]
    (first / "mine.yaml").write_text(preset.replace("quest", "quest ", 1))  # the old path now holds other text
    (out / "sweep.yaml").write_text((out / "sweep.yaml").read_text().replace(str(second), str(first)))
    with pytest.raises(ConfigError, match="holds a different grid"):
        prepare(load_grid(_grid_file(second, base="mine.yaml")), out)


def test_the_report_names_the_base_config_without_this_machines_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grids").mkdir()
    assert base_label("/home/someone/repo/configs/quest_demo_cpu.yaml") == "quest_demo_cpu"  # a preset
    assert base_label(str(tmp_path / "grids" / "mine.yaml")) == "grids/mine.yaml"  # under the working directory
    assert base_label("/elsewhere/mine.yaml") == "mine.yaml"
    assert base_label("quest_demo_cpu") == "quest_demo_cpu"


def test_two_sweeps_writing_one_dir_keep_each_others_status(tmp_path):
    """`--methods a` and `--methods b` run at once into one SWEEP_DIR: each records its runs without dropping the
    other's (each process started from the same empty status and never saw the other's entries)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_record_many, args=(tmp_path, m)) for m in ("grpo", "grpo_epo")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert sorted(read_status(tmp_path)) == sorted(f"{m}/seed{s}" for m in ("grpo", "grpo_epo") for s in range(20))


def _record_many(sweep_dir, method):
    from epo.sweep.runner import _record_status

    for seed in range(20):
        _record_status(sweep_dir, f"{method}/seed{seed}", {"state": "done", "exit_code": 0, "seconds": 1.0})


@pytest.mark.parametrize(
    "grid_file", sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_grid_loads_with_valid_run_configs(grid_file):
    grid = load_grid(grid_file, check_configs=True)  # every (method, seed) config is loaded and validated
    assert grid.baseline in grid.methods and len(grid.runs()) == len(grid.methods) * len(grid.seeds)


def test_the_health_section_names_collapsed_runs_warnings_and_env_faults(tmp_path):
    from epo.report.data import load_run
    from epo.sweep import health

    def run(name, evals, warnings=(), crashes=0, warm_faults=0):
        path = tmp_path / name
        path.mkdir(parents=True)
        if warm_faults:  # the run's own warm start lost oracle episodes
            (path / "sft").mkdir()
            fault = {"step": 0, "phase": "oracle", "worker": 0, "reason": "timeout", "task": "t", "message": "m"}
            (path / "sft" / "faults.jsonl").write_text((json.dumps(fault) + "\n") * warm_faults)
        rows = [{"step": 1, "rollout/env_crashes": crashes, "rollout/env_timeouts": 0}]
        rows += [
            {"step": step, "eval/iid/success": s, "eval/iid/invalid_rate": inv} for step, (s, inv) in enumerate(evals)
        ]
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (path / "warnings.jsonl").write_text("".join(json.dumps({"kind": k, "step": 1}) + "\n" for k in warnings))
        return load_run(path, name)

    runs = {
        "ppo": {
            0: run("ppo/0", [(0.5, 0.3), (0.6, 0.2), (0.0, 0.95)], ["late_climb", "late_climb", "invalid_collapse"]),
            1: run("ppo/1", [(0.2, 0.3), (0.0, 0.5)], crashes=3),  # 0% with valid actions: not a collapse
        },
        "grpo": {
            0: run("grpo/0", [(0.5, 0.3), (0.7, 0.1)], warm_faults=2),
            1: run("grpo/1", [(0.0, 0.3), (0.0, 0.95)]),
        },  # never won
    }
    got = health.method_health(runs, ["iid"])
    assert got["ppo"]["collapsed"] == [0] and got["grpo"]["collapsed"] == []
    assert got["ppo"]["warnings"] == {"invalid_collapse": 1, "late_climb": 1}  # runs with the kind, not warnings
    assert got["ppo"]["env_faults"]["crashed"] == 3 and got["grpo"]["env_faults"]["crashed"] == 0
    table = "\n".join(health.render(got))
    assert "| ppo | 2 | 1 | 1 | 1 (seed 0) | 3 | - | - | - | - | - |" in table
    assert "| grpo | 2 | - | - | - | - | - | - | 2 | - | - |" in table
    assert health.alerts(got) == [
        "ppo: 1 collapsed run(s) (seed 0); env faults: 3 crashed episode(s)",
        "grpo: 2 env fault(s) in the runs' warm starts (RUN/sft/faults.jsonl)",
    ]
