"""The single-pass update (no separate old-log-prob forward) equals the two-pass one it replaces."""

from __future__ import annotations

import copy
import random

import torch

from epo.algos import EntropyHistory
from epo.config import load_config
from epo.models import load_model_and_tokenizer
from epo.rollout.types import TurnSample
from epo.trainer import setup
from epo.trainer.update import forward_pass, prepare_step, single_pass, update_policy


def _samples(n: int = 6) -> list[TurnSample]:
    gen = random.Random(0)
    out = []
    for k in range(n):
        prompt = [gen.randrange(10, 400) for _ in range(gen.randint(5, 12))]
        response = [gen.randrange(10, 400) for _ in range(gen.randint(1, 4))]
        out.append(TurnSample(prompt, response, turn_idx=k % 3, traj_id=k // 3, group_id=0, reward=float(k % 2)))
    return out


def test_single_pass_update_equals_the_two_pass_update():
    cfg = load_config(None, ["model.path=tiny", "epo.mode=on", "epo.smoothing_coef=1.0", "train.mini_batch_size=8"])
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer("tiny")
    twin = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    samples, pad = _samples(), tokenizer.pad_token_id
    assert single_pass(cfg, len(samples))
    one = prepare_step(model, samples, pad, cfg)
    assert one.old_logprobs is None and one.entropy is None
    two = copy.deepcopy(one)
    two.old_logprobs, two.entropy = forward_pass(twin, samples, pad, cfg, with_entropy=True)
    history = EntropyHistory()
    history.update({0: 1.0, 1: 2.0})  # some turns in band, some not: the smoothing term has gradients

    def run(policy, data):
        optimizer = setup.make_optimizer(policy.parameters(), 1e-2, cfg)
        policy.train()
        return update_policy(policy, optimizer, data, cfg, history, 1, pad, random.Random(0))

    metrics_one, metrics_two = run(model, one), run(twin, two)
    assert metrics_one == metrics_two
    for a, b in zip(one.entropy, two.entropy):
        assert torch.equal(a, b)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before)), "the update changed nothing"


def test_single_pass_only_when_the_batch_is_updated_once_at_rollout_weights():
    base = ["model.path=tiny", "train.mini_batch_size=8"]
    assert single_pass(load_config(None, base), 8)
    assert not single_pass(load_config(None, base), 9)  # two mini-batches: the second is off-policy
    assert not single_pass(load_config(None, base + ["train.ppo_epochs=2"]), 8)
    assert not single_pass(load_config(None, base + ["epo.mode=reference"]), 8)
