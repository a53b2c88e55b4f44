"""The PNG figures of `epo report`: one file per figure, one line (one colour) per run.

Uses matplotlib's object API with the Agg canvas (no pyplot, so no global backend switch and no figure leaks).
A series that a run did not log is simply absent; a figure for which no run logged anything is not written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from epo.report.data import RunData

PANEL_W, PANEL_H, MAX_COLS = 4.6, 3.2, 3
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


@dataclass
class Panel:
    title: str
    key: str
    ylabel: str = ""
    eval_ci: bool = False  # eval series: markers + confidence band from <prefix>/ci_low, ci_high
    unit_interval: bool = False  # y-axis fixed to [0, 1]
    smooth: bool = True  # long noisy series get a moving average; schedules and running statistics do not


def line_figures(splits: list[str]) -> list[tuple[str, str, list[Panel]]]:
    """(file stem, figure title, panels) of every line figure."""
    eval_panels = [Panel(f"eval {s}: success", f"eval/{s}/success", eval_ci=True, unit_interval=True) for s in splits]
    return [
        (
            "success",
            "Success rate",
            [Panel("train rollouts: success", "rollout/success_rate", unit_interval=True)] + eval_panels,
        ),
        (
            "return",
            "Return and episodes",
            [
                Panel("return (mean)", "rollout/return_mean"),
                Panel("episode length (turns)", "rollout/episode_len"),
                Panel("invalid-action rate", "rollout/invalid_rate", unit_interval=True),
            ],
        ),
        (  # envs with a progress score (ScienceWorld): it moves where success cannot, every episode lost
            "score",
            "Progress score (0-100, the env's own)",
            [Panel("train rollouts: score (mean)", "rollout/score_mean")]
            + [Panel(f"eval {s}: score (mean)", f"eval/{s}/score_mean") for s in splits],
        ),
        ("entropy", "Policy entropy", [Panel("entropy (trajectory mean)", "epo/entropy_mean", "nats", smooth=False)]),
        (
            "entropy_stability",
            "Entropy stability across RL steps",
            [
                Panel("running variance of entropy", "epo/entropy_var_steps", smooth=False),
                Panel("|ΔH| step to step", "epo/entropy_delta", "nats"),
            ],
        ),
        (
            "epo_band",
            "EPO smoothing band",
            [
                Panel("tokens below band", "epo/frac_below", "fraction"),
                Panel("tokens above band", "epo/frac_above", "fraction"),
                Panel("smoothing penalty P", "epo/P"),
            ],
        ),
        ("beta", "EPO phase weight", [Panel("β_k", "epo/beta", smooth=False)]),
        (
            "kl",
            "KL divergence",
            [Panel("approx KL (old → new)", "actor/approx_kl"), Panel("KL to reference", "actor/kl_ref")],
        ),
        ("clip_frac", "PPO clipping", [Panel("clip fraction", "actor/clip_frac", "fraction")]),
        ("lr", "Learning rate", [Panel("policy lr", "actor/lr", smooth=False)]),
        (
            "action_entropy",
            "Action-level entropy (sampled turns, over the env's listed actions)",
            [
                Panel("entropy over listed actions", "diag/action_entropy", "nats"),
                Panel("… normalised by log(#actions)", "diag/action_entropy_norm", unit_interval=True),
                Panel("probability mass outside the list", "diag/action_mass_outside", unit_interval=True),
                Panel("token entropy of the same turns", "diag/action_token_entropy", "nats"),
            ],
        ),
        (
            "entropy_change",
            "Entropy change of the update (first-order predictor vs realised)",
            [
                Panel("Cov(log p, advantage)", "diag/cov_logp_adv"),
                Panel("realised ΔH (after − before)", "diag/entropy_change", "nats"),
                Panel("KL(before ‖ after)", "diag/kl_update"),
                Panel("ratio outside clip range", "diag/ratio_outside_clip", "fraction"),
                Panel("entropy coef scale (monitor)", "diag/entropy_coef_scale", smooth=False),
            ],
        ),
        (
            "losses",
            "Losses and gradients",
            [
                Panel("policy-gradient loss", "actor/pg_loss"),
                Panel("λ·entropy term", "epo/entropy_term"),
                Panel("penalty term", "epo/penalty_term"),
                Panel("actor grad norm", "actor/grad_norm"),
                Panel("value loss", "critic/vf_loss"),
                Panel("explained variance", "critic/explained_var"),
            ],
        ),
    ]


def write_all(runs: list[RunData], splits: list[str], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Write every figure that has data. Returns (written files, stems skipped for lack of data)."""
    written: list[Path] = []
    skipped: list[str] = []
    for stem, title, panels in line_figures(splits):
        path = out_dir / f"{stem}.png"
        if _line_figure(runs, title, panels, path):
            written.append(path)
        else:
            skipped.append(stem)
    for stem, key, title, label in HEATMAPS:
        if _heatmap_figure(runs, out_dir / f"{stem}.png", key, title, label):
            written.append(out_dir / f"{stem}.png")
        else:
            skipped.append(stem)
    return written, skipped


# (file stem, per-turn key, title, colour-bar label); signed quantities get a diverging scale centred on 0
HEATMAPS = [
    ("entropy_heatmap", "epo/entropy_per_turn", "Entropy per turn index (grey: turn not reached)", "entropy (nats)"),
    (
        "cov_heatmap",
        "diag/cov_logp_adv_per_turn",
        "Cov(log p, advantage) per turn index (> 0: the update sharpens that turn)",
        "covariance",
    ),
    (
        "entropy_change_heatmap",
        "diag/entropy_change_per_turn",
        "Realised entropy change of the update per turn index",
        "ΔH (nats)",
    ),
    (
        "action_entropy_heatmap",
        "diag/action_entropy_per_turn",
        "Entropy over the listed actions per turn index",
        "nats",
    ),
]
SIGNED = ("diag/cov_logp_adv_per_turn", "diag/entropy_change_per_turn")


def action_steps(run: RunData) -> list[int]:
    """Steps where the cascade monitor acted (warnings with an "action")."""
    return sorted({int(w["step"]) for w in run.warnings if w.get("action")})


def _grid(n_panels: int) -> tuple[int, int]:
    cols = min(n_panels, MAX_COLS)
    return math.ceil(n_panels / cols), cols


def _new_figure(rows: int, cols: int, extra_h: float = 0.0) -> Figure:
    width = max(PANEL_W * cols, 6.4)  # a lone panel still leaves room for the legend
    fig = Figure(figsize=(width, PANEL_H * rows + extra_h), layout="constrained", dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _line_figure(runs: list[RunData], title: str, panels: list[Panel], path: Path) -> bool:
    panels = [p for p in panels if any(run.has(p.key) for run in runs)]
    if not panels:
        return False
    rows, cols = _grid(len(panels))
    fig = _new_figure(rows, cols, extra_h=0.4)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True).ravel()  # one step axis: train and eval line up
    smoothed = 0
    for ax, panel in zip(axes, panels, strict=False):
        for i, run in enumerate(runs):
            smoothed = max(smoothed, _plot_series(ax, run, panel, i, len(runs)))
            for step in action_steps(run):  # where the monitor checkpointed, stopped or raised entropy
                ax.axvline(step, color=COLORS[i % len(COLORS)], linestyle=":", linewidth=1.2, alpha=0.8)
        _style_axes(ax, panel)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for i, ax in enumerate(axes[: len(panels)]):  # only the lowest panel of each column labels the shared x-axis
        is_lowest = i + cols >= len(panels)
        ax.xaxis.set_tick_params(labelbottom=is_lowest)
        ax.set_xlabel("RL step" if is_lowest else "")
    fig.suptitle(title, fontsize=13, fontweight="bold")
    note = f"faint: raw values; solid: centred moving average over {smoothed} steps" if smoothed > 1 else ""
    _run_legend(fig, runs, note=note)
    fig.savefig(path)
    return True


def _line_width(run_index: int, n_runs: int) -> float:
    """Earlier runs are drawn wider and underneath, so identical series (same lr schedule...) stay visible."""
    return 1.3 + 1.4 * (n_runs - 1 - run_index) / (n_runs - 1) if n_runs > 1 else 1.6


def _plot_series(ax, run: RunData, panel: Panel, run_index: int, n_runs: int) -> int:
    """Draw one run's series; returns the moving-average window used (1 = raw values only)."""
    steps, values = run.series(panel.key)
    if len(steps) == 0:
        return 1
    color, width, z = COLORS[run_index % len(COLORS)], _line_width(run_index, n_runs), 2 + run_index
    if panel.eval_ci:
        ax.plot(steps, values, color=color, linewidth=width, marker="o", markersize=4, zorder=z)
        prefix = panel.key.rsplit("/", 1)[0]
        lo_steps, lo = run.series(f"{prefix}/ci_low")
        hi_steps, hi = run.series(f"{prefix}/ci_high")
        if len(lo_steps) and np.array_equal(lo_steps, hi_steps):
            ax.fill_between(lo_steps, lo, hi, color=color, alpha=0.15, linewidth=0)
        return 1
    window = smoothing_window(len(values)) if panel.smooth else 1
    if window == 1:
        ax.plot(
            steps,
            values,
            color=color,
            linewidth=width,
            marker="o" if len(steps) < 15 else None,
            markersize=3.5,
            zorder=z,
        )
        return 1
    ax.plot(steps, values, color=color, linewidth=0.8, alpha=0.3, zorder=z)
    ax.plot(steps, moving_average(values, window), color=color, linewidth=width, zorder=z + 0.5)
    return window


def smoothing_window(n_points: int) -> int:
    """Odd window ~ n/25 for long noisy series (150 steps -> 7); 1 (no smoothing) below 50 points."""
    return 1 if n_points < 40 else 2 * (n_points // 50) + 1


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over `window` points; the window shrinks at the ends instead of padding."""
    half = window // 2
    csum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(len(values))
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, len(values))
    return (csum[hi] - csum[lo]) / (hi - lo)


def _style_axes(ax, panel: Panel) -> None:
    ax.set_title(panel.title, fontsize=11)
    ax.set_xlabel("RL step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if panel.ylabel:
        ax.set_ylabel(panel.ylabel)
    if panel.unit_interval:
        ax.set_ylim(-0.03, 1.03)
    elif panel.ylabel == "fraction":  # never negative: start just below 0 so a zero line stays visible
        top = ax.get_ylim()[1]
        ax.set_ylim(-0.03 * top, top)
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useMathText=True)
    if not ax.lines:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")


def _run_legend(fig: Figure, runs: list[RunData], note: str = "") -> None:
    handles = [Line2D([], [], color=COLORS[i % len(COLORS)], linewidth=2) for i in range(len(runs))]
    entry_in = 0.09 * max(len(r.label) for r in runs) + 0.8  # rough width of one legend entry at 10 pt, inches
    ncols = max(1, min(len(runs), int(fig.get_figwidth() / entry_in)))
    legend = fig.legend(
        handles, [r.label for r in runs], loc="outside lower center", ncols=ncols, frameon=False, title=note or None
    )
    if note:
        legend.get_title().set_fontsize(8)
        legend.get_title().set_color("grey")


def _heatmap_figure(
    runs: list[RunData],
    path: Path,
    key: str = "epo/entropy_per_turn",
    title: str = HEATMAPS[0][2],
    label: str = "entropy (nats)",
) -> bool:
    """A per-turn metric (default: entropy) per turn index (y) × RL step (x), one panel per run, shared scale."""
    grids = [(run, *run.per_turn(key)) for run in runs]
    grids = [(run, steps, grid) for run, steps, grid in grids if grid.size and np.isfinite(grid).any()]
    if not grids:
        return False
    vmin = min(float(np.nanmin(g)) for _, _, g in grids)
    vmax = max(float(np.nanmax(g)) for _, _, g in grids)
    cmap = "viridis"
    if key in SIGNED:
        vmax = max(abs(vmin), abs(vmax), 1e-12)
        vmin, cmap = -vmax, "RdBu_r"
    rows, cols = _grid(len(grids))
    fig = _new_figure(rows, cols, extra_h=0.3)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    mesh = None
    for ax, (run, steps, grid) in zip(axes, grids, strict=False):
        x_edges = _edges(steps)
        y_edges = np.arange(grid.shape[0] + 1) - 0.5
        mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_facecolor("#dddddd")  # turn indices that no episode reached at that step
        ax.set_title(run.label, fontsize=11)
        ax.set_xlabel("RL step")
        ax.set_ylabel("turn index")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(grids) :]:
        ax.set_visible(False)
    fig.colorbar(mesh, ax=axes[: len(grids)].tolist(), label=label, shrink=0.9)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    fig.savefig(path)
    return True


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around each logged step (midpoints between neighbours)."""
    if len(steps) == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mid = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[steps[0] - (mid[0] - steps[0])], mid, [steps[-1] + (steps[-1] - mid[-1])]])
