"""ScienceWorld's JVM: resident memory and speed of expert episodes under different JVM options.

    python bench/bench_sciworld_jvm.py                                  # default vs the JVM's own defaults
    python bench/bench_sciworld_jvm.py --options "" "-Xmx1g -XX:+UseSerialGC" "-Xmx512m -XX:+UseSerialGC"
    python bench/bench_sciworld_jvm.py --smoke                          # seconds: what CI runs

One env at a time (one JVM), so the peak is that JVM's own: for each option set, the expert plays one train
variation of each task type (gold path, up to --max-turns), the JVM's resident memory (RSS) sampled after every
step. Wins must be equal across option sets (the expert is deterministic); if a heap is too small the episodes
fail and the table says so. Results go to the "## ScienceWorld JVM memory" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time

import psutil

from common import machine_info, publish
from epo.envs.sciworld import DEFAULT_JVM_OPTIONS, SciWorldEnv, sciworld_splits

SECTION = "## ScienceWorld JVM memory"


def one_per_task_type(n_types: int) -> list[str]:
    """The first train variation of each task type (sorted), at most n_types."""
    firsts: dict[str, str] = {}
    for task_id in sorted(sciworld_splits()["train"]):
        firsts.setdefault(task_id.split("/")[0], task_id)
    return list(firsts.values())[:n_types]


def play(options: str, task_ids: list[str], max_turns: int) -> dict:
    env = SciWorldEnv(jvm_options=options)
    t0 = time.perf_counter()
    peak, won, steps, errors = 0, 0, 0, 0
    try:
        for task_id in task_ids:
            try:
                env.reset(options={"task_id": task_id})
                jvm = psutil.Process(env._sim._gateway.java_process.pid)
                for _ in range(max_turns):
                    action = env.expert_action()
                    if action is None:
                        break
                    _, _, terminated, truncated, info = env.step(action)
                    steps += 1
                    peak = max(peak, jvm.memory_info().rss)
                    if terminated or truncated:
                        won += int(info["won"])
                        break
            except Exception as e:  # a heap too small shows up here (java.lang.OutOfMemoryError through py4j)
                errors += 1
                print(f"{options or '(JVM defaults)'}: {task_id}: {type(e).__name__}: {str(e)[:120]}", flush=True)
                env.close()
                env = SciWorldEnv(jvm_options=options)
        final = psutil.Process(env._sim._gateway.java_process.pid).memory_info().rss if env._sim else 0
    finally:
        env.close()
    seconds = time.perf_counter() - t0
    return {"options": options, "won": won, "errors": errors, "steps": steps, "seconds": seconds,
            "peak_gb": peak / 2**30, "final_gb": final / 2**30}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--options", nargs="+", default=["", DEFAULT_JVM_OPTIONS], help="JVM option sets ('' = none)")
    ap.add_argument("--types", type=int, default=30, help="task types (one variation each)")
    ap.add_argument("--max-turns", type=int, default=100)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="2 task types, 5 turns, no write (seconds: what CI runs)")
    args = ap.parse_args()
    if args.smoke:
        args.types, args.max_turns, args.no_write = 2, 5, True
    tasks = one_per_task_type(args.types)
    rows = [play(options, tasks, args.max_turns) for options in args.options]
    base = rows[0]
    lines = [
        SECTION,
        "",
        machine_info(),
        f"Command: `python bench/bench_sciworld_jvm.py --options {' '.join(repr(o) for o in args.options)} "
        f"--types {args.types} --max-turns {args.max_turns}` (one JVM at a time; expert episodes, one train variation "
        f"of each of {len(tasks)} task types)",
        "",
        "| JVM options | won | errors | steps | seconds | time vs first | peak RSS GB | RSS at end GB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['options'] or '(JVM defaults)'}` | {r['won']}/{len(tasks)} | {r['errors']} | {r['steps']} | "
            f"{r['seconds']:.0f} | {r['seconds'] / base['seconds']:.2f}× | {r['peak_gb']:.2f} | {r['final_gb']:.2f} |"
        )
    publish("\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
