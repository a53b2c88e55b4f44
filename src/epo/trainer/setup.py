"""Build what a run needs from its config: seeds, device, policy (+LoRA), critic, reference, optimizers, envs."""

from __future__ import annotations

import copy
import math
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from epo.agent import PromptBuilder
from epo.config import Config, ConfigError, RolloutConfig
from epo.envs import get_spec
from epo.envs.pool import EnvPool
from epo.errors import EnvSetupError
from epo.models import (
    apply_lora,
    enable_activation_checkpointing,
    freeze_to_top_layers,
    load_model_and_tokenizer,
    only_adapters_train,
)
from epo.models.precision import Precision, check_master_weights, resolve_precision
from epo.rollout.backend import HFBackend
from epo.rollout.collector import Collector
from epo.trainer import allocator, distributed
from epo.trainer.checkpoint_model import is_checkpoint_source, load_checkpoint_model


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    use_deterministic_kernels(deterministic)


_DETERMINISM_SET_BY_EPO = False


def use_deterministic_kernels(on: bool) -> None:
    """train.deterministic. Turned off again only where a run of ours turned it on, so that one process running
    several runs (`epo sweep`, tests) carries nothing over while a caller's own setting stands."""
    global _DETERMINISM_SET_BY_EPO
    if not on and not _DETERMINISM_SET_BY_EPO:
        return
    if on and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        if torch.cuda.is_initialized():  # cuBLAS reads it once, when the process makes its first handle
            warnings.warn(
                "train.deterministic: CUDA was initialised before CUBLAS_WORKSPACE_CONFIG was set; export "
                "CUBLAS_WORKSPACE_CONFIG=:4096:8 before starting for deterministic cuBLAS",
                stacklevel=2,
            )
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(on)  # an op without a deterministic kernel raises rather than varies
    torch.backends.cudnn.deterministic = on
    _DETERMINISM_SET_BY_EPO = on


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EnvSetupError(f"model.device: '{name}' requested but CUDA is not available")
    return torch.device(name)


def model_source(cfg: Config) -> str:
    """init_from wins over model.path; an `epo sft` output dir means its export/, an RL run dir its final/ (a run
    without final/ and checkpoint dirs are loaded by `load_policy` through epo.trainer.checkpoint_model)."""
    if cfg.init_from:
        path = Path(cfg.init_from)
        for sub in ("export", "final"):
            if (path / sub).is_dir():
                return str(path / sub)
        return str(path)
    return cfg.model.path


def load_policy(cfg: Config, device: torch.device, train: bool = True):
    """train=False (evaluation only) allows bf16 weights; training requires fp32 trainable (master) weights."""
    source = model_source(cfg)
    if is_checkpoint_source(source):  # RUN/checkpoints/step_N, or a run without final/: LoRA merged on load
        model, tokenizer = load_checkpoint_model(source, dtype=cfg.model.dtype)
    else:
        model, tokenizer = load_model_and_tokenizer(source, dtype=cfg.model.dtype, device="cpu")
    if cfg.model.lora.enabled:
        lc = cfg.model.lora
        model = apply_lora(model, r=lc.r, alpha=lc.alpha, dropout=lc.dropout, target_modules=list(lc.target_modules))
    freeze_to_top_layers(model, cfg.model.trainable_layers)
    if cfg.model.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if train:
        check_master_weights(model.named_parameters())
    return model.to(device), tokenizer


def precision(cfg: Config, device: torch.device) -> Precision:
    """The run's compute precision (train.precision resolved for this device); print its .line() once per run."""
    return resolve_precision(cfg.train.precision, device)


def rank0_console(console: Console | None = None) -> Console:
    """`console` (default: a new one on stdout) on rank 0, a quiet one elsewhere: under torchrun every rank runs
    the setup code, and one line per rank would repeat each message world_size times."""
    if not distributed.info().is_main:
        return Console(quiet=True)
    return console or Console()


def set_allocator(cfg: Config) -> str:
    """train.malloc_mmap_threshold and train.malloc_trim, before the model is loaded (trainer/allocator.py); returns
    the line that `log_precision` prints beside the precision (and provenance records)."""
    return allocator.configure(cfg.train.malloc_mmap_threshold, cfg.train.malloc_trim)


def log_precision(console, cfg: Config, device: torch.device) -> Precision:
    """Print the precision line (and the allocator's) once per console: a warm-start SFT and the RL run after it
    share one command."""
    chosen = precision(cfg, device)
    line = chosen.line() + ("; deterministic kernels (train.deterministic)" if cfg.train.deterministic else "")
    line += f"\n{allocator_line}" if (allocator_line := allocator.applied_line()) else ""
    if getattr(console, "_epo_precision_line", None) != line:
        console.print(line, markup=False, highlight=False)
        console._epo_precision_line = line
    return chosen


def make_optimizer(params, lr: float, cfg: Config) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    kwargs = dict(lr=lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    try:  # fused AdamW is the fastest here (foreach was erratic on these CPUs); fall back where unsupported
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, foreach=False, **kwargs)


def warmup_cosine(optimizer, total_steps: int, warmup_ratio: float, min_lr_ratio: float):
    """Linear warm-up over warmup_ratio·K steps, then cosine from 1 to min_lr_ratio at step K."""
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_reference(policy, cfg: Config):
    """The initial policy for the KL term (None when kl_coef is 0). With LoRA (adapters the only trainable
    parameters) it is the policy object itself, run with its adapters disabled (prepare_step): no second copy.
    Otherwise a frozen deep copy."""
    if cfg.algo.kl_coef <= 0:
        return None
    if only_adapters_train(policy):
        return policy
    ref = copy.deepcopy(policy)
    ref.requires_grad_(False)
    run_precision = precision(cfg, next(policy.parameters()).device)
    if run_precision.mixed:  # an inference-only copy: bf16 weights halve its memory, autocast computes in bf16 anyway
        ref.to(run_precision.dtype)
    return ref.eval()


def make_critic(policy, cfg: Config):
    """PPO's critic: a separate ValueModel (copy of the policy backbone + head) or a SharedValueHead."""
    if cfg.algo.name != "ppo":
        return None
    from epo.models import SharedValueHead, ValueModel

    if cfg.model.value_model == "shared":
        return SharedValueHead(policy.config.hidden_size)
    return ValueModel.from_policy(policy)


def shared_critic_note(cfg: Config) -> str | None:
    """A line for the start of a PPO run with a shared value head. In docs/RESULTS.md (Experiments 10 and 11: sparse
    rewards of 0 or 10, policy lr 3e-4) no shared head learned the returns; at head lr 1e-5 PPO collapsed late in 1 of
    8 seeds, at the policy's lr it broke by step 15 in all 5, and a separate critic trained like GRPO."""
    if cfg.algo.name != "ppo" or cfg.model.value_model != "shared":
        return None
    lr, value_lr = cfg.optim.lr, cfg.optim.value_lr
    return (
        f"model.value_model=shared: the value loss's gradient reaches the trunk the policy uses (head at "
        f"optim.value_lr={value_lr:g}, trunk at optim.lr={lr:g}). In docs/RESULTS.md's Experiments 10-11 such heads "
        "never fitted the returns, and a head at the policy's lr broke PPO within 15 steps; model.value_model=separate "
        "trained like GRPO there"
    )


def max_turns(cfg: Config) -> int:
    return cfg.env.max_turns or get_spec(cfg.env.name).max_turns


def list_older(cfg: Config) -> bool:
    if cfg.agent.list_older_actions == "auto":
        return get_spec(cfg.env.name).list_older_actions
    return cfg.agent.list_older_actions == "true"


def pool_class(cfg: Config) -> type[EnvPool]:
    """The env pool class make_pool builds: local worker processes, or Ray actors (env.executor=ray)."""
    if cfg.env.executor == "ray":
        from epo.envs.ray_pool import RayEnvPool  # imports ray only when the pool starts

        return RayEnvPool
    return EnvPool


def make_pool(cfg: Config) -> EnvPool:
    get_spec(cfg.env.name)  # unknown env names fail here, with the list of known ones
    cls = pool_class(cfg)
    common = {"num_workers": cfg.env.num_workers, "step_timeout_s": cfg.env.step_timeout_s}
    if cfg.env.executor == "ray":
        ray_options = {"num_cpus_per_worker": cfg.env.ray_num_cpus, "memory_mb": cfg.env.ray_memory_mb}
        return cls(cfg.env.name, dict(cfg.env.kwargs), address=cfg.env.ray_address, **ray_options, **common)
    return cls(cfg.env.name, dict(cfg.env.kwargs), mode=cfg.env.pool_mode, **common)


def make_backend(cfg: Config, model, tokenizer, console: Console | None = None):
    """rollout.backend resolved (auto: vllm where installed and runnable, else hf), said in one line on `console`
    (rank 0 only)."""
    from epo.rollout.backend_select import detect_backend

    name, why = detect_backend(cfg.rollout.backend)
    rank0_console(console).print(why, markup=False, highlight=False, soft_wrap=True)  # markup off: 'epo[vllm]'
    if name == "hf" and cfg.rollout.is_correction == "tis":
        raise ConfigError("rollout.is_correction: tis needs the sampler's log-probs; the hf backend (auto) has none")
    if name == "hf" and cfg.rollout.vllm_sleep:
        raise ConfigError("rollout.vllm_sleep: the hf backend (auto) has no engine to put to sleep")
    if name == "vllm":
        from epo.rollout.vllm_backend import vllm_backend_from_config

        if cfg.rollout.generation_batch_size != RolloutConfig().generation_batch_size:  # a preset's, for hf
            rank0_console(console).print(
                f"note: rollout.generation_batch_size={cfg.rollout.generation_batch_size} is not used: the vLLM "
                "engine schedules its own batches (it limits hf generate calls)",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        return vllm_backend_from_config(cfg, model, tokenizer, model_source(cfg))
    compute = precision(cfg, next(model.parameters()).device)
    return HFBackend(model, tokenizer, batch_size=cfg.rollout.generation_batch_size, precision=compute)


def make_collector(cfg: Config, pool, model, tokenizer, console: Console | None = None) -> Collector:
    prompts = PromptBuilder(tokenizer, cfg.agent, list_older_actions=list_older(cfg), env_name=cfg.env.name)
    backend = make_backend(cfg, model, tokenizer, console)
    return Collector(pool, backend, prompts, tokenizer, cfg.agent, max_turns(cfg))


def env_splits(cfg: Config) -> dict[str, list[str]]:
    return get_spec(cfg.env.name).splits(**dict(cfg.env.kwargs))


def check_env(cfg: Config) -> dict[str, list[str]]:
    """The env's splits, after checking that the configured train/eval splits exist (one-line errors)."""
    splits = env_splits(cfg)
    for split in [cfg.env.train_split, *cfg.env.eval_splits]:
        if split not in splits:
            raise ConfigError(f"env: split '{split}' not in {cfg.env.name} (splits: {', '.join(splits)})")
    return splits


@dataclass
class TaskSampler:
    """Cycles through shuffled passes over the training split; its state is checkpointed for exact resume."""

    task_ids: list[str]
    seed: int
    epoch: int = 0
    cursor: int = 0
    order: list[str] = field(default_factory=list)

    def sample(self, n: int) -> list[str]:
        out = []
        while len(out) < n:
            if self.cursor >= len(self.order):
                self.order = sorted(self.task_ids)
                random.Random(self.seed * 100_003 + self.epoch).shuffle(self.order)
                self.epoch, self.cursor = self.epoch + 1, 0
            out.append(self.order[self.cursor])
            self.cursor += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "order": list(self.order)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self.order = state["epoch"], state["cursor"], list(state["order"])


def quiet_libraries() -> None:
    """transformers' per-tensor progress bars drown our own progress display."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def set_threads() -> None:
    """Use every core for torch ops unless the user said otherwise (env workers are separate processes)."""
    quiet_libraries()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
