"""Figures of a sweep report: one colour per method, mean over seeds with a 95% t-interval band."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats as sps

from epo.report.data import RunData
from epo.report.plots import COLORS

Runs = dict[str, dict[int, RunData]]


def curve(runs: dict[int, RunData], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps [S], values [seeds, S]) with NaN where a seed did not log that step."""
    series = [r.series(key) for r in runs.values()]
    steps = np.unique(np.concatenate([s for s, _ in series])) if series else np.zeros(0)
    grid = np.full((len(series), len(steps)), np.nan)
    for i, (s, v) in enumerate(series):
        grid[i, np.searchsorted(steps, s)] = v
    return steps, grid


def mean_band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[seeds, S] -> mean, lower, upper (95% t-interval over the seeds that logged each step)."""
    n = np.sum(~np.isnan(values), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0, ddof=1) if values.shape[0] > 1 else np.zeros_like(mean)
        t = np.array([sps.t.ppf(0.975, k - 1) if k > 1 else 0.0 for k in n])
        half = np.nan_to_num(t * std / np.sqrt(np.maximum(n, 1)))
    return mean, mean - half, mean + half


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _curves_figure(runs: Runs, panels: list[tuple[str, str]], path: Path) -> bool:
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.2 * rows))
    drawn = False
    for i, (title, key) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, (method, by_seed) in enumerate(runs.items()):
            steps, values = curve(by_seed, key)
            if not len(steps):
                continue
            mean, lo, hi = mean_band(values)
            if "success" in key:  # a rate: a t-band from 2-3 seeds can leave [0, 1]; the rate cannot
                lo, hi = np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
            color = COLORS[j % len(COLORS)]
            ax.plot(
                steps,
                mean,
                color=color,
                label=f"{method} (n={values.shape[0]})",
                marker="." if len(steps) < 30 else None,
            )
            ax.fill_between(steps, lo, hi, color=color, alpha=0.15, linewidth=0)
            drawn = True
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("RL step", fontsize=8)
        ax.tick_params(labelsize=7)
    if not drawn:
        return False
    fig.axes[0].legend(fontsize=7)
    _save(fig, path)
    return True


def _variance_figure(runs: Runs, path: Path) -> bool:
    fig = Figure(figsize=(max(4.0, 1.1 * len(runs)), 3.2))
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for j, by_seed in enumerate(runs.values()):
        var = [float(np.var(r.series("epo/entropy_mean")[1])) for r in by_seed.values() if r.has("epo/entropy_mean")]
        if var:
            ax.bar(j, np.mean(var), color=COLORS[j % len(COLORS)], alpha=0.5)
            ax.scatter([j] * len(var), var, color="black", s=10, zorder=3)
            drawn = True
    if not drawn:
        return False
    ax.set_xticks(range(len(runs)), list(runs), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("Var over RL steps of entropy", fontsize=8)
    ax.set_title("Entropy variance across steps (bar: mean; dots: seeds)", fontsize=9)
    _save(fig, path)
    return True


def _heatmap_figure(runs: Runs, path: Path) -> bool:
    grids = []
    for method, by_seed in runs.items():
        per_seed = [r.per_turn("epo/entropy_per_turn") for r in by_seed.values()]
        per_seed = [(s, g) for s, g in per_seed if g.size]
        if per_seed:
            turns = max(g.shape[0] for _, g in per_seed)
            steps = np.unique(np.concatenate([s for s, _ in per_seed]))
            stack = np.full((len(per_seed), turns, len(steps)), np.nan)
            for i, (s, g) in enumerate(per_seed):
                stack[i][: g.shape[0], np.searchsorted(steps, s)] = g  # stack[i] first: keeps the axis order
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells (turns no seed reached) stay NaN
                grids.append((method, steps, np.nanmean(stack, axis=0)))
    if not grids:
        return False
    vmax = max(float(np.nanmax(g)) if np.isfinite(g).any() else 0.0 for _, _, g in grids) or 1.0
    fig = Figure(figsize=(4.2 * min(3, len(grids)), 3.2 * math.ceil(len(grids) / 3)))
    for i, (method, steps, g) in enumerate(grids):
        ax = fig.add_subplot(math.ceil(len(grids) / 3), min(3, len(grids)), i + 1)
        im = ax.imshow(
            g,
            aspect="auto",
            origin="lower",
            vmin=0,
            vmax=vmax,
            interpolation="nearest",
            extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, g.shape[0] - 0.5),
        )
        ax.set_title(f"{method}: entropy per turn (seed mean)", fontsize=9)
        ax.set_xlabel("RL step", fontsize=8)
        ax.set_ylabel("turn index", fontsize=8)
        fig.colorbar(im, ax=ax)
    _save(fig, path)
    return True


def write_sweep_figures(runs: Runs, splits: list[str], out_dir: Path) -> list[str]:
    """Write the PNGs that have data; returns their file names."""
    written = []
    success = [("train rollouts: success", "rollout/success_rate")]
    success += [(f"eval {s}: success", f"eval/{s}/success") for s in splits]
    entropy = [
        ("entropy (batch mean)", "epo/entropy_mean"),
        ("entropy variance, recent window", "epo/entropy_var_window"),
    ]
    for name, make in (
        ("success_curves.png", lambda p: _curves_figure(runs, success, p)),
        ("entropy_curves.png", lambda p: _curves_figure(runs, entropy, p)),
        ("entropy_variance.png", lambda p: _variance_figure(runs, p)),
        ("per_turn_entropy.png", lambda p: _heatmap_figure(runs, p)),
    ):
        if make(out_dir / name):
            written.append(name)
    return written
