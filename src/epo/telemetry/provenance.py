"""Where each stretch of a run was computed: RUN_DIR/provenance.jsonl, one line per start and per resume.

A resumed run may continue on another machine, and two machines can compute the same config differently:
`train.precision=auto` is bf16 on a CPU with avx512_bf16 and fp32 on an AVX2 one, and different matmul kernels change
the low bits, so the sampled episodes diverge. Each line records, from the step it starts at: the epo version, git
commit and source digest (which names the code where there is no git: an installed wheel, a copied tree), the Python/torch/transformers versions, the device and its name (the CPU model or GPU), the CPU's bf16 unit,
the resolved precision, torch threads and world size. `epo report` lists them, and a sweep report counts the machines
its runs were computed on (mixed machines are then visible, not silent).
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import transformers

import epo
from epo.models.precision import Precision, cpu_bf16_unit, read_cpuinfo
from epo.trainer.allocator import applied_line

PROVENANCE_FILE = "provenance.jsonl"


def git_commit(where: Path = Path(epo.__file__).parent) -> str | None:
    """The commit of the checkout epo runs from ('abc1234', '+dirty' with uncommitted changes to tracked files), or
    None for an installed wheel or without git."""
    try:
        head = _git(where, "rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return None
        dirty = _git(where, "status", "--porcelain", "--untracked-files=no", "--", ".").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


@functools.cache
def source_digest(where: Path = Path(epo.__file__).parent) -> str:
    """sha256 (first 12 hex digits) over the package's .py files, paths and contents: equal digests, equal code,
    with or without git (the GPU machine runs a copied tree without .git; a wheel has none either)."""
    h = hashlib.sha256()
    for path in sorted(where.rglob("*.py")):
        h.update(path.relative_to(where).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _git(where: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return read_cpuinfo("model name") or platform.processor() or platform.machine()


def machine_record(
    device: torch.device, precision: Precision, from_step: int | None, world_size: int = 1, phase: str = "rl"
) -> dict[str, Any]:
    """from_step: the step this stretch starts at: the RL step (phase "rl"), the cloning step (phase "sft"; a resumed
    warm start's checkpoint), None for an `epo eval` (phase "eval")."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "phase": phase,
        "from_step": from_step,
        "epo": epo.__version__,
        "git": git_commit(),
        "source": source_digest(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "device_name": device_name(device),
        "cpu_bf16_unit": cpu_bf16_unit(),
        "precision": "bf16" if precision.mixed else "fp32",
        "precision_reason": precision.reason,
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "allocator": applied_line(),
        "world_size": world_size,
    }


def append_provenance(run_dir: str | Path, record: dict[str, Any]) -> None:
    with open(Path(run_dir) / PROVENANCE_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_provenance(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's records (none for runs made before this file existed); torn lines are skipped."""
    path = Path(run_dir) / PROVENANCE_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def machine_label(record: dict[str, Any]) -> str:
    """One short line naming what decides the numbers: 'AMD EPYC (avx512_bf16) · fp32 · torch 2.13.0'."""
    unit = record.get("cpu_bf16_unit")
    where = f"{record.get('device_name')}" + (f" ({unit})" if unit and record.get("device") == "cpu" else "")
    return f"{where} · {record.get('precision')} · torch {record.get('torch')}"
