"""EPO: history, trajectory entropy, smoothing penalty (values and gradients), β schedules, the reference mode."""

from __future__ import annotations

import json
import math

import pytest
import torch

from epo.algos.epo import (
    EntropyHistory,
    EntropyTrend,
    beta,
    epo_loss,
    per_turn_mean_entropy,
    reference_smoothing_penalty,
    smoothing_penalty,
    trajectory_entropy,
    trajectory_sample_weights,
    turn_metrics,
)
from epo.config import EPOConfig

# ---------------------------------------------------------------- trajectory-level entropy


def test_trajectory_sample_weights_by_hand():
    # trajectory 7 has 3 samples, 9 has 1: w = 1 / (2 trajectories * T_i)
    w = trajectory_sample_weights(torch.tensor([7, 7, 9, 7]))
    assert w.tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 2, 1 / 6])
    assert trajectory_sample_weights(["x", "y"]).tolist() == pytest.approx([0.5, 0.5])


def test_trajectory_entropy_counts_each_trajectory_equally():
    # samples' token-means: traj A turns 1, 2, 3; traj B one turn of 4 -> L_H = (mean(1,2,3) + 4) / 2 = 3
    entropy = torch.tensor([[1.0, 1.0], [2.0, 0.0], [3.0, 3.0], [4.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    w = trajectory_sample_weights([0, 0, 0, 1])
    assert trajectory_entropy(entropy, mask, w).item() == pytest.approx(3.0)
    # (token-mean would be (1+1+2+3+3+4)/6 = 14/6: a different number)


# ---------------------------------------------------------------- per-turn statistic and history


def test_per_turn_mean_entropy_token_vs_sample_weighting_and_finished_envs():
    entropy = torch.tensor([[1.0, 3.0, 0.0], [5.0, 0.0, 0.0], [2.0, 2.0, 2.0], [50.0, 50.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    turn_idx = torch.tensor([0, 0, 1, 0])
    active = torch.tensor([True, True, True, False])  # row 3 is a finished env: ignored
    # turn 0, token weighting: (1 + 3 + 5) / 3 tokens = 3; sample weighting: (2 + 5) / 2 = 3.5; turn 1: 2
    assert per_turn_mean_entropy(entropy, mask, turn_idx, active) == pytest.approx({0: 3.0, 1: 2.0})
    assert per_turn_mean_entropy(entropy, mask, turn_idx, active, weighting="sample") == pytest.approx({0: 3.5, 1: 2.0})


def test_history_cumulative_short_rollouts_leave_later_turns_untouched():
    hist = EntropyHistory("cumulative")
    hist.update({0: 1.0, 1: 2.0, 2: 4.0})
    hist.update({0: 3.0})  # a short rollout: no zero padding for turns 1, 2
    assert hist.as_dict() == pytest.approx({0: 2.0, 1: 2.0, 2: 4.0})
    hbar, has = hist.reference(torch.tensor([0, 2, 5]))
    assert hbar.tolist() == pytest.approx([2.0, 4.0, 0.0])
    assert has.tolist() == [True, True, False]


def test_history_window_ema_scalar_by_hand():
    window, ema, scalar = EntropyHistory("window", window=2), EntropyHistory("ema", ema=0.9), EntropyHistory("scalar")
    for x in (1.0, 3.0, 5.0):
        window.update({0: x})
        ema.update({0: x, 1: 2 * x})
    assert window.value(0) == pytest.approx((3 + 5) / 2)
    assert ema.value(0) == pytest.approx(0.9 * (0.9 * 1 + 0.1 * 3) + 0.1 * 5)  # 1 -> 1.2 -> 1.58
    assert ema.value(1) == pytest.approx(2 * 1.58)
    scalar.update({0: 1.0, 1: 3.0})  # no batch mean given: mean of the turn means = 2
    scalar.update({0: 9.0}, batch_mean=4.0)
    assert scalar.value(0) == scalar.value(17) == pytest.approx(3.0)  # one value for every turn


def test_history_update_from_tensors_ignores_finished_envs():
    hist = EntropyHistory()
    entropy = torch.tensor([[2.0, 4.0], [100.0, 100.0]])
    mask = torch.ones(2, 2)
    means = hist.update_from_tensors(entropy, mask, torch.tensor([3, 3]), active=torch.tensor([True, False]))
    assert means == pytest.approx({3: 3.0})
    assert hist.as_dict() == pytest.approx({3: 3.0})


def test_history_reference_left_padding():
    # the released code pads a rollout of L turns with zeros on the left to max_turns: turns shift by M - L
    hist = EntropyHistory.from_config(EPOConfig(mode="reference"), max_turns=4)
    hist.update({0: 1.0, 1: 2.0})  # row [0, 0, 1, 2]
    assert hist.as_dict() == pytest.approx({0: 0.0, 1: 0.0, 2: 1.0, 3: 2.0})
    hist.update({0: 3.0, 1: 4.0, 2: 5.0, 3: 6.0})  # full row, mean with the previous one
    assert hist.as_dict() == pytest.approx({0: 1.5, 1: 2.0, 2: 3.0, 3: 4.0})
    with pytest.raises(ValueError, match="max_turns"):
        EntropyHistory.from_config(EPOConfig(mode="reference"))
    assert EntropyHistory.from_config(EPOConfig(mode="on")).pad_left_to is None


@pytest.mark.parametrize("mode", ["cumulative", "window", "ema", "scalar"])
def test_history_state_dict_round_trip_is_exact(mode):
    hist = EntropyHistory(mode, window=3, ema=0.7)
    for step in range(5):
        hist.update({t: 0.1 * step + 1 / (t + 3) for t in range(step + 1)})
    restored = EntropyHistory(mode)
    restored.load_state_dict(json.loads(json.dumps(hist.state_dict())))
    assert restored.as_dict() == hist.as_dict()  # exact, not approx
    hist.update({0: 0.123, 4: 0.456})
    restored.update({0: 0.123, 4: 0.456})
    assert restored.as_dict() == hist.as_dict()
    with pytest.raises(ValueError, match="history mode"):
        EntropyHistory("window" if mode != "window" else "ema").load_state_dict(hist.state_dict())


# ---------------------------------------------------------------- smoothing penalty


def _band_case():
    """H̄_0 = 1 with band [0.5, 2]; row 0 (turn 0): 0.2 below, 1.0 inside, 3.0 above, pad; row 1: turn 1, no history."""
    hist = EntropyHistory()
    hist.update({0: 1.0})
    entropy = torch.tensor([[0.2, 1.0, 3.0, 7.0], [5.0, 0.1, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    return hist, entropy, mask, torch.tensor([0, 1])


def test_smoothing_penalty_value_and_gradient_by_hand():
    hist, entropy, mask, turn_idx = _band_case()
    penalty, m = smoothing_penalty(entropy, mask, turn_idx, hist, 0.5, 2.0, "token")
    # hinge row 0: (0.5 - 0.2) + 0 + (3 - 2) = 1.3; row 1 has no history -> 0; 5 response tokens
    assert penalty.item() == pytest.approx(1.3 / 5)
    assert m["epo/P"] == pytest.approx(1.3 / 5)
    assert m["epo/frac_below"] == pytest.approx(1 / 5) and m["epo/frac_above"] == pytest.approx(1 / 5)
    penalty.backward()
    # descent on +P raises entropy below the band (grad < 0) and lowers it above (grad > 0); zero in band
    assert torch.allclose(entropy.grad, torch.tensor([[-0.2, 0.0, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert (entropy.grad[:, [1, 3]] == 0).all() and (entropy.grad[1] == 0).all()  # exactly zero in band / no history


def test_smoothing_penalty_sequence_level_and_normalisers():
    hist, entropy, mask, turn_idx = _band_case()
    hist.update({1: 1.0})  # now turn 1 has history too (H̄_1 = 1)
    penalty, _ = smoothing_penalty(entropy, mask, turn_idx, hist, 0.5, 2.0, "sequence", num_seqs=4)
    # sample means: row 0 (0.2 + 1 + 3) / 3 = 1.4 (in band), row 1 (5 + 0.1) / 2 = 2.55 -> hinge 0.55; / 4 samples
    assert penalty.item() == pytest.approx(0.55 / 4)
    penalty.backward()
    # d/dh of mean over 2 tokens: 0.5 / 4 per token of row 1
    assert entropy.grad[0].abs().sum() == 0
    assert entropy.grad[1].tolist() == pytest.approx([0.125, 0.125, 0.0, 0.0])


def test_no_history_means_no_penalty():
    _, entropy, mask, turn_idx = _band_case()
    penalty, m = smoothing_penalty(entropy, mask, turn_idx, EntropyHistory(), 0.5, 2.0)
    assert penalty.item() == 0.0 and m["epo/frac_above"] == 0.0


def _cfg(**kw):
    base = dict(mode="on", entropy_coef=0.1, smoothing_alpha=0.5, kappa_low=0.5, kappa_high=2.0)
    base.update(kw)
    base.setdefault("beta_schedule", "constant")
    base.setdefault("entropy_level", "token")
    return EPOConfig(**base)


def _grad(cfg, hist, entropy, mask, turn_idx):
    entropy = entropy.detach().clone().requires_grad_(True)
    loss, m = epo_loss(entropy, mask, turn_idx, None, hist, 0, 10, cfg)
    loss.backward()
    return entropy.grad, loss, m


def test_epo_loss_value_by_hand():
    hist = EntropyHistory()
    hist.update({0: 1.0})
    entropy, mask, turn_idx = torch.tensor([[0.2, 1.0, 3.0]]), torch.ones(1, 3), torch.tensor([0])
    # L_H = 4.2 / 3 = 1.4; P = 1.3 / 3; loss = -λ L_H + λ α β P = -0.14 + 0.05 * 1.3 / 3
    _, loss, m = _grad(_cfg(), hist, entropy, mask, turn_idx)
    assert loss.item() == pytest.approx(-0.14 + 0.05 * 1.3 / 3)
    assert m["epo/L_H"] == pytest.approx(1.4) and m["epo/beta"] == 1.0
    assert m["epo/penalty_term"] == pytest.approx(0.05 * 1.3 / 3)
    # smoothing_coef replaces λα: -0.14 + 2 * β * P
    _, loss, _ = _grad(_cfg(smoothing_coef=2.0), hist, entropy, mask, turn_idx)
    assert loss.item() == pytest.approx(-0.14 + 2.0 * 1.3 / 3)
    # paper β at k = 0 is 2
    _, loss, m = _grad(_cfg(beta_schedule="paper"), hist, entropy, mask, turn_idx)
    assert m["epo/beta"] == 2.0 and loss.item() == pytest.approx(-0.14 + 0.05 * 2 * 1.3 / 3)
    off, m_off = epo_loss(entropy, mask, turn_idx, None, hist, 0, 10, _cfg(mode="off"))
    assert off.item() == 0.0 and m_off == {}


def test_default_mode_smoothing_gradient_only_out_of_band():
    hist, entropy, mask, turn_idx = _band_case()
    grad_on, _, _ = _grad(_cfg(), hist, entropy, mask, turn_idx)
    grad_no_smoothing, _, _ = _grad(_cfg(smoothing_alpha=0.0), hist, entropy, mask, turn_idx)
    smoothing_grad = grad_on - grad_no_smoothing
    out_of_band = torch.tensor([[True, False, True, False], [False, False, False, False]])
    assert (smoothing_grad[out_of_band] != 0).all()
    assert (smoothing_grad[~out_of_band] == 0).all()
    assert smoothing_grad[0, 0] < 0 < smoothing_grad[0, 2]  # below the band: push up; above: push down


def test_reference_mode_has_no_smoothing_gradient_even_when_active():
    hist = EntropyHistory()
    hist.update({0: 1.0, 30: 1.0})
    entropy = torch.tensor([[0.2, 1.0, 3.0], [5.0, 1.0, 0.1]])
    mask, turn_idx = torch.ones(2, 3), torch.tensor([0, 30])  # turn 30 >= 25: the penalty is active
    grad_ref, loss_ref, m = _grad(_cfg(mode="reference"), hist, entropy, mask, turn_idx)
    grad_plain, loss_plain, _ = _grad(_cfg(mode="reference", smoothing_alpha=0.0), hist, entropy, mask, turn_idx)
    # the value moves: 4 of 6 tokens are out of the strict band (0.5, 2) -> P = 4/6
    assert m["epo/P"] == pytest.approx(4 / 6) and m["epo/smoothing_active"] == 1.0
    assert loss_ref.item() == pytest.approx(loss_plain.item() + 0.05 * 4 / 6)
    assert torch.equal(grad_ref, grad_plain)  # ... but the gradient is exactly that of -λ L_H


def test_reference_mode_only_for_micro_batches_with_a_turn_at_least_25():
    hist = EntropyHistory()
    hist.update({t: 1.0 for t in range(30)})
    entropy, mask = torch.tensor([[3.0, 3.0], [3.0, 3.0]]), torch.ones(2, 2)
    early, m_early = reference_smoothing_penalty(entropy, mask, torch.tensor([0, 24]), hist, 0.5, 2.0)
    late, _ = reference_smoothing_penalty(entropy, mask, torch.tensor([0, 25]), hist, 0.5, 2.0)
    assert early.item() == 0.0 and m_early["epo/smoothing_active"] == 0.0
    assert late.item() == 1.0  # every token of the micro-batch (turn 0 included) is out of band


def test_a_reference_run_too_short_for_its_smoothing_term_is_told_so():
    """max_turns 25 -> turn indices 0..24: the gate (index >= 25) is never reached; 26 reaches it."""
    from epo.algos.epo import reference_smoothing_note

    assert "stay 0" in reference_smoothing_note("reference", 25)
    assert reference_smoothing_note("reference", 26) is None
    assert reference_smoothing_note("on", 10) is None


def test_reference_sequence_mode_averages_over_padding():
    hist = EntropyHistory()
    hist.update({25: 1.0})
    entropy, mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    turn_idx = torch.tensor([25])
    # the true mean 1.0 is inside (0.8, 2); the reference's mean over all 4 positions, 0.5, is below the band
    ref, m = reference_smoothing_penalty(entropy, mask, turn_idx, hist, 0.8, 2.0, "sequence")
    assert ref.item() == 1.0 and m["epo/frac_below"] == 1.0
    ours, _ = smoothing_penalty(entropy, mask, turn_idx, hist, 0.8, 2.0, "sequence")
    assert ours.item() == 0.0


# ---------------------------------------------------------------- β schedules


def test_beta_paper_schedule_by_hand():
    assert beta(0, 150, "paper") == pytest.approx(2.0)
    assert beta(75, 150, "paper") == pytest.approx(1 + math.exp(-1))  # k = k_mid
    assert beta(150, 150, "paper") == pytest.approx(1 + math.exp(-2))
    assert beta(75, 150, "paper", gamma=2.0) == pytest.approx(1 + math.exp(-2))
    assert beta(0, 1, "paper") == pytest.approx(2.0)  # K = 1: k_mid floored to 1, no division by zero


def test_beta_reference_and_constant_by_hand():
    assert beta(0, 10, "reference") == pytest.approx(1.0)  # K is the hard-coded 150, not total_steps
    assert beta(75, 10, "reference") == pytest.approx(1 - 0.2 * (1 - math.exp(-2)))  # 0.8271
    assert beta(76, 10, "reference") == pytest.approx(0.8 * math.exp(-3 / 75))
    assert beta(150, 10, "reference") == pytest.approx(0.8 * math.exp(-3))
    assert beta(400, 10, "reference") == pytest.approx(0.8 * math.exp(-3))  # clamped to K
    assert beta(37, 10, "reference", reference_total_steps=100) == pytest.approx(1 - 0.2 * (1 - math.exp(-2 * 37 / 50)))
    assert beta(5, 10, "constant") == 1.0
    with pytest.raises(ValueError, match="beta_schedule"):
        beta(0, 10, "linear")


# ---------------------------------------------------------------- logging helpers


def test_entropy_trend_by_hand_and_round_trip():
    trend = EntropyTrend(window=2)
    trend.update(1.0)
    trend.update(3.0)
    m = trend.update(2.0)
    # all steps: mean 2, population var (1 + 1 + 0) / 3; window [3, 2]: var 0.25; |2 - 3| = 1
    assert m["epo/entropy_var_steps"] == pytest.approx(2 / 3)
    assert m["epo/entropy_var_window"] == pytest.approx(0.25)
    assert m["epo/entropy_delta"] == pytest.approx(1.0)
    restored = EntropyTrend()
    restored.load_state_dict(json.loads(json.dumps(trend.state_dict())))
    assert restored.update(5.0) == trend.update(5.0)


def test_turn_metrics_names():
    hist = EntropyHistory()
    hist.update({0: 1.0, 12: 2.0})
    m = turn_metrics({0: 1.5}, hist)
    assert m == {"epo/entropy_turn/00": 1.5, "epo/hbar_turn/00": 1.0, "epo/hbar_turn/12": 2.0}


def test_history_reference_uses_the_entropy_dtype():
    """H̄ = 0.1 and κ_r = 2 put the upper band edge at 0.2; an fp64 entropy of 0.2 + 1e-10 is above it. Built in
    fp32 first, H̄ would be 0.1000000015 and the edge 0.200000003: the token would count as inside the band."""
    hist = EntropyHistory("cumulative")
    hist.update({0: 0.1})
    hbar, _ = hist.reference(torch.tensor([0]), dtype=torch.float64)
    assert hbar.dtype == torch.float64 and hbar.item() == 0.1
    entropy = torch.tensor([[0.2 + 1e-10]], dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.float64)
    penalty, metrics = smoothing_penalty(entropy, mask, torch.tensor([0]), hist, kappa_low=0.0, kappa_high=2.0)
    assert metrics["epo/frac_above"] == 1.0
    assert penalty.item() == pytest.approx(1e-10, rel=1e-3)
