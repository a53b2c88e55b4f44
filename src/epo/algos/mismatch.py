"""Sampler/trainer mismatch: the generation engine (vLLM) and the trainer compute slightly different log-probs of
the same tokens (kernels, precision, batching). Measured every step, and optionally corrected by truncated
importance sampling (TIS, as verl's `tis_imp_ratio_cap` and TRL's `vllm_importance_sampling_cap`):

    w_t = min(exp(log pi_old(a_t) - log mu(a_t)), cap)        pi_old: trainer at the rollout weights, mu: sampler
    PG loss per token *= w_t (no gradient through w)

All tensors [B, T], right-padded, zero off the response mask.
"""

from __future__ import annotations

import torch


def mismatch_metrics(trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor) -> dict:
    """Mean and max |log pi_trainer - log mu| over response tokens (python floats)."""
    valid = mask.bool()
    if not valid.any():
        return {}
    diff = (trainer_logprobs.detach() - sampler_logprobs).abs()[valid]
    return {"rollout/logp_mismatch": diff.mean().item(), "rollout/logp_mismatch_max": diff.max().item()}


def tis_weights(trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor, cap: float):
    """Truncated importance weights min(pi_old / mu, cap), detached, 0 off the mask."""
    if cap <= 0:
        raise ValueError(f"is_cap: must be > 0, got {cap}")
    log_w = (trainer_logprobs.detach() - sampler_logprobs).clamp(max=20.0)  # exp stays finite; capped anyway
    return torch.exp(log_w).clamp(max=cap) * mask.to(trainer_logprobs.dtype)
