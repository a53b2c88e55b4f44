"""Advantage estimators: GRPO by hand, GAE (token and turn level) against naive python loops."""

from __future__ import annotations

import math
import random

import pytest
import torch

from epo.algos.advantages import broadcast_to_tokens, gae_token, gae_turn, grpo_advantages, shaping_share, whiten


def test_grpo_turn_stats_by_hand():
    # group "g": trajectory a (2 turns, return 10), trajectory b (3 turns, return 0); group "h" has one sample.
    scores = torch.tensor([10.0, 10.0, 0.0, 0.0, 0.0, 3.0])
    groups = ["g", "g", "g", "g", "g", "h"]
    trajs = ["a", "a", "b", "b", "b", "c"]
    adv = grpo_advantages(scores, groups, trajs, stats="turn")
    # mean 4; unbiased var (6^2*2 + 4^2*3) / 4 = 30
    std = math.sqrt(30)
    assert adv.tolist() == pytest.approx([6 / std, 6 / std, -4 / std, -4 / std, -4 / std, 0.0], rel=1e-5)
    no_std = grpo_advantages(scores, groups, trajs, stats="turn", norm_std=False)
    assert no_std.tolist() == pytest.approx([6, 6, -4, -4, -4, 0])


def test_grpo_trajectory_stats_by_hand():
    scores = torch.tensor([10.0, 10.0, 0.0, 0.0, 0.0, 3.0, 3.0])
    groups = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    trajs = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    adv = grpo_advantages(scores, groups, trajs, stats="trajectory")
    # one value per trajectory: [10, 0] -> mean 5, unbiased std sqrt(50); group 1 has one trajectory -> 0
    expected = [5 / math.sqrt(50)] * 2 + [-5 / math.sqrt(50)] * 3 + [0.0, 0.0]
    assert adv.tolist() == pytest.approx(expected, rel=1e-5)


def test_grpo_trajectory_stats_equal_trajectory_means_but_different_turns():
    # both trajectories average 9.95, but their turns differ by a 0.1 penalty: the spread of trajectory values is
    # 0; dividing the +-0.05 turn deviations by it gave +-5e4. With each turn weighted 1/L the variance is
    # (4 * 0.05^2 / 2) / (2 - 1) = 0.005, so the advantages are +-0.05 / sqrt(0.005) = +-1/sqrt(2).
    adv = grpo_advantages(torch.tensor([10.0, 9.9, 10.0, 9.9]), [0, 0, 0, 0], [0, 0, 1, 1], stats="trajectory")
    a = 1 / math.sqrt(2)
    assert adv.tolist() == pytest.approx([a, -a, a, -a], rel=1e-4)
    # all turns equal: nothing to compare, advantages 0 (not 0/eps noise)
    same = grpo_advantages(torch.full((4,), 10.0), [0, 0, 0, 0], [0, 0, 1, 1], stats="trajectory")
    assert same.tolist() == [0.0] * 4


def test_grpo_rejects_bad_input():
    with pytest.raises(ValueError, match="grpo_stats"):
        grpo_advantages(torch.zeros(2), [0, 0], [0, 1], stats="group")
    with pytest.raises(ValueError, match="2 scores, 3 group ids"):
        grpo_advantages(torch.zeros(2), [0, 0, 0], [0, 1])


def test_broadcast_to_tokens():
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert out.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]


def _naive_gae(rewards, values, gamma, lam):
    """Textbook GAE over one episode's lists (terminal after the last step)."""
    adv, last = [0.0] * len(rewards), 0.0
    for k in reversed(range(len(rewards))):
        next_v = values[k + 1] if k + 1 < len(rewards) else 0.0
        last = rewards[k] + gamma * next_v - values[k] + gamma * lam * last
        adv[k] = last
    return adv


def test_gae_token_gamma_lambda_one_by_hand():
    # reward R = 10 at the last response token, gamma = lam = 1: A_k = R - V_k, returns = R
    rewards = torch.tensor([[0.0, 0.0, 10.0, 0.0]])
    values = torch.tensor([[1.0, 2.0, 3.0, 99.0]])  # 99 sits on padding and must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = gae_token(rewards, values, mask, 1.0, 1.0)
    assert adv.tolist() == [[9.0, 8.0, 7.0, 0.0]]
    assert ret.tolist() == [[10.0, 10.0, 10.0, 0.0]]


def test_gae_token_matches_naive_loop():
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 1, 3, 0]
    rewards, values = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    mask = torch.zeros(4, 6)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    adv, ret = gae_token(rewards, values, mask, gamma=0.9, lam=0.8)
    for i, n in enumerate(lengths):
        expected = _naive_gae(rewards[i, :n].tolist(), values[i, :n].tolist(), 0.9, 0.8)
        assert adv[i, :n].tolist() == pytest.approx(expected, abs=1e-5)
        expected_returns = [a + v for a, v in zip(expected, values[i, :n].tolist(), strict=True)]
        assert ret[i, :n].tolist() == pytest.approx(expected_returns, abs=1e-5)
        assert adv[i, n:].abs().sum() == 0 and ret[i, n:].abs().sum() == 0


def test_gae_turn_by_hand():
    # one trajectory, 3 turns given out of order; turn rewards [0, -0.1, 10]; V_t (first response token) [1, 2, 5]
    # gamma = lam = 1: A_2 = 10 - 5 = 5; A_1 = (-0.1 + 10) - 2 = 7.9; A_0 = 9.9 - 1 = 8.9
    turn_idx = torch.tensor([2, 0, 1])
    rewards = torch.tensor([10.0, 0.0, -0.1])
    values = torch.tensor([[5.0, 7.0], [1.0, 0.0], [2.0, 4.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    adv, ret = gae_turn(rewards, values, mask, [3, 3, 3], turn_idx, 1.0, 1.0)
    assert torch.allclose(adv, torch.tensor([[5.0, 5.0], [8.9, 0.0], [7.9, 7.9]]))
    assert torch.allclose(ret, torch.tensor([[10.0, 10.0], [9.9, 0.0], [9.9, 9.9]]))
    # value_token="last": V = [7, 1, 4] -> A_2 = 3, A_1 = -0.1 + 7 - 4 + 3 = 5.9, A_0 = 0 + 4 - 1 + 5.9 = 8.9
    adv_last, _ = gae_turn(rewards, values, mask, [3, 3, 3], turn_idx, 1.0, 1.0, value_token="last")
    assert adv_last[:, 0].tolist() == pytest.approx([3.0, 8.9, 5.9])


def test_gae_turn_matches_naive_loop():
    rng = random.Random(0)
    lengths = {"a": 4, "b": 1, "c": 3}
    rows = [(traj, t) for traj, n in lengths.items() for t in range(n)]
    rng.shuffle(rows)
    n = len(rows)
    rewards = torch.tensor([rng.uniform(-1, 1) for _ in range(n)])
    values = torch.tensor([[rng.uniform(-1, 1) for _ in range(3)] for _ in range(n)])
    mask = torch.ones(n, 3)
    mask[0, 1:] = 0
    adv, _ = gae_turn(rewards, values, mask, [r[0] for r in rows], torch.tensor([r[1] for r in rows]), 0.9, 0.7)
    for traj, length in lengths.items():
        pos = [next(i for i, r in enumerate(rows) if r == (traj, t)) for t in range(length)]
        expected = _naive_gae([rewards[i].item() for i in pos], [values[i, 0].item() for i in pos], 0.9, 0.7)
        assert [adv[i, 0].item() for i in pos] == pytest.approx(expected, abs=1e-5)


def test_whiten_by_hand():
    x = torch.tensor([[1.0, 3.0, 5.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # mean 3, unbiased var (4 + 0 + 4) / 2 = 4 -> std 2
    assert whiten(x, mask).tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert whiten(x, mask, shift_mean=False).tolist()[0] == pytest.approx([2.0, 3.0, 4.0, 0.0], abs=1e-6)


def test_shaping_share_counts_groups_with_one_outcome():
    # group 0: a win (R=10) and a loss (R=0); group 1: two losses that differ only by an invalid-action penalty
    returns = torch.tensor([10.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    scores = torch.tensor([10.0, 10.0, 0.0, -0.1, 0.0, -0.1, 0.0])  # R + each turn's own shaping
    groups, trajs = [0, 0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2, 3]
    adv = grpo_advantages(scores, groups, trajs, stats="turn")
    by_hand = adv[4:].abs().sum() / adv.abs().sum()
    assert shaping_share(adv, groups, returns) == pytest.approx(float(by_hand))
    assert 0.2 < by_hand < 0.8  # the std-normalised penalty is as large as the win: the point of the metric
    assert shaping_share(adv[:4], groups[:4], returns[:4]) == 0.0  # no one-outcome group
    assert shaping_share(torch.zeros(3), [0, 0, 1], torch.zeros(3, dtype=torch.float64)) == 0.0  # no advantage
    # R recovered as reward - shaping carries rounding: 9.9 - (-0.1) must still count as the same outcome as 10
    near = torch.tensor([10.0, 9.9 + 0.1, 0.0], dtype=torch.float64)
    assert shaping_share(torch.tensor([1.0, -1.0, 0.0]), [0, 0, 1], near) == 1.0
