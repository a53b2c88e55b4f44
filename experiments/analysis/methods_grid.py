"""Experiment 10's grid (docs/RESULTS.md): every method of a sweep, on its whole seeds only (the seeds where every
method's run reached every eval). Prints a Markdown table of each method's pooled iid success per eval step (Wilson
95% intervals) and its RL gain (last eval - step 0, t interval over seeds); each method against the baseline, paired
over seeds, at the last step, in Succ.* (each run's best eval), Succ. (the mean of its evals at --succ-steps) and RL
gain; the --pair A:B contrasts the same way; the collapsed runs per method (an eval after step 0 at 0% success with
over 90% invalid actions); and each seed's curves. --median NAME:STEP adds, per method, the median over seeds of
each run's median of the logged metric NAME over RL steps >= STEP (Experiment 11's manipulation check:
critic/explained_var:19).

    python experiments/analysis/methods_grid.py SWEEP_DIR [--base grpo] [--steps 0 15 30 45 60]
        [--succ-steps 30 45 60] [--pair A:B ...] [--median critic/explained_var:19] [--csv OUT.csv]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from late_phase import line, pct, success  # noqa: E402  (the sibling script's helpers)

from epo.rollout.evaluate import wilson_interval  # noqa: E402
from epo.sweep.stats import paired  # noqa: E402

COLLAPSE_INVALID = 0.9  # an eval with no win and more invalid actions than this: the policy no longer acts

Evals = dict[int, dict[str, list[tuple[int, int]]]]  # seed -> method -> [(wins, episodes) per eval step]


def whole_seeds(sweep: Path, methods: list[str], steps: list[int]) -> Evals:
    """The seeds whose every method's run has every eval, with those evals."""
    seeds = sorted({int(p.name.removeprefix("seed")) for m in methods for p in (sweep / m).glob("seed*") if p.is_dir()})
    out = {}
    for seed in seeds:
        evals = {m: [success(sweep / m / f"seed{seed}", s) for s in steps] for m in methods}
        if all(e is not None for per_method in evals.values() for e in per_method):
            out[seed] = evals
    return out


def collapsed(run: Path, steps: list[int]) -> bool:
    for step in steps[1:]:
        saved = json.loads((run / "eval" / f"step_{step:06d}_iid.json").read_text())
        if saved["success"] == 0 and saved.get("invalid_rate", 0.0) > COLLAPSE_INVALID:
            return True
    return False


def run_median(run: Path, name: str, from_step: int) -> float | None:
    """The median of metric `name` over the run's RL steps >= from_step (None: never logged there)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    values = [r[name] for r in rows if r.get("step", -1) >= from_step and isinstance(r.get(name), (int, float))]
    return float(np.median(values)) if values else None


def medians(sweep: Path, evals: Evals, methods: list[str], name: str, from_step: int) -> list[str]:
    out = [f"Median of {name} over steps >= {from_step}: per method, the median over seeds of each run's median"]
    for m in methods:
        per_run = {s: run_median(sweep / m / f"seed{s}", name, from_step) for s in sorted(evals)}
        logged = [v for v in per_run.values() if v is not None]
        runs = ", ".join("-" if v is None else f"{v:.3g}" for v in per_run.values())
        out.append(f"{m}: {np.median(logged):.3g} (runs: {runs})" if logged else f"{m}: not logged")
    return out


def outcomes(evals: Evals, method: str, steps: list[int], succ_steps: list[int]) -> dict[str, dict[int, float]]:
    """Per outcome, {seed: percent}: the last eval, Succ.* (best eval), Succ. (mean at succ_steps), RL gain."""
    curves = {s: [pct(e) for e in evals[s][method]] for s in evals}
    idx = [steps.index(s) for s in succ_steps]
    return {
        f"step {steps[-1]}": {s: c[-1] for s, c in curves.items()},
        "Succ.*": {s: max(c) for s, c in curves.items()},
        "Succ.": {s: sum(c[i] for i in idx) / len(idx) for s, c in curves.items()},
        "RL gain": {s: c[-1] - c[0] for s, c in curves.items()},
    }


def table(evals: Evals, methods: list[str], steps: list[int], n_collapsed: dict[str, int]) -> list[str]:
    head = [f"step {s}" for s in steps]
    rows = [f"| method | {' | '.join(head)} | RL gain (points) | collapsed runs |", "|---" * (len(steps) + 3) + "|"]
    for m in methods:
        cells = []
        for i in range(len(steps)):
            w, n = sum(evals[s][m][i][0] for s in evals), sum(evals[s][m][i][1] for s in evals)
            lo, hi = wilson_interval(w, n)
            cells.append(f"{100 * w / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]")
        gain = paired({s: pct(evals[s][m][-1]) for s in evals}, {s: pct(evals[s][m][0]) for s in evals})
        g = "-" if gain is None else f"{gain.diff:+.1f} [{gain.ci_low:+.1f}, {gain.ci_high:+.1f}]"
        rows.append(f"| {m} | {' | '.join(cells)} | {g} | {n_collapsed[m]}/{len(evals)} |")
    return rows


def contrast(evals: Evals, a: str, b: str, steps: list[int], succ_steps: list[int]) -> list[str]:
    oa, ob = outcomes(evals, a, steps, succ_steps), outcomes(evals, b, steps, succ_steps)
    return [line(f"{a} - {b}, {k}", paired(oa[k], ob[k])) for k in oa]


def write_csv(path: Path, evals: Evals, methods: list[str], steps: list[int], sweep: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seed", "method", *[f"wins_step{s}" for s in steps], "episodes", "collapsed"])
        for s in sorted(evals):
            for m in methods:
                row = [e[0] for e in evals[s][m]]
                w.writerow([s, m, *row, evals[s][m][0][1], int(collapsed(sweep / m / f"seed{s}", steps))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--base", help="the baseline method (default: the grid's `baseline`)")
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 15, 30, 45, 60])
    ap.add_argument("--succ-steps", type=int, nargs="+", default=[30, 45, 60], help="the evals Succ. averages")
    ap.add_argument("--pair", action="append", default=[], metavar="A:B", help="a contrast A - B beyond the baseline")
    ap.add_argument("--median", metavar="NAME:STEP", help="median of a logged metric over steps >= STEP, per method")
    ap.add_argument("--csv", type=Path, help="per seed and method: wins at each eval step, collapsed or not")
    args = ap.parse_args()
    grid = yaml.safe_load((args.sweep / "sweep.yaml").read_text())
    methods, base, steps = list(grid["methods"]), args.base or grid.get("baseline"), args.steps
    pairs = [tuple(p.split(":")) for p in args.pair]
    unknown = sorted({m for p in pairs for m in p} - set(methods) | ({base} - set(methods)))
    if unknown or any(len(p) != 2 for p in pairs) or not set(args.succ_steps) <= set(steps):
        raise SystemExit(f"unknown methods {unknown}, a --pair that is not A:B, or --succ-steps outside --steps")
    evals = whole_seeds(args.sweep, methods, steps)
    print(f"{len(evals)} whole seeds (every method at every eval): {sorted(evals)}")
    if len(evals) < 2:
        return
    n_collapsed = {m: sum(collapsed(args.sweep / m / f"seed{s}", steps) for s in evals) for m in methods}
    print("\n".join(["", *table(evals, methods, steps, n_collapsed), ""]))
    print(f"Each method - {base}, paired over seeds (points; Succ. = mean of the evals at steps {args.succ_steps}):")
    for m in (m for m in methods if m != base):
        print("\n".join(contrast(evals, m, base, steps, args.succ_steps)))
    for a, b in pairs:
        print("\n".join(contrast(evals, a, b, steps, args.succ_steps)))
    if args.median:
        name, _, from_step = args.median.rpartition(":")
        print("\n" + "\n".join(medians(args.sweep, evals, methods, name, int(from_step))))
    print("\nPer seed, iid success (%) at each eval step:")
    for s in sorted(evals):
        print(f"seed {s}: " + ", ".join(f"{m} {' '.join(f'{pct(e):.0f}' for e in evals[s][m])}" for m in methods))
    if args.csv:
        write_csv(args.csv, evals, methods, steps, args.sweep)
        print(f"csv: {args.csv}")


if __name__ == "__main__":
    main()
