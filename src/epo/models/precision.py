"""Mixed precision the way large trainers do it: fp32 master weights and optimizer state, bf16 autocast compute.

``train.precision`` picks the compute dtype of every forward/backward of a run (training, old-policy and reference
passes, rollouts and evals); the weights the optimizer updates stay fp32 whatever it says:

    fp32   plain fp32
    bf16   torch.autocast(bf16): matmuls in bf16, reductions and the log-softmax math in fp32; backward follows
    auto   bf16 on CUDA devices that support it and on CPUs with bf16 matmul units (avx512_bf16 or AMX), fp32
           otherwise: AVX2-only CPUs run bf16 matmuls several times slower than fp32 (docs/BENCHMARKS.md)

Why not bf16 weights: AdamW then updates bf16 parameters in place, and a step smaller than half a bf16 ulp
(2^-8 relative: ~6e-5 at |w| = 0.02) rounds away, so at lr 3e-6 most updates are lost. Pure-bf16 weights are
for inference only (``epo eval`` with ``model.dtype=bfloat16``, the frozen KL reference); training rejects
trainable non-fp32 weights (:func:`check_master_weights`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable
from dataclasses import dataclass

import torch

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with bf16 matmul units
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype  # compute dtype: torch.float32 or torch.bfloat16
    reason: str  # why it was chosen, for the run's log line

    @property
    def mixed(self) -> bool:
        return self.dtype != torch.float32

    def line(self) -> str:
        kind = "bf16 autocast, fp32 master weights" if self.mixed else "fp32"
        return f"precision: {kind} ({self.reason})"


def read_cpuinfo(field: str, path: str = "/proc/cpuinfo") -> str | None:
    """The value of `field` for the first core in /proc/cpuinfo, or None where it is not there (not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def read_cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU feature flags of the first core, or None where /proc/cpuinfo is not available (not Linux)."""
    flags = read_cpuinfo("flags", path)
    return None if flags is None else set(flags.split())


@functools.cache
def cpu_bf16_unit() -> str | None:
    """Name of the CPU's bf16 matmul unit (a /proc/cpuinfo flag), or None when it has none."""
    return bf16_unit_from_flags(read_cpu_flags())


def bf16_unit_from_flags(flags: set[str] | None) -> str | None:
    """amx_bf16 or avx512_bf16 when present in ``flags``; without flags (not Linux) ask torch's own CPU probe."""
    if flags is None:
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        return "avx512_bf16" if probe is not None and probe() else None
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


def resolve_precision(setting: str, device: torch.device | str) -> Precision:
    """The compute precision ``train.precision`` means on ``device``, with the reason (see the module doc)."""
    device = torch.device(device)
    if setting not in PRECISIONS:
        raise ValueError(f"train.precision: '{setting}' is not one of {', '.join(PRECISIONS)}")
    if setting == "fp32":
        return Precision(torch.float32, "train.precision=fp32")
    if setting == "bf16":
        slow = device.type == "cpu" and cpu_bf16_unit() is None
        note = "; this CPU has no bf16 units (avx512_bf16/AMX), so bf16 matmuls are slower than fp32" if slow else ""
        return Precision(torch.bfloat16, f"train.precision=bf16{note}")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, f"auto: {torch.cuda.get_device_name(device)} supports bf16")
        return Precision(torch.float32, "auto: this CUDA device has no bf16 support")
    if device.type == "cpu":
        unit = cpu_bf16_unit()
        if unit is not None:
            return Precision(torch.bfloat16, f"auto: the CPU has {unit}")
        return Precision(torch.float32, "auto: the CPU has no bf16 units (avx512_bf16/AMX)")
    return Precision(torch.float32, f"auto: fp32 on {device.type}")


def autocast(precision: Precision, device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast for forward passes under a mixed precision; a no-op context under fp32."""
    if not precision.mixed:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=precision.dtype)


def autocast_for(setting: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``autocast(resolve_precision(setting, device), device)``: what every forward of a run is wrapped in."""
    return autocast(resolve_precision(setting, device), device)


def check_master_weights(named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> None:
    """Training keeps fp32 master weights: reject a trainable parameter in another dtype (one line)."""
    from epo.config import ConfigError

    bad = [(name, p.dtype) for name, p in named_params if p.requires_grad and p.dtype != torch.float32]
    if bad:
        name, dtype = bad[0]
        raise ConfigError(
            f"model.dtype: {len(bad)} trainable weights are {str(dtype).removeprefix('torch.')} ({name}, ...), and "
            "AdamW would update them in place, rounding small steps away; train with model.dtype=float32 (fp32 "
            "master weights) and train.precision=bf16 or auto for bf16 compute (bf16 weights: inference or a "
            "frozen LoRA base only)"
        )
