"""Exact resume on the device at hand: 4 steps straight vs 3 steps, stop, resume to 4 (tests/test_trainer.py's check,
run on a GPU by bench/gpu_check.sh). Prints how many logged metrics and parameters match exactly, and the largest
difference: GPU kernels may be non-deterministic where CPU ones are not.

    python bench/gpu_resume.py RUN_ROOT key=value ...   # the overrides of both runs (config preset via config=NAME)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from rich.console import Console

from epo.config import load_config
from epo.telemetry.metrics import read_metrics
from epo.trainer.trainer import Trainer


def _metrics(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run)}


def main() -> None:
    root, args = Path(sys.argv[1]), sys.argv[2:]
    preset = next((a.split("=", 1)[1] for a in args if a.startswith("config=")), None)
    overrides = [a for a in args if not a.startswith("config=")] + ["train.total_steps=4", "train.save_every=1"]
    console = Console(quiet=True)
    full = Trainer(load_config(preset, overrides), root / "full", console=console)
    full.train()
    part = Trainer(load_config(preset, overrides), root / "part", console=console)
    part.train(stop_after=3)
    resumed = Trainer(load_config(preset, overrides), root / "part", resume=True, console=console)
    resumed.train()
    a, b = _metrics(root / "full"), _metrics(root / "part")
    diffs = []  # (|a - b|, step, key) over every float metric but timings
    for step in sorted(set(a) & set(b)):
        for key, value in a[step].items():
            other = b[step].get(key)
            if key.startswith(("time/", "perf/")) or not isinstance(value, float) or not isinstance(other, float):
                continue
            if not (math.isnan(value) and math.isnan(other)):
                diffs.append((abs(value - other), step, key))
    same = sum(d == 0 for d, _, _ in diffs)
    params = [(p - q).abs().max().item() for p, q in zip(full.policy.parameters(), resumed.policy.parameters())]
    print(
        f"resume on {full.device}: steps {sorted(a)} vs {sorted(b)}; {same}/{len(diffs)} metrics identical, largest "
        f"difference {max(diffs, default=(0.0, None, None))}; parameters identical in {sum(d == 0 for d in params)}/"
        f"{len(params)} tensors, largest difference {max(params, default=0.0):.3g}"
    )


if __name__ == "__main__":
    main()
