"""Evaluation: N episodes on a split, success with a 95% Wilson interval, per-task-type table, transcripts.

The same function runs from `epo eval` and inside training every k steps.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scipy.stats import t as t_dist

from epo.fsio import atomic_write_text
from epo.rollout.collector import episode_scores
from epo.rollout.types import SamplingParams, Trajectory
from epo.telemetry.faults import turn_limit_rate  # one definition for rollout/ and eval/ truncated_rate


@dataclass
class EvalResult:
    split: str
    episodes: int
    success: float
    ci_low: float
    ci_high: float
    mean_turns: float
    invalid_rate: float
    truncated_rate: float  # out of turns (`turn_limit_rate`): episodes ended by env faults are not counted
    per_type: dict[str, dict[str, float]] = field(default_factory=dict)
    transcripts: list[list[dict]] = field(default_factory=list)
    seconds: float = 0.0
    episode_tasks: list[str] = field(default_factory=list)  # task id of each episode, in eval order
    episode_wins: list[int] = field(default_factory=list)  # 1 if that episode was won: pairs two evals task by task
    prompt_shortened_rate: float = 0.0  # share of turns whose prompt did not fit agent.max_prompt_tokens whole
    # the env's end-of-episode progress score (ScienceWorld's 0-100, failures 0), where it has one: mean with a 95%
    # Student-t interval over the episodes (cut to 0-100), and each episode's (pairs two evals task by task); None / []
    # otherwise
    mean_score: float | None = None
    score_ci_low: float | None = None
    score_ci_high: float | None = None
    episode_scores: list[float] = field(default_factory=list)

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        p = f"{prefix}/{self.split}"
        return {
            f"{p}/success": self.success,
            f"{p}/ci_low": self.ci_low,
            f"{p}/ci_high": self.ci_high,
            f"{p}/episodes": float(self.episodes),
            f"{p}/mean_turns": self.mean_turns,
            f"{p}/invalid_rate": self.invalid_rate,
            f"{p}/truncated_rate": self.truncated_rate,
            f"{p}/prompt_shortened_rate": self.prompt_shortened_rate,
            **({} if self.mean_score is None else {f"{p}/score_mean": self.mean_score}),
        }

    @property
    def wins(self) -> int:
        return round(self.success * self.episodes)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> EvalResult | None:
        """A saved result, or None where the file is missing or unreadable (a resume then evaluates again)."""
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def line(self) -> str:
        return (
            f"{self.split}: success {100 * self.success:.1f}% [95% CI {100 * self.ci_low:.1f}-"
            f"{100 * self.ci_high:.1f}] over {self.episodes} episodes, {self.mean_turns:.1f} turns, "
            f"out of turns {100 * self.truncated_rate:.1f}%, invalid {100 * self.invalid_rate:.1f}%"
            + (f", prompts shortened {100 * self.prompt_shortened_rate:.1f}%" if self.prompt_shortened_rate else "")
            + (
                ""
                if self.mean_score is None
                else f", mean score {self.mean_score:.1f} [95% CI {self.score_ci_low:.1f}-{self.score_ci_high:.1f}]"
            )
            + f" ({self.seconds:.0f}s)"
        )


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval: sensible at 0% and 100%, unlike the normal approximation."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval (the mean itself with fewer than 2 values or no spread)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    half = float(t_dist.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def fisher_one_sided(wins_a: int, n_a: int, wins_b: int, n_b: int) -> float:
    """P-value of Fisher's exact test that B's success rate is higher than A's (one-sided), for unpaired samples
    (paired before/after evals of the same tasks use `mcnemar_one_sided`, see `gain_test`).

    The probability, with the margins fixed, of B winning at least wins_b of the wins_a + wins_b total
    (hypergeometric tail). Exact at any n, so it is meaningful for the small evals a CPU run can afford."""
    wins = wins_a + wins_b
    total = math.comb(n_a + n_b, wins)
    if total == 0:
        return 1.0
    tail = sum(math.comb(n_b, k) * math.comb(n_a, wins - k) for k in range(wins_b, min(wins, n_b) + 1))
    return tail / total


def mcnemar_one_sided(gained: int, lost: int) -> float:
    """P-value of McNemar's exact test that the later success rate is higher, for paired outcomes (the same tasks
    evaluated before and after). Only discordant pairs carry information: `gained` tasks failed before and won
    after, `lost` the reverse. Under no change each discordant pair goes either way with probability 1/2, so the
    p-value is the binomial tail P(X >= gained), X ~ Binomial(gained + lost, 1/2)."""
    n = gained + lost
    return sum(math.comb(n, k) for k in range(gained, n + 1)) / 2**n


def gain_test(before: EvalResult, after: EvalResult) -> tuple[float, str]:
    """One-sided p-value that `after` succeeds more often than `before`, and the test used: McNemar's exact test
    when both evals ran the same task ids in the same order (paired), else Fisher's exact test (unpaired:
    different task samples, seeds or splits)."""
    paired = before.episode_tasks and before.episode_tasks == after.episode_tasks
    if paired and len(before.episode_wins) == len(after.episode_wins) == len(before.episode_tasks):
        pairs = list(zip(before.episode_wins, after.episode_wins))
        return mcnemar_one_sided(pairs.count((0, 1)), pairs.count((1, 0))), "McNemar"
    return fisher_one_sided(before.wins, before.episodes, after.wins, after.episodes), "Fisher"


def eval_task_ids(all_ids: list[str], n: int, seed: int = 1234) -> list[str]:
    """A fixed sample of the split (the same every eval of a run), cycled if n exceeds the split."""
    ids = sorted(all_ids)
    random.Random(seed).shuffle(ids)
    return [ids[i % len(ids)] for i in range(n)]


def summarize(split: str, trajs: list[Trajectory], transcripts: int = 0) -> EvalResult:
    n = len(trajs)
    wins = sum(t.won for t in trajs)
    lo, hi = wilson_interval(wins, n)
    turns = sum(t.length for t in trajs)
    by_type: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        by_type[t.task_type or "all"].append(t)
    per_type = {
        k: {
            "episodes": float(len(v)),
            "success": sum(t.won for t in v) / len(v),
            "mean_turns": sum(t.length for t in v) / len(v),
        }
        for k, v in sorted(by_type.items())
    }
    scores = episode_scores(trajs)
    mean = low = high = None
    if scores:  # the env keeps a progress score: its mean and interval, per task type too
        for k, v in by_type.items():
            per_type[k]["score"] = sum(episode_scores(v) or [0.0]) / len(v)
        mean, low, high = mean_interval(scores)
        low, high = max(0.0, low), min(100.0, high)  # bounded: an interval past 0 or 100 says no more than the bound
    return EvalResult(
        split=split,
        episodes=n,
        success=wins / n if n else 0.0,
        ci_low=lo,
        ci_high=hi,
        mean_turns=turns / n if n else 0.0,
        invalid_rate=sum(t.invalid_turns for t in trajs) / turns if turns else 0.0,
        truncated_rate=turn_limit_rate(trajs),  # a crashed or hung env also ends an episode truncated
        prompt_shortened_rate=sum(t.shortened_prompts for t in trajs) / turns if turns else 0.0,
        per_type=per_type,
        transcripts=[t.transcript for t in trajs[:transcripts] if t.transcript],
        episode_tasks=[t.task_id for t in trajs],
        episode_wins=[int(t.won) for t in trajs],
        mean_score=mean,
        score_ci_low=low,
        score_ci_high=high,
        episode_scores=scores,
    )


def evaluate(
    collector,
    split: str,
    task_ids: list[str],
    temperature: float,
    max_new_tokens: int,
    transcripts: int = 3,
    *,
    seed: int,
) -> EvalResult:
    """seed: the per-call seed of the generate calls, required on every backend. An eval then samples the same
    episodes whatever the run drew before it (a value head's initialisation, another method's updates), so the
    evals of methods sharing a seed are paired down to the sampling noise, and an eval leaves the training stream
    untouched (HF forks torch's generator)."""
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    t0 = time.perf_counter()
    result = collector.collect(task_ids, group_size=1, params=params, record_transcripts=transcripts)
    summary = summarize(split, result.trajectories, transcripts)
    summary.seconds = time.perf_counter() - t0
    return summary
