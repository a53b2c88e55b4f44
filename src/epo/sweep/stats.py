"""Statistics over seeds: mean ± std with a Student-t 95% interval, and paired tests between methods.

Seeds are the unit of replication (each seed's number is one observation). Two methods run on the same seeds share
the task sampler and initial weights, so their numbers are paired: the paired t-test and an exact sign-flip
permutation test on the per-seed differences. Unpaired (different seed sets): Welch's t-test.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps


@dataclass
class Summary:
    n: int
    mean: float
    std: float
    """Sample standard deviation (ddof = 1); 0 with one seed."""
    ci_low: float
    ci_high: float
    """95% Student-t interval of the mean (equal to the mean with one seed)."""

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(values: list[float] | np.ndarray) -> Summary | None:
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return None
    mean = float(x.mean())
    if x.size == 1:
        return Summary(1, mean, 0.0, mean, mean)
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.975, x.size - 1)) * std / math.sqrt(x.size)
    return Summary(int(x.size), mean, std, mean - half, mean + half)


@dataclass
class Comparison:
    test: str
    """'paired' (same seeds) or 'welch' (different seeds)."""
    n: int
    diff: float
    """Mean of (method - baseline)."""
    ci_low: float
    ci_high: float
    """95% t-interval of the (mean) difference."""
    p_t: float | None
    """Two-sided p of the paired t-test (or Welch's t-test); None where t is undefined: every paired difference is
    the same (zero spread: 0/0 or x/0), or, for Welch, both groups are constant."""
    p_perm: float | None
    """Two-sided sign-flip permutation p on the paired differences: exact up to 20 pairs, else Monte Carlo
    (200,000 seeded draws); None for unpaired."""

    def as_dict(self) -> dict:
        return asdict(self)


EXACT_SIGN_FLIP_MAX = 20  # up to 2^20 sign assignments are enumerated; beyond, a seeded Monte Carlo sample
SIGN_FLIP_DRAWS = 200_000  # Monte Carlo p's standard error <= 0.5 / sqrt(draws) ~= 0.0011


def sign_flip_p(diffs: np.ndarray, exact_max: int = EXACT_SIGN_FLIP_MAX, draws: int = SIGN_FLIP_DRAWS) -> float:
    """Two-sided sign-flip permutation p: the share of sign assignments whose |mean| >= the observed |mean|.

    Exact (all 2^n assignments, enumerated in chunks so memory stays flat) for n <= exact_max pairs; beyond that
    2^n is out of reach (n = 28: 268M rows), so `draws` random assignments (seed 0), p = (hits + 1) / (draws + 1)."""
    n = diffs.size
    threshold = abs(float(diffs.mean())) * n - 1e-9  # compare |sum| to skip a division per row
    if n <= exact_max:
        bits, hits = np.arange(n), 0
        for start in range(0, 2**n, 2**16):
            codes = np.arange(start, min(start + 2**16, 2**n))
            signs = 1.0 - 2.0 * ((codes[:, None] >> bits) & 1)  # [chunk, n]: bit i of the code flips pair i
            hits += int(np.count_nonzero(np.abs(signs @ diffs) >= threshold))
        return hits / 2**n
    rng, hits = np.random.default_rng(0), 0
    for start in range(0, draws, 2**16):
        signs = rng.choice((-1.0, 1.0), size=(min(2**16, draws - start), n))
        hits += int(np.count_nonzero(np.abs(signs @ diffs) >= threshold))
    return (hits + 1) / (draws + 1)


def paired(method: dict[int, float], baseline: dict[int, float]) -> Comparison | None:
    """method/baseline: {seed: value}. Paired on the shared seeds; Welch's test when they share fewer than 2."""
    shared = sorted(s for s in set(method) & set(baseline) if _ok(method[s]) and _ok(baseline[s]))
    if len(shared) >= 2:
        d = np.array([method[s] - baseline[s] for s in shared])
        s = _t_interval(d)
        # all differences equal: t is 0/0 or x/0, no p to report (the interval, of width 0, says what there is)
        p_t = None if d.std(ddof=1) == 0 else float(sps.ttest_1samp(d, 0.0).pvalue)
        return Comparison("paired", len(shared), float(d.mean()), s[0], s[1], p_t, sign_flip_p(d))
    a = np.array([v for v in method.values() if _ok(v)])
    b = np.array([v for v in baseline.values() if _ok(v)])
    if a.size < 2 or b.size < 2:
        return None
    n, diff = int(min(a.size, b.size)), float(a.mean() - b.mean())
    if a.std() == 0 and b.std() == 0:  # Welch's t is x/0 or 0/0: no p, an interval of width 0
        return Comparison("welch", n, diff, diff, diff, None, None)
    res = sps.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    return Comparison("welch", n, diff, ci.low, ci.high, float(res.pvalue), None)


def fmt_p(p: float | None, spec: str = ".3f") -> str:
    """A p-value for tables and console lines; "n/a" where the test is undefined (see Comparison.p_t)."""
    return "n/a" if p is None else format(p, spec)


def _t_interval(d: np.ndarray) -> tuple[float, float]:
    half = float(sps.t.ppf(0.975, d.size - 1)) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return float(d.mean()) - half, float(d.mean()) + half


def _ok(v: float | None) -> bool:
    return v is not None and math.isfinite(v)
