"""Experiment 12's estimates (docs/RESULTS.md): with few seeds, pair eval episodes game by game. Each run's evals at
steps A and B draw the same games (the eval ids depend only on the seed), and two methods' runs of one seed draw the
same games too, so every (seed, game) is a pair.

    python experiments/analysis/game_pairs.py SWEEP_DIR [--base grpo] [--arm grpo_epo] [--start 0] [--end 12]
        [--split iid] [--csv OUT.csv]

Prints, per run, success at both evals (Wilson 95%), the run's entropy mean, its variance over steps and its share of
gradient-free steps (every group all won or all lost); then per method the RL gain (end - start) and the arm - base
difference at the end eval, as paired mean differences over (seed, game) pairs with t intervals and exact sign-flip
p where the pairs are few (epo.sweep.stats.paired). Only seeds where both methods finished are compared.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from epo.rollout.evaluate import wilson_interval
from epo.sweep.stats import fmt_p, paired


def eval_wins(run: Path, step: int, split: str) -> dict[str, list[int]] | None:
    """{game id: [win per episode of that game]} of one saved eval, or None if the run has not reached it."""
    path = run / "eval" / f"step_{step:06d}_{split}.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    out: dict[str, list[int]] = {}
    for task, won in zip(saved["episode_tasks"], saved["episode_wins"], strict=True):
        out.setdefault(task, []).append(int(won))
    return out


def step_metrics(run: Path) -> list[dict]:
    """The RL steps' metric records (an eval-only record has no actor/grad_norm)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if "actor/grad_norm" in r]


def run_summary(run: Path) -> dict[str, float]:
    steps = step_metrics(run)
    ent = np.array([r["epo/entropy_mean"] for r in steps if "epo/entropy_mean" in r])
    no_grad = [r.get("rollout/groups_all_lost", 0) + r.get("rollout/groups_all_won", 0) >= 1 - 1e-9 for r in steps]
    return {
        "steps": len(steps),
        "entropy_mean": float(ent.mean()) if ent.size else float("nan"),
        "entropy_var": float(ent.var(ddof=1)) if ent.size > 1 else float("nan"),
        "gradient_free": sum(no_grad) / len(no_grad) if no_grad else float("nan"),
    }


def pair_values(a: dict[str, list[int]], b: dict[str, list[int]], seed: int) -> tuple[dict, dict]:
    """Per-(seed, game, repeat) wins of two evals over the games both drew, keyed alike for stats.paired."""
    va, vb = {}, {}
    for game in sorted(set(a) & set(b)):
        for i, (x, y) in enumerate(zip(a[game], b[game], strict=False)):
            key = (seed, game, i)
            va[key], vb[key] = float(x), float(y)
    return va, vb


def fmt_success(wins: dict[str, list[int]] | None) -> str:
    if wins is None:
        return "-"
    w = [x for v in wins.values() for x in v]
    lo, hi = wilson_interval(sum(w), len(w))
    return f"{sum(w)}/{len(w)} = {100 * sum(w) / len(w):.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def fmt_cmp(c) -> str:
    if c is None:
        return "-"
    return (
        f"{100 * c.diff:+.1f} points [{100 * c.ci_low:+.1f}, {100 * c.ci_high:+.1f}], n = {c.n} pairs, "
        f"t p = {fmt_p(c.p_t)}, sign-flip p = {fmt_p(c.p_perm)}"
    )


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
            f"{summ['steps']} steps, entropy mean {summ['entropy_mean']:.4f}, var over steps "
            f"{summ['entropy_var']:.2e}, gradient-free steps {100 * summ['gradient_free']:.0f}%"
        )
        for step, wins in ((args.start, start), (args.end, end)):
            rows[-1][f"wins_step{step}"] = sum(sum(v) for v in wins.values()) if wins else None
            rows[-1][f"episodes_step{step}"] = sum(len(v) for v in wins.values()) if wins else None
    for method in (args.base, args.arm):
        gain_end, gain_start = {}, {}
        for (m, seed), (start, end) in evals.items():
            if m == method and start and end:
                e, s = pair_values(end, start, seed)
                gain_end.update(e)
                gain_start.update(s)
        print(f"RL gain, {method} (step {args.end} - step {args.start}): {fmt_cmp(paired(gain_end, gain_start))}")
    arm_end, base_end = {}, {}
    for (m, seed), (_, end) in evals.items():
        other = evals.get((args.base, seed), (None, None))[1]
        if m == args.arm and end and other:
            a, b = pair_values(end, other, seed)
            arm_end.update(a)
            base_end.update(b)
    print(f"{args.arm} - {args.base} at step {args.end}: {fmt_cmp(paired(arm_end, base_end))}")
    if args.csv:
        with args.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
