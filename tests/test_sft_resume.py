"""SIGINT/SIGTERM during behaviour cloning: a checkpoint, then a resume that equals the uninterrupted run bit for
bit (issue 12 item 8), also as the warm start of `epo train`."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from epo import api
from epo.cli import app
from epo.config import ConfigError, load_config
from epo.models import load_model_and_tokenizer
from epo.telemetry.metrics import read_metrics
from epo.telemetry.provenance import read_provenance
from epo.testing import tiny_run
from epo.trainer import sft
from epo.trainer.checkpoint import list_checkpoints
from epo.trainer.pipeline import train_pipeline

TINY = tiny_run(
    "env.max_turns=15",
    "rollout.max_new_tokens=4",
    "train.micro_batch_tokens=2048",
    "sft.episodes=3",
    "sft.epochs=2",
    "sft.lr=3e-3",
    "sft.batch_size=4",
    "sft.eval_episodes=1",
)
QUIET = Console(quiet=True)


def _sigterm_during_step(monkeypatch, step: int) -> None:
    """SIGTERM this process inside the forward pass of SFT optimizer step `step` (1-based, one micro-batch each)."""
    calls, forward = [], sft.response_logprobs

    def forward_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(*args, **kwargs)

    monkeypatch.setattr(sft, "response_logprobs", forward_then_signal)


def _weights(path) -> dict[str, torch.Tensor]:
    return load_model_and_tokenizer(str(path))[0].state_dict()


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sigterm_then_resume_equals_an_uninterrupted_warm_start(monkeypatch, tmp_path):
    full = sft.run_sft(load_config(None, TINY), tmp_path / "full", console=QUIET)
    assert not full.interrupted

    _sigterm_during_step(monkeypatch, 3)
    part = sft.run_sft(load_config(None, TINY), tmp_path / "part", console=QUIET)
    assert part.interrupted and not (tmp_path / "part" / "export").exists()
    assert [p.name for p in list_checkpoints(tmp_path / "part")] == ["step_000003"]  # step 3 finished, then saved
    assert len(_lines(tmp_path / "part" / "sft_metrics.jsonl")) == 3
    monkeypatch.undo()

    evals = []
    monkeypatch.setattr(sft, "_eval_all", lambda *a, **kw: evals.append(a[-1]) or {})
    resumed = sft.run_sft(load_config(None, TINY), tmp_path / "part", console=QUIET, resume=True)
    assert not resumed.interrupted and evals == ["after SFT"]  # the zero-shot eval was kept, not repeated
    assert resumed.before["iid"].episodes == full.before["iid"].episodes == 1
    assert _lines(tmp_path / "part" / "sft_metrics.jsonl") == _lines(tmp_path / "full" / "sft_metrics.jsonl")
    a, b = _weights(full.export_dir), _weights(resumed.export_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    stretches = read_provenance(tmp_path / "part")  # each stretch says the cloning step it started at
    assert [(p["phase"], p["from_step"]) for p in stretches] == [("sft", 0), ("sft", 3)]


def test_a_resume_clones_the_oracle_play_it_saved_even_where_a_replay_differs(monkeypatch, tmp_path):
    """ScienceWorld's gold paths can change between plays (JVM options, library versions): a resume must not replay the oracle (the checkpoint's sample
    count would not match, or worse, other data would be cloned); it reads OUT/oracle_play.json, oracle faults kept."""
    out = tmp_path / "part"
    sft.run_sft(load_config(None, TINY), out, console=QUIET, stop_after=2)
    saved = (out / sft.ORACLE_FILE).read_text()
    (out / "faults.jsonl").write_text(json.dumps({"step": 0, "phase": "oracle", "reason": "timeout"}) + "\n")
    monkeypatch.setattr(sft, "collect_oracle", lambda *a, **kw: pytest.fail("the oracle was replayed"))
    monkeypatch.setattr(sft, "_eval_all", lambda *a, **kw: {})
    resumed = sft.run_sft(load_config(None, TINY), out, console=QUIET, resume=True)
    assert not resumed.interrupted and resumed.samples == len(json.loads(saved)["samples"])
    assert [r["phase"] for r in _lines(out / "faults.jsonl")] == ["oracle"]  # not dropped as if replayed

    monkeypatch.undo()
    out2 = tmp_path / "damaged"
    sft.run_sft(load_config(None, TINY), out2, console=QUIET, stop_after=2)
    (out2 / sft.ORACLE_FILE).write_text("{not json")
    monkeypatch.setattr(sft, "_eval_all", lambda *a, **kw: {})
    console = Console(record=True, width=300)
    again = sft.run_sft(load_config(None, TINY), out2, console=console, resume=True)  # quest replays the same play
    assert not again.interrupted and "oracle_play.json: unreadable; the oracle plays again" in console.export_text()


def test_lora_warm_start_stops_and_resumes_with_its_adapter(tmp_path):
    lora = [*TINY, "model.lora.enabled=true", "model.lora.r=2", "sft.epochs=1", "sft.eval_episodes=0"]
    full = sft.run_sft(load_config(None, lora), tmp_path / "full", console=QUIET)
    part = sft.run_sft(load_config(None, lora), tmp_path / "part", console=QUIET, stop_after=2)
    assert part.interrupted
    # the resume names only OUT: the saved config (with its LoRA and episode overrides) is what continues
    with pytest.raises(ConfigError, match="drop --config and the overrides"):
        api.sft("quest_demo_cpu", out=tmp_path / "part", resume=True)
    saved = (tmp_path / "part" / "config.yaml").read_text()
    resumed = api.sft(out=tmp_path / "part", resume=True, console=QUIET)
    assert (tmp_path / "part" / "config.yaml").read_text() == saved
    a, b = _weights(full.export_dir), _weights(resumed.export_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sft_resume_without_a_saved_config_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["sft", "--out", str(tmp_path / "none"), "--resume"])
    assert result.exit_code == 2 and "no config.yaml, so nothing to resume" in result.output


RL = [
    "sft.warm_start=true",
    "sft.eval_episodes=0",
    "sft.epochs=1",
    "rollout.tasks_per_step=1",
    "rollout.group_size=2",
    "train.total_steps=1",
    "train.eval_at_start=false",
    "train.eval_episodes=1",
    "train.tensorboard=false",
    "train.report=false",
    "model.trainable_layers=0",
]


def test_train_stopped_in_the_warm_start_resumes_with_train_resume(monkeypatch, tmp_path):
    run = tmp_path / "run"
    _sigterm_during_step(monkeypatch, 2)
    overrides = [*TINY, *RL, "env.max_turns=15", "rollout.max_new_tokens=3"]  # the oracle needs up to 10 moves
    result = train_pipeline(load_config(None, overrides), run, console=QUIET)
    assert result.interrupted and result.steps_done == 0
    assert (run / "sft" / "config.yaml").is_file() and list_checkpoints(run / "sft")
    monkeypatch.undo()
    out = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert out.exit_code == 0, out.output
    assert "resumed behaviour cloning from" in out.output
    assert (run / "sft" / "export" / "config.json").is_file() and (run / "final" / "config.json").is_file()
    assert [r["step"] for r in read_metrics(run) if "rollout/samples" in r] == [1]


def test_a_resume_after_the_warm_start_keeps_its_zero_shot_and_start_of_rl_evals(tmp_path):
    run = tmp_path / "run"
    overrides = [*TINY, *RL, "sft.eval_episodes=2", "train.eval_at_start=true", "rollout.max_new_tokens=3"]
    train_pipeline(load_config(None, overrides), run, console=QUIET)
    saved = load_config(str(run / "config.yaml"), ["train.total_steps=2"])  # as `epo train --resume` loads it
    train_pipeline(saved, run, resume=True, console=QUIET)
    rows = json.loads((run / "before_after.json").read_text())["iid"]  # written by the resumed process
    assert {"zero_shot", "start_of_rl", "end_of_rl"} <= rows.keys()
    assert rows["zero_shot"]["episodes"] == 2 and rows["test_rl_gain"] == "McNemar"
