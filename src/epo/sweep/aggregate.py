"""`epo report SWEEP_DIR`: per-method statistics over seeds, paired tests against the baseline, figures.

Per seed (one run): Succ.* (best eval) and Succ. (mean of the last evals) per split, as `epo report` defines them;
the RL gain (last eval - first eval, the start-of-RL eval at step 0); the variance of the batch-mean entropy across
RL steps; the mean band-violation fractions (epo/frac_below, epo/frac_above; EPO runs only); the fraction of steps
whose groups all had one outcome (no outcome signal for GRPO). Per method: mean ± std
and a 95% t-interval over seeds. Each method against the baseline: paired over shared seeds (`stats.paired`).
Per method, the runs' health (health.py): monitor warnings, collapsed runs, env faults. Runs that are not done are
listed with their state (failed, interrupted, or stopped by its monitor, with the exit code), not averaged.
Writes SWEEP_DIR/report/: summary.md, results.json, per_seed.csv, per_task.csv (pooled.py) and PNG figures.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from epo.config import list_presets
from epo.errors import RunDirError
from epo.report.data import RunData, load_run
from epo.report.summary import run_summary
from epo.sweep import health, plots, pooled
from epo.sweep.grid import GRID_FILE
from epo.sweep.runner import read_status
from epo.sweep.stats import fmt_p, paired, summarize
from epo.telemetry.provenance import machine_label

SEED_METRICS_DOC = {
    "succ_max": "Succ.*: best eval success of the seed",
    "succ_converged": "Succ.: mean of the seed's last evals",
    "succ_last": "the seed's last eval (end of RL)",
    "rl_gain": "last eval - first (start-of-RL) eval",
    "score_last": "the seed's last eval's mean progress score, 0-100 (envs that keep one: ScienceWorld)",
    "entropy_var": "variance of the batch-mean entropy across RL steps",
    "entropy_mean": "mean entropy over RL steps",
    "frac_below": "mean fraction of tokens below the EPO band",
    "frac_above": "mean fraction of tokens above the EPO band",
    "train_success": "rollout success, last 5 steps",
    "uniform_steps": "fraction of RL steps whose groups all had one outcome (all won or all lost): GRPO's outcome "
    "advantage is 0 for the whole step, so only entropy terms (EPO, entropy bonus) give that step a gradient",
    "filter_rounds": "mean collections per RL step (dynamic sampling, rollout.filter_groups; 1 = no refill)",
}


UNFINISHED_STATES = {"failed": "failed", "interrupted": "interrupted", "stopped": "stopped by its monitor"}
"""status.json states of runs that ended without finishing, as the report names them."""


def load_sweep(sweep_dir: Path) -> tuple[dict, dict[str, dict[int, RunData]]]:
    """(grid dict, {method: {seed: RunData}}) of the finished runs (status.json: done). A run that stopped early or
    is still going has fewer evals and a different "last eval"; it is listed in grid["unfinished"], not averaged."""
    grid = yaml.safe_load((sweep_dir / GRID_FILE).read_text())
    status = read_status(sweep_dir)
    runs: dict[str, dict[int, RunData]] = {}
    grid["unfinished"] = []
    for method in grid["methods"]:
        for seed in grid["seeds"]:
            path, run_id = sweep_dir / method / f"seed{seed}", f"{method}/seed{seed}"
            entry = status.get(run_id, {})
            if not (path / "metrics.jsonl").is_file():
                if entry.get("state") in UNFINISHED_STATES:  # stopped before its first step: still listed
                    grid["unfinished"].append(f"{run_id} ({_unfinished_state(entry)}, no step logged)")
                continue
            if entry.get("state") == "done":
                runs.setdefault(method, {})[seed] = load_run(path, run_id)
            else:
                grid["unfinished"].append(f"{run_id} ({_unfinished_state(entry)})")
    return grid, runs


def _unfinished_state(entry: dict) -> str:
    """How a run that is not done stands: failed, interrupted or stopped by its monitor (with the exit code), or
    running/never recorded."""
    state = entry.get("state")
    if state in UNFINISHED_STATES:
        return f"{UNFINISHED_STATES[state]}, exit {entry.get('exit_code')}"
    return "running, or stopped before its exit was recorded"


def seed_numbers(run: RunData, splits: list[str]) -> dict[str, float | None]:
    """The per-seed numbers aggregated over seeds (keys: '<split>/succ_max', 'entropy_var', ...)."""
    row = run_summary(run, splits)
    out: dict[str, float | None] = {k: row.get(k) for k in row if "/" in k}
    for split in splits:
        _, values = run.series(f"eval/{split}/success")
        out[f"{split}/succ_last"] = float(values[-1]) if len(values) else None
        out[f"{split}/rl_gain"] = float(values[-1] - values[0]) if len(values) >= 2 else None
        _, scores = run.series(f"eval/{split}/score_mean")
        if len(scores):  # only envs with a progress score: no empty column elsewhere
            out[f"{split}/score_last"] = float(scores[-1])
    _, entropy = run.series("epo/entropy_mean")
    out["entropy_mean"] = float(entropy.mean()) if len(entropy) else None
    out["entropy_var"] = float(entropy.var()) if len(entropy) >= 2 else None
    for key in ("frac_below", "frac_above"):
        _, v = run.series(f"epo/{key}")
        out[key] = float(v.mean()) if len(v) else None
    out["train_success"] = row.get("train_success")
    out["uniform_steps"] = _uniform_steps(run)
    _, rounds = run.series("rollout/filter_rounds")
    out["filter_rounds"] = float(rounds.mean()) if len(rounds) else None
    return out


def _uniform_steps(run: RunData) -> float | None:
    """Fraction of the steps logging both group metrics where all_lost + all_won covers every group."""
    lost = dict(zip(*run.series("rollout/groups_all_lost"), strict=True))
    won = dict(zip(*run.series("rollout/groups_all_won"), strict=True))
    steps = sorted(set(lost) & set(won))
    return sum(lost[s] + won[s] >= 1 - 1e-9 for s in steps) / len(steps) if steps else None


def aggregate(sweep_dir: Path) -> dict[str, Any]:
    grid, runs = load_sweep(sweep_dir)
    if not runs:  # one line (RunDirError), saying how the runs stand, instead of a traceback
        unfinished = "; ".join(grid["unfinished"]) or "none started"
        raise RunDirError(f"{sweep_dir}: no report: no run has finished yet ({unfinished})")
    splits = sorted({s for by_seed in runs.values() for r in by_seed.values() for s in r.eval_splits()})
    per_seed = {m: {s: seed_numbers(r, splits) for s, r in by_seed.items()} for m, by_seed in runs.items()}
    metrics = sorted({k for seeds in per_seed.values() for row in seeds.values() for k in row})
    summary = {
        m: {k: _as_dict(summarize([row[k] for row in seeds.values() if row.get(k) is not None])) for k in metrics}
        for m, seeds in per_seed.items()
    }
    tests = {}
    for m, ref in comparisons(grid):
        if m in per_seed and ref in per_seed:
            label = m if ref == grid["baseline"] else f"{m} vs {ref}"
            tests[label] = {k: _as_dict(paired(_by_seed(per_seed[m], k), _by_seed(per_seed[ref], k))) for k in metrics}
    machines = machine_counts(runs)
    return {
        "health": health.method_health(runs, splits),
        "grid": grid,
        "splits": splits,
        "per_seed": per_seed,
        "summary": summary,
        "tests": tests,
        "machines": machines,
        "runs": runs,
    }


def machine_counts(runs: dict[str, dict[int, RunData]]) -> dict[str, list[str]]:
    """{machine label: run ids computed (in part) on it}; "unrecorded" for runs without provenance.jsonl."""
    out: dict[str, list[str]] = {}
    for method, by_seed in runs.items():
        for seed, run in by_seed.items():
            for label in dict.fromkeys(machine_label(p) for p in run.provenance) or ["unrecorded"]:
                out.setdefault(label, []).append(f"{method}/seed{seed}")
    return out


def comparisons(grid: dict) -> list[tuple[str, str]]:
    """The paired comparisons of a saved grid.yaml: each method vs the baseline, then the grid's `compare`."""
    base = grid["baseline"]
    pairs = [(m, base) for m in grid["methods"] if m != base]
    extra = [(m, ref) for m, refs in (grid.get("compare") or {}).items() for ref in refs]
    return pairs + [p for p in extra if p not in pairs]


def write_sweep_report(
    sweep_dir: str | Path, out_dir: str | Path | None = None, on_alert: Callable[[str], None] | None = None
) -> Path:
    """Writes the report; on_alert(line) is called once per method with collapsed runs, env faults or damaged
    metrics (health.alerts), so the console says what the report's health table shows."""
    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir else sweep_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(sweep_dir)
    runs = agg.pop("runs")
    if on_alert:
        for line in health.alerts(agg["health"]):
            on_alert(line)
    (out_dir / "results.json").write_text(json.dumps(agg, indent=1, default=str))
    _write_csv(out_dir / "per_seed.csv", agg["per_seed"])
    figures = plots.write_sweep_figures(runs, agg["splits"], out_dir)
    counts, unreadable = pooled.pooled_counts(runs, agg["splits"])
    pooled.write_csv(out_dir / "per_task.csv", counts)
    path = out_dir / "summary.md"
    path.write_text(render(agg, figures, pooled.render(counts, unreadable)))
    return path


def base_label(base: str) -> str:
    """The grid's base as a reader can use it: sweep.yaml stores an absolute path (grid files name theirs relative to
    themselves), which names one machine's folders. A preset file shows as its preset name, a file under the working
    directory relative to it, any other file by its name."""
    path = Path(base)
    if not path.is_absolute():
        return base
    if path.parent.name == "configs" and path.stem in list_presets():
        return path.stem
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return path.name


def render(agg: dict[str, Any], figures: list[str], pooled_lines: list[str] = ()) -> str:
    grid, splits, summary = agg["grid"], agg["splits"], agg["summary"]
    lines = [
        "# Sweep report",
        "",
        f"Base config `{base_label(grid['base'])}`, common overrides `{' '.join(grid['overrides']) or '-'}`, "
        f"seeds {grid['seeds']}, baseline `{grid['baseline']}`.",
        "",
        f"Not aggregated (started, not finished): {', '.join(grid['unfinished']) or 'none'}.",
        "",
        *_machines_lines(agg.get("machines", {})),
        "## Success (the paper's form): mean ± std over seeds, in %",
        "",
        "Succ.* = mean over seeds of each seed's best eval; Succ. = mean over seeds of the mean of each seed's last "
        "evals; last = mean over seeds of each seed's final eval. n = seeds with data.",
        "",
    ]
    cols = [f"{s} Succ.*" for s in splits] + [f"{s} Succ." for s in splits] + [f"{s} last" for s in splits]
    lines += ["| method | n | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for m, row in summary.items():
        cells = [_pm(row.get(f"{s}/succ_max"), 100) for s in splits]
        cells += [_pm(row.get(f"{s}/succ_converged"), 100) for s in splits]
        cells += [_pm(row.get(f"{s}/succ_last"), 100) for s in splits]
        n = max((v["n"] for v in row.values() if v), default=0)
        lines.append(f"| {m} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "## Entropy, RL gain and signal: mean [95% t-interval] over seeds", ""]
    lines += ["uniform_steps: " + SEED_METRICS_DOC["uniform_steps"] + ".", ""]
    scores = [f"{s}/score_last" for s in splits if any(row.get(f"{s}/score_last") for row in summary.values())]
    keys = [f"{s}/rl_gain" for s in splits] + scores + ["entropy_mean", "entropy_var", "frac_below", "frac_above"]
    keys += ["uniform_steps"] + (["filter_rounds"] if any(row.get("filter_rounds") for row in summary.values()) else [])
    lines += ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for m, row in summary.items():
        lines.append(f"| {m} | " + " | ".join(_ci(row.get(k)) for k in keys) + " |")
    lines += [
        "",
        f"## Against the baseline `{grid['baseline']}` (and the grid's `compare` pairs, named `method vs reference`)",
        "",
        "Difference method - reference, mean [95% t-interval]; p: two-sided paired t-test over shared seeds "
        "(Welch's t-test where no seeds are shared) and sign-flip permutation test (paired only; exact up to 20 seeds, "
        "where its smallest possible p is 2/2^n, else 200,000 seeded random sign assignments).",
        "",
    ]
    keys = [f"{s}/{k}" for k in ("succ_max", "succ_converged", "succ_last") for s in splits]
    keys += [*scores, "entropy_var", "uniform_steps"]
    lines += ["| method | metric | n | test | diff [95% CI] | p (t) | p (perm) |", "|---|---|---|---|---|---|---|"]
    for m, by_key in agg["tests"].items():
        for k in keys:
            c = by_key.get(k)
            if c:
                perm = "-" if c["p_perm"] is None else f"{c['p_perm']:.3f}"
                lines.append(
                    f"| {m} | {k} | {c['n']} | {c['test']} | {c['diff']:+.4g} [{c['ci_low']:+.4g}, "
                    f"{c['ci_high']:+.4g}] | {fmt_p(c['p_t'])} | {perm} |"
                )
    lines += ["", *health.render(agg.get("health", {})), *pooled_lines]
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures]
    lines += ["", "Per-seed numbers: per_seed.csv; per task and eval step: per_task.csv; the rest: results.json.", ""]
    return "\n".join(lines)


def _machines_lines(machines: dict[str, list[str]]) -> list[str]:
    """Where the runs were computed (provenance.jsonl); a warning when they were not all computed alike."""
    said = "; ".join(f"{label} ({len(ids)} runs)" for label, ids in machines.items())
    lines = [f"Computed on: {said or 'no runs'}.", ""]
    if len(machines) > 1:
        lines += [
            "**The runs were not all computed alike** (machine, precision or torch; runs per label in "
            "results.json `machines`): numbers from different kernels differ beyond seed noise.",
            "",
        ]
    return lines


def _by_seed(seeds: dict[int, dict], key: str) -> dict[int, float]:
    return {s: row[key] for s, row in seeds.items() if row.get(key) is not None}


def _as_dict(obj) -> dict | None:
    return None if obj is None else obj.as_dict()


def _pm(s: dict | None, scale: float = 1.0) -> str:
    return "-" if not s else f"{scale * s['mean']:.1f} ± {scale * s['std']:.1f}"


def _ci(s: dict | None) -> str:
    return "-" if not s else f"{s['mean']:.4g} [{s['ci_low']:.4g}, {s['ci_high']:.4g}]"


def _write_csv(path: Path, per_seed: dict[str, dict[int, dict]]) -> None:
    keys = sorted({k for seeds in per_seed.values() for row in seeds.values() for k in row})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", *keys])
        for m, seeds in per_seed.items():
            for s, row in sorted(seeds.items()):
                w.writerow([m, s, *("" if row.get(k) is None else f"{row[k]:.6g}" for k in keys)])
