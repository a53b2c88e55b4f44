"""Experiment 9's questions (docs/RESULTS.md): per finished (game set, seed) pair of a 60-step sweep, each method's eval
wins at every eval step; then Q1, GRPO's pooled success per eval step (Wilson interval) and its per-set change
from step 45 to 60 (t interval over sets), and Q2, EPO - GRPO at the last step and in the change from step 30 to 60
(paired t interval, sign-flip p). Only pairs whose two runs both reached the last eval count.

    python experiments/analysis/late_phase.py SWEEP_DIR [--base grpo] [--arm grpo_epo] [--steps 0 15 30 45 60]
        [--csv OUT.csv]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from epo.rollout.evaluate import wilson_interval
from epo.sweep.stats import fmt_p, paired


def success(run: Path, step: int) -> tuple[int, int] | None:
    path = run / "eval" / f"step_{step:06d}_iid.json"
    if not path.is_file():
        return None
    wins = json.loads(path.read_text())["episode_wins"]
    return sum(wins), len(wins)


def finished_pairs(sweep: Path, base: str, arm: str, steps: list[int]) -> dict[int, dict[str, list[tuple[int, int]]]]:
    """seed -> {method: [(wins, episodes) per step]} for the pairs whose two runs have every eval."""
    out = {}
    for base_run in sorted(p for p in (sweep / base).glob("seed*") if p.is_dir()):
        runs = {base: base_run, arm: sweep / arm / base_run.name}
        evals = {m: [success(r, s) for s in steps] for m, r in runs.items()}
        if all(e is not None for per_method in evals.values() for e in per_method):
            out[int(base_run.name.removeprefix("seed"))] = evals
    return out


def pct(wins_episodes: tuple[int, int]) -> float:
    return 100 * wins_episodes[0] / wins_episodes[1]


def line(name: str, cmp) -> str:
    if cmp is None:
        return f"{name}: fewer than 2 pairs"
    p_perm = "" if cmp.p_perm is None else f", sign-flip p = {cmp.p_perm:.3f}"
    return (
        f"{name}: {cmp.diff:+.1f} points [{cmp.ci_low:+.1f}, {cmp.ci_high:+.1f}] over {cmp.n} pairs, "
        f"t p = {fmt_p(cmp.p_t)}{p_perm}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--base", default="grpo")
    ap.add_argument("--arm", default="grpo_epo")
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 15, 30, 45, 60])
    ap.add_argument("--csv", type=Path, help="per pair and step: wins of each method")
    args = ap.parse_args()
    steps, base, arm = args.steps, args.base, args.arm
    pairs = finished_pairs(args.sweep, base, arm, steps)
    print(f"{len(pairs)} finished pairs: seeds {sorted(pairs)}")
    if not pairs:
        return
    for method in (base, arm):
        cells = []
        for i, step in enumerate(steps):
            w = sum(pairs[s][method][i][0] for s in pairs)
            n = sum(pairs[s][method][i][1] for s in pairs)
            lo, hi = wilson_interval(w, n)
            cells.append(f"step {step}: {w}/{n} = {100 * w / n:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}]")
        print(f"{method} pooled: " + "; ".join(cells))

    def at(method: str, step: int) -> dict[int, float]:
        i = steps.index(step)
        return {s: pct(pairs[s][method][i]) for s in pairs}

    last, mid, late = steps[-1], steps[len(steps) // 2], steps[-2]
    print(line(f"Q1 {base} change step {late} -> {last}", paired(at(base, last), at(base, late))))
    print(line(f"   {base} change step {mid} -> {last}", paired(at(base, last), at(base, mid))))
    print(line(f"Q2 {arm} - {base} at step {last}", paired(at(arm, last), at(base, last))))
    gain = {m: {s: at(m, last)[s] - at(m, mid)[s] for s in pairs} for m in (base, arm)}
    print(line(f"   {arm} - {base} in the change step {mid} -> {last}", paired(gain[arm], gain[base])))
    best = {m: {s: max(pct(e) for e in pairs[s][m]) for s in pairs} for m in (base, arm)}
    print(line(f"   {arm} - {base} in each run's best eval (Succ.*)", paired(best[arm], best[base])))
    if args.csv:
        with args.csv.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["seed", "method", *[f"wins_step{s}" for s in steps], "episodes"])
            for s in sorted(pairs):
                for m in (base, arm):
                    w.writerow([s, m, *[e[0] for e in pairs[s][m]], pairs[s][m][0][1]])
        print(f"csv: {args.csv}")
    for s in sorted(pairs):
        print(f"seed {s}: " + ", ".join(f"{m} {' '.join(f'{pct(e):.0f}' for e in pairs[s][m])}%" for m in (base, arm)))


if __name__ == "__main__":
    main()
