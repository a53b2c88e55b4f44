"""One RL step's wiring: metric merging, eval-mode no-grad passes, turn-level GAE rewards."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

from epo.config import load_config
from epo.rollout.types import TurnSample
from epo.trainer import setup
from epo.trainer.update import MetricMeans, _gae, critic_values, forward_pass, prepare_step, turn_rewards


def _samples(n: int = 6) -> list[TurnSample]:
    gen = random.Random(0)
    out = []
    for k in range(n):
        prompt = [gen.randrange(10, 400) for _ in range(gen.randint(5, 12))]
        response = [gen.randrange(10, 400) for _ in range(gen.randint(2, 5))]
        out.append(TurnSample(prompt, response, turn_idx=k % 3, traj_id=k // 3, group_id=0, reward=float(k % 2)))
    return out


def test_metric_means_skip_nan_micro_batches():
    # an all-fail micro-batch has constant returns: its explained variance is NaN, the step's must not be
    means = MetricMeans()
    means.add({"critic/explained_var": math.nan, "critic/vf_loss": 1.0, "actor/ratio_max": 1.5}, weight=3)
    means.add({"critic/explained_var": 0.4, "critic/vf_loss": 2.0, "actor/ratio_max": 1.2}, weight=1)
    out = means.result()
    assert out["critic/explained_var"] == 0.4
    assert out["critic/vf_loss"] == (3 * 1.0 + 2.0) / 4
    assert out["actor/ratio_max"] == 1.5
    only_nan = MetricMeans()
    only_nan.add({"critic/explained_var": math.nan}, weight=1)
    assert math.isnan(only_nan.result()["critic/explained_var"])  # no data at all stays NaN


def test_no_grad_passes_run_in_eval_mode_and_restore_train_mode():
    # LoRA dropout 0.5 and a policy left in train mode (as after any previous update): the old log-probs (two-pass)
    # and reference log-probs must still be the sampling policy's, so the first update's ratio is exactly 1.
    cfg = load_config(
        None, ["model.path=tiny", "model.lora.enabled=true", "model.lora.dropout=0.5", "train.ppo_epochs=2"]
    )
    torch.manual_seed(0)
    policy, tokenizer = setup.load_policy(cfg, torch.device("cpu"))
    with torch.no_grad():  # LoRA B starts at 0, which would hide the dropout on the adapter path
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ref = copy.deepcopy(policy)
    samples, pad = _samples(), tokenizer.pad_token_id
    policy.eval()
    sampling, _ = forward_pass(policy, samples, pad, cfg, with_entropy=False)
    policy.train()
    ref.train()
    data = prepare_step(policy, samples, pad, cfg, ref_policy=ref)
    assert data.old_logprobs is not None, "two-pass: the old log-probs come from the separate no-grad pass"
    for old, lp, rlp in zip(data.old_logprobs, sampling, data.ref_logprobs):
        assert torch.equal(torch.exp(old - lp), torch.ones_like(lp))  # ratio exactly 1 despite dropout
        assert torch.equal(rlp, lp)
    assert policy.training and ref.training
    assert all(m.training for m in policy.modules() if isinstance(m, torch.nn.Dropout))


class _ModeRecordingCritic(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the critic a device
        self.seen: list[bool] = []

    def forward(self, input_ids, attention_mask):
        self.seen.append(self.training)
        return self.drop(torch.ones(input_ids.shape))


def test_critic_values_in_eval_mode():
    cfg = load_config(None, ["model.path=tiny", "algo.name=ppo"])
    critic = _ModeRecordingCritic().train()
    values = critic_values(critic, _samples(), 0, cfg)
    assert critic.seen and not any(critic.seen)
    assert all(torch.equal(v, torch.ones_like(v)) for v in values)  # no dropout applied
    assert critic.training


def _three_turn_trajectory() -> tuple[list[TurnSample], list[torch.Tensor]]:
    """A won episode (R = 10) whose first turn was invalid (penalty 0.1), listed out of order; critic values per
    token, constant within a turn: V = 1, 2, 4 for turns 0, 1, 2."""
    turns = [(2, 10.0, 0.0, 4.0), (0, 9.9, -0.1, 1.0), (1, 10.0, 0.0, 2.0)]  # (turn, reward, shaping, V)
    samples = [
        TurnSample([5, 6], [7, 8, 9], turn_idx=t, traj_id=3, group_id=0, reward=r, shaping=sh) for t, r, sh, _ in turns
    ]
    return samples, [torch.full((3,), v) for *_, v in turns]


def test_turn_rewards_put_the_return_on_the_final_turn_only():
    samples, _ = _three_turn_trajectory()
    other = TurnSample([1], [2], turn_idx=0, traj_id=4, group_id=0, reward=-0.1, shaping=-0.1)  # lost, one turn
    assert turn_rewards(samples + [other]).tolist() == pytest.approx([10.0, -0.1, 0.0, -0.1])


def test_turn_level_gae_by_hand():
    cfg = load_config(None, ["algo.name=ppo", "algo.gae_level=turn", "algo.gamma=0.9", "algo.lam=0.8",
                             "algo.whiten_advantages=false"])  # fmt: skip
    samples, values = _three_turn_trajectory()
    adv, ret = _gae(samples, values, cfg)
    # own rewards r = (-0.1, 0, 10), V = (1, 2, 4), gamma lam = 0.72, terminal after turn 2:
    # A2 = 10 - 4 = 6;  A1 = 0 + 0.9*4 - 2 + 0.72*6 = 5.92;  A0 = -0.1 + 0.9*2 - 1 + 0.72*5.92 = 4.9624
    by_turn = {s.turn_idx: (a, r) for s, a, r in zip(samples, adv, ret)}
    for turn, a_t, v_t in [(0, 4.9624, 1.0), (1, 5.92, 2.0), (2, 6.0, 4.0)]:
        a, r = by_turn[turn]
        assert a.tolist() == pytest.approx([a_t] * 3, abs=1e-5)  # the turn's advantage on every response token
        assert r.tolist() == pytest.approx([a_t + v_t] * 3, abs=1e-5)


def test_gae_level_changes_the_advantages():
    samples, values = _three_turn_trajectory()
    out = {}
    for level in ("token", "turn"):
        overrides = ["algo.name=ppo", f"algo.gae_level={level}", "algo.gamma=0.9", "algo.whiten_advantages=false"]
        out[level] = torch.cat(_gae(samples, values, load_config(None, overrides))[0])
    # token level: each turn is its own episode with its whole reward at the last token: A = r - V there
    assert out["token"][2].item() == pytest.approx(10.0 - 4.0)
    assert out["token"][5].item() == pytest.approx(9.9 - 1.0)
    assert out["turn"][5].item() == pytest.approx(-0.1 + 0.9 * 2 - 1 + 0.9 * (0.9 * 4 - 2 + 0.9 * 6))
    assert not torch.allclose(out["token"], out["turn"])
