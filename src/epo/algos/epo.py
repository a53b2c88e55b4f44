"""EPO (arXiv 2509.22576): trajectory-level entropy, entropy smoothing against a per-turn history, phase weight β.
The equations, normalisers and reference-code deviations are written out in docs/METHOD.md.

Nothing else in the codebase knows how EPO works. The trainer, per RL step:
    history = EntropyHistory.from_config(cfg.epo, max_turns)                  # once
    per mini-batch: w = trajectory_sample_weights(traj_ids_of_minibatch)
    per micro-batch: loss += epo_loss(entropy, mask, turn_idx, w[mb], history, step, total_steps, cfg.epo,
                                      num_tokens=minibatch_tokens, num_seqs=minibatch_samples)[0]
    after the update: history.update_from_tensors(rollout_entropy, mask, turn_idx)  # entropies at rollout weights
    once per step: EntropyTrend.update(batch entropy mean) for the variance / |ΔH| logs.
H̄ is the mean of *past* steps' batch-mean entropies (docs/METHOD.md §4: "before any history exists, P = 0"), so
the current rollout enters the history after the policy update. The reference code adds it before (H̄ then
includes the batch being penalised); "reference" mode keeps that order too.

Total loss: L = L_PG + epo_loss + c_KL KL, with epo_loss = -λ (L_H - β_k α P) = -λ L_H + λ α β_k P
(or -λ L_H + smoothing_coef β_k P when cfg.smoothing_coef is set, so the tiny λα product can be swept).

Reference code (github.com/WujiangXu/EPO, a verl-agent fork; read, not copied), what "reference" mode reproduces:
- verl/workers/actor/dp_actor.py, DataParallelPPOActor.update_policy: with `entropy_smooth` on, it reads
  `config.get("max_step", 50)` while the yaml key is `max_steps` (verl/trainer/config/ppo_trainer.yaml), so the
  threshold is always 50 // 2 = 25, and the penalty is computed only for micro-batches where *any* sample has
  rollout_step (= turn index) >= 25, otherwise zeros (b). `generate_entropy_penalty` looks up
  entropy_history[turn] per sample, tests min_ratio·H̄ < h < max_ratio·H̄ (strict) per token, or on
  `entropy.mean(-1)` per sample in "seq" mode -- a mean over padding too (d) -- and returns
  torch.where(in_band, 0, out_range_penalty): constants, so the penalty has no gradient at all (a).
  entropy_loss = agg_loss(entropy) - entropy_smooth_coeff·agg_loss(mask); loss = pg - entropy_coeff·entropy_loss.
  `enable_smooth_weights` multiplies the mask by `_calculate_epoch_based_entropy_weight(epoch, 150)` (two-phase β).
- agent_system/multi_turn_rollout/rollout_loop.py: at every rollout step, the token-mean entropy over the whole
  batch (finished envs included, they keep generating) is appended to step_entropy_list.
- verl/trainer/ppo/ray_trainer.py: step_entropy_list is zero-padded *on the left* to env.max_steps (c) and appended
  to entropy_history; the actor gets np.mean(entropy_history, axis=0), a cumulative mean over RL steps.
Not reproduced: finished envs entering the statistic (our batches only hold played turns).
"""

from __future__ import annotations

import math
from collections import deque

import torch

from epo.algos.advantages import Ids, as_index
from epo.algos.losses import aggregate, masked_mean
from epo.config import EPOConfig

REFERENCE_TURN_THRESHOLD = 25  # reference: config.get("max_step", 50) // 2, the real key being max_steps
HISTORY_MODES = ("cumulative", "window", "ema", "scalar")


def trajectory_sample_weights(traj_ids: Ids) -> torch.Tensor:
    """Weight [N] of each turn sample of a mini-batch: 1 / (n_trajectories · T_i), T_i = its trajectory's samples
    in the mini-batch. Sums to 1, so sum_s w_s mean_k h_s = mean_i (1/T_i) sum_t mean_k h_{i,t}."""
    traj = as_index(traj_ids)
    counts = torch.bincount(traj).float()
    return 1.0 / (counts.numel() * counts[traj])


def sample_mean_entropy(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B]: each sample's token-mean entropy over its response tokens (0 without tokens)."""
    mask = mask.to(entropy.dtype)
    return (entropy * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def per_turn_mean_entropy(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    turn_idx: torch.Tensor,
    active: torch.Tensor | None = None,
    weighting: str = "token",
) -> dict[int, float]:
    """Batch-mean entropy per turn index over the samples actually played ({turn: mean}).

    weighting="token" (default, as the reference's rollout loop): sum of entropy over all response tokens of the
    turn-t samples / their token count -- the expected token entropy, the quantity the token-mode band compares
    against. weighting="sample": mean over turn-t samples of their token-mean entropy. Rows with active=False
    (finished envs) or without response tokens contribute nothing; turns with no sample are absent.
    """
    mask = mask.detach().to(torch.float64)
    if active is not None:
        mask = mask * active.detach().to(mask).unsqueeze(-1)
    entropy = entropy.detach().to(torch.float64)
    played = mask.sum(-1) > 0
    turns = turn_idx[played].long()
    if weighting == "token":
        num = torch.zeros(int(turns.max()) + 1 if turns.numel() else 0, dtype=torch.float64, device=mask.device)
        den = torch.zeros_like(num)
        num.index_add_(0, turns, (entropy * mask).sum(-1)[played])
        den.index_add_(0, turns, mask.sum(-1)[played])
    elif weighting == "sample":
        num = torch.zeros(int(turns.max()) + 1 if turns.numel() else 0, dtype=torch.float64, device=mask.device)
        den = torch.zeros_like(num)
        num.index_add_(0, turns, sample_mean_entropy(entropy, mask)[played])
        den.index_add_(0, turns, torch.ones_like(turns, dtype=torch.float64))
    else:
        raise ValueError(f"per_turn_mean_entropy: weighting '{weighting}' is not one of token, sample")
    return {t: (num[t] / den[t]).item() for t in range(len(num)) if den[t] > 0}


class EntropyHistory:
    """H̄_t, the historical batch-mean entropy per turn index t (a constant: no gradient flows through it).

    mode: cumulative (mean over all past updates), window (mean of the last `window` updates), ema (first value,
    then v <- ema·v + (1-ema)·x), scalar (one cumulative mean of the batch-mean entropy for every turn).
    An update only touches the turn indices it contains, so a short rollout leaves later indices untouched.
    pad_left_to=M (reference mode only) reproduces the released code: each update's per-turn list of length L
    (turns 0..L-1) is zero-padded on the left to M, i.e. turn t's value lands at index t + M - L and indices
    below M - L receive 0.0 (per-turn modes; scalar mode has no turn axis to misalign).
    """

    def __init__(
        self, mode: str = "cumulative", window: int = 10, ema: float = 0.9, pad_left_to: int | None = None
    ) -> None:
        if mode not in HISTORY_MODES:
            raise ValueError(f"epo.history: '{mode}' is not one of {', '.join(HISTORY_MODES)}")
        if window < 1 or not 0 <= ema <= 1:
            raise ValueError(f"EntropyHistory: need window >= 1 and ema in [0, 1], got {window}, {ema}")
        self.mode, self.window, self.ema, self.pad_left_to = mode, window, ema, pad_left_to
        self.num_updates = 0
        self._stats: dict[int, list[float]] = {}  # cumulative/scalar: [sum, count]; window: values; ema: [value]

    @classmethod
    def from_config(cls, cfg: EPOConfig, max_turns: int = 0) -> EntropyHistory:
        """max_turns (the env's resolved turn limit) is needed for the reference mode's left padding."""
        if cfg.mode == "reference" and max_turns < 1:
            raise ValueError("EntropyHistory: epo.mode=reference needs the env's max_turns (> 0) for its padding")
        pad = max_turns if cfg.mode == "reference" else None
        return cls(cfg.history, cfg.history_window, cfg.history_ema, pad)

    def _left_pad(self, turn_means: dict[int, float]) -> dict[int, float]:
        length, size = max(turn_means) + 1, self.pad_left_to or 0
        row = [turn_means.get(t, 0.0) for t in range(length)][-size:]  # the reference keeps the last M if longer
        return {t: (0.0 if t < size - len(row) else row[t - (size - len(row))]) for t in range(size)}

    def _add(self, key: int, x: float) -> None:
        if self.mode in ("cumulative", "scalar"):
            total, count = self._stats.get(key, [0.0, 0.0])
            self._stats[key] = [total + x, count + 1]
        elif self.mode == "window":
            self._stats[key] = ([*self._stats.get(key, []), x])[-self.window :]
        elif key in self._stats:
            self._stats[key] = [self.ema * self._stats[key][0] + (1 - self.ema) * x]
        else:
            self._stats[key] = [x]

    def update(self, turn_means: dict[int, float], batch_mean: float | None = None) -> None:
        """Add one RL step. turn_means {turn: batch-mean entropy}; batch_mean (scalar mode) defaults to their mean."""
        if not turn_means:
            return
        if any(int(t) < 0 for t in turn_means):
            raise ValueError(f"EntropyHistory.update: negative turn index in {sorted(turn_means)}")
        turn_means = {int(t): float(v) for t, v in turn_means.items()}
        if self.mode == "scalar":
            self._add(0, sum(turn_means.values()) / len(turn_means) if batch_mean is None else float(batch_mean))
        else:
            for t, x in (self._left_pad(turn_means) if self.pad_left_to else turn_means).items():
                self._add(t, x)
        self.num_updates += 1

    def update_from_tensors(
        self,
        entropy: torch.Tensor,
        mask: torch.Tensor,
        turn_idx: torch.Tensor,
        active: torch.Tensor | None = None,
        weighting: str = "token",
    ) -> dict[int, float]:
        """Update from a rollout's token entropies [B, T]; returns the per-turn means (for logging)."""
        turn_means = per_turn_mean_entropy(entropy, mask, turn_idx, active, weighting)
        mask = mask.detach().float() if active is None else mask.detach().float() * active.float().unsqueeze(-1)
        self.update(turn_means, batch_mean=masked_mean(entropy.detach().float(), mask).item())
        return turn_means

    def value(self, turn: int) -> float | None:
        """H̄ for a turn index, None without history."""
        stat = self._stats.get(0 if self.mode == "scalar" else int(turn))
        if stat is None:
            return None
        if self.mode in ("cumulative", "scalar"):
            return stat[0] / stat[1]
        return sum(stat) / len(stat)  # window mean; ema keeps a single value

    def as_dict(self) -> dict[int, float]:
        """{turn: H̄} for every turn with history (scalar mode: {0: H̄})."""
        return {t: self.value(t) for t in sorted(self._stats)}  # type: ignore[misc]

    def reference(
        self, turn_idx: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(H̄ [B] in `dtype`, has_history [B] bool) for each sample's turn index; H̄ = 0 where there is no history.

        Pass the entropy's dtype: the history is kept in Python floats (fp64), and building H̄ in fp32 first would
        round the band edges of an fp64 entropy (gradcheck) by ~1e-8 relative."""
        values = [self.value(t) for t in turn_idx.tolist()]
        hbar = torch.tensor([0.0 if v is None else v for v in values], dtype=dtype, device=turn_idx.device)
        has = torch.tensor([v is not None for v in values], dtype=torch.bool, device=turn_idx.device)
        return hbar, has

    def state_dict(self) -> dict:
        """JSON-serialisable; load_state_dict(state_dict()) restores it exactly."""
        return {
            "mode": self.mode,
            "window": self.window,
            "ema": self.ema,
            "pad_left_to": self.pad_left_to,
            "num_updates": self.num_updates,
            "stats": {str(t): list(v) for t, v in self._stats.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("mode") != self.mode:
            raise ValueError(f"EntropyHistory: checkpoint has history mode '{state.get('mode')}', config '{self.mode}'")
        self.window, self.ema, self.pad_left_to = state["window"], state["ema"], state["pad_left_to"]
        self.num_updates = int(state["num_updates"])
        self._stats = {int(t): [float(x) for x in v] for t, v in state["stats"].items()}


def turn_metrics(turn_means: dict[int, float], history: EntropyHistory) -> dict[str, float]:
    """Per-turn-index logs: this step's batch-mean entropy and H̄ (epo/entropy_turn/07, epo/hbar_turn/07)."""
    out = {f"epo/entropy_turn/{t:02d}": v for t, v in sorted(turn_means.items())}
    out.update({f"epo/hbar_turn/{t:02d}": v for t, v in history.as_dict().items()})
    return out


def trajectory_entropy(entropy: torch.Tensor, mask: torch.Tensor, sample_weight: torch.Tensor) -> torch.Tensor:
    """L_H contribution of a micro-batch: sum_s w_s · mean_k h_s, with w from `trajectory_sample_weights` over the
    mini-batch (summing micro-batches gives mean over trajectories of (1/T_i) sum_t mean_k h_{i,t})."""
    if sample_weight.shape != entropy.shape[:1]:
        raise ValueError(f"sample_weight must be [B] = [{entropy.shape[0]}], got {tuple(sample_weight.shape)}")
    return (sample_weight.to(entropy) * sample_mean_entropy(entropy, mask)).sum()


def entropy_objective(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    sample_weight: torch.Tensor | None,
    level: str = "trajectory",
    num_tokens: float | None = None,
) -> torch.Tensor:
    """L_H: "trajectory" (each trajectory counts equally) or "token" (token-mean over all turn samples)."""
    if level == "trajectory":
        if sample_weight is None:
            raise ValueError("epo.entropy_level=trajectory needs sample_weight (trajectory_sample_weights)")
        return trajectory_entropy(entropy, mask, sample_weight)
    if level == "token":
        return aggregate(entropy, mask, "token-mean", num_tokens=num_tokens)
    raise ValueError(f"epo.entropy_level: '{level}' is not one of trajectory, token")


def _band_metrics(below: torch.Tensor, above: torch.Tensor, weight: torch.Tensor) -> dict[str, float]:
    return {
        "epo/frac_below": masked_mean(below.float(), weight).item(),
        "epo/frac_above": masked_mean(above.float(), weight).item(),
    }


def smoothing_penalty(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    turn_idx: torch.Tensor,
    history: EntropyHistory,
    kappa_low: float,
    kappa_high: float,
    level: str = "token",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Differentiable P: hinge [lo - h]_+ + [h - hi]_+ with lo = κ_l H̄_t, hi = κ_r H̄_t (H̄ constant).

    token: sum over response tokens / num_tokens; sequence: hinge on each sample's token-mean, sum / num_seqs.
    Samples whose turn index has no history contribute 0 (but still count in the normalisers).
    Gradient: dP/dh = +1/N above the band, -1/N below, 0 inside -- descent pushes h back into the band.
    Metrics (this micro-batch): epo/P, fraction of all response tokens (of samples, in sequence mode) below/above
    the band (tokens of turns without history count as inside).
    """
    hbar, has = history.reference(turn_idx, dtype=entropy.dtype)
    hbar, has = hbar.to(entropy), has.to(entropy)
    lo, hi = kappa_low * hbar, kappa_high * hbar  # [B]
    mask = mask.to(entropy.dtype)
    if level == "token":
        lo, hi, weight = lo.unsqueeze(-1), hi.unsqueeze(-1), mask * has.unsqueeze(-1)  # [B, 1], [B, T]
        h = entropy
        denom, local_denom = num_tokens, mask.sum().clamp(min=1)
    elif level == "sequence":
        h, weight = sample_mean_entropy(entropy, mask), has * (mask.sum(-1) > 0)  # [B]
        denom, local_denom = num_seqs, float(entropy.shape[0])
    else:
        raise ValueError(f"epo.smoothing_level: '{level}' is not one of token, sequence")
    hinge_sum = ((torch.relu(lo - h) + torch.relu(h - hi)) * weight).sum()
    penalty = hinge_sum / (local_denom if denom is None else denom)
    with torch.no_grad():
        metrics = {"epo/P": (hinge_sum / local_denom).item()}
        base = mask if level == "token" else torch.ones_like(h)
        metrics.update(_band_metrics((h < lo) & (weight > 0), (h > hi) & (weight > 0), base))
    return penalty, metrics


def reference_smoothing_note(mode: str, max_turns: int) -> str | None:
    """A line for the run's start when reference mode's smoothing term can never act: the released code applies
    it only to micro-batches holding a 0-based turn index >= 25 (b), so episodes capped at <= 25 turns never reach
    it and reference mode trains as GRPO/PPO + the entropy bonus alone (epo/smoothing_active stays 0)."""
    if mode != "reference" or max_turns > REFERENCE_TURN_THRESHOLD:
        return None
    return (
        f"epo.mode=reference: episodes end by turn {max_turns}, and the released code's smoothing term acts only "
        f"from turn {REFERENCE_TURN_THRESHOLD + 1} on (turn index >= {REFERENCE_TURN_THRESHOLD}): it will stay 0 "
        "in this run (epo/smoothing_active = 0); epo.mode=on has no such gate"
    )


def reference_smoothing_penalty(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    turn_idx: torch.Tensor,
    history: EntropyHistory,
    kappa_low: float,
    kappa_high: float,
    level: str = "token",
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The released code's penalty, bugs included: token-mean of an out-of-band indicator built with torch.where
    from constants (no gradient, (a)); zero unless the micro-batch holds a turn >= 25 (b); sequence mode tests the
    mean over all T positions, padding included (d). Left padding of the history (c) lives in EntropyHistory."""
    mask = mask.to(entropy.dtype)
    active = bool((turn_idx >= REFERENCE_TURN_THRESHOLD).any()) and history.num_updates > 0
    zero = torch.zeros((), dtype=entropy.dtype, device=entropy.device)
    if not active:
        return zero, {"epo/P": 0.0, "epo/frac_below": 0.0, "epo/frac_above": 0.0, "epo/smoothing_active": 0.0}
    hbar, has = history.reference(turn_idx, dtype=entropy.dtype)
    lo, hi = (kappa_low * hbar.to(entropy)).unsqueeze(-1), (kappa_high * hbar.to(entropy)).unsqueeze(-1)  # [B, 1]
    if level == "token":
        h = entropy.detach()  # [B, T]
    elif level == "sequence":
        h = entropy.detach().mean(-1, keepdim=True)  # [B, 1], mean over padding too
    else:
        raise ValueError(f"epo.smoothing_level: '{level}' is not one of token, sequence")
    in_band = ((h > lo) & (h < hi)) | ~has.unsqueeze(-1)
    indicator = torch.where(in_band, zero, torch.ones_like(zero)).expand_as(entropy)  # [B, T], constants
    penalty = aggregate(indicator, mask, "token-mean", num_tokens=num_tokens)
    metrics = {"epo/P": aggregate(indicator, mask, "token-mean").item(), "epo/smoothing_active": 1.0}
    metrics.update(
        _band_metrics((h <= lo).expand_as(entropy) & ~in_band, (h >= hi).expand_as(entropy) & ~in_band, mask)
    )
    return penalty, metrics


def beta(
    step: int, total_steps: int, schedule: str = "paper", gamma: float = 1.0, reference_total_steps: int = 150
) -> float:
    """Phase weight β_k of the smoothing term at RL step k (0-based).

    paper: 1 + exp(-γ k / k_mid), k_mid = ⌊K/2⌋ (β_0 = 2, decays towards 1).
    reference: K = reference_total_steps, h = ⌊K/2⌋, k clamped to [0, K]; k <= h: 1 - 0.2 (1 - e^{-2k/h});
    k > h: 0.8 e^{-3 (k - h)/(K - h)}.  constant: 1.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "paper":
        k_mid = max(total_steps // 2, 1)
        return 1.0 + math.exp(-gamma * step / k_mid)
    if schedule == "reference":
        total = reference_total_steps
        if total <= 0:
            return 1.0
        k, half = max(0, min(step, total)), total // 2
        if k <= half:
            return 1.0 if half == 0 else 1.0 - 0.2 * (1.0 - math.exp(-2.0 * k / half))
        return 0.8 * math.exp(-3.0 * (k - half) / (total - half))
    raise ValueError(f"epo.beta_schedule: '{schedule}' is not one of paper, reference, constant")


def turn_decay_weights(turn_idx: torch.Tensor, decay: float) -> torch.Tensor:
    """[B] weight decay**t of each sample's entropy bonus (EPO-Decay ablation; all ones when decay = 1)."""
    if decay == 1.0:
        return torch.ones(turn_idx.shape, dtype=torch.float32, device=turn_idx.device)
    return torch.pow(torch.tensor(float(decay), device=turn_idx.device), turn_idx.float())


def epo_loss(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    turn_idx: torch.Tensor,
    sample_weight: torch.Tensor | None,
    history: EntropyHistory,
    step: int,
    total_steps: int,
    cfg: EPOConfig,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The term to ADD to the policy loss: -λ L_H + w β_k P, w = λα (or cfg.smoothing_coef when set).

    entropy [B, T] must carry gradient (full-vocabulary entropy from the logits); mode "off" returns 0.
    """
    if cfg.mode == "off":
        return torch.zeros((), dtype=entropy.dtype, device=entropy.device), {}
    if cfg.mode not in ("on", "reference"):
        raise ValueError(f"epo.mode: '{cfg.mode}' is not one of off, on, reference")
    bonus_entropy = entropy * turn_decay_weights(turn_idx, cfg.turn_decay).to(entropy).unsqueeze(-1)  # [B, T]
    entropy_term = entropy_objective(bonus_entropy, mask, sample_weight, cfg.entropy_level, num_tokens)
    if cfg.mode == "on":
        penalty, metrics = smoothing_penalty(
            entropy, mask, turn_idx, history, cfg.kappa_low, cfg.kappa_high, cfg.smoothing_level, num_tokens, num_seqs
        )
    else:
        penalty, metrics = reference_smoothing_penalty(
            entropy, mask, turn_idx, history, cfg.kappa_low, cfg.kappa_high, cfg.smoothing_level, num_tokens
        )
    b = beta(step, total_steps, cfg.beta_schedule, cfg.beta_gamma, cfg.reference_total_steps)
    weight = cfg.entropy_coef * cfg.smoothing_alpha if cfg.smoothing_coef is None else cfg.smoothing_coef
    loss = -cfg.entropy_coef * entropy_term + weight * b * penalty
    with torch.no_grad():
        local_entropy = entropy_objective(entropy, mask, sample_weight, cfg.entropy_level)
        if cfg.entropy_level == "trajectory":  # weighted mean within this micro-batch
            local_entropy = local_entropy / sample_weight.sum().clamp(min=1e-12)  # type: ignore[union-attr]
        metrics.update(
            {
                "epo/entropy_mean": masked_mean(entropy, mask.to(entropy.dtype)).item(),
                "epo/L_H": local_entropy.item(),
                "epo/beta": b,
                "epo/entropy_term": cfg.entropy_coef * local_entropy.item(),
                "epo/penalty_term": weight * b * metrics["epo/P"],
                "epo/smoothing_weight": weight,
            }
        )
    return loss, metrics


class EntropyTrend:
    """Entropy stability across RL steps: running variance (Welford, all steps), variance over the last `window`
    steps, and |ΔH| to the previous step. Variances are population variances (0 after one step)."""

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.recent: deque[float] = deque(maxlen=window)

    def update(self, entropy_mean: float) -> dict[str, float]:
        x = float(entropy_mean)
        delta_prev = abs(x - self.recent[-1]) if self.recent else 0.0
        self.count += 1
        d = x - self.mean
        self.mean += d / self.count
        self.m2 += d * (x - self.mean)
        self.recent.append(x)
        window_mean = sum(self.recent) / len(self.recent)
        return {
            "epo/entropy_var_steps": self.m2 / self.count,
            "epo/entropy_var_window": sum((v - window_mean) ** 2 for v in self.recent) / len(self.recent),
            "epo/entropy_delta": delta_prev,
        }

    def state_dict(self) -> dict:
        return {
            "window": self.window,
            "count": self.count,
            "mean": self.mean,
            "m2": self.m2,
            "recent": list(self.recent),
        }

    def load_state_dict(self, state: dict) -> None:
        self.window, self.count = int(state["window"]), int(state["count"])
        self.mean, self.m2 = float(state["mean"]), float(state["m2"])
        self.recent = deque((float(v) for v in state["recent"]), maxlen=self.window)
