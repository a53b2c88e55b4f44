"""Experiment 12's estimates (docs/RESULTS.md): with few seeds, pair eval episodes game by game. Each run's evals at
steps A and B draw the same games (the eval ids depend only on the seed), and two methods' runs of one seed draw the
same games too, so every (seed, game) is a pair.

    python experiments/analysis/game_pairs.py SWEEP_DIR [--base grpo] [--arm grpo_epo] [--start 0] [--end 12]
        [--split iid] [--csv OUT.csv]

Prints, per run, success at both evals (Wilson 95%), the run's entropy mean, its variance over steps and its share of
gradient-free steps (every group all won or all lost); then per method the RL gain (end - start) and the arm - base
difference at the end eval, as paired mean differences over (seed, game) pairs with t intervals and exact sign-flip
p where the pairs are few (epo.sweep.stats.paired). Only seeds where both methods finished are compared.

The (seed, game) pairs of one seed share its policy (and for the arm - base difference its training draws), so they
are not independent: the pooled interval is narrower than the design supports. Each comparison is therefore also
given over seeds, the unit of replication (each seed's mean difference over its pairs, a t interval over seeds,
sign-flip p over 2^seeds), which needs at least 2 seeds; read that one as the test.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from epo.report.data import load_run
from epo.rollout.evaluate import EvalResult, wilson_interval
from epo.sweep.aggregate import seed_numbers
from epo.sweep.stats import fmt_p, paired


def eval_wins(run: Path, step: int, split: str) -> dict[str, list[int]] | None:
    """{game id: [win per episode of that game]} of one saved eval, or None if the run has not reached it."""
    saved = EvalResult.load(run / "eval" / f"step_{step:06d}_{split}.json")
    if saved is None:
        return None
    out: dict[str, list[int]] = {}
    for task, won in zip(saved.episode_tasks, saved.episode_wins, strict=True):
        out.setdefault(task, []).append(int(won))
    return out


def run_summary(run: Path) -> dict[str, float | None]:
    """Steps, entropy mean and variance over steps, gradient-free share: the sweep report's own per-seed numbers."""
    data = load_run(run)
    numbers = seed_numbers(data, splits=[])
    steps = len(data.series("actor/grad_norm")[0])
    return {
        "steps": steps,
        "entropy_mean": numbers["entropy_mean"],
        "entropy_var": numbers["entropy_var"],
        "gradient_free": numbers["uniform_steps"],
    }


def pair_values(a: dict[str, list[int]], b: dict[str, list[int]], seed: int) -> tuple[dict, dict]:
    """Per-(seed, game, repeat) wins of two evals over the games both drew, keyed alike for stats.paired."""
    va, vb = {}, {}
    for game in sorted(set(a) & set(b)):
        for i, (x, y) in enumerate(zip(a[game], b[game], strict=False)):
            key = (seed, game, i)
            va[key], vb[key] = float(x), float(y)
    return va, vb


def pooled(evals: list[tuple[int, dict, dict]]):
    """(seed, eval a, eval b) triples pooled into one paired comparison a - b over their (seed, game) pairs."""
    va, vb = {}, {}
    for seed, a, b in evals:
        pa, pb = pair_values(a, b, seed)
        va.update(pa)
        vb.update(pb)
    return paired(va, vb)


def by_seed(evals: list[tuple[int, dict, dict]]):
    """The same comparison with seeds as the units: each seed's mean over its pairs, paired over seeds."""
    ma, mb = {}, {}
    for seed, a, b in evals:
        pa, pb = pair_values(a, b, seed)
        if pa:
            ma[seed], mb[seed] = sum(pa.values()) / len(pa), sum(pb.values()) / len(pb)
    return paired(ma, mb) if len(ma) >= 2 else None


def fmt_success(wins: dict[str, list[int]] | None) -> str:
    if wins is None:
        return "-"
    w = [x for v in wins.values() for x in v]
    lo, hi = wilson_interval(sum(w), len(w))
    return f"{sum(w)}/{len(w)} = {100 * sum(w) / len(w):.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def fmt_cmp(c, unit: str = "pairs") -> str:
    if c is None:
        return "-" if unit == "pairs" else f"- (fewer than 2 {unit})"
    return (
        f"{100 * c.diff:+.1f} points [{100 * c.ci_low:+.1f}, {100 * c.ci_high:+.1f}], n = {c.n} {unit}, "
        f"t p = {fmt_p(c.p_t)}, sign-flip p = {fmt_p(c.p_perm)}"
    )


def print_comparison(label: str, evals: list[tuple[int, dict, dict]]) -> None:
    print(f"{label}: {fmt_cmp(pooled(evals))}")
    print(f"  over seeds: {fmt_cmp(by_seed(evals), 'seeds')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--base", default="grpo")
    ap.add_argument("--arm", default="grpo_epo")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--end", type=int, default=12)
    ap.add_argument("--split", default="iid")
    ap.add_argument("--csv", type=Path, help="write one row per run here")
    args = ap.parse_args()

    runs: dict[tuple[str, int], Path] = {}
    for method in (args.base, args.arm):
        for run in sorted((args.sweep / method).glob("seed*")):
            if run.is_dir():  # seedN.log sits beside seedN/
                runs[(method, int(run.name.removeprefix("seed")))] = run
    rows, evals = [], {}
    for (method, seed), run in sorted(runs.items()):
        start, end = eval_wins(run, args.start, args.split), eval_wins(run, args.end, args.split)
        evals[(method, seed)] = (start, end)
        summ = run_summary(run)
        rows.append({"method": method, "seed": seed, **summ})
        print(
            f"{method} seed {seed}: step {args.start} {fmt_success(start)}; step {args.end} {fmt_success(end)}; "
            f"{summ['steps']} steps, entropy mean {_fmt(summ['entropy_mean'], '.4f')}, var over steps "
            f"{_fmt(summ['entropy_var'], '.2e')}, gradient-free steps {_fmt(summ['gradient_free'], '.0%')}"
        )
        for step, wins in ((args.start, start), (args.end, end)):
            rows[-1][f"wins_step{step}"] = sum(sum(v) for v in wins.values()) if wins else None
            rows[-1][f"episodes_step{step}"] = sum(len(v) for v in wins.values()) if wins else None
    for method in (args.base, args.arm):
        gains = [(seed, end, start) for (m, seed), (start, end) in evals.items() if m == method and start and end]
        print_comparison(f"RL gain, {method} (step {args.end} - step {args.start})", gains)
    base_ends = {seed: end for (m, seed), (_, end) in evals.items() if m == args.base}
    diffs = [(seed, end, base_ends.get(seed)) for (m, seed), (_, end) in evals.items() if m == args.arm]
    print_comparison(f"{args.arm} - {args.base} at step {args.end}", [d for d in diffs if d[1] and d[2]])
    if args.csv:
        with args.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
