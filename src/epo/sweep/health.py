"""What `epo report SWEEP_DIR` says about the runs' health, per method: monitor warnings (runs per kind), collapsed
runs, env faults and damaged metrics lines. A sweep's means hide a run that collapsed or whose env kept crashing;
this section names them next to the numbers they are part of. Each run's own `epo report RUN_DIR` has the details.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from epo.report.data import RunData
from epo.report.health import FAULT_METRICS, fault_totals

COLLAPSE_INVALID = 0.9
"""A policy that had won an eval episode and then wins none with more than this share of invalid actions no longer
acts (Experiment 10's PPO runs, docs/RESULTS.md). A policy that never won (a random one) has not collapsed."""


def collapsed(run: RunData, splits: list[str]) -> bool:
    """Whether an eval won nothing with over 90% invalid actions after an earlier eval of the split won something."""
    for split in splits:
        steps, success = run.series(f"eval/{split}/success")
        invalid = dict(zip(*run.series(f"eval/{split}/invalid_rate"), strict=True))
        won_before = False
        for step, s in zip(steps, success, strict=True):
            if won_before and s == 0 and invalid.get(step, 0.0) > COLLAPSE_INVALID:
                return True
            won_before = won_before or s > 0
    return False


def method_health(runs: dict[str, dict[int, RunData]], splits: list[str]) -> dict[str, dict[str, Any]]:
    """{method: {runs, warnings: {kind: runs with it}, collapsed: [seeds], env_faults: {name: episodes},
    retried_steps, damaged: [seeds with torn or duplicate metrics lines]}} over the finished runs."""
    out = {}
    for method, by_seed in runs.items():
        kinds = Counter(kind for run in by_seed.values() for kind in {str(w.get("kind")) for w in run.warnings})
        totals = [fault_totals(run.records) for run in by_seed.values()]
        out[method] = {
            "runs": len(by_seed),
            "warnings": dict(sorted(kinds.items())),
            "collapsed": [seed for seed, run in sorted(by_seed.items()) if collapsed(run, splits)],
            "env_faults": {name: int(sum(t[key] for t in totals)) for key, name in FAULT_METRICS},
            "warm_start_faults": sum(bool(f.get("warm_start")) for run in by_seed.values() for f in run.faults),
            "retried_steps": int(sum(t["rollout/batch_retries"] for t in totals)),
            "damaged": [seed for seed, run in sorted(by_seed.items()) if run.issues],
        }
    return out


def render(health: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown: one row per method; '-' where nothing happened."""
    kinds = sorted({k for h in health.values() for k in h["warnings"]})
    faults = [name for _, name in FAULT_METRICS]
    lines = [
        "## Health: monitor warnings, collapses and env faults",
        "",
        "Monitor warnings: runs with at least one warning of that kind (each run's warnings.jsonl; `epo report "
        f"RUN_DIR` lists them). Collapsed: runs with an eval that won nothing with over {COLLAPSE_INVALID:.0%} "
        "invalid actions after an earlier eval won something. Env faults: episodes ended by a worker crash, hang or "
        "env exception, summed over the method's runs; warm start: fault records of the runs' own warm starts "
        "(RUN/sft/faults.jsonl: oracle and evals). Damaged: runs whose metrics.jsonl has torn or duplicate lines.",
        "",
        "| method | runs | " + " | ".join(f"`{k}`" for k in kinds) + (" | " if kinds else "")
        + "collapsed | " + " | ".join(faults) + " | warm start | retried steps | damaged |",
        "|---" * (len(kinds) + len(faults) + 6) + "|",
    ]  # fmt: skip
    for method, h in health.items():
        cells = [str(h["warnings"].get(k, "-")) for k in kinds]
        cells.append(_seeds(h["collapsed"]))
        cells += [str(h["env_faults"][name] or "-") for name in faults]
        cells += [str(h.get("warm_start_faults") or "-"), str(h["retried_steps"] or "-"), _seeds(h["damaged"])]
        lines.append(f"| {method} | {h['runs']} | " + " | ".join(cells) + " |")
    return lines + [""]


def alerts(health: dict[str, dict[str, Any]]) -> list[str]:
    """One console line per method with collapsed runs, env faults or damaged metrics (monitor warnings were printed
    by the runs themselves; the report's table counts them)."""
    lines = []
    for method, h in health.items():
        said = [f"{len(h['collapsed'])} collapsed run(s) ({_seed_list(h['collapsed'])})"] if h["collapsed"] else []
        faults = ", ".join(f"{n} {name}" for name, n in h["env_faults"].items() if n)
        said += [f"env faults: {faults} episode(s)"] if faults else []
        warm = h.get("warm_start_faults", 0)
        said += [f"{warm} env fault(s) in the runs' warm starts (RUN/sft/faults.jsonl)"] if warm else []
        said += [f"damaged metrics in {_seed_list(h['damaged'])}"] if h["damaged"] else []
        if said:
            lines.append(f"{method}: " + "; ".join(said))
    return lines


def _seed_list(seeds: list[int]) -> str:
    return ", ".join(f"seed {s}" for s in seeds)


def _seeds(seeds: list[int]) -> str:
    return f"{len(seeds)} ({_seed_list(seeds)})" if seeds else "-"
