"""Sharded checkpoints with torch.distributed.checkpoint (DCP): weights and optimizer states, resumable on any
number of processes (2 -> 1, 1 -> 2, ...), used when train.parallel=fsdp2 (with or without FSDP sharding).

One checkpoint dir is the usual one (trainer/checkpoint.py: atomic rename, MANIFEST checksums, `latest`, pruning)
plus a `dcp/` dir:

    step_000010/
        dcp/                     every rank's shards of {policy, policy_optim[, critic, critic_optim]} + .metadata
        model.safetensors        consolidated weights (adapter_model.safetensors under LoRA), written by rank 0, so
        value.safetensors        the dir stays loadable by `--model` / `init_from` (trainer/checkpoint_model.py)
        optim.pt                 schedulers only (the optimizers are in dcp/)
        state.pt, config.yaml, MANIFEST.json

How it is written: every rank writes its shards into a staging dir next to the checkpoints (`.dcp-step_N`, rank 0
creates it), rank 0 gathers the consolidated weights, then writes the rest through `save_checkpoint`, which moves
the staging dir into its temp dir before the manifest (checksummed with everything else) and the atomic rename. A
crash leaves the previous checkpoints untouched; a leftover staging dir is removed by the next save.

Keys are the plain model's parameter names (`get_state_dict`: FQNs, FSDP wrappers removed; optimizer state keyed by
name, not by position), which is what lets DCP reshard on load into a different number of ranks, or into an
unsharded model in one process. Under LoRA only the trainable (adapter) weights are stored, as in the full format.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from epo.trainer import distributed
from epo.trainer.checkpoint import CHECKPOINTS_DIR, Checkpoint, CheckpointError

DCP_DIR = "dcp"


def is_sharded(ckpt: Checkpoint) -> bool:
    return (ckpt.path / DCP_DIR).is_dir()


def _options(trainer, full: bool = False, loading: bool = False):
    """LoRA: only the trainable (adapter) weights are stored, so loading leaves the frozen base as built."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    lora = trainer.cfg.model.lora.enabled
    return StateDictOptions(ignore_frozen_params=lora, full_state_dict=full, cpu_offload=full,
                            strict=not (loading and lora))  # fmt: skip


def _parts(trainer) -> dict[str, tuple]:
    parts = {"policy": (trainer.policy, trainer.optimizer)}
    if trainer.critic is not None:
        parts["critic"] = (trainer.critic, trainer.critic_optimizer)
    return parts


def _state(trainer) -> dict[str, dict]:
    """{name: model state, name_optim: optimizer state} as DCP state dicts (DTensor shards under FSDP2)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    state = {}
    for name, (model, optimizer) in _parts(trainer).items():
        state[name], state[f"{name}_optim"] = get_state_dict(model, optimizer, options=_options(trainer))
    return state


def save(trainer) -> Path | None:
    """Every rank: DCP shards + the consolidated weights; rank 0 writes the checkpoint. Its path on every rank."""
    import torch.distributed.checkpoint as dcp

    from epo.trainer.fsdp import full_state_dict

    staging = trainer.run_dir / CHECKPOINTS_DIR / f".dcp-step_{trainer.step:06d}"

    def fresh_staging() -> None:
        for old in staging.parent.glob(".dcp-step_*"):  # an earlier crash's leftovers
            shutil.rmtree(old, ignore_errors=True)
        staging.mkdir(parents=True)

    distributed.run_on_main(fresh_staging)
    dcp.save(_state(trainer), checkpoint_id=str(staging))
    lora = trainer.cfg.model.lora.enabled
    model_state = full_state_dict(trainer.policy, trainable_only=lora)  # a collective: every rank
    if lora:  # exactly the adapters, as the full format stores them (a tied frozen lm_head key slips through)
        trainable = {n for n, p in trainer.policy.named_parameters() if p.requires_grad}
        model_state = {k: v for k, v in model_state.items() if k in trainable}
    value_state = full_state_dict(trainer.critic) if trainer.critic is not None else None
    distributed.barrier()  # every rank's shards are on disk before rank 0 moves them

    def write() -> Path:
        return trainer._write_checkpoint(
            model_state, value_state, optimizer_states={}, write_files=lambda tmp: staging.rename(tmp / DCP_DIR)
        )

    return distributed.run_on_main(write)


def load(trainer, ckpt: Checkpoint) -> None:
    """Weights and optimizer states from ckpt's DCP shards into the trainer's (sharded or not) models, on every
    rank; DCP reshards whatever the number of ranks that wrote them."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _state(trainer)  # templates: the shapes/shardings to load into (optimizer states initialised)
    try:
        dcp.load(state, checkpoint_id=str(ckpt.path / DCP_DIR))
    except Exception as e:  # e.g. keys of another model
        raise CheckpointError(
            f"{ckpt.path}/{DCP_DIR}: cannot be loaded into this run's model ({str(e).splitlines()[0]})"
        ) from None
    for name, (model, optimizer) in _parts(trainer).items():
        set_state_dict(model, optimizer, model_state_dict=state[name], optim_state_dict=state[f"{name}_optim"],
                       options=_options(trainer, loading=True))  # fmt: skip


def consolidated_policy(trainer):
    """Rank 0: a plain (unsharded, CPU) copy of the policy with the trained weights, for the HF export; other ranks:
    None. A collective under FSDP2. The copy is built from the config under a forked RNG (the run's streams are
    untouched) and every weight is then overwritten."""
    from epo.trainer import setup
    from epo.trainer.fsdp import full_state_dict

    state = full_state_dict(trainer.policy)
    if not trainer.dist.is_main:
        return None
    with torch.random.fork_rng(devices=[]):
        model, _ = setup.load_policy(trainer.cfg, torch.device("cpu"))
    model.load_state_dict(state)  # strict: every weight is the trained one
    return model
