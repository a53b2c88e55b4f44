"""Data-parallel training on torch.distributed: process-group setup and the few collectives the trainer needs.

    epo train ...                                   # 1 process: every helper below is an identity
    torchrun --nproc_per_node 2 -m epo.cli train ...  # N processes (gloo on CPU, nccl on GPU), same config

How a step is split (whole GRPO groups stay on one rank):
    tasks (B, identical on every rank: same sampler, same seed) -> rank r plays the contiguous chunk r of the B tasks
    x G copies -> `gather_rollout` concatenates the ranks' samples and trajectories in rank order with their group
    and trajectory ids offset, which is exactly the order and numbering a single process produces. Every rank then
    holds the whole step's turn samples (token ids and rewards: small), so GRPO group statistics, GAE whitening,
    the mini-batch shuffle, the loss normalisers (tokens / samples of the mini-batch) and the trajectory weights are
    computed on the global batch by the unchanged single-process code. The expensive part, forward and backward,
    is split: each mini-batch is packed into micro-batches exactly as one process would pack it, and rank r runs
    micro-batches r, r+W, r+2W, ... (`my_share`). Per-sample outputs (old log-probs, entropies, values) are
    all-gathered (`merge_per_sample`); gradients are summed over ranks after each mini-batch's accumulation
    (`all_reduce_grads`, DDP's reduction without its wrapper: our loss runs the backbone and the LM head separately,
    which DDP's forward hooks would not see). Since every loss term is a sum over tokens divided by *global*
    mini-batch counts, the summed gradient equals the single-process gradient up to float summation order.
    Metrics are merged from every rank's per-micro-batch values (`MetricMeans`: weighted, NaN-safe), never as means
    of means.

Rollout sampling uses a per-(seed, step, rank) torch seed (`seed_rollout`), so a run resumes on any number of
processes with well-defined random streams; the update itself draws no torch random numbers.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_distributed() -> bool:
    """True under torchrun / accelerate launch (they export WORLD_SIZE > 1 and a rendezvous address)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu", timeout_s: float | None = None) -> DistInfo:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    gloo on CPU, nccl on CUDA. Without those env vars (or with WORLD_SIZE=1) nothing is initialised. Collectives
    time out after EPO_DIST_TIMEOUT_S (default 2 h: the other ranks wait while rank 0 evaluates or clones)."""
    if dist.is_available() and dist.is_initialized():
        return info()
    if not launched_distributed():
        return DistInfo()
    timeout_s = timeout_s or float(os.environ.get("EPO_DIST_TIMEOUT_S", "7200"))  # rank 0 may eval/clone alone
    backend = "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    _OWNED["group"] = True
    return info()


def info() -> DistInfo:
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def world_size() -> int:
    return info().world_size


def rank() -> int:
    return info().rank


# Whether init_from_env created the default process group. A colocated vLLM engine creates its own (world size 1)
# and destroys it at exit; tearing that one down here makes vLLM's exit handler fail.
_OWNED = {"group": False}


def shutdown() -> None:
    """Destroy the process group that init_from_env created (and only that one)."""
    if _OWNED["group"] and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _OWNED["group"] = False
    _SHARDED["on"] = False


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (e.g. a Ctrl-C / SIGTERM seen by one process: all stop together)."""
    if world_size() == 1:
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=_comm_device())).item() > 0)


def _comm_device() -> torch.device:
    """nccl reduces only CUDA tensors, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def from_main(obj):
    """Rank 0's value of obj on every rank (e.g. a run dir named after the clock)."""
    return all_gather_objects(obj)[0]


def first_nonempty(value: str) -> str:
    """The first non-empty string of the ranks' values (e.g. the name of the signal that one rank received)."""
    return next((v for v in all_gather_objects(value) if v), "")


def run_on_main(fn: Callable[[], T]) -> T:
    """fn() on rank 0 only; its (picklable) result on every rank. An exception on rank 0 is raised on every rank
    (the others would otherwise wait forever at the next collective). One process: just fn()."""
    if world_size() == 1:
        return fn()
    out: Any = None
    err: BaseException | None = None
    if rank() == 0:
        try:
            out = fn()
        except BaseException as e:  # re-raised below, on rank 0 as itself
            err = e
    sent = err
    if err is not None:
        try:
            pickle.dumps(err)
        except Exception:
            sent = RuntimeError(f"rank 0: {type(err).__name__}: {err}")
    out, sent = from_main((out, sent))
    if err is not None:
        raise err
    if sent is not None:
        raise sent
    return out


@contextlib.contextmanager
def own_run_dir_on_main(run_dir: str | Path, resume: bool = False, on_stale=None) -> Iterator[Path]:
    """`rundir.own_run_dir` on rank 0 only (the lock is one process's: rank 0 writes everything); the other ranks
    enter the block only after rank 0 owns the dir, and raise rank 0's error (e.g. a refused dir) instead of
    hanging. One process: exactly own_run_dir."""
    from epo.trainer.rundir import own_run_dir

    if world_size() == 1:
        with own_run_dir(run_dir, resume=resume, on_stale=on_stale) as path:
            yield path
        return
    with contextlib.ExitStack() as stack:

        def take() -> None:  # rank 0 holds the lock until the ExitStack closes
            stack.enter_context(own_run_dir(run_dir, resume=resume, on_stale=on_stale))

        run_on_main(take)
        yield Path(run_dir)


def gather_faults(faults: list) -> list[dict[str, Any]]:
    """Every rank's env faults (PoolFaults or dicts) as dicts, rank 0's first; with several processes each record
    names its rank (worker indices are per rank). The same list on every rank."""
    recs = [f if isinstance(f, dict) else {"worker": f.worker, "reason": f.reason, "task": f.task,
                                           "message": f.message} for f in faults]  # fmt: skip
    if world_size() == 1:
        return recs
    return [{"rank": r, **rec} for r, part in enumerate(all_gather_objects(recs)) for rec in part]


# ---------------------------------------------------------------------------------------------------- work split
def shard_bounds(n: int, world: int, r: int) -> tuple[int, int]:
    """[start, end) of rank r's contiguous chunk of n items (sizes differ by at most one, earlier ranks larger)."""
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def my_tasks(tasks: list[str]) -> list[str]:
    """This rank's contiguous chunk of the step's tasks: each task's whole GRPO group is played here."""
    start, end = shard_bounds(len(tasks), world_size(), rank())
    return tasks[start:end]


def my_share(micro_batches: list[list[int]]) -> list[list[int]]:
    """This rank's micro-batches of a mini-batch packed the single-process way (round-robin: lengths are sorted,
    so every rank gets short and long ones). Under FSDP2 every forward is a collective, so a rank with fewer
    micro-batches gets `Padding` entries (another rank's micro-batch, to compute and discard) up to the same count."""
    w = world_size()
    if w == 1:
        return micro_batches
    mine = micro_batches[rank() :: w]
    if _SHARDED["on"] and micro_batches:
        mine += [Padding(micro_batches[0])] * (-(-len(micro_batches) // w) - len(mine))
    return mine


class Padding(list):
    """A micro-batch a rank runs only to take part in FSDP's collectives: its outputs and loss are discarded
    (`iter_micro_batches` carries the flag to MicroBatch.padding)."""

    padding = True


def is_padding(micro) -> bool:
    """For a packed index list or a MicroBatch."""
    return bool(getattr(micro, "padding", False))


_SHARDED = {"on": False}  # set by trainer/fsdp.py when the models are sharded with FSDP2


def set_sharded(on: bool) -> None:
    _SHARDED["on"] = on


# ---------------------------------------------------------------------------------------------------- collectives
def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] (a one-element list in one process)."""
    w = world_size()
    if w == 1:
        return [obj]
    out = [None] * w
    dist.all_gather_object(out, obj)
    return out


def merge_per_sample(values: list) -> list:
    """Per-sample list where each rank filled only its own entries (None elsewhere) -> the full list on all ranks."""
    if world_size() == 1:
        return values
    mine = {i: v for i, v in enumerate(values) if v is not None}
    merged = list(values)
    for part in all_gather_objects(mine):
        for i, v in part.items():
            merged[i] = v
    return merged


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in one process); returns x."""
    if world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of `params` over ranks in one flat buffer (a rank that ran no micro-batch adds zeros).

    Losses are already divided by global mini-batch counts, so the sum is the gradient of the global loss."""
    if world_size() == 1 or not params or any(_is_dtensor(p) for p in params):  # FSDP2 reduce-scatters itself
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has_grad = torch.tensor([float(p.grad is not None) for p in params], device=grads[0].device)
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [has_grad])
    all_reduce_sum(flat)
    offset = 0
    for k, p in enumerate(params):
        n = p.numel()
        # a parameter no rank touched keeps grad None, as in one process (AdamW then skips it)
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype) if flat[-len(params) + k] > 0 else None
        offset += n


def _is_dtensor(t: torch.Tensor) -> bool:
    return hasattr(t, "full_tensor")  # torch.distributed.tensor.DTensor, without importing it in 1-process runs


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Copy rank 0's weights to every rank (as DDP does at construction): identical starts whatever the init."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def rollout_seed(seed: int, step: int) -> int:
    """A seed from (seed, step, rank): distinct per rank and step, the same in a resumed run as in a continuous one."""
    return (seed * 1_000_003 + step) * 1_009 + rank()


def seed_rollout(seed: int, step: int) -> None:
    """Seed torch's sampling RNG from (seed, step, rank): distinct streams per rank, independent of how many ranks
    a resumed run had before. Only used with more than one process (a single process keeps its one stream)."""
    torch.manual_seed(rollout_seed(seed, step))


# ---------------------------------------------------------------------------------------------------- rollouts
def gather_rollout(rollout):
    """Concatenate the ranks' RolloutResults in rank order with group/trajectory ids offset so the numbering and
    the sample order equal what one process collecting all tasks would produce. Stats: times are maxima over ranks
    (ranks run in parallel), token counts sums."""
    if world_size() == 1:
        return rollout
    from epo.rollout.collector import RolloutResult

    parts = all_gather_objects(rollout)
    samples, trajs = [], []
    group_off = traj_off = 0
    for part in parts:
        for s in part.samples:
            s.group_id += group_off
            s.traj_id += traj_off
            samples.append(s)
        for t in part.trajectories:
            t.group_id += group_off
            t.traj_id += traj_off
            trajs.append(t)
        group_off += 1 + max((t.group_id - group_off for t in part.trajectories), default=-1)
        traj_off += len(part.trajectories)
    stats = {}
    for k in parts[0].stats:
        vals = [p.stats.get(k, 0.0) for p in parts]
        stats[k] = sum(vals) if k == "gen_tokens" else max(vals)
    if stats.get("gen_s"):
        stats["gen_tokens_per_s"] = stats.get("gen_tokens", 0.0) / stats["gen_s"]
    return RolloutResult(samples, trajs, stats)


def local_device(device: str) -> str:
    """'auto'/'cuda' under torchrun -> this process's GPU (cuda:LOCAL_RANK); CPU stays CPU."""
    if world_size() > 1 and torch.cuda.is_available() and device in ("auto", "cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


class NullLogger:
    """MetricsLogger's interface for ranks other than 0 (they compute the same global metrics; rank 0 writes)."""

    def __enter__(self) -> NullLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def log(self, step: int, metrics: dict) -> None:
        return None

    def log_warnings(self, warnings) -> None:
        return None
