"""Experiment 7's paired tests (docs/RESULTS.md): per (game set, seed) pair, the step-30 eval wins of GRPO and GRPO+EPO
and GRPO's fraction of steps in which every group had one outcome; then EPO - GRPO (paired t, exact sign-flip) and
H19's Spearman rho between that fraction and the difference (exact permutation p up to 9 pairs, else 200,000 draws).

    python experiments/analysis/pairs.py SWEEP_DIR [SWEEP_DIR ...] [--base grpo] [--arm grpo_epo] [--step 30]
        [--screening docs/results/fast_tier_manysets/screening.csv] [--plot PNG]

With --screening (one sweep, one game set per seed): H19b, the same Spearman test with a predictor fixed before
training, each set's expected share of one-outcome groups under the warm start, mean over games of p^G + (1 - p)^G.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
from pathlib import Path

import numpy as np
from scipy import stats

from epo.sweep.stats import fmt_p, paired


def wins(run: Path, step: int) -> tuple[int, int]:
    saved = json.loads((run / "eval" / f"step_{step:06d}_iid.json").read_text())
    return sum(saved["episode_wins"]), len(saved["episode_wins"])


def uniform_fraction(run: Path) -> float:
    """Fraction of RL steps whose groups all had one outcome (GRPO's advantage, hence its gradient, is 0 there)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x) for x in lines if x.strip()]
    steps = [r for r in steps if "actor/grad_norm" in r]
    uniform = [r.get("rollout/groups_all_lost", 0) + r.get("rollout/groups_all_won", 0) >= 1 - 1e-9 for r in steps]
    return sum(uniform) / len(uniform)


def ranks(x: list[float]) -> list[float]:
    return list(stats.rankdata(x))


def spearman_p(x: list[float], y: list[float], draws: int = 200_000) -> tuple[float, float]:
    """rho and the one-sided (rho > 0) permutation p: exact when the pairs are few, Monte Carlo otherwise."""
    rx, ry = np.array(ranks(x)), np.array(ranks(y))
    rho = float(np.corrcoef(rx, ry)[0, 1])
    n = len(x)
    if n <= 9:
        perms = np.array(list(itertools.permutations(ry)))
    else:
        rng = np.random.default_rng(0)
        perms = np.array([rng.permutation(ry) for _ in range(draws)])
    # ranks have the same mean and spread under every permutation, so rho is monotone in the dot product
    dots = perms @ rx
    return rho, float(np.mean(dots >= rx @ ry - 1e-9))


def expected_uniform(screening: Path, group_size: int = 4) -> dict[int, float]:
    """seed -> mean over the seed's games of p^G + (1-p)^G, p = the game's warm-start success in the screening."""
    out = {}
    with screening.open() as f:
        for row in csv.DictReader(f):
            if row["seed"] == "":
                continue
            wins = [int(w) for w in row["wins_per_game"].split()]
            per_game = int(row["episodes"]) // len(wins)
            ps = [w / per_game for w in wins]
            out[int(row["seed"])] = sum(p**group_size + (1 - p) ** group_size for p in ps) / len(ps)
    return out


def scatter(path: Path, fracs: list[float], diffs: list[float], sweeps: list[str], diff_name: str, base: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name in dict.fromkeys(sweeps):
        xs = [100 * f for f, s in zip(fracs, sweeps) if s == name]
        ys = [d for d, s in zip(diffs, sweeps) if s == name]
        ax.scatter(xs, ys, label=name, alpha=0.8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel(f"{base}: steps where every group had one outcome (%)")
    ax.set_ylabel(f"{diff_name} (points)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweeps", nargs="+", type=Path)
    ap.add_argument("--base", default="grpo")
    ap.add_argument("--arm", default="grpo_epo")
    ap.add_argument("--step", type=int, default=30)
    ap.add_argument("--screening", type=Path)
    ap.add_argument("--plot", type=Path, help="scatter of the difference against the uniform-step fraction")
    args = ap.parse_args()
    diffs, fracs, seeds, sweeps = [], [], [], []
    for sweep in args.sweeps:
        for base_run in sorted(p for p in (sweep / args.base).glob("seed*") if p.is_dir()):
            arm_run = sweep / args.arm / base_run.name
            try:
                (wb, n), (wa, _) = wins(base_run, args.step), wins(arm_run, args.step)
            except FileNotFoundError:
                print(f"{sweep.name}/{base_run.name}: not finished, pair dropped")
                continue
            f = uniform_fraction(base_run)
            diffs.append(100 * (wa - wb) / n)
            fracs.append(f)
            seeds.append(int(base_run.name.removeprefix("seed")))
            sweeps.append(sweep.name)
            print(
                f"{sweep.name}/{base_run.name}: {args.base} {wb}/{n}, {args.arm} {wa}/{n}, "
                f"diff {diffs[-1]:+.1f} points, {args.base} uniform steps {100 * f:.0f}%"
            )
    k = len(diffs)
    cmp = paired(dict(enumerate(diffs)), dict.fromkeys(range(k), 0.0))  # epo report's paired t and sign-flip
    t_p_greater = float(stats.ttest_1samp(diffs, 0.0, alternative="greater").pvalue)  # Experiment 8's H20
    print(
        f"{args.arm} - {args.base}, step {args.step}, {k} pairs: {cmp.diff:+.1f} points "
        f"[{cmp.ci_low:+.1f}, {cmp.ci_high:+.1f}], t-test p = {fmt_p(cmp.p_t, '.2g')} (one-sided, > 0: {t_p_greater:.2g}), "
        f"sign-flip p = {cmp.p_perm:.2g}"
    )
    rho, p = spearman_p(fracs, diffs)
    print(f"H19: Spearman rho({args.base} uniform-step fraction, difference) = {rho:+.2f}, one-sided p = {p:.3g}")

    if args.plot:
        scatter(args.plot, fracs, diffs, sweeps, f"{args.arm} - {args.base}, step-{args.step} eval", args.base)
    if args.screening:
        expected = expected_uniform(args.screening)
        pred = [expected[s] for s in seeds]
        print("H19b predictor per pair: " + ", ".join(f"seed{s} {p:.2f}" for s, p in zip(seeds, pred)))
        rho, p = spearman_p(pred, diffs)
        print(f"H19b: Spearman rho(expected one-outcome group share, difference) = {rho:+.2f}, one-sided p = {p:.3g}")


if __name__ == "__main__":
    main()
