"""Soak: many RL steps with env workers killed at random and one SIGTERM/resume cycle (not in CI).

    python bench/soak.py                              # 300 steps, a kill every ~20 steps, SIGTERM at step 150
    python bench/soak.py --steps 40 --kill-every 5 --no-write

Two runs of the tiny model on the quest world (process pool, 2 workers), same config and seed:
  * reference: no faults;
  * faulted: before some steps (every ~`--kill-every`, seeded random gaps) a random *idle* worker is SIGKILLed;
    after step `--sigterm-at` the process SIGTERMs itself: the trainer finishes the step, checkpoints, stops;
    a new Trainer resumes the run dir (as `epo train --resume` would) and finishes it.
Resident memory (the trainer process, and with its env workers) is sampled after every step.

Checks (exit code 1 if one fails): every step 1..N logged exactly once; the faulted run's metrics equal the
reference's (timings and fault counters aside: kills of idle workers must not change the data); every kill was
noticed and logged (faults.jsonl, reason worker_dead); RSS growth over the second half of the run within noise
(least-squares slope x steps < max(32 MiB, 5%)). Results go to the "## Faults and recovery" section of
docs/RELIABILITY.md (that section only; --no-write skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil
from rich.console import Console

from common import machine_info, write_section
from epo.config import load_config
from epo.telemetry.faults import read_faults
from epo.telemetry.metrics import read_metrics
from epo.testing import tiny_run
from epo.trainer.trainer import Trainer

DOC = Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md"
SECTION = "## Faults and recovery"
CONFIG = tiny_run(
    "env.name=quest",
    "env.pool_mode=process",
    "env.num_workers=2",
    "algo.name=grpo",
    "epo.mode=on",
    "train.save_every=25",
    "train.mini_batch_size=64",
    "train.micro_batch_tokens=1500",
    "optim.lr=1e-3",
    "optim.warmup_ratio=0.1",  # as in the recorded runs (docs/RELIABILITY.md)
)
VOLATILE = ("time/", "perf/", "rollout/env_", "rollout/batch_retries")
MIB = 1024 * 1024


class SoakTrainer(Trainer):
    """A Trainer that injects faults before steps and samples resident memory after them."""

    kill_steps: set[int] = set()
    sigterm_at: int | None = None
    rss: dict[int, tuple[int, int]]  # step -> (trainer RSS, trainer + workers RSS) in bytes
    killed: list[tuple[int, int]]  # (step, worker index)
    pool = None

    def _rl_step(self, collector, progress):
        step = self.step + 1
        if step in self.kill_steps and collector.pool.worker_pids():
            w = random.Random(step).randrange(len(collector.pool.worker_pids()))
            pid = collector.pool.worker_pids()[w]
            os.kill(pid, signal.SIGKILL)
            _wait_zombie(pid)  # the worker is dead before the step starts: an idle kill (the pool reaps it)
            self.killed.append((step, w))
        metrics = super()._rl_step(collector, progress)
        me = psutil.Process()
        workers = sum(_rss(p) for p in me.children(recursive=True))
        self.rss[step] = (_rss(me), _rss(me) + workers)
        if step == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)  # GracefulExit: finish this step, checkpoint, stop
        return metrics


def _wait_zombie(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.01)


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.Error:
        return 0


def kill_plan(steps: int, every: int, seed: int) -> set[int]:
    """Steps before which a worker is killed: gaps drawn uniformly from [every/2, 3*every/2]."""
    rng, out, step = random.Random(seed), set(), 0
    while every > 0:
        step += rng.randint(max(1, every // 2), max(1, every + every // 2))
        if step > steps:
            return out
        out.add(step)
    return out


def run(run_dir: Path, steps: int, kills: set[int], sigterm_at: int | None, console: Console) -> dict:
    overrides = [*CONFIG, f"train.total_steps={steps}"]
    rss: dict[int, tuple[int, int]] = {}
    killed: list[tuple[int, int]] = []
    t0 = time.perf_counter()
    legs = 0
    resume = False
    while True:
        trainer = SoakTrainer(load_config(None, overrides), run_dir, resume=resume, console=console)
        trainer.kill_steps, trainer.sigterm_at, trainer.rss, trainer.killed = kills, sigterm_at, rss, killed
        result = trainer.train()
        legs += 1
        if not result.interrupted:
            break
        sigterm_at, resume = None, True  # one cycle; the next Trainer resumes from the checkpoint just written
    return {"seconds": time.perf_counter() - t0, "rss": rss, "killed": killed, "legs": legs}


def memory_growth(rss: dict[int, tuple[int, int]], which: int) -> dict[str, float]:
    """Least-squares slope of RSS over the second half of the steps, times the number of those steps."""
    steps = sorted(rss)[len(rss) // 2 :]
    ys = [rss[s][which] / MIB for s in steps]
    n = len(steps)
    if n < 2:
        return {"start_mib": ys[0] if ys else 0.0, "end_mib": ys[-1] if ys else 0.0, "growth_mib": 0.0}
    mx, my = sum(steps) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(steps, ys)) / max(sum((x - mx) ** 2 for x in steps), 1e-9)
    return {
        "start_mib": rss[sorted(rss)[0]][which] / MIB,
        "half_mib": ys[0],
        "end_mib": ys[-1],
        "max_mib": max(v[which] for v in rss.values()) / MIB,
        "growth_mib": slope * (steps[-1] - steps[0]),
    }


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def soak(steps: int, kill_every: int, sigterm_at: int | None, seed: int, workdir: Path) -> dict:
    console = Console(quiet=True)
    kills = kill_plan(steps, kill_every, seed)
    ref = run(workdir / "reference", steps, set(), None, console)
    faulted = run(workdir / "faulted", steps, kills, sigterm_at, console)
    a, b = read_metrics(workdir / "reference"), read_metrics(workdir / "faulted")
    logged = [r["step"] for r in b if "rollout/samples" in r]
    faults = read_faults(workdir / "faulted")
    # an idle kill is noticed before the resets (worker_dead) or, racing them, as a crash during the resets
    noticed = sorted({f["step"] for f in faults if f["reason"] in ("worker_dead", "worker_crash")})
    out = {
        "steps": steps,
        "kills": sorted(s for s, _ in faulted["killed"]),
        "legs": faulted["legs"],
        "sigterm_at": sigterm_at,
        "seconds_reference": ref["seconds"],
        "seconds_faulted": faulted["seconds"],
        "no_lost_step": logged == list(range(1, steps + 1)),
        "metrics_equal": comparable(a) == comparable(b),
        "kills_logged": noticed == sorted(s for s, _ in faulted["killed"]),
        "fault_records": len(faults),
        "episodes_lost_to_faults": sum(r.get("rollout/env_crashes", 0) + r.get("rollout/env_timeouts", 0) for r in b),
        "memory": {
            "trainer": memory_growth(faulted["rss"], 0),
            "trainer+workers": memory_growth(faulted["rss"], 1),
            "reference trainer": memory_growth(ref["rss"], 0),
        },
    }
    trainer_mem = out["memory"]["trainer"]
    out["memory_ok"] = trainer_mem["growth_mib"] < max(32.0, 0.05 * trainer_mem["half_mib"])
    out["ok"] = all(out[k] for k in ("no_lost_step", "metrics_equal", "kills_logged", "memory_ok"))
    return out


def render(res: dict, command: str) -> str:
    mem = res["memory"]
    rows = "\n".join(
        f"| {name} | {m['start_mib']:.0f} | {m.get('half_mib', 0):.0f} | {m['end_mib']:.0f} | "
        f"{m.get('max_mib', 0):.0f} | {m['growth_mib']:+.1f} |"
        for name, m in mem.items()
    )
    yes = {True: "yes", False: "**NO**"}
    return f"""Command: `{command}` ({res["seconds_reference"] + res["seconds_faulted"]:.0f} s wall for both runs)

{machine_info()}

Two runs of {res["steps"]} GRPO+EPO steps of the tiny model (`model.path=tiny`) on the quest world (easy, 2 tasks x 2
rollouts, 3 turns, process pool with 2 workers), same config and seed. The faulted run had an idle env worker
SIGKILLed before steps {", ".join(map(str, res["kills"])) or "(none)"} ({len(res["kills"])} kills) and SIGTERMed
itself after step {res["sigterm_at"]} (checkpoint, stop, resume in a new Trainer: {res["legs"]} legs).

| check | result |
|---|---|
| every step 1..{res["steps"]} logged exactly once | {yes[res["no_lost_step"]]} |
| metrics equal to the unfaulted run (timings and fault counters aside) | {yes[res["metrics_equal"]]} |
| every kill noticed, worker restarted before the resets, logged in faults.jsonl | {yes[res["kills_logged"]]} ({res["fault_records"]} records) |
| episodes lost to faults (idle kills must lose none) | {res["episodes_lost_to_faults"]:.0f} |
| resident memory: no growth beyond noise (trainer) | {yes[res["memory_ok"]]} |

Resident memory (MiB), faulted run unless named; growth = least-squares slope over the second half x its steps:

| process | after step 1 | at half | at end | max | growth, 2nd half |
|---|---|---|---|---|---|
{rows}

Wall time: reference {res["seconds_reference"]:.0f} s, faulted {res["seconds_faulted"]:.0f} s (includes the restarts and
the extra checkpoint of the SIGTERM cycle).
"""


MATRIX = """### Fault matrix

What happens for each fault in each phase, and where it is tested (`tests/...`) or measured (this soak).

| fault | phase | outcome |
|---|---|---|
| env worker SIGKILLed while idle (between steps) | RL | restarted before the step's resets (`worker_dead` in faults.jsonl, console line); no episode lost, data unchanged (soak: metrics equal) — `test_faults.py` |
| env worker SIGKILLed / exits mid-step | RL rollout | its episodes end truncated (`worker_crash`), counted in `rollout/env_crashes`, one faults.jsonl record per episode with worker and task; worker restarted; the step trains on the rest — `test_faults.py`, `test_pool.py` |
| env worker hangs (no answer within `env.step_timeout_s`) | RL rollout | worker group killed and restarted; episodes end `timeout`, counted in `rollout/env_timeouts` — `test_faults.py`, `test_pool.py` |
| exception inside the env | reset / step | only that episode ends (`env_error`, `rollout/env_errors`); every reset failing stops with one line — `test_pool.py` |
| every episode of a step fails | RL rollout | batch collected again (same tasks) up to `env.batch_retries`; then one line + a valid checkpoint of the last step (written if needed, sampler and RNG rewound); the resumed run equals an unfaulted one — `test_faults.py` |
| env worker crash / hang | eval | episode ends unwon, logged with phase `eval <split>` |
| env worker crash | warm-start oracle | the episode ends unwon and is not cloned (only won episodes are) |
| SIGINT / SIGTERM (first) | RL step | step finishes, checkpoint, stop; resume is bit-exact (soak: metrics equal) — `test_trainer.py` |
| SIGINT / SIGTERM (first) | warm start (behaviour cloning) | optimizer step finishes, `sft/checkpoints/step_N`, stop; `epo train --resume` / `epo sft --resume` continue bit-exactly — `test_sft_resume.py` |
| SIGINT / SIGTERM (first) | zero-shot eval / oracle collection | the phase finishes, nothing to checkpoint yet; the eval is kept in `sft_before.json` and not repeated on resume |
| second SIGINT | any | abort at once (checkpoints written before stay valid) |
| disk full (ENOSPC, quota, torch's `unexpected pos`) | checkpoint write | one line: path, bytes needed and free; the temp dir is removed; the previous checkpoint stays valid — `test_disk_full.py` (monkeypatched writers and a real 700 kB tmpfs) |
| SIGKILL | checkpoint write / rename | the newest complete checkpoint is used on resume (crash-consistency tests in `test_checkpoint.py`) |
| torn / duplicated metrics lines | `epo report` | one warning line each on the console and under "Data warnings" in the report; torn lines skipped, last record of a duplicated step used — `test_report_faults.py` |
| checkpoint dir or run without `final/` as a model | `epo eval`, `init_from` | loaded (base rebuilt from the run's config, LoRA merged) — `test_checkpoint_model.py` |
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--kill-every", type=int, default=20, help="mean gap (steps) between idle-worker kills")
    parser.add_argument("--sigterm-at", type=int, default=None, help="default: steps // 2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run dirs here (default: a temp dir)")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {DOC.name}")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    sigterm_at = args.sigterm_at if args.sigterm_at is not None else max(1, args.steps // 2)
    with tempfile.TemporaryDirectory(prefix="epo-soak-") as tmp:
        res = soak(args.steps, args.kill_every, sigterm_at, args.seed, args.workdir or Path(tmp))
    command = "python bench/soak.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(res, command.strip())
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    if not args.no_write:
        if not DOC.exists():
            DOC.write_text("# Reliability\n")
        write_section(SECTION, text + "\n" + MATRIX, DOC)
        print(f"wrote {DOC}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
