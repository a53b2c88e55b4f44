"""Action-level entropy: the policy's distribution over the actions the env lists, separated from spelling.

Token entropy mixes "unsure which action" with "unsure how to write it". For a turn whose env lists admissible
actions a_1..a_n, each a_i is scored by its sequence log-probability under the policy at the rollout temperature,
log π(a_i | prompt) = Σ_tokens log p(token), where the sequence is the exact text the parser reads as a_i
(`PromptBuilder.response_text`, e.g. 'go north</action>' after the prompt's '<action>' prefix). Then

    M       = Σ_i π(a_i)                  mass on the listed actions; 1 - M goes to everything else
                                          (invalid outputs, other spellings of an action)
    q_i     = π(a_i) / M                  the policy's choice among the listed actions
    H_act   = -Σ_i q_i log q_i            nats, in [0, log n];  H_act / log n in [0, 1]

Scoring costs one forward per listed action (prompt + action tokens, batched by the token budget), so only a sampled
subset of turns is scored (`diag.action_entropy_turns`) and turns with long lists are skipped
(`diag.action_entropy_max_actions`).
"""

from __future__ import annotations

import math
import random

import torch

from epo.rollout.types import TurnSample
from epo.trainer.update import forward_pass


def action_entropy(seq_logprobs: torch.Tensor) -> tuple[float, float]:
    """(entropy of the policy renormalised over the listed actions, probability mass outside them) from the
    sequence log-probs [n] of the n listed actions."""
    log_mass = torch.logsumexp(seq_logprobs.double(), dim=0)
    q_log = seq_logprobs.double() - log_mass
    entropy = -(q_log.exp() * q_log).sum()
    outside = -torch.expm1(log_mass)  # 1 - M, exact even when M is tiny or close to 1
    return float(entropy.clamp(min=0)), float(outside.clamp(min=0, max=1))


def choose_turns(samples: list[TurnSample], k: int, max_actions: int, rng: random.Random) -> tuple[list[int], int]:
    """Up to k random samples that list 1..max_actions actions; also how many listing more were left out."""
    listed = [i for i, s in enumerate(samples) if s.admissible]
    eligible = [i for i in listed if len(samples[i].admissible) <= max_actions]
    chosen = sorted(rng.sample(eligible, min(k, len(eligible))))
    return chosen, len(listed) - len(eligible)


def score_actions(
    policy, samples: list[TurnSample], indices: list[int], encode, pad_id: int, cfg
) -> list[torch.Tensor]:
    """Sequence log-probs [n_i] of every listed action of each chosen sample (no grad, training numerics).

    encode(action) -> the token ids of the response text the parser reads as that action."""
    pseudo: list[TurnSample] = []
    owner: list[int] = []
    for j, i in enumerate(indices):
        s = samples[i]
        for action in s.admissible:
            pseudo.append(TurnSample(s.prompt_ids, encode(action), s.turn_idx, 0, 0))
            owner.append(j)
    if not pseudo:
        return []
    logps, _ = forward_pass(policy, pseudo, pad_id, cfg, with_entropy=False)
    out: list[list[float]] = [[] for _ in indices]
    for j, lp in zip(owner, logps, strict=True):
        out[j].append(float(lp.sum()))
    return [torch.tensor(v, dtype=torch.float64) for v in out]


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson correlation; NaN with fewer than 3 points or a constant series."""
    if len(x) < 3:
        return math.nan
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    xc, yc = xt - xt.mean(), yt - yt.mean()
    denom = float(xc.norm() * yc.norm())
    return float((xc * yc).sum()) / denom if denom > 0 else math.nan
