"""StepDiagnostics: the action-entropy and entropy-change diagnostics of one RL step, as two hooks.

    diag.before_update(policy, data, step)   # at the rollout weights: score listed actions, snapshot a subset
    ... the policy update ...
    metrics.update(diag.after_update(policy, data))

Both hooks are no-grad forwards over bounded subsets and use their own RNG, so turning diagnostics on does not
change the training run (tested). Keys (docs/METRICS.md): diag/action_* and diag/*_per_turn lists.
"""

from __future__ import annotations

import math
import random

import torch

from epo.config import Config
from epo.diagnostics import entropy_change as ec
from epo.diagnostics.action_entropy import action_entropy, choose_turns, pearson, score_actions
from epo.trainer.update import StepData, forward_pass


class StepDiagnostics:
    def __init__(self, cfg: Config, tokenizer, pad_id: int):
        self.cfg = cfg
        self.pad_id = pad_id
        self.tokenizer = tokenizer
        self._prompts = None  # PromptBuilder, built on first use (only its response_text is needed)
        self._encoded: dict[str, list[int]] = {}
        self._scored: tuple[list[int], list[torch.Tensor], int] | None = None
        self._before: tuple[list[int], list[torch.Tensor], list[torch.Tensor]] | None = None

    @property
    def enabled(self) -> bool:
        return self.cfg.diag.action_entropy_turns > 0 or self.cfg.diag.entropy_change_samples > 0

    # ------------------------------------------------------------------ hooks
    @torch.no_grad()
    def before_update(self, policy, data: StepData, step: int) -> None:
        d, samples = self.cfg.diag, data.samples
        self._scored = self._before = None
        if d.action_entropy_turns > 0:
            rng = random.Random(self.cfg.train.seed * 1_000_003 + step)  # own RNG: the run's streams stay untouched
            chosen, skipped = choose_turns(samples, d.action_entropy_turns, d.action_entropy_max_actions, rng)
            scores = score_actions(policy, samples, chosen, self._encode, self.pad_id, self.cfg)
            self._scored = (chosen, scores, skipped)
        if d.entropy_change_samples > 0:
            idx = ec.subset_indices(len(samples), d.entropy_change_samples)
            logps, ents = forward_pass(policy, [samples[i] for i in idx], self.pad_id, self.cfg, with_entropy=True)
            self._before = (idx, logps, ents)

    @torch.no_grad()
    def after_update(self, policy, data: StepData) -> dict:
        metrics: dict = {}
        if self._scored is not None:
            metrics.update(self._action_metrics(data, *self._scored))
        if self._before is not None:
            metrics.update(self._change_metrics(policy, data, *self._before))
        self._scored = self._before = None
        return metrics

    # ------------------------------------------------------------------ action entropy
    def _encode(self, action: str) -> list[int]:
        if action not in self._encoded:
            if self._prompts is None:
                from epo.agent import PromptBuilder

                self._prompts = PromptBuilder(self.tokenizer, self.cfg.agent, list_older_actions=False)
            if len(self._encoded) > 100_000:
                self._encoded.clear()
            text = self._prompts.response_text(action)
            self._encoded[action] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._encoded[action]

    def _action_metrics(self, data: StepData, chosen: list[int], scores: list[torch.Tensor], skipped: int) -> dict:
        turns = [data.samples[i].turn_idx for i in chosen]
        h_act, h_norm, outside, h_tok = [], [], [], []
        for i, lp in zip(chosen, scores, strict=True):
            h, out = action_entropy(lp)
            h_act.append(h)
            outside.append(out)
            h_norm.append(h / math.log(len(lp)) if len(lp) > 1 else math.nan)
            h_tok.append(float(data.entropy[i].float().mean()))  # token entropy of the response actually sampled
        metrics = {"diag/action_turns_scored": float(len(chosen)), "diag/action_turns_skipped": float(skipped)}
        if not chosen:
            return metrics

        def one_each(values: list[float]) -> list[torch.Tensor]:
            return [torch.tensor([v]) for v in values]

        norm_ok = [v for v in h_norm if math.isfinite(v)]
        metrics.update(
            {
                "diag/action_entropy": sum(h_act) / len(h_act),
                "diag/action_entropy_norm": sum(norm_ok) / len(norm_ok) if norm_ok else math.nan,
                "diag/action_mass_outside": sum(outside) / len(outside),
                "diag/action_token_entropy": sum(h_tok) / len(h_tok),
                "diag/action_token_entropy_corr": pearson(h_tok, h_act),
                "diag/action_entropy_per_turn": ec.as_list(ec.per_turn_mean(one_each(h_act), turns)),
                "diag/action_mass_outside_per_turn": ec.as_list(ec.per_turn_mean(one_each(outside), turns)),
                "diag/action_token_entropy_per_turn": ec.as_list(ec.per_turn_mean(one_each(h_tok), turns)),
            }
        )
        return metrics

    # ------------------------------------------------------------------ entropy change
    def _change_metrics(self, policy, data: StepData, idx: list[int], logp_b, ent_b) -> dict:
        samples = [data.samples[i] for i in idx]
        logp_a, ent_a = forward_pass(policy, samples, self.pad_id, self.cfg, with_entropy=True)
        return change_metrics(
            [s.turn_idx for s in samples],
            logp_b,
            ent_b,
            logp_a,
            ent_a,
            [data.advantages[i] for i in idx],
            self.cfg.algo.clip_low,
            self.cfg.algo.clip_high,
        )


def change_metrics(turns, logp_b, ent_b, logp_a, ent_a, advantages, clip_low: float, clip_high: float) -> dict:
    """diag/cov_logp_adv, entropy_change, kl_update, ratio_outside_clip: overall scalars and per-turn lists."""
    h_b, h_a = ec.per_turn_mean(ent_b, turns), ec.per_turn_mean(ent_a, turns)
    kl = [ec.k3_kl(b, a) for b, a in zip(logp_b, logp_a, strict=True)]
    clip = [ec.outside_clip(b, a, clip_low, clip_high) for b, a in zip(logp_b, logp_a, strict=True)]
    cov = ec.per_turn_covariance(logp_b, advantages, turns)

    def flat(xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([x.detach().double().flatten() for x in xs])

    return {
        "diag/cov_logp_adv": ec.covariance(flat(logp_b), flat(advantages)),
        "diag/entropy_change": float(flat(ent_a).mean() - flat(ent_b).mean()),
        "diag/kl_update": float(flat(kl).mean()),
        "diag/ratio_outside_clip": float(flat(clip).mean()),
        "diag/cov_logp_adv_per_turn": ec.as_list(cov),
        "diag/entropy_change_per_turn": ec.as_list({t: h_a[t] - h_b[t] for t in h_b}),
        "diag/kl_update_per_turn": ec.as_list(ec.per_turn_mean(kl, turns)),
        "diag/ratio_outside_clip_per_turn": ec.as_list(ec.per_turn_mean(clip, turns)),
    }
