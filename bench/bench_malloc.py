"""Benchmark resident memory and step time of behaviour cloning under glibc's malloc settings (trainer/allocator.py).

Each arm runs in a fresh process (malloc state is per process) that clones the embedded model on synthetic
ScienceWorld-sized turn samples (prompts of 800-1500 tokens, responses of 8-24, 16 per optimizer step, the
preset's 4096-token micro-batches and precision) with the trainer's own `clone_step`:

    dynamic   glibc's default: the threshold rises to the size of each freed mapped chunk (up to 32 MiB)
    fixed     the threshold fixed at start-up (--threshold, 128 KiB): `train.malloc_mmap_threshold=131072`
    trim      glibc's default, and malloc_trim(0) after every optimizer step: what `train.malloc_trim` (on by default)
              does once per RL update and after cloning, here at its most frequent
    fixed_thp fixed, with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (glibc >= 2.35: malloc madvises transparent huge
              pages, so a fresh mapping faults in 2 MiB pages, not 4 KiB ones, where THP is "madvise" or "always")
    jemalloc  jemalloc instead of glibc's malloc (LD_PRELOAD of the system's libjemalloc.so.2, e.g. Debian's
              libjemalloc2; the glibc heap columns then read glibc's unused arena)

Per step it records RSS, peak RSS and glibc's heap / free-in-heap / mapped bytes (mallinfo2). Arms alternate when
--repeats > 1. Results replace the "## Memory: glibc's mmap threshold" section of docs/BENCHMARKS.md.

    python bench/bench_malloc.py                      # embedded SmolLM2-135M, 8 steps per arm
    python bench/bench_malloc.py --steps 3 --no-write
    python bench/bench_malloc.py --smoke              # tiny model, 2 steps, no write: what CI runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

from common import machine_info, publish

SECTION = "## Memory: glibc's mmap threshold"
MEANING = (
    "RSS after a step is what the process keeps through the rollouts and evals that follow (beside the envs: "
    "ScienceWorld's JVMs); the peak is what runs out of memory. Under glibc's dynamic threshold freed activation "
    "tensors stay in the heap as free holes (the heap / free column), and both grow step after step (Experiment 16b "
    "cloned to 15 GB). A fixed threshold hands every large tensor back at free, so the heap stays small and the peak "
    "is the step's working set, but each fresh mapping is faulted in page by page: the step time above (huge pages, "
    "fixed_thp, cost more still). Trimming keeps the fast heap within a step and gives its free pages back after it. "
    "So epo trims after each RL update and after cloning by default (`train.malloc_trim=true`: once per RL step, "
    "not per optimizer step as here) and leaves the threshold to glibc (`train.malloc_mmap_threshold=0`); "
    "`train.malloc_mmap_threshold=131072` is for a machine short of RAM."
)
ARMS = ("dynamic", "fixed", "trim", "fixed_thp", "jemalloc")


def synthetic_samples(n: int, vocab: int, seed: int, prompt=(800, 1500), response=(8, 24)):
    from epo.rollout.types import TurnSample

    rng = random.Random(seed)
    out = []
    for i in range(n):
        p, r = rng.randint(*prompt), rng.randint(*response)
        ids = [rng.randrange(10, vocab) for _ in range(p + r)]
        out.append(TurnSample(ids[:p], ids[p:], turn_idx=i % 30, traj_id=i // 30, group_id=0))
    return out


def child(arm: str, args) -> dict:
    """One arm in this process: clone for args.steps steps, a snapshot after each."""
    import torch

    from epo.config import load_config
    from epo.models import load_model_and_tokenizer
    from epo.trainer import setup
    from epo.trainer.allocator import configure, memory_snapshot, trim_after_phase
    from epo.trainer.sft import clone_step

    torch.set_num_threads(args.threads)
    cfg = load_config("sciworld_grpo_epo_cpu", [f"train.micro_batch_tokens={args.micro_batch_tokens}"])
    line = configure(args.threshold if arm.startswith("fixed") else 0, trim=arm == "trim")
    model, tokenizer = load_model_and_tokenizer(args.model)
    model.train()
    samples = synthetic_samples(args.batch * args.steps, len(tokenizer), seed=0, prompt=args.prompt_range)
    optimizer = setup.make_optimizer(model.parameters(), 1e-5, cfg)
    rows = []
    for step in range(args.steps):
        t0 = time.perf_counter()
        clone_step(model, optimizer, samples, list(range(step * args.batch, (step + 1) * args.batch)), 0, cfg)
        trim_after_phase()  # a no-op unless configured with trim
        rows.append({"seconds": time.perf_counter() - t0} | memory_snapshot().__dict__)
        print(f"{arm} step {step + 1}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    tokens = sum(len(s.prompt_ids) + len(s.response_ids) for s in samples) / args.steps
    return {"arm": arm, "line": line, "rows": rows, "tokens_per_step": tokens}


def jemalloc_path() -> str:
    import ctypes.util

    for path in ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2"):
        if os.path.exists(path):
            return path
    found = ctypes.util.find_library("jemalloc")
    if found is None:
        raise SystemExit("--arms jemalloc: no libjemalloc.so.2 on this machine (Debian: apt install libjemalloc2)")
    return found


def run_arm(arm: str, argv: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    if arm == "fixed_thp":
        env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    if arm == "jemalloc":
        env["LD_PRELOAD"] = jemalloc_path()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", arm, *argv], env=env, stdout=subprocess.PIPE, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summary_row(res: dict) -> dict:
    rows = res["rows"]
    times = [r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]]  # step 1 pays first-call allocations
    last = rows[-1]
    return {
        "arm": res["arm"],
        "rss1": rows[0]["rss_mb"],
        "rss_last": last["rss_mb"],
        "peak": max(r["peak_rss_mb"] for r in rows),
        "heap": last["heap_mb"],
        "heap_free": last["heap_free_mb"],
        "mapped": last["mapped_mb"],
        "secs": statistics.median(times),
    }


def report(results: list[dict], args, argv: list[str]) -> str:
    arms = [a for a in ARMS if any(r["arm"] == a for r in results)]
    by_arm = {arm: [summary_row(r) for r in results if r["arm"] == arm] for arm in arms}
    best = {arm: min(rows, key=lambda r: r["secs"]) for arm, rows in by_arm.items()}  # best of repeats
    gb = lambda mb: "n/a" if mb is None else f"{mb / 1024:.2f}"  # noqa: E731
    lines = [
        SECTION,
        "",
        f"Command: `python bench/bench_malloc.py {' '.join(argv)}`",
        "",
        machine_info(f"{args.threads} torch thread(s)"),
        "",
        f"Behaviour cloning of model {args.model} ({args.steps} steps of {args.batch} synthetic turn samples, prompts "
        f"{args.prompt_range[0]}-{args.prompt_range[1]} tokens, ~{results[0]['tokens_per_step']:.0f} tokens per step, "
        f"{args.micro_batch_tokens}-token micro-batches, the ScienceWorld preset's precision), each arm a fresh "
        f"process, arms alternating, {args.repeats} repeat(s); memory from the repeat with the best time.",
        "",
        "| arm | RSS after step 1 (GB) | RSS after last step (GB) | peak RSS (GB) | glibc heap / free in it (GB) "
        "| mapped (GB) | s per step (median, steps 2+) | time vs dynamic |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        r = best[arm]
        lines.append(
            f"| {arm} | {gb(r['rss1'])} | {gb(r['rss_last'])} | {gb(r['peak'])} | {gb(r['heap'])} / "
            f"{gb(r['heap_free'])} | {gb(r['mapped'])} | {r['secs']:.1f} | {r['secs'] / best['dynamic']['secs']:.2f}x |"
        )
    d = best["dynamic"]
    versus = [
        f"{arm} peak RSS **{best[arm]['peak'] / d['peak']:.2f}x**, step time **{best[arm]['secs'] / d['secs']:.2f}x**"
        for arm in arms[1:]
    ]
    per_step = [f"{res['arm']}: " + " ".join(gb(r["rss_mb"]) for r in res["rows"]) for res in results[: len(arms)]]
    lines += [
        "",
        "Against dynamic: " + "; ".join(versus) + ".",
        "",
        "RSS after each step (GB), first repeat: " + "; ".join(per_step) + ".",
        "",
        MEANING,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16, help="turn samples per step (sft.batch_size)")
    parser.add_argument("--micro-batch-tokens", type=int, default=4096)
    parser.add_argument("--prompt-range", type=lambda s: tuple(int(x) for x in s.split("-")), default=(800, 1500))
    parser.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threshold", type=int, default=131072, help="bytes, the fixed arm's mmap threshold")
    parser.add_argument(
        "--arms", default="dynamic,fixed,trim,fixed_thp", help="dynamic first: the others are compared with it"
    )
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 steps of 2 samples, no write (CI)")
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.model, args.steps, args.batch, args.prompt_range, args.no_write = "tiny", 2, 2, (40, 80), True
        args.micro_batch_tokens = 256
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    argv = [a for a in sys.argv[1:]]
    arms = [a for a in args.arms.split(",") if a]
    if arms[0] != "dynamic" or not set(arms) <= set(ARMS):
        parser.error(f"--arms: 'dynamic' first, then any of {', '.join(ARMS[1:])}")
    results = [run_arm(arm, argv) for _ in range(args.repeats) for arm in arms]
    publish(report(results, args, argv), not args.no_write)


if __name__ == "__main__":
    main()
