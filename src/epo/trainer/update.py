"""One RL step's math, wired: old log-probs -> advantages -> PPO/GRPO(+EPO) updates.

    prepare_step:   no-grad pass over all turn samples: old log-probs, entropies (EPO history input), ref log-probs
                    (KL), critic values (PPO); then advantages (GRPO group-normalised, or GAE). Skipped for the
                    policy when the update is a single on-policy pass (see `single_pass`): the loss's own forward
                    then gives old log-probs (detached, so ratio = 1 exactly) and the entropies, as TRL does.
    update_policy:  ppo_epochs x shuffled mini-batches x micro-batches packed by tokens, gradient accumulation
    update_critic:  PPO's clipped value loss on the separate critic

Per-token arrays are kept per sample as 1-D tensors of the response length (see batching.py).
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from epo.algos import (
    EntropyHistory,
    aggregate,
    epo_loss,
    gae_token,
    gae_turn,
    grpo_advantages,
    kl_penalty,
    merge_metrics,
    policy_loss,
    trajectory_sample_weights,
    value_loss,
    whiten,
)
from epo.algos.mismatch import mismatch_metrics, tis_weights
from epo.config import Config
from epo.models import SharedValueHead, adapter_disabled
from epo.models.precision import autocast_for
from epo.rollout.types import TurnSample
from epo.trainer import distributed as dist
from epo.trainer.batching import MicroBatch, iter_micro_batches
from epo.trainer.fsdp import clip_grad_norm_, response_logprobs


@dataclass
class StepData:
    samples: list[TurnSample]
    old_logprobs: list[torch.Tensor] | None  # per sample [R]; None: single-pass update, taken from its forward
    entropy: list[torch.Tensor] | None  # per sample [R], at rollout weights (EPO history input); filled by the
    # single-pass update when None
    advantages: list[torch.Tensor]  # per sample [R]
    ref_logprobs: list[torch.Tensor] | None = None
    old_values: list[torch.Tensor] | None = None
    returns: list[torch.Tensor] | None = None


class MetricMeans:
    """Accumulates per-micro-batch metrics; `result()` merges them with `merge_metrics` (the one merge rule:
    weighted mean, max for '*_max' keys, NaN entries skipped so one constant-return micro-batch's NaN explained
    variance does not turn the step's metric into NaN)."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []
        self.weights: list[float] = []

    def add(self, metrics: dict[str, float], weight: float) -> None:
        self.metrics.append(dict(metrics))
        self.weights.append(float(weight))

    def result(self) -> dict[str, float]:
        """The merged metrics of every rank's micro-batches (one process: exactly `merge_metrics`). Under torchrun
        the ranks' per-micro-batch dicts and weights are gathered and merged as one list, so the result is the
        global weighted mean / max with NaN entries skipped, never a mean of rank means."""
        metrics: list[dict[str, float]] = []
        weights: list[float] = []
        for part_metrics, part_weights in dist.all_gather_objects((self.metrics, self.weights)):
            metrics += part_metrics
            weights += part_weights
        return merge_metrics(metrics, weights)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def model_stats(model, mb: MicroBatch, cfg: Config, with_entropy: bool, return_hidden: bool = False):
    """Response log-probs/entropies of one micro-batch, with the numerics of both the old-policy pass and training
    (under train.precision's autocast; backward runs outside it, in the dtypes autocast recorded)."""
    with autocast_for(cfg.train.precision, mb.input_ids.device):
        return response_logprobs(  # through the FSDP root when sharded (trainer/fsdp.py)
            model,
            mb.input_ids,
            mb.attention_mask,
            mb.response_mask,
            temperature=cfg.rollout.temperature or 1.0,
            chunk_tokens=cfg.model.logprob_chunk_tokens,
            with_entropy=with_entropy,
            return_hidden=return_hidden,
        )


@contextmanager
def eval_mode(*modules):
    """Dropout off while computing what must equal the sampling policy's numbers (old and reference log-probs,
    critic values): with LoRA dropout > 0 a train-mode pass would make the first update's ratio != 1. Every
    submodule's own train/eval flag is restored afterwards."""
    flags = [(sub, sub.training) for m in modules if m is not None for sub in m.modules()]
    for m in modules:
        if m is not None:
            m.eval()
    try:
        yield
    finally:
        for sub, training in flags:
            sub.training = training


@torch.no_grad()
def forward_pass(model, samples: list[TurnSample], pad_id: int, cfg: Config, with_entropy: bool, value_head=None):
    """Per-sample response log-probs (and entropies, and shared-head values) with the training numerics, no grad,
    in eval mode (see `eval_mode`)."""
    with eval_mode(model, value_head):
        return _forward_pass(model, samples, pad_id, cfg, with_entropy, value_head)


def _forward_pass(model, samples: list[TurnSample], pad_id: int, cfg: Config, with_entropy: bool, value_head):
    logps: list[torch.Tensor | None] = [None] * len(samples)
    ents: list[torch.Tensor | None] = [None] * len(samples)
    values: list[torch.Tensor | None] = [None] * len(samples)
    for mb in iter_micro_batches(
        samples, list(range(len(samples))), pad_id, cfg.train.micro_batch_tokens, _device(model), dist.my_share
    ):
        stats = model_stats(model, mb, cfg, with_entropy, return_hidden=value_head is not None)
        head_values = value_head(stats.hidden, mb.response_mask) if value_head is not None else None
        if dist.is_padding(mb):  # FSDP2: run only for the collectives
            continue
        for i, lp in zip(mb.index, mb.gather_tokens(stats.logprobs)):
            logps[i] = lp
        if value_head is not None:
            for i, v in zip(mb.index, mb.gather_tokens(head_values)):
                values[i] = v
        if with_entropy:
            for i, h in zip(mb.index, mb.gather_tokens(stats.entropy)):
                ents[i] = h
    logps, ents, values = dist.merge_per_sample(logps), dist.merge_per_sample(ents), dist.merge_per_sample(values)
    return (logps, ents, values) if value_head is not None else (logps, ents)


@torch.no_grad()
def critic_values(critic, samples: list[TurnSample], pad_id: int, cfg: Config) -> list[torch.Tensor]:
    """The separate critic's per-token values [R] per sample, in eval mode (see `eval_mode`)."""
    out: list[torch.Tensor | None] = [None] * len(samples)
    with eval_mode(critic):
        for mb in iter_micro_batches(
            samples, list(range(len(samples))), pad_id, cfg.train.micro_batch_tokens, _device(critic), dist.my_share
        ):
            with autocast_for(cfg.train.precision, mb.input_ids.device):
                values = critic(mb.input_ids, mb.attention_mask)
            if dist.is_padding(mb):  # FSDP2: run only for the collectives
                continue
            for i, v in zip(mb.index, mb.gather_tokens(values)):
                out[i] = v
    return dist.merge_per_sample(out)


def single_pass(cfg: Config, num_samples: int, critic=None) -> bool:
    """True when the policy is updated once, on the whole batch, at the rollout weights: then the old log-probs and
    entropies equal the loss forward's own (detached) ones and the separate no-grad pass is wasted work (~1/4 of an
    update). Not for a shared value head (GAE needs its values first) nor EPO "reference" mode (its history takes
    the current batch before the update)."""
    return (
        cfg.train.ppo_epochs == 1
        and num_samples <= cfg.train.mini_batch_size
        and not isinstance(critic, SharedValueHead)
        and cfg.epo.mode != "reference"
    )


def prepare_step(policy, samples: list[TurnSample], pad_id: int, cfg: Config, ref_policy=None, critic=None) -> StepData:
    """critic: a separate ValueModel, a SharedValueHead on the policy's hidden states, or None (GRPO)."""
    shared = isinstance(critic, SharedValueHead)
    if single_pass(cfg, len(samples), critic):
        old_logprobs = entropy = None
    elif shared:
        old_logprobs, entropy, old_values = forward_pass(policy, samples, pad_id, cfg, True, value_head=critic)
    else:
        old_logprobs, entropy = forward_pass(policy, samples, pad_id, cfg, with_entropy=True)
    data = StepData(samples, old_logprobs, entropy, advantages=[])
    if ref_policy is not None:  # the policy itself under LoRA: its base model, adapters disabled (setup)
        with adapter_disabled(ref_policy) if ref_policy is policy else nullcontext():
            data.ref_logprobs, _ = forward_pass(ref_policy, samples, pad_id, cfg, with_entropy=False)
    if cfg.algo.name == "grpo":
        scores = torch.tensor([s.reward for s in samples], dtype=torch.float32)
        adv = grpo_advantages(
            scores,
            [s.group_id for s in samples],
            [s.traj_id for s in samples],
            stats=cfg.algo.grpo_stats,
            norm_std=cfg.algo.grpo_norm_std,
        )
        data.advantages = [torch.full((len(s.response_ids),), float(a)) for s, a in zip(samples, adv)]
    else:
        data.old_values = old_values if shared else critic_values(critic, samples, pad_id, cfg)
        data.advantages, data.returns = _gae(samples, data.old_values, cfg)
    return data


def turn_rewards(samples: list[TurnSample]) -> torch.Tensor:
    """Each turn's own reward [N] for turn-level GAE: its shaping (invalid penalty / format bonus) on every turn,
    plus the episode return R = reward - shaping on the trajectory's final turn only. (`reward` carries R on every
    turn, which summed over a trajectory would count R once per turn.)"""
    last_turn: dict[int, int] = {}
    for s in samples:
        last_turn[s.traj_id] = max(last_turn.get(s.traj_id, -1), s.turn_idx)
    own = [s.shaping + (s.reward - s.shaping if s.turn_idx == last_turn[s.traj_id] else 0.0) for s in samples]
    return torch.tensor(own, dtype=torch.float32)


def _gae(samples: list[TurnSample], values: list[torch.Tensor], cfg: Config):
    """GAE whitened over the batch. gae_level=token: within each turn, its reward at the last response token (the
    reference); turn: across a trajectory's turns with each turn's own reward (`turn_rewards`), V_t read at the
    turn's first response token, A_t on all its tokens."""
    width = max(len(s.response_ids) for s in samples)
    rewards = torch.zeros(len(samples), width)
    vals = torch.zeros(len(samples), width)
    mask = torch.zeros(len(samples), width)
    for b, (s, v) in enumerate(zip(samples, values)):
        n = len(s.response_ids)
        rewards[b, n - 1] = s.reward
        vals[b, :n] = v
        mask[b, :n] = 1
    algo = cfg.algo
    if algo.gae_level == "turn":
        turn_idx = torch.tensor([s.turn_idx for s in samples])
        traj_ids = [s.traj_id for s in samples]
        adv, ret = gae_turn(turn_rewards(samples), vals, mask, traj_ids, turn_idx, gamma=algo.gamma, lam=algo.lam)
    else:
        adv, ret = gae_token(rewards, vals, mask, gamma=algo.gamma, lam=algo.lam)
    if algo.whiten_advantages:
        adv = whiten(adv, mask)
    lens = [len(s.response_ids) for s in samples]
    return [adv[b, :n].clone() for b, n in enumerate(lens)], [ret[b, :n].clone() for b, n in enumerate(lens)]


def mini_batches(n: int, size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + size] for i in range(0, n, size)]


def update_policy(
    policy,
    optimizer,
    data: StepData,
    cfg: Config,
    history: EntropyHistory,
    step: int,
    pad_id: int,
    rng: random.Random,
    value_head: SharedValueHead | None = None,
    value_optimizer=None,
) -> dict[str, float]:
    """value_head/value_optimizer: PPO's shared-backbone critic head, trained by the same backward.

    When prepare_step left old_logprobs None (single pass), this fills data.entropy from the loss forward."""
    means = MetricMeans()
    params = optimized_params(optimizer)
    head_params = optimized_params(value_optimizer) if value_head is not None else []
    optimizers = [optimizer] + ([value_optimizer] if value_head is not None else [])
    samples = data.samples
    if data.old_logprobs is None:
        data.entropy = [None] * len(samples)  # filled by this rank's micro-batches, gathered below
    for _epoch in range(cfg.train.ppo_epochs):
        for mini in mini_batches(len(samples), cfg.train.mini_batch_size, rng):
            num_tokens = float(sum(len(samples[i].response_ids) for i in mini))
            num_seqs = float(len(mini))
            weights = trajectory_sample_weights(torch.tensor([samples[i].traj_id for i in mini]))
            weight_of = dict(zip(mini, weights.tolist()))
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            for mb in iter_micro_batches(
                samples, mini, pad_id, cfg.train.micro_batch_tokens, _device(policy), dist.my_share
            ):
                w = torch.tensor([weight_of[i] for i in mb.index], device=mb.turn_idx.device)
                loss, metrics = micro_batch_loss(
                    policy, mb, data, cfg, history, step, w, num_tokens, num_seqs, value_head
                )
                if dist.is_padding(mb):  # FSDP2: a backward for the collectives, adding zero gradient
                    (loss * 0.0).backward()
                    if data.old_logprobs is None:
                        for i in mb.index:  # the owning rank's entropies, not this copy's
                            data.entropy[i] = None
                    continue
                loss.backward()
                means.add(metrics, weight=float(mb.response_mask.sum()))
            dist.all_reduce_grads(params + head_params)
            grad_norm = clip_grad_norm_(params, cfg.optim.grad_clip or float("inf"))
            norms = [float(grad_norm)]
            if value_head is not None:
                norms.append(float(clip_grad_norm_(head_params, cfg.optim.grad_clip or float("inf"))))
                means.add({"critic/grad_norm": norms[-1]}, weight=1.0)
            skipped = not step_if_finite(optimizers, norms)
            means.add({"actor/grad_norm": norms[0], NONFINITE_KEY: float(skipped)}, weight=1.0)
    if data.old_logprobs is None:
        data.entropy = dist.merge_per_sample(data.entropy)
    return means.result()


NONFINITE_KEY = "actor/nonfinite_grad_frac"


def step_if_finite(optimizers, grad_norms: list[float]) -> bool:
    """Step the optimizers unless a gradient norm is NaN or inf (an overflow, a NaN loss): then skip this step, the
    weights stay as they were and the gradients are dropped, as verl's actor does. Stepping would turn every weight
    into NaN. The caller logs the skip (*/nonfinite_grad_frac) and the trainer prints a line."""
    if all(math.isfinite(n) for n in grad_norms):
        for opt in optimizers:
            opt.step()
        return True
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return False


def micro_batch_loss(
    policy,
    mb: MicroBatch,
    data: StepData,
    cfg: Config,
    history: EntropyHistory,
    step: int,
    sample_weight: torch.Tensor,
    num_tokens: float,
    num_seqs: float,
    value_head=None,
):
    """L = L_PG + EPO term (−λ(L_H − β·α·P)) + c_KL·KL − c_H·H (plain entropy baseline) [+ c_V·L_V shared head]."""
    stats = model_stats(policy, mb, cfg, with_entropy=True, return_hidden=value_head is not None)
    mask = mb.response_mask
    algo = cfg.algo
    if data.old_logprobs is None:  # single pass: this forward is at the rollout weights
        old_logprobs = stats.logprobs.detach()
        for i, h in zip(mb.index, mb.gather_tokens(stats.entropy)):
            data.entropy[i] = h
    else:
        old_logprobs = mb.scatter_tokens(data.old_logprobs)
    sampler = _sampler_logprobs(mb, data)  # [B, T] or None (a backend without sampler log-probs)
    is_weights = None
    if sampler is not None and cfg.rollout.is_correction == "tis":
        is_weights = tis_weights(old_logprobs, sampler, mask, cfg.rollout.is_cap)
    pg, metrics = policy_loss(
        stats.logprobs,
        old_logprobs,
        mb.scatter_tokens(data.advantages),
        mask,
        clip_low=algo.clip_low,
        clip_high=algo.clip_high,
        dual_clip=algo.dual_clip,
        agg=algo.loss_agg,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        is_weights=is_weights,
    )
    if sampler is not None:
        metrics.update(mismatch_metrics(old_logprobs, sampler, mask))
    loss = pg
    if cfg.epo.mode != "off":
        term, epo_metrics = epo_loss(
            stats.entropy,
            mask,
            mb.turn_idx,
            sample_weight,
            history,
            step,
            cfg.train.total_steps,
            cfg.epo,
            num_tokens=num_tokens,
            num_seqs=num_seqs,
        )
        loss = loss + term
        metrics.update(epo_metrics)
    if algo.entropy_coef > 0:
        loss = loss - algo.entropy_coef * aggregate(stats.entropy, mask, "token-mean", num_tokens=num_tokens)
    if algo.kl_coef > 0 and data.ref_logprobs is not None:
        kl = kl_penalty(stats.logprobs, mb.scatter_tokens(data.ref_logprobs), algo.kl_type)
        kl_loss = aggregate(kl, mask, algo.loss_agg, num_tokens=num_tokens, num_seqs=num_seqs)
        loss = loss + algo.kl_coef * kl_loss
        metrics["actor/kl_ref"] = float((kl.detach() * mask).sum() / mask.sum().clamp(min=1))
    if value_head is not None:
        values = value_head(stats.hidden, mask)
        vf, vf_metrics = value_loss(
            values,
            mb.scatter_tokens(data.old_values),
            mb.scatter_tokens(data.returns),
            mask,
            clip=algo.value_clip,
            agg=algo.loss_agg,
            num_tokens=num_tokens,
            num_seqs=num_seqs,
        )
        loss = loss + algo.value_coef * vf
        metrics.update(vf_metrics)
    metrics["actor/pg_loss"] = float(pg.detach()) * num_tokens / max(float(mask.sum()), 1.0)
    metrics["actor/entropy"] = float((stats.entropy.detach() * mask).sum() / mask.sum().clamp(min=1))
    return loss, metrics


def optimized_params(optimizer) -> list[torch.nn.Parameter]:
    """The parameters `optimizer` steps (the trainable ones, in order). Not `model.parameters()`: under FSDP2 a root
    unit left gathered by a no-grad pass exposes its unsharded copies there, which never receive the gradients."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def _sampler_logprobs(mb: MicroBatch, data: StepData) -> torch.Tensor | None:
    """The generation engine's log-probs of this micro-batch's response tokens, [B, T], if every sample has them."""
    rows = [data.samples[i].sampler_logprobs for i in mb.index]
    if any(r is None for r in rows):
        return None
    per_sample = [None] * len(data.samples)
    for i, r in zip(mb.index, rows):
        per_sample[i] = torch.tensor(r, dtype=torch.float32)
    return mb.scatter_tokens(per_sample).to(mb.response_mask.device)


def update_critic(critic, optimizer, data: StepData, cfg: Config, pad_id: int, rng: random.Random):
    means = MetricMeans()
    samples = data.samples
    params = optimized_params(optimizer)
    for _epoch in range(cfg.train.ppo_epochs):
        for mini in mini_batches(len(samples), cfg.train.mini_batch_size, rng):
            num_tokens = float(sum(len(samples[i].response_ids) for i in mini))
            optimizer.zero_grad(set_to_none=True)
            for mb in iter_micro_batches(
                samples, mini, pad_id, cfg.train.micro_batch_tokens, _device(critic), dist.my_share
            ):
                with autocast_for(cfg.train.precision, mb.input_ids.device):
                    values = critic(mb.input_ids, mb.attention_mask)  # [B, T], V(state before token p) at p
                loss, metrics = value_loss(
                    values,
                    mb.scatter_tokens(data.old_values),
                    mb.scatter_tokens(data.returns),
                    mb.response_mask,
                    clip=cfg.algo.value_clip,
                    agg=cfg.algo.loss_agg,
                    num_tokens=num_tokens,
                    num_seqs=float(len(mini)),
                )
                if dist.is_padding(mb):  # FSDP2: a backward for the collectives, adding zero gradient
                    (loss * 0.0).backward()
                    continue
                loss.backward()
                means.add(metrics, weight=float(mb.response_mask.sum()))
            dist.all_reduce_grads(params)
            grad_norm = float(clip_grad_norm_(params, cfg.optim.grad_clip or float("inf")))
            skipped = not step_if_finite([optimizer], [grad_norm])
            means.add({"critic/grad_norm": grad_norm, "critic/nonfinite_grad_frac": float(skipped)}, weight=1.0)
    return means.result()
