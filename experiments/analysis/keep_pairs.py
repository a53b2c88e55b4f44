"""Keep a sweep's finished pairs in the repository, so that a machine lost between sessions loses no finished run.

    python experiments/analysis/keep_pairs.py SWEEP_DIR DEST        # after (or during) a session's sweep
    python experiments/analysis/keep_pairs.py SWEEP_DIR DEST --restore  # next session, on a fresh machine: restore
    python experiments/analysis/keep_pairs.py SWEEP_DIR DEST --restore --methods ppo  # one arm of DEST only
    epo sweep GRID.yaml --out SWEEP_DIR --jobs 2                     # then resume: the kept runs count as done

Copies into DEST every run of each seed whose runs are *all* done (status.json), without weights (checkpoints/,
final/) or TensorBoard files (metrics.jsonl holds the same numbers), with its console log; writes DEST/status.json (the kept runs) and
DEST/sweep.yaml. A seed with an unfinished run is left out whole, so that both runs of a pair come from one session and
one warm-start build. DEST/warm_starts.json records, per seed, the SHA-256 of the warm start (init_from) the runs
started from. Runs already in DEST are kept as they are. DEST is a sweep dir itself: `epo report DEST` reads it.

--restore copies the other way, DEST's runs into SWEEP_DIR, and merges status.json instead of replacing it, so that
runs kept from several places (an earlier experiment's arms, then this one's seeds) can be restored one after the
other. A run already done in SWEEP_DIR is left alone; an unfinished one there is replaced by the kept, finished one.
--methods A,B restores only those methods' runs (an experiment that reuses one arm of an earlier one as its baseline).
The grid file is not copied: `epo sweep` writes its own on its first start.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import yaml

from epo.fsio import atomic_write_text

LEFT_OUT = shutil.ignore_patterns("checkpoints", "final", "tensorboard", ".lock", ".*.tmp*")  # weights; duplicates


def complete_seeds(grid: dict, status: dict) -> list[int]:
    """Seeds whose every method's run is done."""
    methods = list(grid["methods"])
    return [s for s in grid["seeds"] if all(status.get(f"{m}/seed{s}", {}).get("state") == "done" for m in methods)]


def warm_start_sha(run_dir: Path) -> str | None:
    """SHA-256 of the weights the run was initialised from (its config's init_from; None when it has none). Run from
    the directory the sweep ran in: init_from is relative to it."""
    init = yaml.safe_load((run_dir / "config.yaml").read_text()).get("init_from")
    if not init:
        return None
    found = sorted(Path(init).glob("**/model.safetensors"))
    if not found:
        raise SystemExit(f"{run_dir}: init_from {init} has no model.safetensors here (run from the sweep's directory)")
    return hashlib.sha256(found[0].read_bytes()).hexdigest()


def keep(sweep_dir: Path, dest: Path) -> list[str]:
    """Copy the complete pairs of sweep_dir into dest; returns the run ids newly kept."""
    grid = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    status = json.loads((sweep_dir / "status.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    kept = json.loads((dest / "status.json").read_text()) if (dest / "status.json").is_file() else {}
    shas_path = dest / "warm_starts.json"
    shas = json.loads(shas_path.read_text()) if shas_path.is_file() else {}
    new = []
    for seed in complete_seeds(grid, status):
        for method in grid["methods"]:
            run_id = f"{method}/seed{seed}"
            if run_id in kept:
                continue
            shutil.copytree(sweep_dir / method / f"seed{seed}", dest / method / f"seed{seed}", ignore=LEFT_OUT)
            shutil.copy2(sweep_dir / method / f"seed{seed}.log", dest / method / f"seed{seed}.log")
            kept[run_id] = status[run_id]
            shas.setdefault(str(seed), warm_start_sha(sweep_dir / method / f"seed{seed}"))
            new.append(run_id)
    shutil.copy2(sweep_dir / "sweep.yaml", dest / "sweep.yaml")
    atomic_write_text(dest / "status.json", json.dumps(kept, indent=1, sort_keys=True))
    atomic_write_text(shas_path, json.dumps(shas, indent=1, sort_keys=True))
    return new


def restore(dest: Path, sweep_dir: Path, methods: list[str] | None = None) -> list[str]:
    """Copy dest's kept runs (of `methods`, or all) into sweep_dir and merge their status entries; returns the run
    ids restored."""
    kept = json.loads((dest / "status.json").read_text())
    if methods is not None:
        unknown = sorted(set(methods) - {run_id.split("/")[0] for run_id in kept})
        if unknown:
            raise SystemExit(f"{dest} keeps no runs of {', '.join(unknown)}")
        kept = {run_id: e for run_id, e in kept.items() if run_id.split("/")[0] in methods}
    status_path = sweep_dir / "status.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    new = []
    for run_id, entry in sorted(kept.items()):
        if status.get(run_id, {}).get("state") == "done":
            continue
        shutil.rmtree(sweep_dir / run_id, ignore_errors=True)  # an interrupted copy of the run: the kept one finished
        shutil.copytree(dest / run_id, sweep_dir / run_id)
        shutil.copy2(dest / f"{run_id}.log", sweep_dir / f"{run_id}.log")
        status[run_id] = entry
        new.append(run_id)
    atomic_write_text(status_path, json.dumps(status, indent=1, sort_keys=True))  # the sweep's record of done runs
    return new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--restore", action="store_true", help="copy DEST's kept runs into SWEEP_DIR (merging status)")
    ap.add_argument("--methods", help="with --restore: only these methods' runs (comma-separated)")
    args = ap.parse_args()
    if args.restore:
        args.sweep_dir.mkdir(parents=True, exist_ok=True)
        methods = args.methods.split(",") if args.methods else None
        print(
            f"restored {len(restore(args.dest, args.sweep_dir, methods))} runs from {args.dest} into {args.sweep_dir}"
        )
        return
    new = keep(args.sweep_dir, args.dest)
    print(
        f"kept {len(new)} new runs in {args.dest} ({len(json.loads((args.dest / 'status.json').read_text()))} in all)"
    )


if __name__ == "__main__":
    main()
