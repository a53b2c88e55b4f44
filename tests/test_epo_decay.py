"""EPO-Decay (epo.turn_decay): the entropy bonus of a turn-t sample weighs turn_decay**t; smoothing is untouched."""

from __future__ import annotations

import pytest
import torch

from epo.algos.epo import EntropyHistory, epo_loss, turn_decay_weights
from epo.config import ConfigError, EPOConfig, load_config


def _grad(decay: float, alpha: float = 0.0):
    cfg = EPOConfig(mode="on", entropy_coef=1.0, smoothing_alpha=alpha, entropy_level="token", turn_decay=decay)
    entropy = torch.ones(3, 2, requires_grad=True)  # [B=3 samples, T=2 tokens]
    mask, turn_idx = torch.ones(3, 2), torch.tensor([0, 1, 2])
    loss, _ = epo_loss(entropy, mask, turn_idx, None, EntropyHistory(), 0, 10, cfg, num_tokens=6.0)
    loss.backward()
    return loss.item(), entropy.grad


def test_turn_decay_weights_by_hand():
    assert turn_decay_weights(torch.tensor([0, 1, 3]), 0.5).tolist() == [1.0, 0.5, 0.125]
    assert turn_decay_weights(torch.tensor([0, 7]), 1.0).tolist() == [1.0, 1.0]


def test_decay_weighs_early_turns_more():
    loss_off, grad_off = _grad(1.0)
    loss_decay, grad_decay = _grad(0.5)
    assert loss_off == pytest.approx(-1.0)  # token-mean entropy 1, λ = 1
    assert loss_decay == pytest.approx(-(1 + 0.5 + 0.25) / 3)
    # gradient of -λ·mean(w_t h) w.r.t. each token: -w_t / 6
    assert grad_off[:, 0].tolist() == pytest.approx([-1 / 6] * 3)
    assert grad_decay[:, 0].tolist() == pytest.approx([-1 / 6, -0.5 / 6, -0.25 / 6])


def test_decay_must_be_in_the_unit_interval():
    assert load_config(None, ["epo.turn_decay=0.9"]).epo.turn_decay == 0.9
    for bad in ("0", "1.5", "-0.1"):
        with pytest.raises(ConfigError, match="epo.turn_decay"):
            load_config(None, [f"epo.turn_decay={bad}"])


def test_small_model_has_a_few_million_parameters():
    from epo.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("small")
    n = sum(p.numel() for p in model.parameters())
    assert 5e6 < n < 10e6 and model.config.num_hidden_layers == 4 and model.config.vocab_size == len(tok)
