"""`epo report RUN_DIR [RUN_DIR ...]`: PNG figures + a Markdown table comparing runs.

Definitions used in the table (success rates shown in %):
  * Succ.* of a split = the best eval success over all eval steps of the run (the paper's per-seed max).
  * Succ.  of a split = mean eval success over the last N evals, "after convergence", with
    N = max(CONVERGED_MIN_EVALS, ceil(CONVERGED_FRACTION × number of evals)), capped at the number of evals
    (e.g. 30 evals -> last 6; 5 evals -> last 3; 2 evals -> both).
  * train succ. = mean rollout success over the last FINAL_TRAIN_STEPS logged steps.
  * mean H = mean of epo/entropy_mean over all steps; Var(H) = the last logged epo/entropy_var_steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from epo.report.data import RunData, load_runs
from epo.report.health import faults_section, issues_section
from epo.report.plots import write_all
from epo.telemetry.provenance import machine_label

CONVERGED_FRACTION = 0.2
CONVERGED_MIN_EVALS = 3
FINAL_TRAIN_STEPS = 5
SUMMARY_FILE = "summary.md"
KEY_SETTINGS = ("algo.name", "epo.mode", "env.name", "model.path", "train.total_steps", "train.seed")
IGNORED_CONFIG_KEYS = ("train.run_name", "train.output_dir")


def write_report(run_dirs: list[Path], out_dir: Path, on_issue: Callable[[str], None] | None = None) -> Path:
    """Write the figures and summary.md into out_dir; returns the path of summary.md.

    on_issue(line) is called once per data problem (torn metrics lines, duplicate steps), e.g. to print it."""
    runs = load_runs([Path(p) for p in run_dirs])
    for run in runs:
        for issue in run.issues:
            if on_issue is not None:
                on_issue(issue)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = sorted({s for run in runs for s in run.eval_splits()})
    figures, skipped = write_all(runs, splits, out_dir)
    text = render_summary(runs, splits, figures, skipped)
    path = out_dir / SUMMARY_FILE
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- numbers


def converged_count(n_evals: int) -> int:
    """How many of the last evals the 'after convergence' mean (Succ.) uses."""
    return min(n_evals, max(CONVERGED_MIN_EVALS, math.ceil(CONVERGED_FRACTION * n_evals)))


def run_summary(run: RunData, splits: list[str]) -> dict[str, Any]:
    """Numbers of one table row (floats in [0, 1] for success; None when not logged)."""
    row: dict[str, Any] = {"steps": int(run.records[-1]["step"]) if run.records else None}
    for split in splits:
        _, values = run.series(f"eval/{split}/success")
        n = converged_count(len(values))
        row[f"{split}/succ_max"] = float(values.max()) if len(values) else None
        row[f"{split}/succ_converged"] = float(values[-n:].mean()) if len(values) else None
    _, train = run.series("rollout/success_rate")
    row["train_success"] = float(train[-FINAL_TRAIN_STEPS:].mean()) if len(train) else None
    _, entropy = run.series("epo/entropy_mean")
    row["entropy_mean"] = float(entropy.mean()) if len(entropy) else None
    _, var = run.series("epo/entropy_var_steps")
    row["entropy_var_final"] = float(var[-1]) if len(var) else None
    return row


def warnings_text(run: RunData) -> str:
    """e.g. 'early_collapse@12, late_climb@80 (+1)': first step of each kind, and how many more."""
    by_kind: dict[str, list[int]] = {}
    for w in run.warnings:
        by_kind.setdefault(str(w.get("kind")), []).append(int(w.get("step", -1)))
    parts = [f"{k}@{min(s)}" + (f" (+{len(s) - 1})" if len(s) > 1 else "") for k, s in by_kind.items()]
    return ", ".join(parts) if parts else "none"


def config_differences(runs: list[RunData]) -> dict[str, list[Any]]:
    """key -> values per run, for keys whose values differ between runs (missing counts as a value)."""
    keys = sorted({k for run in runs for k in run.config} - set(IGNORED_CONFIG_KEYS))
    diffs = {}
    for key in keys:
        values = [run.config.get(key, "(missing)") for run in runs]
        if len({repr(v) for v in values}) > 1:
            diffs[key] = values
    return diffs


# ----------------------------------------------------------------------------- Markdown


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "—" if x is None else f"{x:{fmt}}"


def _cell(value: Any, width: int = 40) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render_summary(runs: list[RunData], splits: list[str], figures: list[Path], skipped: list[str]) -> str:
    lines = ["# epo report", ""]
    lines += ["## Runs", ""]
    header = ["run", "path", "last step", *KEY_SETTINGS]
    lines += _table(
        header,
        [
            [r.label, _cell(r.path, 60), str(r.records[-1]["step"] if r.records else "—")]
            + [_cell(r.config.get(k, "—")) for k in KEY_SETTINGS]
            for r in runs
        ],
    )
    lines += ["", "## Results", ""]
    lines += [
        f"Success in %. **Succ.\\*** = best eval over all eval steps; **Succ.** = mean of the last N evals "
        f"(N = max({CONVERGED_MIN_EVALS}, ⌈{CONVERGED_FRACTION:g} × evals⌉), at most all evals); "
        f"train succ. = mean rollout success of the last {FINAL_TRAIN_STEPS} steps; mean H = mean policy entropy; "
        "Var(H) = final running variance of the entropy across RL steps.",
        "",
    ]
    header = ["run"] + [f"{s} {m}" for s in splits for m in ("Succ.*", "Succ.")]
    header += ["train succ.", "mean H", "Var(H)", "monitor warnings"]
    rows = []
    for run in runs:
        n = run_summary(run, splits)
        row = [run.label] + [_pct(n[f"{s}/{m}"]) for s in splits for m in ("succ_max", "succ_converged")]
        row += [_pct(n["train_success"]), _num(n["entropy_mean"]), _num(n["entropy_var_final"], ".2e")]
        rows.append(row + [warnings_text(run)])
    lines += _table(header, rows)
    lines += _before_after_section(runs)
    lines += ["", *_config_section(runs), "", *machines_section(runs)]
    lines += ["", *_warnings_section(runs), "", *faults_section(runs), ""]
    lines += [*issues_section(runs), "", "## Figures", ""] if any(r.issues for r in runs) else ["## Figures", ""]
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    if skipped:
        lines += ["", f"Not plotted (no run logged these metrics): {', '.join(skipped)}."]
    return "\n".join(lines) + "\n"


def _before_after_section(runs: list[RunData]) -> list[str]:
    """The pipeline's zero-shot -> start of RL -> end of RL table (runs without before_after.json are left out)."""
    stages = (("zero_shot", "zero-shot"), ("start_of_rl", "start of RL"), ("end_of_rl", "end of RL"))
    rows = []
    for run in runs:
        for split, res in sorted(run.before_after.items()):
            cells = [run.label, split]
            for key, _ in stages:
                r = res.get(key)
                cells.append(_stage_cell(r) if r else "—")
            cells += [_p_cell(res, "rl_gain"), _p_cell(res, "total_gain")]
            rows.append(cells)
    if not rows:
        return []
    head = [
        "",
        "## Before and after training",
        "",
        "Success in % with its 95% Wilson interval; p = one-sided exact test that the later success is higher, "
        "named in each cell: McNemar (paired: both evals ran the same tasks) or Fisher (unpaired). Envs with a "
        "progress score (ScienceWorld) add the mean end-of-episode score (0-100).",
        "",
    ]
    return head + _table(["run", "split", *(name for _, name in stages), "p (RL gain)", "p (total gain)"], rows)


def _stage_cell(r: dict) -> str:
    cell = f"{100 * r['success']:.1f} [{100 * r['ci'][0]:.0f}-{100 * r['ci'][1]:.0f}] n={r['episodes']}"
    return cell if "mean_score" not in r else f"{cell}, score {r['mean_score']:.1f}"  # envs with a progress score


def _p_cell(res: dict, gain: str) -> str:
    """'0.031 (McNemar)'; files written before the test was recorded used Fisher's test."""
    p = res.get(f"p_{gain}")
    return "—" if p is None else f"{_num(p)} ({res.get(f'test_{gain}') or 'Fisher'})"


def _config_section(runs: list[RunData]) -> list[str]:
    lines = ["## Config differences", ""]
    missing = [r.label for r in runs if not r.config]
    if missing:
        lines += [f"No config.yaml in: {', '.join(missing)}.", ""]
    if len(runs) < 2:
        return lines + ["Single run: nothing to compare."]
    diffs = config_differences(runs)
    if not diffs:
        return lines + ["The runs' configs are identical (apart from run name and output dir)."]
    return lines + _table(["key"] + [r.label for r in runs], [[k] + [_cell(v) for v in vs] for k, vs in diffs.items()])


def machines_section(runs: list[RunData]) -> list[str]:
    """Where each stretch of each run was computed (provenance.jsonl: one row per start and resume)."""
    lines = ["## Machines", ""]
    rows = [
        [
            r.label,
            str(p.get("phase", "rl")) + ("" if p.get("from_step") is None else f" from step {p['from_step']}"),
            _cell(machine_label(p), 80),
            _cell(p.get("precision_reason", "—"), 60),
            f"{p.get('epo', '—')} ({_code(p)})",
            f"{p.get('threads', '—')} × {p.get('world_size', '—')}",
            _cell(str(p.get("allocator") or "—").removeprefix("memory: "), 60),
        ]
        for r in runs
        for p in r.provenance
    ]
    unrecorded = [r.label for r in runs if not r.provenance]
    if rows:
        header = ["run", "stretch", "machine · precision · torch", "precision chosen because", "epo (code)"]
        lines += _table([*header, "threads × processes", "host memory (train.malloc_*)"], rows)
    if peaks := [f"{r.label} {peak:.1f} GB" for r in runs if (peak := _peak_rss(r)) is not None]:
        lines += [
            "",
            "Peak resident memory of the trainer process over its RL steps (perf/peak_rss_gb): "
            + ", ".join(peaks)
            + ".",
        ]
    if len(labels := {machine_label(p) for r in runs for p in r.provenance}) > 1:
        lines += [
            "",
            f"**Computed on {len(labels)} different machines or precisions**: numbers can differ beyond "
            "seed noise (different kernels change the sampled episodes).",
        ]
    if unrecorded:
        lines += [""] * bool(rows) + [f"No provenance.jsonl (made before epo recorded it): {', '.join(unrecorded)}."]
    return lines


def _peak_rss(run: RunData) -> float | None:
    _, peaks = run.series("perf/peak_rss_gb")
    return float(peaks.max()) if len(peaks) else None


def _code(record: dict) -> str:
    """The git commit, else the source digest (a copied tree or a wheel), else 'no git' (records before digests)."""
    if record.get("git"):
        return str(record["git"])
    return f"source {record['source']}" if record.get("source") else "no git"


def _warnings_section(runs: list[RunData]) -> list[str]:
    lines = ["## Monitor warnings", ""]
    rows = [
        [r.label, str(w.get("step")), str(w.get("kind")), _cell(w.get("message", ""), 300), _cell(w.get("action", "—"))]
        for r in runs
        for w in r.warnings
    ]
    if any(w.get("action") for r in runs for w in r.warnings):
        note = "The monitor acted (`diag.monitor_action`) where the action column says so; dotted lines mark it"
        lines += [note + " in the figures.", ""]
    return lines + (_table(["run", "step", "kind", "message", "action"], rows) if rows else ["None."])
