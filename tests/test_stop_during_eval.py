"""Ctrl-C/SIGTERM during an eval that nothing depends on yet (the warm start's zero-shot eval, RL's step-0 eval)
abandons it after the current turn instead of waiting for it (15+ min on ALFWorld), and a resume runs it again."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

from rich.console import Console
from typer.testing import CliRunner

from epo.cli import app
from epo.config import load_config
from epo.telemetry.metrics import read_metrics
from epo.telemetry.progress import StepProgress
from epo.testing import tiny_run
from epo.trainer import sft
from epo.trainer.checkpoint import list_checkpoints
from epo.trainer.trainer import Trainer

QUIET = Console(quiet=True)


def _sigterm_at_first_turn(monkeypatch) -> list[int]:
    """SIGTERM this process when the first eval turn reports progress; returns the list of turns reported."""
    turns, original = [], StepProgress.turn

    def turn_then_signal(self, turn, active):
        turns.append(turn)
        if len(turns) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, turn, active)

    monkeypatch.setattr(StepProgress, "turn", turn_then_signal)
    return turns


def test_stop_during_the_zero_shot_eval_abandons_it_and_a_resume_runs_it(monkeypatch, tmp_path):
    cfg = load_config(None, tiny_run("env.max_turns=15", "sft.episodes=2", "sft.epochs=1", "sft.eval_episodes=2"))
    turns = _sigterm_at_first_turn(monkeypatch)
    part = sft.run_sft(cfg, tmp_path / "sft", console=QUIET)
    assert part.interrupted and part.stop_signal == "SIGTERM" and part.before == {}
    assert turns == [0]  # one turn of 15 (an eval of 2 episodes x 2 splits), then it stopped
    assert not (tmp_path / "sft" / sft.BEFORE_FILE).exists() and not list_checkpoints(tmp_path / "sft")
    monkeypatch.undo()
    resumed = sft.run_sft(cfg, tmp_path / "sft", console=QUIET, resume=True)
    assert not resumed.interrupted and resumed.before["iid"].episodes == 2  # the eval ran again, whole
    assert (tmp_path / "sft" / sft.BEFORE_FILE).is_file() and (tmp_path / "sft" / "export").is_dir()


def test_a_damaged_zero_shot_file_is_said_and_evaluated_again_on_resume(monkeypatch, tmp_path):
    cfg = load_config(None, tiny_run("env.max_turns=15", "sft.episodes=2", "sft.epochs=1", "sft.eval_episodes=2"))
    _sigterm_at_first_turn(monkeypatch)
    assert sft.run_sft(cfg, tmp_path / "sft", console=QUIET).interrupted
    monkeypatch.undo()
    (tmp_path / "sft" / sft.BEFORE_FILE).write_text('{"iid": {"split": "iid"')  # damaged from outside
    console = Console(record=True, width=200)
    resumed = sft.run_sft(cfg, tmp_path / "sft", console=console, resume=True)
    assert f"{sft.BEFORE_FILE}: unreadable; the zero-shot eval runs again" in console.export_text()
    assert not resumed.interrupted and resumed.before["iid"].episodes == 2
    assert sft.saved_zero_shot(tmp_path / "sft")["iid"].episodes == 2  # rewritten whole


def test_stop_in_the_second_split_of_the_zero_shot_eval_keeps_the_first(monkeypatch, tmp_path):
    overrides = tiny_run("env.max_turns=15", "sft.episodes=2", "sft.epochs=1", "sft.eval_episodes=2")
    cfg = load_config(None, [*overrides, "env.eval_splits=[iid,ood]"])
    whole = sft.run_sft(cfg, tmp_path / "whole", console=QUIET).before  # reference: the eval never stopped
    splits_run, original = [], StepProgress.turn  # the zero-shot eval's splits, in the order they started

    def signal_in_ood(self, turn, active):
        if self.progress.tasks[0].description == "before SFT" and turn == 0:
            splits_run.append(self.progress.tasks[1].description.removeprefix("eval "))
            if splits_run == ["iid", "ood"]:
                os.kill(os.getpid(), signal.SIGTERM)
        return original(self, turn, active)

    monkeypatch.setattr(StepProgress, "turn", signal_in_ood)
    part = sft.run_sft(cfg, tmp_path / "sft", console=QUIET)
    assert splits_run == ["iid", "ood"] and part.interrupted
    assert sorted(json.loads((tmp_path / "sft" / sft.BEFORE_FILE).read_text())) == ["iid"]  # iid kept on disk
    resumed = sft.run_sft(cfg, tmp_path / "sft", console=QUIET, resume=True)
    assert splits_run == ["iid", "ood", "ood"]  # the resume evaluated ood only
    assert not resumed.interrupted and _timeless(resumed.before) == _timeless(whole)  # what an unstopped eval gets


def _timeless(results: dict) -> dict:
    return {split: dataclasses.replace(res, seconds=0.0) for split, res in results.items()}


def test_stop_during_the_step_0_eval_ends_the_run_before_training_and_resume_starts_over(monkeypatch, tmp_path):
    run = tmp_path / "run"
    overrides = tiny_run("train.total_steps=1", "train.eval_at_start=true", "train.eval_episodes=2")
    turns = _sigterm_at_first_turn(monkeypatch)
    result = Trainer(load_config(None, overrides), run, console=QUIET).train()
    assert result.interrupted and result.steps_done == 0 and result.evals == {} and len(turns) == 1
    assert not list_checkpoints(run) and read_metrics(run) == []  # nothing trained, nothing logged
    monkeypatch.undo()
    out = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert out.exit_code == 0, out.output
    rows = read_metrics(run)
    assert [r["step"] for r in rows if "eval/iid/success" in r] == [0, 1]  # step 0 evaluated once, at the resume
    assert [r["step"] for r in rows if "rollout/samples" in r] == [1]


def test_stop_in_the_second_split_of_the_step_0_eval_keeps_the_first(monkeypatch, tmp_path):
    run = tmp_path / "run"
    overrides = tiny_run("train.total_steps=1", "train.eval_at_start=true", "train.eval_episodes=2")
    cfg = load_config(None, [*overrides, "env.eval_splits=[iid,ood]", "train.eval_every=0"])
    splits_run, original = [], StepProgress.turn  # the eval splits, in the order they started

    def signal_in_ood(self, turn, active):
        phase = self.progress.tasks[1].description
        if phase.startswith("eval ") and turn == 0:
            splits_run.append(phase.removeprefix("eval "))
            if splits_run == ["iid", "ood"]:
                os.kill(os.getpid(), signal.SIGTERM)
        return original(self, turn, active)

    monkeypatch.setattr(StepProgress, "turn", signal_in_ood)
    result = Trainer(cfg, run, console=QUIET).train()
    assert result.interrupted and result.steps_done == 0 and splits_run == ["iid", "ood"]
    iid = (run / "eval" / "step_000000_iid.json").read_text()
    assert not list_checkpoints(run) and not (run / "eval" / "step_000000_ood.json").exists()
    out = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert out.exit_code == 0, out.output
    assert splits_run == ["iid", "ood", "ood", "iid", "ood"]  # step 0: ood only; then step 1's eval, whole
    assert "(kept from the stopped run)" in out.output and (run / "eval" / "step_000000_iid.json").read_text() == iid
    rows = [r for r in read_metrics(run) if "eval/iid/success" in r]
    assert [r["step"] for r in rows] == [0, 1] and all("eval/ood/success" in r for r in rows)


def test_stop_during_the_after_sft_eval_keeps_the_finished_export(monkeypatch, tmp_path):
    cfg = load_config(None, tiny_run("env.max_turns=15", "sft.episodes=2", "sft.epochs=1", "sft.eval_episodes=2"))
    turns, original = [], StepProgress.turn

    def signal_in_the_second_eval(self, turn, active):  # the zero-shot eval runs first: let it finish
        turns.append(turn)
        if self.progress.tasks[0].description == "after SFT" and "after" not in turns:
            turns.append("after")
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, turn, active)

    monkeypatch.setattr(StepProgress, "turn", signal_in_the_second_eval)
    result = sft.run_sft(cfg, tmp_path / "sft", console=QUIET)
    assert result.before["iid"].episodes == 2 and result.after == {}  # zero-shot eval whole, after-SFT eval abandoned
    assert (result.export_dir / "config.json").is_file()  # the finished training was exported before that eval
