"""Benchmark `epo train` on 1 process vs 2 processes (torchrun, gloo) with the same global batch.

Runs the demo's model and env (quest_demo_cpu: embedded SmolLM2-135M, top 10 blocks trainable, GRPO+EPO) without
the warm start, for a few RL steps, as

    1 process, 1 torch thread     python -m epo.cli train ...              (OMP_NUM_THREADS=1)
    1 process, 2 torch threads    python -m epo.cli train ...              (OMP_NUM_THREADS=2)
    2 processes, 1 thread each    torchrun --nproc_per_node 2 -m epo.cli train ...

and reports the mean rollout / update / step times of the steps after the first (from metrics.jsonl), plus the
wall time of the whole command (start-up included). Results replace the "## Distributed training" section of
docs/BENCHMARKS.md.

    nice -n 10 python bench/bench_distributed.py
    python bench/bench_distributed.py --steps 2 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine_info, write_section

SECTION = "## Distributed training"
ROOT = Path(__file__).resolve().parents[1]


def overrides(steps: int, tasks: int, group: int, turns: int) -> list[str]:
    return [
        "sft.warm_start=false",
        f"train.total_steps={steps}",
        f"rollout.tasks_per_step={tasks}",
        f"rollout.group_size={group}",
        f"env.max_turns={turns}",
        "env.num_workers=1",
        "train.eval_every=0",
        "train.eval_episodes=1",
        "train.save_every=1000",
        "train.tensorboard=false",
        "train.report=false",
    ]


def run(kind: str, args, workdir: Path) -> dict:
    run_dir = workdir / kind.replace(" ", "_")
    cli = ["-m", "epo.cli", "train", "--config", "quest_demo_cpu", "--run-dir", str(run_dir)]
    cli += overrides(args.steps, args.tasks, args.group, args.turns)
    if args.smoke:
        cli += [
            "model.path=tiny",
            "model.trainable_layers=0",
            "agent.max_prompt_tokens=320",
            "rollout.max_new_tokens=4",
        ]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    if kind.startswith("2 processes"):
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(args.port)] + cli
        env["OMP_NUM_THREADS"] = "1"
    else:
        cmd = [sys.executable] + cli
        env["OMP_NUM_THREADS"] = "2" if "2 threads" in kind else "1"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{kind}: failed\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step_s" in r and r["step"] > 1]  # step 1 pays one-time warm-up
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("time/rollout_s", "time/update_s", "time/step_s")}
    mean["samples"] = sum(r["rollout/samples"] for r in rows) / len(rows)
    mean["wall"] = wall
    return mean


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--group", type=int, default=2)
    ap.add_argument("--port", type=int, default=29533)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--skip-2-threads", action="store_true", help="leave out 1 process x 2 threads (slow when loaded)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 2 steps of 1-turn episodes, no write (tests)")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.tasks, args.group, args.turns, args.skip_2_threads, args.no_write = 2, 2, 2, 1, True, True
        args.port = free_port()
    kinds = ["1 process, 1 thread", "1 process, 2 threads", "2 processes, 1 thread each"]
    if args.skip_2_threads:
        kinds.remove("1 process, 2 threads")
    machine = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="epo_bench_dist_"))
    try:
        results = {}
        for kind in kinds:
            results[kind] = run(kind, args, workdir)
            print(kind, results[kind], flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = results[kinds[0]]["time/step_s"]
    lines = [
        "| run | rollout s | update s | step s | vs 1 process, 1 thread | turn samples / step | command wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, r in results.items():
        lines.append(
            f"| {kind} | {r['time/rollout_s']:.1f} | {r['time/update_s']:.1f} | {r['time/step_s']:.1f} | "
            f"{base / r['time/step_s']:.2f}x | {r['samples']:.0f} | {r['wall']:.0f} |"
        )
    body = f"""Command: `nice -n 10 python bench/bench_distributed.py --steps {args.steps} --tasks {args.tasks} \
--group {args.group} --turns {args.turns}{" --skip-2-threads" if args.skip_2_threads else ""}`

{machine}

`epo train --config quest_demo_cpu` (embedded SmolLM2-135M, top 10 blocks trainable, GRPO+EPO, single-pass
update) without the warm start: {args.tasks} tasks x {args.group} rollouts per step, {args.turns}-turn episodes, {args.steps}
steps; times are means over steps 2..{args.steps} (step 1 pays one-time warm-up) from metrics.jsonl. Two processes
split the tasks (whole groups per rank) and the update's micro-batches, and sum gradients over gloo. On a
2-core machine two single-threaded processes compete for the same cores as one two-threaded process, and on
a shared, loaded machine a second process finds no free core at all: expect little or a loss. What it
costs on top of the compute: the gather of the rollout and of per-token entropies, and one all-reduce of the
trainable gradients per mini-batch (10 blocks of SmolLM2-135M here, ~35 M fp32 values, 140 MB). Rollout lengths
differ between runs (sampling), so compare step times with the samples per step in view.

{chr(10).join(lines)}
"""
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
