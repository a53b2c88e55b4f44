"""Experiment grids: `epo sweep GRID.yaml` runs (methods x seeds) resumably; `epo report SWEEP_DIR` aggregates.

grid = load_grid("experiments/fast_tier.yaml")        # validated: every run's config loads
run_sweep(grid, Path("sweeps/fast_tier"))             # one run after another (or --ray: Ray tasks)
write_sweep_report(Path("sweeps/fast_tier"))          # per-method mean ± std, 95% CIs, paired tests, plots
"""

from epo.sweep.aggregate import write_sweep_report
from epo.sweep.grid import Grid, RunSpec, load_grid
from epo.sweep.runner import run_sweep

__all__ = ["Grid", "RunSpec", "load_grid", "run_sweep", "write_sweep_report"]
