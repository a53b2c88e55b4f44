from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest
import torch
from torch import nn

from epo.trainer.checkpoint import (
    CheckpointError,
    GracefulExit,
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


class TiedNet(nn.Module):
    """Tiny model with tied input/output weights (like SmolLM2) and dropout, so RNG matters."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(8, 11, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.emb(x)))


def make_training(seed: int = 0):
    torch.manual_seed(seed)
    model = TiedNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k))
    return model, opt, sched


def train_step(model, opt, sched) -> None:
    # Consumes all three RNGs, as a real RL step does (task sampling, env noise, dropout/sampling).
    n = random.randint(3, 6) + int(np.random.randint(0, 3))
    x = torch.randint(0, 11, (n,))
    loss = nn.functional.cross_entropy(model(x), torch.roll(x, 1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def save(run_dir, step, model, opt, sched, **kw):
    return save_checkpoint(
        run_dir,
        step,
        model_state=model.state_dict(),
        optimizer_states={"policy": opt.state_dict()},
        scheduler_states={"policy": sched.state_dict()},
        extra_state=kw.pop("extra_state", {"counter": step}),
        config_yaml="train:\n  seed: 0\n",
        **kw,
    )


def test_resume_is_bit_exact(tmp_path):
    """3 steps, save, 3 more steps == 3 steps, save, restore everything into fresh objects, 3 more steps."""
    random.seed(1), np.random.seed(1)
    model, opt, sched = make_training()
    for _ in range(3):
        train_step(model, opt, sched)
    save(tmp_path, 3, model, opt, sched, extra_state={"history": [0.5, float("nan")], "sampler": torch.arange(4)})
    for _ in range(3):
        train_step(model, opt, sched)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(123), random.seed(999), np.random.seed(999)  # the new process starts elsewhere
    ckpt = load_checkpoint(tmp_path)
    model2, opt2, sched2 = make_training(seed=42)
    model2.load_state_dict(ckpt.model_state)
    opt2.load_state_dict(ckpt.optimizer_states["policy"])
    sched2.load_state_dict(ckpt.scheduler_states["policy"])
    restore_rng_state(ckpt.rng)
    for _ in range(3):
        train_step(model2, opt2, sched2)

    assert ckpt.step == 3
    assert ckpt.extra_state["history"][0] == 0.5 and np.isnan(ckpt.extra_state["history"][1])
    assert torch.equal(ckpt.extra_state["sampler"], torch.arange(4))
    for key, value in model2.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_layout_manifest_and_latest_pointer(tmp_path):
    model, opt, sched = make_training()
    path = save(tmp_path, 10, model, opt, sched, value_state={"head.weight": torch.ones(2, 3)})
    assert path == tmp_path / "checkpoints" / "step_000010"
    names = {p.name for p in path.iterdir()}
    assert names == {"model.safetensors", "value.safetensors", "optim.pt", "state.pt", "config.yaml", "MANIFEST.json"}
    manifest = json.loads((path / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == names - {"MANIFEST.json"}
    assert manifest["step"] == 10
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000010"
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt.value_state["head.weight"], torch.ones(2, 3))
    assert ckpt.config_yaml == "train:\n  seed: 0\n"
    assert not ckpt.is_adapter


def test_adapter_and_extra_files(tmp_path):
    path = save_checkpoint(
        tmp_path,
        5,
        model_state={"lora_A": torch.zeros(2, 2)},
        optimizer_states={},
        is_adapter=True,
        extra_files={"adapter_config.json": '{"r": 2}'},
        write_files=lambda d: (d / "tok.txt").write_text("x"),
    )
    assert (path / "adapter_model.safetensors").is_file() and not (path / "model.safetensors").exists()
    manifest = json.loads((path / "MANIFEST.json").read_text())
    assert {"adapter_config.json", "tok.txt"} <= set(manifest["files"])
    ckpt = load_checkpoint(path)
    assert ckpt.is_adapter and torch.equal(ckpt.model_state["lora_A"], torch.zeros(2, 2))


def test_keep_last_prunes_only_older(tmp_path):
    model, opt, sched = make_training()
    for step in (10, 20, 30):
        save(tmp_path, step, model, opt, sched, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000020", "step_000030"]
    # Resumed from step 20 and saved step 25: the abandoned step 30 is a finished checkpoint and stays,
    # but `latest` now points to the new one.
    save(tmp_path, 25, model, opt, sched, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000025", "step_000030"]
    assert load_checkpoint(tmp_path).step == 25


def test_corrupted_latest_falls_back_with_warning(tmp_path):
    model, opt, sched = make_training()
    save(tmp_path, 10, model, opt, sched)
    newest = save(tmp_path, 20, model, opt, sched)
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match="checksum mismatch in model.safetensors") as err:
        load_checkpoint(newest)
    assert "\n" not in str(err.value)
    with pytest.warns(RuntimeWarning, match="falling back to step_000010"):
        assert load_checkpoint(tmp_path).step == 10


def test_partial_checkpoints_are_ignored_and_cleaned(tmp_path):
    model, opt, sched = make_training()
    save(tmp_path, 10, model, opt, sched)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step_000020-999").mkdir()  # crash while writing
    (root / "step_000030").mkdir()  # a dir without MANIFEST.json (copied by hand, half-deleted...)
    (root / "step_000030" / "optim.pt").write_bytes(b"junk")
    (root / "latest").unlink()  # crash before the pointer was written
    with pytest.warns(RuntimeWarning, match="incomplete checkpoint"):
        assert latest_checkpoint(tmp_path) == root / "step_000010"
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        load_checkpoint(root / "step_000030")
    save(tmp_path, 40, model, opt, sched, keep_last=5)
    assert not (root / ".tmp-step_000020-999").exists()


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path):
    model, opt, sched = make_training()
    save(tmp_path, 10, model, opt, sched)

    def crash(_):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 20, model, opt, sched, write_files=crash)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000010"]
    assert load_checkpoint(tmp_path).step == 10


def test_resave_same_step_replaces_it(tmp_path):
    model, opt, sched = make_training()
    save(tmp_path, 10, model, opt, sched, extra_state={"v": 1})
    save(tmp_path, 10, model, opt, sched, extra_state={"v": 2})
    assert load_checkpoint(tmp_path).extra_state == {"v": 2}
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []


def test_unsafe_extra_state_is_rejected_at_save_time(tmp_path):
    with pytest.raises(ValueError, match=r"extra_state\.sampler\.seen: set cannot be checkpointed"):
        save_checkpoint(tmp_path, 1, model_state=None, optimizer_states={}, extra_state={"sampler": {"seen": {1}}})
    assert list_checkpoints(tmp_path) == []
    # NumPy scalars are converted (they would not load with weights_only=True)
    save_checkpoint(tmp_path, 2, model_state=None, optimizer_states={}, extra_state={"x": np.float64(0.25)})
    value = load_checkpoint(tmp_path).extra_state["x"]
    assert value == 0.25 and type(value) is float


def test_missing_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        load_checkpoint(tmp_path)


def test_rng_capture_restore_is_exact():
    state = capture_rng_state()
    first = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())
    restore_rng_state(state)
    second = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())
    assert first == second


def test_graceful_exit_first_signal_sets_flag_second_aborts():
    before = signal.getsignal(signal.SIGINT)
    messages = []
    with pytest.raises(KeyboardInterrupt), GracefulExit(message=messages.append) as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal_name == "SIGINT"
        assert "saving a checkpoint" in messages[0]
        os.kill(os.getpid(), signal.SIGINT)
        pytest.fail("second SIGINT should abort")  # pragma: no cover
    assert signal.getsignal(signal.SIGINT) is before
    assert "aborting now without saving" in messages[1]  # an abort says so


def test_graceful_exit_sigterm_and_handler_restore():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulExit(message=lambda s: None) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
