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


def test_lora_reference_is_the_base_model_with_adapters_disabled():
    """With LoRA and a KL term, the reference is the policy itself with its adapters off (no second copy); its
    log-probs equal a frozen copy of the initial model's, before and after the adapters have been trained."""
    cfg = load_config(
        None,
        ["model.path=tiny", "model.lora.enabled=true", "model.lora.target_modules=[q_proj,v_proj]",
         "algo.kl_coef=0.1", "train.mini_batch_size=8"],
    )  # fmt: skip
    torch.manual_seed(0)
    policy, tokenizer = setup.load_policy(cfg, torch.device("cpu"))
    initial = copy.deepcopy(policy).requires_grad_(False).eval()
    reference = setup.make_reference(policy, cfg)
    assert reference is policy, "LoRA reference must not be a second model copy"
    samples, pad = _samples(), tokenizer.pad_token_id
    frozen, _ = forward_pass(initial, samples, pad, cfg, with_entropy=False)
    optimizer = setup.make_optimizer(policy.parameters(), 5e-2, cfg)
    for _ in range(2):
        data = prepare_step(policy, samples, pad, cfg, reference)
        for a, b in zip(data.ref_logprobs, frozen):
            assert torch.allclose(a, b, atol=1e-6)
        policy.train()
        metrics = update_policy(policy, optimizer, data, cfg, EntropyHistory(), 1, pad, random.Random(0))
    assert metrics["actor/kl_ref"] > 0, "the adapters moved the policy away from its reference"
    now, _ = forward_pass(policy, samples, pad, cfg, with_entropy=False)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(now, frozen))
    # anything but adapters trainable (here: full fine-tuning) keeps the frozen deep copy
    full = load_config(None, ["model.path=tiny", "algo.kl_coef=0.1"])
    plain, _ = setup.load_policy(full, torch.device("cpu"))
    assert setup.make_reference(plain, full) is not plain
