"""Exact resume on the device at hand: 4 steps straight vs 3 steps, stop, resume to 4 (tests/test_trainer.py's check,
run on a GPU by bench/gpu_check.sh). Prints how many logged metrics and parameters match exactly, and the largest
difference: GPU kernels may be non-deterministic where CPU ones are not (train.deterministic=true asks for
deterministic ones). It first compares the two runs' steps 1-3 (no resume involved: the kernels' share).

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


def _compare(a: dict[int, dict], b: dict[int, dict], steps: list[int]) -> str:
    """How many float metrics (timings aside) of these steps are identical, and the largest difference."""
    diffs = []  # (|a - b|, step, key)
    for step in steps:
        for key, value in a.get(step, {}).items():
            other = b.get(step, {}).get(key)
            if key.startswith(("time/", "perf/")) or not isinstance(value, float) or not isinstance(other, float):
                continue
            if not (math.isnan(value) and math.isnan(other)):
                diffs.append((abs(value - other), step, key))
    same = sum(d == 0 for d, _, _ in diffs)
    return f"{same}/{len(diffs)} metrics identical, largest difference {max(diffs, default=(0.0, None, None))}"


def main() -> None:
    root, args = Path(sys.argv[1]), sys.argv[2:]
    preset = next((a.split("=", 1)[1] for a in args if a.startswith("config=")), None)
    overrides = [a for a in args if not a.startswith("config=")] + ["train.total_steps=4", "train.save_every=1"]
    console = Console(quiet=True)
    full = Trainer(load_config(preset, overrides), root / "full", console=console)
    full.train()
    part = Trainer(load_config(preset, overrides), root / "part", console=console)
    part.train(stop_after=3)
    # two runs of one seed before any resume: a difference here is the kernels', not the checkpoint's
    print(
        f"run to run on {full.device}, steps 1-3: "
        + _compare(_metrics(root / "full"), _metrics(root / "part"), [1, 2, 3]),
        flush=True,
    )
    resumed = Trainer(load_config(preset, overrides), root / "part", resume=True, console=console)
    resumed.train()
    a, b = _metrics(root / "full"), _metrics(root / "part")
    params = [(p - q).abs().max().item() for p, q in zip(full.policy.parameters(), resumed.policy.parameters())]
    print(
        f"resume on {full.device}: steps {sorted(a)} vs {sorted(b)}; all steps: {_compare(a, b, sorted(set(a) & set(b)))}"
        f"; parameters identical in {sum(d == 0 for d in params)}/{len(params)} tensors, largest difference "
        f"{max(params, default=0.0):.3g}"
    )


if __name__ == "__main__":
    main()
