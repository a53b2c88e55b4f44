"""FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimizer state sharded over the ranks.

    train.parallel=fsdp2   torchrun --nproc_per_node N -m epo.cli train ... train.parallel=fsdp2

What is sharded, and why this way (as torchtune/torchtitan/accelerate do it: one FSDP unit per decoder block, then
the root):
    policy       each decoder block (HF `_no_split_modules`, e.g. LlamaDecoderLayer; LoRA adapters inside stay
                 with their block), then a `StatsRoot` wrapper around the whole (peft) model holds the rest
                 (embeddings, final norm, LM head; tied or not). Our loss runs the backbone and the LM head
                 *separately* (models/logprobs.py), so the HF model's own forward never runs; the wrapper's forward
                 is `response_logprobs`, and FSDP's root pre-forward gathers embeddings and head for both halves.
                 The root keeps them gathered through backward (FSDP's default for a root), which the chunked head's
                 custom autograd Function needs (it saves the head weight for backward).
    critic       a ValueModel: its blocks, its fp32 head (own unit: it must stay fp32 under a bf16 policy), root.
    shared head  SharedValueHead: its own unit (fp32).
    reference    a frozen copy (no LoRA): sharded like the policy; with LoRA the policy itself, adapters disabled.

Mixed precision follows train.precision (models/precision.py): fp32 master weights always (the sharded parameters
the optimizer updates); when it resolves to bf16, `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`.

Gradient reduction is FSDP's reduce-scatter, with the divide factor set to 1: the loss is already divided by
*global* mini-batch counts, so a sum over ranks is the single-process gradient (as with `all_reduce_grads`, which
is skipped for sharded parameters). Every FSDP forward is a collective, so every rank must run the same number of
forwards and backwards: `distributed.my_share` pads a rank that has fewer micro-batches with a `Padding` entry that
the update computes and discards (zero loss). Generation (HF backend) and rank-0-only evaluation run under
`gathered`: every unit is all-gathered once and kept whole, so ranks generate different numbers of tokens without
collectives.

With one process (no process group) nothing is sharded; train.parallel=fsdp2 then only selects the sharded
checkpoint format (trainer/dist_checkpoint.py), so a 1-process run resumes on N processes and back.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
from torch import nn

from epo.models import response_logprobs as _plain_response_logprobs
from epo.models.logprobs import ResponseStats
from epo.trainer import distributed

# inner model -> its FSDP root wrapper (weak: a dropped model takes its entry with it)
_ROOTS: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


class StatsRoot(nn.Module):
    """FSDP root around a causal LM (plain or peft) whose forward is `response_logprobs`: the one entry point that
    runs both the backbone and the LM head, so the root's parameters are gathered for both. Returns a tuple (FSDP
    hooks its backward on the output tensors; a dataclass would hide them)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, response_mask, temperature, chunk_tokens, with_entropy, return_hidden):
        stats = _plain_response_logprobs(
            self.model, input_ids, attention_mask, response_mask, temperature, chunk_tokens, with_entropy, return_hidden
        )
        return stats.logprobs, stats.entropy, stats.hidden


def response_logprobs(model: nn.Module, input_ids, attention_mask, response_mask, temperature: float = 1.0,
                      chunk_tokens: int = 1024, with_entropy: bool = True, return_hidden: bool = False) -> ResponseStats:  # fmt: skip
    """`epo.models.response_logprobs`, through the FSDP root when `model` is sharded."""
    root = _ROOTS.get(model)
    if root is None:
        return _plain_response_logprobs(
            model, input_ids, attention_mask, response_mask, temperature, chunk_tokens, with_entropy, return_hidden
        )
    return ResponseStats(
        *root(input_ids, attention_mask, response_mask, temperature, chunk_tokens, with_entropy, return_hidden)
    )


def is_sharded(model: nn.Module) -> bool:
    return model in _ROOTS or _is_fsdp(model)


def _is_fsdp(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an HF model (plain or peft): modules whose class is in `_no_split_modules`, the
    list accelerate's FSDP auto-wrap uses; else `get_decoder().layers`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if blocks:
        return blocks
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise ValueError(f"train.parallel=fsdp2: cannot find the decoder blocks of {type(base).__name__}")
    return list(layers)


def mp_policy(precision_dtype: torch.dtype):
    """fp32 master weights; bf16 gathered parameters and compute, fp32 gradient reduction, when bf16 is chosen."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision_dtype == torch.float32:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=precision_dtype, reduce_dtype=torch.float32)


def _mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (distributed.world_size(),))


def _finish_root(root: nn.Module) -> None:
    """Sum (not average) gradients over ranks, and fix which unit is the root now: FSDP otherwise takes the first
    unit that runs forward, and generation runs the decoder blocks without the root."""
    for m in root.modules():
        if _is_fsdp(m):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    root._get_fsdp_state()._lazy_init()


def shard_causal_lm(model: nn.Module, device: torch.device, dtype: torch.dtype) -> StatsRoot:
    """fully_shard each decoder block, then a StatsRoot around the model; the model's parameters become DTensor
    shards in place (build its optimizer afterwards)."""
    from torch.distributed.fsdp import fully_shard

    mesh, mp = _mesh(device), mp_policy(dtype)
    for block in decoder_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
    root = StatsRoot(model)
    fully_shard(root, mesh=mesh, mp_policy=mp)
    _finish_root(root)
    _ROOTS[model] = root
    return root


def shard_value_model(critic: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A ValueModel: blocks, its fp32 head, then itself as root (its forward runs backbone and head)."""
    from torch.distributed.fsdp import fully_shard

    mesh, mp = _mesh(device), mp_policy(dtype)
    fully_shard(critic.head, mesh=mesh, mp_policy=mp_policy(torch.float32))
    for block in decoder_blocks(critic.backbone):
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
    fully_shard(critic, mesh=mesh, mp_policy=mp)
    _finish_root(critic)
    return critic


def shard_head(head: nn.Module, device: torch.device) -> nn.Module:
    """A small fp32 module (SharedValueHead) as its own root unit."""
    from torch.distributed.fsdp import fully_shard

    fully_shard(head, mesh=_mesh(device), mp_policy=mp_policy(torch.float32))
    _finish_root(head)
    return head


def _units(modules) -> list[nn.Module]:
    roots = [_ROOTS.get(m, m) for m in modules if m is not None]
    return [u for r in roots for u in r.modules() if _is_fsdp(u)]


@contextlib.contextmanager
def gathered(*modules: nn.Module | None) -> Iterator[None]:
    """Every FSDP unit of `modules` all-gathered (a collective: all ranks enter) and kept whole inside the block, so
    forwards there run without collectives: HF generation, whose number of forwards differs between ranks, and
    evaluation on rank 0 only. Units are resharded on exit. A no-op for unsharded modules."""
    units = _units(modules)
    if not units:
        yield
        return
    roots = {id(u) for u in units if u._get_fsdp_state()._is_root}
    for u in units:
        u.set_reshard_after_forward(False, recurse=False)
    for u in units:
        u.unshard()
    try:
        yield
    finally:
        for u in units:
            if id(u) in roots:  # reshards its tree and forgets the forward order the forwards in here recorded
                u.reset_iter_state()  # (rank 0 alone evaluating would otherwise skew backward prefetching)
        for u in units:
            u.reshard()
            u.set_reshard_after_forward(id(u) not in roots, recurse=False)  # roots: FSDP's default (kept)


def full_state_dict(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The consolidated (unsharded) state dict on CPU, complete on rank 0 (a collective under FSDP; other ranks may
    get an empty dict). Keys are the plain model's."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    return get_model_state_dict(model, options=options)


def clip_grad_norm_(params, max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` that also takes FSDP's sharded (DTensor) gradients. For those the squares
    of each rank's local shard are summed over ranks (every element lives on exactly one rank under FSDP's Shard(0)),
    as FSDP1's clip_grad_norm_ did: one all-reduce, explicit about what is summed. Pass the optimizer's
    parameters (update.optimized_params), not `model.parameters()` (see there)."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    grads = [p.grad for p in params]
    if not any(hasattr(g, "full_tensor") for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    squares = torch.zeros((), dtype=torch.float64, device=grads[0].device)
    for g in grads:
        if hasattr(g, "full_tensor") and not all(pl.is_shard() for pl in g.placements):
            raise ValueError(f"clip_grad_norm_: a gradient with placements {g.placements} (expected FSDP shards)")
        local = g.to_local() if hasattr(g, "full_tensor") else g
        squares += local.double().pow(2).sum()
    total = distributed.all_reduce_sum(squares).sqrt().float()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def shard_trainer(trainer) -> bool:
    """train.parallel=fsdp2 under torchrun: shard the trainer's policy, reference, critic (after the reference and
    critic copies were taken from the unsharded policy) and rebuild their optimizers and schedulers over the
    shards (no step was taken yet). Returns whether anything was sharded."""
    from epo.models import SharedValueHead
    from epo.trainer import setup

    cfg = trainer.cfg
    distributed.set_sharded(False)
    if cfg.train.parallel != "fsdp2" or not trainer.dist.enabled:
        return False
    _check_backend(cfg.rollout.backend)
    distributed.set_sharded(True)
    dtype = setup.precision(cfg, trainer.device).dtype
    shard_causal_lm(trainer.policy, trainer.device, dtype)
    if trainer.reference is not None and trainer.reference is not trainer.policy:
        shard_causal_lm(trainer.reference, trainer.device, dtype)
    if isinstance(trainer.critic, SharedValueHead):
        shard_head(trainer.critic, trainer.device)
    elif trainer.critic is not None:
        shard_value_model(trainer.critic, trainer.device, dtype)
    trainer.optimizer, trainer.scheduler = _optimizer_and_scheduler(trainer.policy, cfg, cfg.optim.lr)
    if trainer.critic is not None:
        trainer.critic_optimizer, trainer.critic_scheduler = _optimizer_and_scheduler(
            trainer.critic, cfg, cfg.optim.value_lr
        )
    return True


def _check_backend(requested: str) -> None:
    """vLLM rollouts take their weights from the policy's full state; with sharded weights that path is not wired."""
    from epo.config import ConfigError
    from epo.rollout.backend_select import detect_backend

    if requested != "hf" and detect_backend(requested)[0] == "vllm":
        raise ConfigError(
            "train.parallel: fsdp2 with the vllm rollout backend is not supported yet; use rollout.backend=hf or "
            "train.parallel=ddp"
        )


def _optimizer_and_scheduler(model: nn.Module, cfg, lr: float):
    from epo.trainer import setup

    optimizer = setup.make_optimizer(model.parameters(), lr, cfg)
    scheduler = setup.warmup_cosine(optimizer, cfg.train.total_steps, cfg.optim.warmup_ratio, cfg.optim.min_lr_ratio)
    return optimizer, scheduler
