"""PPO-family losses on right-padded [B, T] tensors, each returning (loss, metrics).

Micro-batch normalisation: every loss takes the counts of the whole *mini-batch* (`num_tokens` = response tokens,
`num_seqs` = turn samples; default = this micro-batch's own). Each loss is then a sum over this micro-batch's
tokens/samples divided by mini-batch counts, so the losses (and gradients) of the micro-batches of a mini-batch add
up exactly to the loss of the whole mini-batch computed at once. No extra 1/n_micro scaling is needed.

Metrics are detached python floats describing *this micro-batch alone* (means over its own tokens or samples),
so they are comparable across micro-batches; `merge_metrics` combines them (weighted mean, max for "*_max").
Semantics follow verl's core_algos (compute_policy_loss, agg_loss, compute_value_loss, kl_penalty).
"""

from __future__ import annotations

import torch

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
KL_KINDS = ("k1", "k2", "abs", "low_var_kl")


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise one ValueError naming the tensors when their shapes differ."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over mask==1 (0 when the mask is empty)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def aggregate(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> torch.Tensor:
    """Reduce a [B, T] loss matrix to a scalar with the mini-batch normalisers.

    token-mean:          sum_{s,t} l*m / num_tokens
    seq-mean-token-sum:  sum_s (sum_t l*m) / num_seqs
    seq-mean-token-mean: sum_s (sum_t l*m / sum_t m) / num_seqs   (a sample without tokens contributes 0)
    """
    check_same_shape(loss_mat=loss_mat, mask=mask)
    mask = mask.to(loss_mat.dtype)
    if mode == "token-mean":
        denom = mask.sum().clamp(min=1) if num_tokens is None else num_tokens
        return (loss_mat * mask).sum() / denom
    seq_sums = (loss_mat * mask).sum(dim=-1)  # [B]
    if mode == "seq-mean-token-mean":
        seq_sums = seq_sums / mask.sum(dim=-1).clamp(min=1)
    elif mode != "seq-mean-token-sum":
        raise ValueError(f"loss_agg: '{mode}' is not one of {', '.join(AGG_MODES)}")
    return seq_sums.sum() / (loss_mat.shape[0] if num_seqs is None else num_seqs)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float = 3.0,
    agg: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate with asymmetric clip range and dual-clip (Ye et al. 2020) for negative advantages.

    per token: l = max(-A*r, -A*clip(r, 1-clip_low, 1+clip_high)); if A < 0 and dual_clip > 0: l = min(l, -A*c).
    All inputs [B, T]; old_logprobs/advantages carry no gradient. is_weights [B, T] (optional, no gradient):
    per-token importance weights for sampler/trainer mismatch (truncated IS, epo.algos.mismatch), l *= w.
    """
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    if dual_clip and dual_clip <= 1:
        raise ValueError(f"dual_clip: must be > 1 (or 0 = off), got {dual_clip}")
    mask = mask.to(logprobs.dtype)
    log_ratio = torch.clamp(logprobs - old_logprobs, -20.0, 20.0)  # as verl: keeps exp() finite
    ratio = torch.exp(log_ratio)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    loss_ppo = torch.maximum(loss_unclipped, loss_clipped)
    clip_frac = masked_mean((loss_clipped > loss_unclipped).float(), mask)
    loss_mat = loss_ppo
    lower_frac = torch.zeros(())
    if dual_clip:
        # For A < 0 a huge ratio makes -A*r unbounded; cap the loss at -A*c (verl's clip_ratio_c).
        loss_dual = -advantages * dual_clip
        loss_mat = torch.where(advantages < 0, torch.minimum(loss_ppo, loss_dual), loss_ppo)
        lower_frac = masked_mean(((loss_ppo > loss_dual) & (advantages < 0)).float(), mask)
    if is_weights is not None:
        check_same_shape(logprobs=logprobs, is_weights=is_weights)
        loss_mat = loss_mat * is_weights.detach()
    loss = aggregate(loss_mat, mask, agg, num_tokens, num_seqs)
    with torch.no_grad():
        valid = mask > 0
        ratio_valid = ratio[valid] if valid.any() else torch.ones(1)
        metrics = {
            "actor/pg_loss": aggregate(loss_mat, mask, agg).item(),
            "actor/clip_frac": clip_frac.item(),
            "actor/clip_frac_lower": lower_frac.item(),
            "actor/approx_kl": masked_mean(-log_ratio, mask).item(),
            "actor/ratio_mean": ratio_valid.mean().item(),
            "actor/ratio_max": ratio_valid.max().item(),
        }
    return loss, metrics


CONSTANT_RETURNS_RTOL = 1e-4
"""Returns whose std is below this fraction of their RMS are constant up to rounding (a batch all won or all lost)."""


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] over masked tokens; nan when returns are constant, where it is
    undefined. Constant up to rounding counts: fp32 means of equal returns leave a variance of ~1e-12, which made
    this -1e8 to -1e15 on batches that all won (docs/RESULTS.md, Experiment 11)."""
    mask = mask.to(values.dtype)
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    resid = returns - values
    var_resid = masked_mean((resid - masked_mean(resid, mask)) ** 2, mask)
    if var_returns.item() <= CONSTANT_RETURNS_RTOL**2 * masked_mean(returns**2, mask).item():
        return float("nan")
    return (1 - var_resid / var_returns).item()


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.5,
    agg: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss: 0.5 * agg(max((v - R)^2, (clip(v, v_old - c, v_old + c) - R)^2)). Inputs [B, T]."""
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    mask = mask.to(values.dtype)
    values_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (values_clipped - returns) ** 2
    loss_mat = 0.5 * torch.maximum(loss_unclipped, loss_clipped)
    loss = aggregate(loss_mat, mask, agg, num_tokens, num_seqs)
    with torch.no_grad():
        metrics = {
            "critic/vf_loss": aggregate(loss_mat, mask, agg).item(),
            "critic/vf_clip_frac": masked_mean((loss_clipped > loss_unclipped).float(), mask).item(),
            "critic/explained_var": explained_variance(values, returns, mask),
            "critic/values_mean": masked_mean(values, mask).item(),
        }
    return loss, metrics


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate [B, T] from sampled-token log-probs (Schulman's k1/k2/k3).

    k1 = log r, k2 = 0.5 (log r)^2, abs = |log r| with log r = logp - logp_ref;
    low_var_kl (k3) = exp(-log r) - 1 + log r, clamped to [-10, 10] as verl does.
    """
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "abs":
        return log_ratio.abs()
    if kind == "low_var_kl":
        return torch.clamp(torch.exp(-log_ratio) - 1 + log_ratio, min=-10, max=10)
    raise ValueError(f"kl_type: '{kind}' is not one of {', '.join(KL_KINDS)}")


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "low_var_kl",
    agg: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Aggregated KL-to-reference loss (multiply by kl_coef in the trainer)."""
    kl_mat = kl_penalty(logprobs, ref_logprobs, kind)
    loss = aggregate(kl_mat, mask, agg, num_tokens, num_seqs)
    return loss, {"actor/kl_loss": aggregate(kl_mat.detach(), mask, agg).item()}


def entropy_bonus(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    agg: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Plain entropy (the 'entropy baseline'); the trainer subtracts entropy_coef * this from the loss."""
    value = aggregate(entropy, mask, agg, num_tokens, num_seqs)
    return value, {"actor/entropy": aggregate(entropy.detach(), mask, agg).item()}


def merge_metrics(metrics: list[dict[str, float]], weights: list[float] | None = None) -> dict[str, float]:
    """Combine per-micro-batch metrics: weighted mean (e.g. weights = token counts), max for '*_max' keys.

    NaN values (e.g. explained variance of constant returns) are skipped.
    """
    weights = [1.0] * len(metrics) if weights is None else weights
    if len(weights) != len(metrics):
        raise ValueError(f"merge_metrics: {len(metrics)} metric dicts but {len(weights)} weights")
    merged: dict[str, float] = {}
    for key in dict.fromkeys(k for m in metrics for k in m):
        pairs = [(m[key], w) for m, w in zip(metrics, weights, strict=True) if key in m and m[key] == m[key]]
        if not pairs:
            merged[key] = float("nan")
        elif key.endswith("_max"):
            merged[key] = max(v for v, _ in pairs)
        else:
            total = sum(w for _, w in pairs)
            merged[key] = sum(v * w for v, w in pairs) / total if total else sum(v for v, _ in pairs) / len(pairs)
    return merged
