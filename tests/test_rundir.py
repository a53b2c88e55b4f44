"""Run-dir ownership, the resume policy, exit codes and one-line errors (issue 12 items 1, 2, 3, 7 and the CLI).

The lock tests use real second processes: a Python child that holds the lock, and a real `epo train` that is
stopped with SIGTERM while the test process tries to take its run dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from epo.cli import app
from epo.config import ConfigError, load_config, save_config
from epo.errors import EpoError, ResumeConfigError, RunDirError
from epo.telemetry.metrics import read_metrics
from epo.trainer import setup
from epo.trainer.checkpoint import list_checkpoints
from epo.trainer.rundir import (
    LOCK_FILE,
    RESUME_ALLOWED,
    RESUMES_FILE,
    _flat,
    apply_optim_overrides,
    atomic_dir,
    own_run_dir,
    owner_pid,
    resume_changes,
)
from test_cli import TINY, runner

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _fake_run(path: Path, *overrides: str) -> Path:
    """A run dir as a finished or killed run leaves it: its config and a metrics line (no model needed)."""
    path.mkdir(parents=True)
    save_config(load_config("quest_demo_cpu", [*TINY, *overrides]), path / "config.yaml")
    (path / "metrics.jsonl").write_text('{"step": 0}\n')
    return path


def _child(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, stdout=subprocess.PIPE)


HOLDER = """
import sys, time
from epo.trainer.rundir import own_run_dir
with own_run_dir(sys.argv[1], resume=sys.argv[2] == "resume"):
    print("owned", flush=True)
    time.sleep(120)
"""


# ----------------------------------------------------------------------------- item 1


def test_refusing_an_existing_run_changes_nothing_in_it(tmp_path):
    run = _fake_run(tmp_path / "run", "train.seed=5")
    before = _snapshot(run)
    line = _one_error_line(runner.invoke(app, ["train", "--run-dir", str(run), *TINY, "train.seed=9"]))
    assert "already holds a run" in line and f"--resume {run}" in line
    assert _snapshot(run) == before and not (run / LOCK_FILE).exists()  # config.yaml kept, not even a lock file
    assert load_config(str(run / "config.yaml")).train.seed == 5


def test_a_non_empty_dir_that_is_no_run_is_refused_too(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not empty"), own_run_dir(tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ----------------------------------------------------------------------------- item 2


def test_a_second_process_is_refused_with_the_owners_pid_and_a_dead_owners_lock_is_taken_over(tmp_path):
    run = _fake_run(tmp_path / "run")
    holder = _child(HOLDER, str(run), "resume")
    try:
        assert holder.stdout.readline().strip() == b"owned"
        assert owner_pid(run) == holder.pid
        line = _one_error_line(runner.invoke(app, ["train", "--resume", str(run)]))
        assert f"PID {holder.pid}" in line
        line = _one_error_line(runner.invoke(app, ["train", "--run-dir", str(run), *TINY]))
        assert f"PID {holder.pid}" in line  # the live owner is named before "already holds a run"
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the PID stays in the lock file
        holder.wait()
    assert (run / LOCK_FILE).read_text().strip() == str(holder.pid)
    assert owner_pid(run) is None  # the kernel dropped the flock with the process
    said = []
    with own_run_dir(run, resume=True, on_stale=said.append):
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
        with own_run_dir(run, resume=True):  # nested in the same process: fine
            pass
    assert said and f"stale lock of PID {holder.pid}" in said[0] and "without a clean exit" in said[0]
    assert (run / LOCK_FILE).read_text() == ""  # released: empty file


def test_the_lock_is_released_when_the_owner_fails(tmp_path):
    with pytest.raises(RuntimeError, match="a bug"), own_run_dir(tmp_path / "run"):
        raise RuntimeError("a bug")
    assert owner_pid(tmp_path / "run") is None
    holder = _child(HOLDER, str(tmp_path / "run"), "new")
    try:
        assert holder.stdout.readline().strip() == b"owned"  # another process can take it now
    finally:
        holder.kill()
        holder.wait()


def test_two_real_trainings_sigterm_exit_code_resume_command_and_allowed_override(tmp_path):
    """A real `epo train` owns its dir; the test process is refused; SIGTERM stops it with exit 143 and the resume
    command; `--resume` with an allowed override (train.total_steps) finishes the run and records the override."""
    run = tmp_path / "run"
    args = ["train", "--run-dir", str(run), *TINY, "train.total_steps=1000", "train.save_every=1000"]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "epo.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 240
        while not [r for r in _rows(run) if "actor/pg_loss" in r] and time.time() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.5)
        assert owner_pid(run) == proc.pid
        line = _one_error_line(runner.invoke(app, ["train", "--resume", str(run)]))
        assert f"PID {proc.pid}" in line
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=240)[0].decode()
    finally:
        proc.kill()
    assert proc.returncode == 143, out
    assert f"continue with: epo train --resume {run}" in " ".join(out.split())
    stopped = max(r["step"] for r in _rows(run))
    assert [p.name for p in list_checkpoints(run)] == [f"step_{stopped:06d}"]
    assert not (run / "final").exists()
    result = runner.invoke(app, ["train", "--resume", str(run), f"train.total_steps={stopped + 1}"])
    assert result.exit_code == 0, result.output
    assert f"resume override: train.total_steps 1000 -> {stopped + 1}" in result.output
    record = json.loads((run / RESUMES_FILE).read_text().splitlines()[-1])
    assert record["step"] == stopped and record["overrides"] == {"train.total_steps": {"from": 1000, "to": stopped + 1}}
    assert (run / "final" / "config.json").is_file()
    assert [r["step"] for r in _rows(run) if "actor/pg_loss" in r] == list(range(1, stopped + 2))


def _rows(run: Path) -> list[dict]:
    return read_metrics(run) if (run / "metrics.jsonl").is_file() else []


# ----------------------------------------------------------------------------- item 3


def test_resume_refuses_a_locked_key_with_one_line(tmp_path):
    run = _fake_run(tmp_path / "run")
    before = _snapshot(run)
    line = _one_error_line(runner.invoke(app, ["train", "--resume", str(run), "algo.name=ppo", "rollout.group_size=1"]))
    assert "algo.name ('grpo' -> 'ppo')" in line and "rollout.group_size" in line and "cannot change" in line
    assert {k: v for k, v in _snapshot(run).items() if k != LOCK_FILE} == before


@pytest.mark.parametrize("key", ["model.path", "model.lora.enabled", "epo.history", "model.value_model", "train.seed"])
def test_what_the_checkpoint_depends_on_is_locked(key):
    assert key not in RESUME_ALLOWED
    values = {
        "model.path": "embedded",
        "model.lora.enabled": "true",
        "epo.history": "ema",
        "model.value_model": "shared",
        "train.seed": "3",
    }
    base = ["model.path=tiny"] + (["algo.name=ppo", "rollout.group_size=1"] if key == "model.value_model" else [])
    saved = load_config(None, base)
    with pytest.raises(ResumeConfigError, match=f"^{key} "):
        resume_changes(saved, load_config(None, [*base, f"{key}={values[key]}"]), "runs/x")


def test_every_allowed_key_is_a_config_key_and_passes():
    keys = _flat(load_config(None))
    assert set(RESUME_ALLOWED) <= set(keys)
    saved = load_config(None)
    wanted = load_config(None, ["optim.lr=1e-4", "train.total_steps=300", "train.eval_every=2"])
    assert resume_changes(saved, wanted, "runs/x") == {
        "optim.lr": (5e-6, 1e-4),
        "train.total_steps": (150, 300),
        "train.eval_every": (5, 2),
    }


def test_resume_applies_a_new_lr_to_the_restored_optimizer_and_keeps_an_unchanged_one_exact():
    cfg = load_config(None)

    def trained(lr):
        w = torch.nn.Parameter(torch.ones(3))
        opt = setup.make_optimizer([w], lr, cfg)
        sched = setup.warmup_cosine(opt, 20, 0.1, 0.2)
        for _ in range(5):
            w.grad = torch.ones(3)
            opt.step()
            sched.step()
        return opt, sched

    opt, sched = trained(1e-3)
    for lr, weight_decay in ((1e-3, 0.01), (5e-3, 0.0)):
        opt2, sched2 = trained(7.0)  # fresh objects that load the saved state, as a resume does
        opt2.load_state_dict(opt.state_dict())
        sched2.load_state_dict(sched.state_dict())
        apply_optim_overrides(opt2, sched2, lr, weight_decay)
        expected = opt.param_groups[0]["lr"] * lr / 1e-3
        assert opt2.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)
        assert sched2.get_last_lr() == [opt2.param_groups[0]["lr"]]
        assert opt2.param_groups[0]["weight_decay"] == weight_decay
    apply_optim_overrides(opt, sched, 1e-3, 0.01)
    assert opt.param_groups[0]["lr"] == sched.get_last_lr()[0]  # bit-exact when nothing changes


def test_resume_with_config_or_run_dir_is_refused(tmp_path):
    run = _fake_run(tmp_path / "run")
    line = _one_error_line(runner.invoke(app, ["train", "--resume", str(run), "--config", "quest_demo_cpu"]))
    assert "--config cannot be combined" in line
    line = _one_error_line(runner.invoke(app, ["train", "--resume", str(run), "--run-dir", str(tmp_path / "x")]))
    assert "--run-dir cannot be combined" in line


# ----------------------------------------------------------------------------- item 7


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_step_0(tmp_path, monkeypatch):
    from epo.trainer.trainer import Trainer

    fresh = runner.invoke(app, ["train", "--run-dir", str(tmp_path / "fresh"), *TINY])
    assert fresh.exit_code == 0, fresh.output

    def killed(self, collector, progress):
        raise KeyboardInterrupt  # dies in its first RL step, after the step-0 eval was logged

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_rl_step", killed)
        killed_run = CliRunner().invoke(app, ["train", "--run-dir", str(tmp_path / "run"), *TINY])
    assert killed_run.exit_code != 0
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and not list_checkpoints(run) and read_metrics(run)
    line = _one_error_line(runner.invoke(app, ["train", "--run-dir", str(run), *TINY]))
    assert f"--resume {run}" in line
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert "starting the run over from step 0" in result.output

    def comparable(d):
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in read_metrics(d)]

    assert comparable(run) == comparable(tmp_path / "fresh")  # same seed, same config: the same run


# ----------------------------------------------------------------------------- final/ and exit codes


def test_final_dir_is_replaced_atomically(tmp_path):
    final = tmp_path / "final"
    with atomic_dir(final) as tmp:
        (tmp / "config.json").write_text("old")
    with pytest.raises(OSError), atomic_dir(final) as tmp:
        (tmp / "config.json").write_text("half")
        raise OSError("disk full")
    assert (final / "config.json").read_text() == "old"  # the complete old export is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no temp dir left


# ----------------------------------------------------------------------------- one-line errors vs tracebacks


def test_own_errors_are_one_line_others_keep_their_traceback_and_debug_shows_all(monkeypatch):
    import epo.trainer.pipeline as pipeline

    line = _one_error_line(runner.invoke(app, ["config", "show", "quest_demo_cpu", "epo.nope=1"]))
    assert "epo.nope" in line
    result = runner.invoke(app, ["--debug", "config", "show", "quest_demo_cpu", "epo.nope=1"])
    assert result.exit_code == 1 and isinstance(result.exception, ConfigError)

    def out_of_memory(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pipeline, "train_pipeline", out_of_memory)
    result = runner.invoke(app, ["train", *TINY])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)  # not swallowed into one line
    assert not isinstance(result.exception, EpoError)
    assert "error:" not in result.output


def test_debug_prints_the_traceback_in_a_real_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    code = "import sys; from epo.cli import app; sys.argv = ['epo'] + sys.argv[1:]; app()"
    done = subprocess.run(
        [sys.executable, "-c", code, "train", "--config", str(tmp_path / "missing.yaml")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    done = subprocess.run(
        [sys.executable, "-c", code, "--debug", "train", "--config", str(tmp_path / "missing.yaml")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "Traceback" in done.stderr and "ConfigError" in done.stderr


# ----------------------------------------------------------------------------- values accepted without a word


def test_eval_with_zero_episodes_is_refused():
    assert "-n: must be >= 1" in _one_error_line(runner.invoke(app, ["eval", *TINY, "-n", "0"]))


def test_every_numeric_config_field_rejects_a_negative_or_non_finite_value():
    keys = [k for k, v in _flat(load_config(None)).items() if isinstance(v, int | float) and not isinstance(v, bool)]
    assert len(keys) > 50
    for key in keys:
        for bad in ("-1", "nan"):
            with pytest.raises(ConfigError, match=f"^{key}: "):
                load_config(None, [f"{key}={bad}"])
    with pytest.raises(ConfigError, match="^optim.eps: must be > 0"):
        load_config(None, ["optim.eps=-1e-8"])


@pytest.mark.parametrize(
    "override", ["train.eval_episodes=0", "rollout.temperature=0", "rollout.top_p=0", "train.seed=4294967296"]
)
def test_zero_or_out_of_range_values_that_would_fail_later_are_rejected_at_load(override):
    with pytest.raises(ConfigError, match=f"^{override.split('=')[0]}: "):
        load_config(None, [override])


def test_malformed_yaml_keeps_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  path: tiny\n train:\n  seed: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3:2: did not find expected key"):
        load_config(bad)


def test_env_interpolations_are_saved_as_written(tmp_path, monkeypatch):
    from epo.config import replace, to_yaml

    monkeypatch.setenv("EPO_TEST_DATA", "/secret/place")
    preset = tmp_path / "p.yaml"
    preset.write_text("env:\n  kwargs:\n    data_dir: ${oc.env:EPO_TEST_DATA}\n")
    cfg = load_config(preset)
    assert cfg.env.kwargs["data_dir"] == "/secret/place"
    text = to_yaml(replace(cfg, init_from="runs/x/sft"))  # the pipeline's warm-start replace keeps it too
    assert "${oc.env:EPO_TEST_DATA}" in text and "/secret/place" not in text
