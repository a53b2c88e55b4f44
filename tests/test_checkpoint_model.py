"""`epo eval --model RUN/checkpoints/step_N` and a run dir without final/ load the checkpoint (issue 12 item 9);
a LoRA checkpoint is merged on load."""

from __future__ import annotations

import shutil

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from epo.cli import app
from epo.config import load_config
from epo.testing import tiny_run
from epo.trainer import setup
from epo.trainer.trainer import Trainer

BASE = tiny_run(
    "env.max_turns=2",
    "agent.max_prompt_tokens=320",
    "rollout.max_new_tokens=4",
    "train.total_steps=1",
    "train.mini_batch_size=64",
    "optim.lr=1e-2",
    "train.seed=3",
)
LORA = ["model.lora.enabled=true", "model.lora.r=2", "model.lora.alpha=4"]


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_checkpoint_dirs_load_as_models(lora, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(load_config(None, BASE + (LORA if lora else [])), run, console=Console(quiet=True))
    trainer.train()
    expected = trainer.export(tmp_path / "exported")  # the merged policy as an HF dir
    want = _weights(setup.load_policy(load_config(None, ["model.path=" + str(expected)]), torch.device("cpu"))[0])
    shutil.rmtree(run / "final")  # an interrupted run: only checkpoints
    for source in (run / "checkpoints" / "step_000001", run):
        cfg = load_config(None, [f"init_from={source}", "train.seed=99"])  # another seed: the base is the run's
        model, tokenizer = setup.load_policy(cfg, torch.device("cpu"))
        assert not hasattr(model, "peft_config")  # LoRA merged into plain weights
        got = _weights(model)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), source
        assert tokenizer.pad_token is not None
    changed = _weights(
        setup.load_policy(load_config(None, ["model.path=tiny", "train.seed=3"]), torch.device("cpu"))[0]
    )
    assert not all(torch.equal(changed[k], want[k]) for k in want)  # the checkpoint is not just the base model


def test_eval_cli_accepts_a_checkpoint_dir(tmp_path):
    run = tmp_path / "run"
    Trainer(load_config(None, BASE + LORA), run, console=Console(quiet=True)).train()
    ckpt = run / "checkpoints" / "step_000001"
    result = CliRunner().invoke(
        app, ["eval", "--config", "quest_demo_cpu", *BASE, "model.trainable_layers=0", "--model", str(ckpt), "-n", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "not a HF model dir" not in result.output and "iid: success" in result.output
    broken = tmp_path / "broken" / "checkpoints" / "step_000001"
    shutil.copytree(ckpt, broken)
    (broken / "optim.pt").write_bytes(b"garbage")
    result = CliRunner().invoke(
        app,
        ["eval", "--config", "quest_demo_cpu", *BASE, "model.trainable_layers=0", "--model", str(broken), "-n", "2"],
    )
    assert result.exit_code == 2 and "checksum mismatch" in result.output
