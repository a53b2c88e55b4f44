"""Per-turn entropy-change decomposition: what the update did to entropy, turn index by turn index.

For a softmax policy trained by policy gradient, the first-order change of the entropy at a state is
ΔH ≈ -η · Cov_{a~π}(log π(a), A(a)) (exactly so for natural PG; with π-weighting for vanilla PG; Cui et al. 2025,
"The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models"): sampled tokens that were already
likely *and* get a positive advantage sharpen the policy. Here the covariance is taken over the sampled response
tokens of each turn index t, with log-probs at the rollout weights and the step's advantages, and logged next to
the realised change ΔH_t = H_t(after update) - H_t(before), the KL(before || after) and the fraction of tokens whose
ratio π_after/π_before left the PPO clip range — all on the same bounded subset of turn samples.
"""

from __future__ import annotations

import math

import torch


def subset_indices(n: int, k: int) -> list[int]:
    """k indices evenly spaced over range(n) (all of them if k >= n): deterministic, so a replay picks the same."""
    if k >= n:
        return list(range(n))
    return sorted({int(i * n / k) for i in range(k)})


def _by_turn(values: list[torch.Tensor], turn_idx: list[int]) -> dict[int, torch.Tensor]:
    groups: dict[int, list[torch.Tensor]] = {}
    for v, t in zip(values, turn_idx, strict=True):
        groups.setdefault(int(t), []).append(v.detach().double().flatten())
    return {t: torch.cat(vs) for t, vs in sorted(groups.items())}


def per_turn_mean(values: list[torch.Tensor], turn_idx: list[int]) -> dict[int, float]:
    """Token mean of per-sample token arrays, per turn index."""
    return {t: float(v.mean()) if v.numel() else math.nan for t, v in _by_turn(values, turn_idx).items()}


def covariance(logp: torch.Tensor, adv: torch.Tensor) -> float:
    """Population covariance of two token arrays [N]; NaN below 2 tokens."""
    if logp.numel() < 2:
        return math.nan
    return float(((logp - logp.mean()) * (adv - adv.mean())).mean())


def per_turn_covariance(
    logprobs: list[torch.Tensor], advantages: list[torch.Tensor], turn_idx: list[int]
) -> dict[int, float]:
    """Cov(log-prob, advantage) over the sampled tokens of each turn index (centred within the turn)."""
    lp, adv = _by_turn(logprobs, turn_idx), _by_turn(advantages, turn_idx)
    return {t: covariance(lp[t], adv[t]) for t in lp}


def k3_kl(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Per-token KL(before || after) estimate from tokens sampled by `before`: r - 1 - log r, r = π_after/π_before."""
    log_ratio = after.double() - before.double()
    return log_ratio.exp() - 1 - log_ratio


def outside_clip(before: torch.Tensor, after: torch.Tensor, clip_low: float, clip_high: float) -> torch.Tensor:
    """1.0 where the ratio π_after/π_before is outside [1 - clip_low, 1 + clip_high]."""
    ratio = (after.double() - before.double()).exp()
    return ((ratio < 1 - clip_low) | (ratio > 1 + clip_high)).double()


def as_list(per_turn: dict[int, float]) -> list[float]:
    """{turn: value} -> list indexed by turn (NaN for turns without a value)."""
    if not per_turn:
        return []
    return [per_turn.get(t, math.nan) for t in range(max(per_turn) + 1)]
