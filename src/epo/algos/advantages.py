"""Advantage estimators: GRPO group normalisation, GAE within a turn, GAE across turns, whitening.

Ids (group, trajectory) may be a tensor or any sequence of hashables (ints, strings).
Per-sample outputs [N] are broadcast to response tokens with `broadcast_to_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from epo.algos.losses import check_same_shape, masked_mean

Ids = torch.Tensor | Sequence
SAME_OUTCOME_RTOL = 1e-6  # episode returns R closer than this (relative, scale >= 1) are one outcome (R rounds)


def as_index(ids: Ids) -> torch.Tensor:
    """Map arbitrary ids to dense 0..K-1 indices [N] (equal ids -> equal index)."""
    if isinstance(ids, torch.Tensor):
        return torch.unique(ids, return_inverse=True)[1].reshape(-1)
    lookup: dict = {}
    return torch.tensor([lookup.setdefault(i, len(lookup)) for i in ids], dtype=torch.long)


def _group_stats(values: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group count, mean and unbiased std of values [M] with dense group index [M]."""
    n_groups = int(group.max()) + 1 if group.numel() else 0
    count = values.new_zeros(n_groups).index_add_(0, group, torch.ones_like(values))
    mean = values.new_zeros(n_groups).index_add_(0, group, values) / count
    sq_dev = (values - mean[group]) ** 2
    var = values.new_zeros(n_groups).index_add_(0, group, sq_dev) / (count - 1).clamp(min=1)
    return count, mean, var.sqrt()


def grpo_advantages(
    scores: torch.Tensor,
    group_ids: Ids,
    traj_ids: Ids,
    stats: str = "turn",
    norm_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO advantage per turn sample: (score - mean_group) / (std_group + eps), std unbiased as torch.std.

    scores [N]: each turn sample's return. stats="turn": mean/std over all turn samples of the group (reference
    default); stats="trajectory": every trajectory weighs the same, so long trajectories do not dominate. The mean is
    that of the trajectory values (the mean of each trajectory's turn scores), and the std is that of the turn
    scores around this mean with each turn weighted 1/L (its trajectory's length):
    var_g = sum_i (x_i - m_g)^2 / L_traj(i) / (n_traj - 1). When a trajectory's turns share one score this is
    exactly the unbiased std of the trajectory values; unlike that std it is never 0 while some turn score
    differs from the mean. (Centring turn scores but dividing by the spread of trajectory values, as verl-agent's
    `compute_mean_std_cross_steps=False` does, gives +-5e4 for scores [10, 9.9, 10, 9.9] in trajectories
    [0, 0, 1, 1]: equal trajectory means, std 0, and only eps below the +-0.05 penalty differences.)
    A group with a single member (one sample, or one trajectory in "trajectory" mode) gets advantage 0: there is
    nothing to compare it with (verl instead passes the raw score through).
    """
    if scores.dim() != 1:
        raise ValueError(f"grpo_advantages: scores must be [N], got shape {tuple(scores.shape)}")
    group, traj = as_index(group_ids).to(scores.device), as_index(traj_ids).to(scores.device)
    if not len(group) == len(traj) == len(scores):
        raise ValueError(f"grpo_advantages: {len(scores)} scores, {len(group)} group ids, {len(traj)} traj ids")
    if stats not in ("turn", "trajectory"):
        raise ValueError(f"grpo_stats: '{stats}' is not one of turn, trajectory")
    scores = scores.detach().to(torch.float64)
    if stats == "turn":
        count, mean, std = _group_stats(scores, group)
    else:
        n_traj = int(traj.max()) + 1
        traj_count = scores.new_zeros(n_traj).index_add_(0, traj, torch.ones_like(scores))
        traj_score = scores.new_zeros(n_traj).index_add_(0, traj, scores) / traj_count
        traj_group = group.new_zeros(n_traj).index_copy_(0, traj, group)
        count, mean, _ = _group_stats(traj_score, traj_group)
        weighted_sq = (scores - mean[group]) ** 2 / traj_count[traj]  # each trajectory's turns sum to weight 1
        var = scores.new_zeros(len(count)).index_add_(0, group, weighted_sq) / (count - 1).clamp(min=1)
        std = var.sqrt()
    adv = scores - mean[group]
    if norm_std:
        adv = adv / (std[group] + eps)
    adv = torch.where(count[group] > 1, adv, torch.zeros_like(adv))
    return adv.to(torch.float32)


def shaping_share(advantages: torch.Tensor, group_ids: Ids, returns: torch.Tensor) -> float:
    """Share of the total |advantage| of a GRPO step carried by groups whose episodes all had the same return R.

    advantages [N], returns [N]: each turn sample's advantage and its episode's return R (without shaping).
    In a group that all lost (or all won) GRPO compares only the per-turn shaping (invalid penalty, format bonus),
    and dividing by the group's small std scales those differences up to the size of a win's advantage: a share
    near 1 means the step trains the policy on the shaping, not on winning (docs/RESULTS.md, Experiment 3).
    0 when no sample has a non-zero advantage.
    """
    group = as_index(group_ids).to(returns.device)
    n_groups = int(group.max()) + 1 if group.numel() else 0
    high = returns.new_full((n_groups,), -float("inf")).scatter_reduce(0, group, returns, "amax")
    low = returns.new_full((n_groups,), float("inf")).scatter_reduce(0, group, returns, "amin")
    uniform = ((high - low) <= SAME_OUTCOME_RTOL * high.abs().clamp(min=1.0))[group]  # [N]: one outcome
    size = advantages.abs().to(torch.float64)
    total = float(size.sum())
    return float(size[uniform].sum()) / total if total > 0 else 0.0


def broadcast_to_tokens(per_sample: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, T]: the sample's value on its response tokens, 0 on padding."""
    return per_sample.to(mask.dtype).unsqueeze(-1) * mask


def gae_token(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the response tokens of each turn sample; each turn is its own episode (no bootstrap past its end).

    rewards/values/mask [B, T] (reward usually only at the last response token). Positions with mask 0 are
    skipped: the "next value" of a token is the value of the next *response* token, 0 after the last one.
    Returns (advantages, returns) [B, T], zero on padding; returns = advantages + values.
    """
    check_same_shape(rewards=rewards, values=values, mask=mask)
    rewards, values, mask = rewards.detach().float(), values.detach().float(), mask.float()
    next_value = torch.zeros_like(rewards[:, 0])  # [B]
    next_adv = torch.zeros_like(rewards[:, 0])
    advantages = torch.zeros_like(rewards)
    length = rewards.shape[1]
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        on = mask[:, t] > 0
        advantages[:, t] = torch.where(on, adv_t, torch.zeros_like(adv_t))
        next_value = torch.where(on, values[:, t], next_value)
        next_adv = torch.where(on, adv_t, next_adv)
    returns = (advantages + values) * mask
    return advantages, returns


def _turn_values(values: torch.Tensor, mask: torch.Tensor, value_token: str) -> torch.Tensor:
    """[B, T] -> [B]: the value at the first (or last) response token of each sample (0 if it has none)."""
    on = mask > 0
    if value_token == "first":
        pos = on.float().argmax(dim=-1)
    elif value_token == "last":
        pos = on.shape[-1] - 1 - on.flip(-1).float().argmax(dim=-1)
    else:
        raise ValueError(f"gae_turn: value_token '{value_token}' is not one of first, last")
    picked = values.gather(-1, pos.unsqueeze(-1)).squeeze(-1)
    return torch.where(on.any(dim=-1), picked, torch.zeros_like(picked))


def gae_turn(
    turn_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    traj_ids: Ids,
    turn_idx: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
    value_token: str = "first",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn-level GAE across the turns of each trajectory, broadcast to the turn's response tokens.

    turn_rewards [B]: each turn's *own* reward (the env's step reward: R on the final turn only, plus the turn's
    invalid-action penalty) -- not the episode return copied onto every turn, which would count R L times.
    V_t = the critic's value at the turn's first response token (value_token="first", default): with verl's
    alignment it is read from the last prompt position, i.e. V(s_t) before acting; "last" is offered too.
    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}, with V = A = 0 after the last turn
    (terminal, no bootstrap for truncated episodes). All turns of a trajectory must be in the batch.
    Returns (advantages, returns) [B, T]: A_t and A_t + V_t on every response token of turn t.
    """
    check_same_shape(values=values, mask=mask)
    if turn_rewards.shape != values.shape[:1] or turn_idx.shape != values.shape[:1]:
        raise ValueError(
            f"gae_turn: turn_rewards {tuple(turn_rewards.shape)} and turn_idx {tuple(turn_idx.shape)} must be [B] "
            f"with B = {values.shape[0]}"
        )
    v_turn = _turn_values(values.detach().float(), mask, value_token)  # [B]
    traj = as_index(traj_ids).to(turn_idx.device)
    # Sort by (trajectory, turn) descending so one reverse sweep sees each trajectory's turns last-to-first.
    key = traj * (int(turn_idx.max()) + 1) + turn_idx.long()
    order = torch.argsort(key.cpu(), descending=True).tolist()
    traj_l, reward_l, value_l = traj.tolist(), turn_rewards.detach().float().tolist(), v_turn.tolist()
    adv_l = [0.0] * len(order)
    prev_traj, next_value, next_adv = None, 0.0, 0.0
    for i in order:
        if traj_l[i] != prev_traj:  # the last turn of a new trajectory: terminal
            prev_traj, next_value, next_adv = traj_l[i], 0.0, 0.0
        delta = reward_l[i] + gamma * next_value - value_l[i]
        adv_l[i] = delta + gamma * lam * next_adv
        next_value, next_adv = value_l[i], adv_l[i]
    adv_turn = torch.tensor(adv_l, dtype=v_turn.dtype, device=v_turn.device)
    mask_f = mask.float()
    return broadcast_to_tokens(adv_turn, mask_f), broadcast_to_tokens(adv_turn + v_turn, mask_f)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked entries (unbiased variance, as verl's masked_whiten); 0 on padding.

    shift_mean=False adds the mean back (only rescales).
    """
    check_same_shape(x=x, mask=mask)
    mask = mask.to(x.dtype)
    n = mask.sum()
    mean = masked_mean(x, mask)
    var = ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask
