"""End to end: RL steps of every method on the tiny random model and the quest world; exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from rich.console import Console

from epo.config import load_config
from epo.rollout.evaluate import EvalResult
from epo.telemetry.metrics import read_metrics
from epo.telemetry.provenance import read_provenance
from epo.testing import tiny_run
from epo.trainer.checkpoint import list_checkpoints
from epo.trainer.split_eval import no_win_note
from epo.trainer.trainer import Trainer

BASE = tiny_run(
    "train.eval_at_start=true",
    "train.mini_batch_size=6",
    "train.micro_batch_tokens=1500",
    "optim.lr=1e-3",
)
METHODS = {
    "grpo": ["algo.name=grpo", "epo.mode=off"],
    "grpo_epo": ["algo.name=grpo", "epo.mode=on", "epo.smoothing_coef=1.0"],
    "grpo_epo_reference": ["algo.name=grpo", "epo.mode=reference"],
    "grpo_entropy_kl": ["algo.name=grpo", "algo.entropy_coef=0.01", "algo.kl_coef=0.01"],
    "ppo_epo": ["algo.name=ppo", "rollout.group_size=1", "epo.mode=on"],
    "ppo_shared_critic": ["algo.name=ppo", "model.value_model=shared", "epo.mode=off"],
    "grpo_epo_single_pass": ["algo.name=grpo", "epo.mode=on", "train.mini_batch_size=64"],
    "grpo_epo_top_layer": ["algo.name=grpo", "epo.mode=on", "model.trainable_layers=1"],
    "grpo_epo_filter_groups": ["algo.name=grpo", "epo.mode=on", "rollout.filter_groups=true"],
}
QUIET = Console(quiet=True)


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().float() for p in model.parameters()])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_rl_steps(method, tmp_path):
    cfg = load_config(None, BASE + METHODS[method])
    trainer = Trainer(cfg, tmp_path / method, console=QUIET)
    before = _params(trainer.policy)
    result = trainer.train()
    assert result.steps_done == 2
    assert not torch.equal(before, _params(trainer.policy)), "parameters did not change"
    rows = [r for r in read_metrics(tmp_path / method) if "actor/pg_loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for key in (
            "actor/pg_loss",
            "actor/grad_norm",
            "actor/lr",
            "epo/entropy_mean",
            "rollout/success_rate",
            "epo/entropy_var_steps",
            "time/step_s",
        ):
            assert math.isfinite(row[key]), (key, row[key])
        assert isinstance(row["epo/entropy_per_turn"], list) and row["epo/entropy_per_turn"]
        if cfg.epo.mode != "off":
            assert math.isfinite(row["epo/P"]) and math.isfinite(row["epo/beta"])
        if cfg.algo.name == "ppo":
            assert math.isfinite(row["critic/vf_loss"]) and "actor/adv_shaping_share" not in row
        else:
            assert 0.0 <= row["actor/adv_shaping_share"] <= 1.0
        assert 0.0 <= row["rollout/groups_all_lost"] + row["rollout/groups_all_won"] <= 1.0
        if cfg.rollout.filter_groups:  # the tiny random policy never wins: every round's groups all lost
            assert row["rollout/filter_rounds"] == cfg.rollout.filter_max_rounds
            assert row["rollout/filter_groups_kept"] == 0.0
        if cfg.algo.kl_coef > 0:
            assert math.isfinite(row["actor/kl_ref"])
    if cfg.epo.mode == "on":  # H̄ holds past steps only: no history, no smoothing penalty at the first step
        assert rows[0]["epo/P"] == 0.0
        assert all(h is None or math.isnan(h) for h in rows[0]["epo/hbar_per_turn"])
        assert any(h is not None and math.isfinite(h) for h in rows[1]["epo/hbar_per_turn"])
    assert len(list_checkpoints(tmp_path / method)) == cfg.train.keep_last
    assert (tmp_path / method / "config.yaml").is_file()
    assert (tmp_path / method / "eval").is_dir()
    assert (tmp_path / method / "final" / "config.json").is_file()  # exported HF model dir


def _comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


@pytest.mark.parametrize("method", ["grpo_epo", "ppo_epo", "grpo_epo_filter_groups"])
def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(method, tmp_path):
    overrides = BASE + METHODS[method] + ["train.total_steps=4", "train.save_every=2"]
    full = Trainer(load_config(None, overrides), tmp_path / "full", console=QUIET)
    full.train()
    part = Trainer(load_config(None, overrides), tmp_path / "part", console=QUIET)
    assert part.train(stop_after=3).steps_done == 3  # "interrupted" after step 3 (checkpoint written there)
    resumed = Trainer(load_config(None, overrides), tmp_path / "part", resume=True, console=QUIET)
    assert resumed.step == 0
    resumed.train()
    assert resumed.step == 4
    a, b = _comparable(read_metrics(tmp_path / "full")), _comparable(read_metrics(tmp_path / "part"))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert a == b
    assert torch.equal(_params(full.policy), _params(resumed.policy))
    stretches = read_provenance(tmp_path / "part")  # where each stretch was computed: the start, then the resume
    assert [(p["phase"], p["from_step"]) for p in stretches] == [("rl", 0), ("rl", 3)]
    assert all(p["allocator"].startswith("memory: ") for p in stretches)  # train.malloc_mmap_threshold's line


def test_eval_at_start_off_evaluates_only_at_the_end(tmp_path):
    cfg = load_config(None, BASE + METHODS["grpo_epo"] + ["train.eval_at_start=false"])
    result = Trainer(cfg, tmp_path / "run", console=QUIET).train()
    assert sorted(result.evals) == [2]
    assert sorted(p.name for p in (tmp_path / "run" / "eval").iterdir()) == ["step_000002_iid.json"]


def test_an_eval_larger_than_a_rollout_releases_its_envs_afterwards(monkeypatch, tmp_path):
    """eval 6 episodes > rollout 2x2: the eval's extra envs (ScienceWorld: a JVM each) do not idle through training."""
    from epo.envs.pool import EnvPool

    released = []
    real = EnvPool.release_envs
    monkeypatch.setattr(EnvPool, "release_envs", lambda pool: released.append(1) or real(pool))
    cfg = load_config(None, BASE + METHODS["grpo_epo"] + ["train.eval_episodes=6"])
    result = Trainer(cfg, tmp_path / "run", console=QUIET).train()
    assert sorted(result.evals) == [0, 2] and len(released) == 2  # after each eval, and the rollouts went on


def test_methods_sharing_a_seed_evaluate_the_same_episodes_at_step_0(tmp_path):
    """The step-0 eval runs the same weights on the same tasks with its own sampling seed: a PPO run, whose value
    head's initialisation draws from torch's generator first, samples exactly what a GRPO run samples. With the
    eval on the global stream the two differed (the fast-tier grid's PPO warm start read 29/80 against 32/80)."""
    evals = {}
    for method in ("grpo", "ppo_shared_critic"):
        cfg = load_config(None, BASE + METHODS[method] + ["train.total_steps=1", "train.eval_episodes=4"])
        Trainer(cfg, tmp_path / method, console=QUIET).train()
        result = json.loads((tmp_path / method / "eval" / "step_000000_iid.json").read_text())
        evals[method] = {k: v for k, v in result.items() if k != "seconds"}
    assert evals["grpo"] == evals["ppo_shared_critic"]


def test_a_step_0_eval_that_wins_nothing_is_said_at_the_start_of_rl(tmp_path):
    """The tiny random policy wins no episode: the run says at once that RL has no outcome signal (the ALFWorld
    CPU preset's warm start won 0/32 and its RL steps were shaping-only for hours before the monitor could tell)."""
    console = Console(record=True, width=400)
    cfg = load_config(None, BASE + METHODS["grpo"] + ["train.total_steps=1", "train.eval_episodes=2"])
    result = Trainer(cfg, tmp_path / "run", console=console).train()
    assert result.evals[0]["iid"].success == 0.0
    assert "note: the step-0 eval won 0 of 2 episodes (iid): until a training episode wins" in console.export_text()


def test_no_win_note_is_silent_once_any_split_wins():
    def res(split, success):
        return EvalResult(split, 16, success, 0.0, 1.0, 50.0, 0.0, 1.0)

    assert "won 0 of 32 episodes (iid, ood)" in no_win_note({"iid": res("iid", 0.0), "ood": res("ood", 0.0)})
    assert no_win_note({"iid": res("iid", 0.0), "ood": res("ood", 1 / 16)}) is None
    assert no_win_note({}) is None  # no step-0 eval (train.eval_at_start=false) or a non-main rank


def test_a_resumed_run_keeps_its_earlier_evals_for_the_before_after_table(tmp_path):
    overrides = BASE + METHODS["grpo"] + ["train.total_steps=4", "train.eval_every=2"]
    part = Trainer(load_config(None, overrides), tmp_path / "run", console=QUIET)
    assert sorted(part.train(stop_after=3).evals) == [0, 2]
    resumed = Trainer(load_config(None, overrides), tmp_path / "run", resume=True, console=QUIET).train()
    assert sorted(resumed.evals) == [0, 2, 4]  # step 0 and 2 read back from eval/, step 4 evaluated now
    saved = EvalResult.load(tmp_path / "run" / "eval" / "step_000000_iid.json")
    assert resumed.evals[0]["iid"] == saved and saved.episodes == 2


def test_a_damaged_saved_eval_is_named_when_a_resume_leaves_it_out(tmp_path):
    overrides = BASE + METHODS["grpo"] + ["train.total_steps=4", "train.eval_every=2"]
    Trainer(load_config(None, overrides), tmp_path / "run", console=QUIET).train(stop_after=3)
    damaged = tmp_path / "run" / "eval" / "step_000002_iid.json"
    damaged.write_text('{"split": "iid", "succ')  # a write cut short
    console = Console(record=True, width=300)
    resumed = Trainer(load_config(None, overrides), tmp_path / "run", resume=True, console=console).train()
    assert sorted(resumed.evals) == [0, 4]  # the damaged step-2 eval is left out...
    text = " ".join(console.export_text().split())
    assert f"{damaged} is damaged (unreadable); left out of the before/after table" in text  # ...and named


def test_a_non_finite_gradient_skips_the_optimizer_step_and_says_so(monkeypatch, tmp_path):
    """A NaN loss (an overflow) at step 2: its optimizer steps are skipped, as verl does, so the weights stay finite
    and as after step 1; the metric and a console line say so."""
    from epo.trainer import update

    real_loss, before_step_2 = update.micro_batch_loss, {}

    def nan_loss_at_step_2(policy, mb, data, cfg, history, step, *args):
        loss, metrics = real_loss(policy, mb, data, cfg, history, step, *args)
        if step == 1:  # the update's step counts finished steps: 1 during RL step 2
            before_step_2.setdefault("params", _params(policy))
            loss = loss * float("nan")
        return loss, metrics

    monkeypatch.setattr(update, "micro_batch_loss", nan_loss_at_step_2)
    console = Console(record=True, width=200)
    trainer = Trainer(load_config(None, BASE), tmp_path / "run", console=console)
    trainer.train()
    assert torch.equal(_params(trainer.policy), before_step_2["params"])  # step 2 changed nothing, no NaN
    rows = [r for r in read_metrics(tmp_path / "run") if "actor/pg_loss" in r]
    assert [r["actor/nonfinite_grad_frac"] for r in rows] == [0.0, 1.0]
    assert "step 2: actor gradient not finite in 100% of the optimizer steps" in console.export_text()


def test_step_if_finite_leaves_the_weights_on_a_nan_gradient():
    from epo.trainer.update import step_if_finite

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.5)
    w.grad = torch.tensor([1.0, float("nan"), 1.0])
    assert not step_if_finite([opt], [float("nan")]) and torch.equal(w.detach(), torch.ones(3)) and w.grad is None
    w.grad = torch.ones(3)
    assert step_if_finite([opt], [3**0.5]) and torch.equal(w.detach(), torch.full((3,), 0.5))
