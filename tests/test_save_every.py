"""train.save_every=0 means: checkpoint only at the end and on a stop signal (not every step)."""

from __future__ import annotations

from rich.console import Console

from epo.config import load_config
from epo.testing import tiny_run
from epo.trainer.trainer import Trainer, checkpoint_due


def test_checkpoint_due():
    assert [s for s in range(1, 8) if checkpoint_due(s, 3, 7)] == [3, 6, 7]
    assert [s for s in range(1, 8) if checkpoint_due(s, 0, 7)] == [7]
    assert [s for s in range(1, 8) if checkpoint_due(s, 1, 7)] == list(range(1, 8))


def test_save_every_zero_saves_once_at_the_end(tmp_path, monkeypatch):
    overrides = tiny_run(
        "env.max_turns=2",
        "rollout.tasks_per_step=1",
        "rollout.max_new_tokens=3",
        "train.total_steps=3",
        "train.eval_episodes=1",
        "train.save_every=0",
    )
    trainer = Trainer(load_config(None, overrides), tmp_path / "run", console=Console(quiet=True))
    saved_at: list[int] = []
    monkeypatch.setattr(trainer, "_save", lambda: saved_at.append(trainer.step))
    monkeypatch.setattr(trainer, "export", lambda out_dir: out_dir)
    trainer.train()
    assert saved_at == [3]
