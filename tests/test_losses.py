"""PPO-family losses on tiny tensors, expectations worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from epo.algos.losses import aggregate, kl_loss, kl_penalty, merge_metrics, policy_loss, value_loss


def test_aggregate_modes_by_hand():
    loss_mat = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # token-mean: (1 + 2 + 4) / 3 tokens
    assert aggregate(loss_mat, mask, "token-mean").item() == pytest.approx(7 / 3)
    # seq-mean-token-sum: ((1 + 2) + 4) / 2 samples
    assert aggregate(loss_mat, mask, "seq-mean-token-sum").item() == pytest.approx(3.5)
    # seq-mean-token-mean: ((1 + 2) / 2 + 4 / 1) / 2
    assert aggregate(loss_mat, mask, "seq-mean-token-mean").item() == pytest.approx(2.75)
    # with mini-batch normalisers (7 tokens, 4 samples in the whole mini-batch)
    assert aggregate(loss_mat, mask, "token-mean", num_tokens=7).item() == pytest.approx(1.0)
    assert aggregate(loss_mat, mask, "seq-mean-token-sum", num_seqs=4).item() == pytest.approx(7 / 4)
    assert aggregate(loss_mat, mask, "seq-mean-token-mean", num_seqs=4).item() == pytest.approx(5.5 / 4)


def test_aggregate_rejects_bad_mode_and_shapes():
    with pytest.raises(ValueError, match="loss_agg"):
        aggregate(torch.ones(2, 3), torch.ones(2, 3), "sum")
    with pytest.raises(ValueError, match="shape mismatch"):
        aggregate(torch.ones(2, 3), torch.ones(2, 4))


def _policy_inputs(ratios, advantages, mask):
    old = torch.zeros(1, len(ratios))
    logprobs = torch.log(torch.tensor([ratios])).requires_grad_(True)
    return logprobs, old, torch.tensor([advantages]), torch.tensor([mask])


def test_policy_loss_clip_by_hand():
    logprobs, old, adv, mask = _policy_inputs([1.5, 0.5, 1.0, 7.0], [1.0, 1.0, -1.0, 5.0], [1.0, 1.0, 1.0, 0.0])
    loss, m = policy_loss(logprobs, old, adv, mask, clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    # tok0 A=1 r=1.5: max(-1.5, -1.2) = -1.2 (clipped); tok1 A=1 r=0.5: max(-0.5, -0.8) = -0.5;
    # tok2 A=-1 r=1: 1, dual cap -A*c = 3 does not bind; tok3 masked. token-mean = (-1.2 - 0.5 + 1) / 3
    assert loss.item() == pytest.approx(-0.7 / 3)
    assert m["actor/clip_frac"] == pytest.approx(1 / 3)
    assert m["actor/clip_frac_lower"] == 0.0
    # approx_kl = mean(-log r) = -(ln 1.5 + ln 0.5 + 0) / 3
    assert m["actor/approx_kl"] == pytest.approx(-(math.log(1.5) + math.log(0.5)) / 3)
    assert m["actor/ratio_max"] == pytest.approx(1.5)  # the masked 7.0 is ignored
    assert m["actor/ratio_mean"] == pytest.approx(1.0)
    loss.backward()
    # d/dlogp of -A*r = -A*r: clipped tok0 -> 0; tok1 -> -0.5/3; tok2 -> +1/3; masked -> 0
    assert logprobs.grad[0].tolist() == pytest.approx([0.0, -0.5 / 3, 1 / 3, 0.0])


def test_policy_loss_asymmetric_clip_and_dual_clip():
    # tok0 A=1 r=1.5 with clip_high 0.28: -1.28; tok1 A=-1 r=0.5 with clip_low 0.3: max(0.5, 0.7) = 0.7;
    # tok2 A=-1 r=5: max(5, 1.28) = 5, dual clip caps at -A*c = 3
    logprobs, old, adv, mask = _policy_inputs([1.5, 0.5, 5.0], [1.0, -1.0, -1.0], [1.0, 1.0, 1.0])
    loss, m = policy_loss(logprobs, old, adv, mask, clip_low=0.3, clip_high=0.28, dual_clip=3.0)
    assert loss.item() == pytest.approx((-1.28 + 0.7 + 3.0) / 3)
    assert m["actor/clip_frac"] == pytest.approx(2 / 3)  # tok0, tok1 clipped; tok2's clipped term is smaller
    assert m["actor/clip_frac_lower"] == pytest.approx(1 / 3)
    loss_off, m_off = policy_loss(logprobs, old, adv, mask, clip_low=0.3, clip_high=0.28, dual_clip=0.0)
    assert loss_off.item() == pytest.approx((-1.28 + 0.7 + 5.0) / 3)
    assert m_off["actor/clip_frac_lower"] == 0.0
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(logprobs, old, adv, mask, dual_clip=0.5)


def test_value_loss_by_hand():
    values = torch.tensor([[2.0, 0.0, 1.0, 0.5]])
    old = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    returns = torch.tensor([[3.0, 1.0, 1.0, 0.0]])
    mask = torch.ones(1, 4)
    loss, m = value_loss(values, old, returns, mask, clip=0.5)
    # tok0: unclipped (2-3)^2 = 1, clipped v = 1 + 0.5 = 1.5 -> (1.5-3)^2 = 2.25 -> 2.25 (clip used)
    # tok1: 1 and 1; tok2: 0; tok3: v_clip = 1 - 0.5 = 0.5 = v -> 0.25. 0.5 * mean = 0.5 * 3.5 / 4
    assert loss.item() == pytest.approx(0.4375)
    assert m["critic/vf_clip_frac"] == pytest.approx(0.25)
    # returns [3,1,1,0]: var 4.75/4; resid [1,1,0,-0.5]: var 1.6875/4 -> EV = 1 - 1.6875/4.75
    assert m["critic/explained_var"] == pytest.approx(1 - 1.6875 / 4.75)


def test_explained_variance_is_undefined_for_returns_constant_up_to_rounding():
    from epo.algos.losses import explained_variance

    mask = torch.ones(2, 333)
    values = torch.rand(2, 333)
    # 666 equal returns: fp32 means leave a tiny variance; it must not turn into a huge negative explained variance
    constant = torch.full((2, 333), 10.0) + torch.randn(2, 333) * 1e-7
    assert math.isnan(explained_variance(values, constant, mask))
    assert math.isnan(explained_variance(values, torch.zeros(2, 333), mask))
    varied = torch.rand(2, 333)
    assert explained_variance(varied, varied, mask) == pytest.approx(1.0)


def test_kl_penalty_estimators_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    ln2 = math.log(2)
    # log r = [ln2, -ln2]
    assert kl_penalty(logp, ref, "k1")[0].tolist() == pytest.approx([ln2, -ln2])
    assert kl_penalty(logp, ref, "abs")[0].tolist() == pytest.approx([ln2, ln2])
    assert kl_penalty(logp, ref, "k2")[0].tolist() == pytest.approx([0.5 * ln2**2, 0.5 * ln2**2])
    # k3 = exp(-log r) - 1 + log r: 0.5 - 1 + ln2 ; 2 - 1 - ln2
    assert kl_penalty(logp, ref, "low_var_kl")[0].tolist() == pytest.approx([ln2 - 0.5, 1 - ln2])
    # clamped to 10: log r = -20 -> exp(20) - 21
    assert kl_penalty(torch.tensor([[-20.0]]), torch.zeros(1, 1), "low_var_kl").item() == 10.0
    with pytest.raises(ValueError, match="kl_type"):
        kl_penalty(logp, ref, "k9")
    loss, m = kl_loss(logp, ref, torch.tensor([[1.0, 0.0]]), "k1")
    assert loss.item() == pytest.approx(ln2) and m["actor/kl_loss"] == pytest.approx(ln2)


def test_merge_metrics_weighted_mean_and_max():
    merged = merge_metrics(
        [{"a": 1.0, "r_max": 2.0, "ev": float("nan")}, {"a": 4.0, "r_max": 1.5, "ev": 0.5}], weights=[1.0, 2.0]
    )
    assert merged["a"] == pytest.approx((1 + 8) / 3)
    assert merged["r_max"] == 2.0
    assert merged["ev"] == 0.5  # NaN skipped
