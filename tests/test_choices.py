"""Every enumerated config value changes what runs: no accepted choice is a silent no-op.

The test walks `epo.config.CHOICES`. For each key, `CHECKS[key]` says how to observe what a config *runs*: a
function cfg -> hashable outcome that goes through the same code the trainer uses (setup.*, prepare_step,
micro_batch_loss, EntropyHistory.from_config, ...), plus overrides that put the rest of the config where the key
matters (e.g. algo.name=ppo for algo.gae_level). Every value of the key is loaded with `load_config`; a value that
fails there with a ConfigError counts as its own outcome ("a clear error"). All values of a key must give pairwise
different outcomes.

A CHOICES key without an entry in CHECKS fails `test_every_choice_key_has_a_check`. To register a new key, add ONE
line to CHECKS, e.g.

    "env.executor": Check(_executor_kind, ["env.num_workers=1"]),

with `_executor_kind(cfg)` returning something that differs between the values (a class name, an output).
PENDING lists the only (key, value) pairs allowed to have no distinct outcome yet; each says why.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import functools
import random
import shutil
import tempfile
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import pytest
import torch

from epo.algos import EntropyHistory, trajectory_sample_weights
from epo.config import CHOICES, Config, ConfigError, load_config
from epo.rollout.types import TurnSample
from epo.trainer import setup
from epo.trainer.batching import collate
from epo.trainer.update import forward_pass, micro_batch_loss, prepare_step

BASE = ["model.path=tiny", "env.pool_mode=inline", "env.num_workers=1", "train.mini_batch_size=64"]


@dataclass
class Check:
    observe: Callable[[Config], Hashable]
    overrides: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- shared fixtures (cached: cheap)


@functools.cache
def _tiny():
    torch.manual_seed(0)
    return setup.load_policy(load_config(None, BASE), torch.device("cpu"))


@functools.cache
def _checkpoints() -> tuple[str, str]:
    """A float32 and a bfloat16 copy of the tiny model as HF dirs (model.dtype=auto keeps the file's dtype)."""
    model, tokenizer = _tiny()
    root = tempfile.mkdtemp(prefix="epo-choices-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    dirs = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        path = f"{root}/{name}"
        copy.deepcopy(model).to(dtype).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs.append(path)
    return dirs[0], dirs[1]


def _samples() -> list[TurnSample]:
    """Two groups; trajectories of 1-3 turns with different lengths, outcomes and invalid-turn penalties."""
    gen = random.Random(0)
    out = []
    plan = [(0, 0, 3, 10.0), (1, 0, 1, 0.0), (2, 1, 2, 10.0), (3, 1, 2, 0.0)]  # traj, group, turns, return
    for traj, group, turns, ret in plan:
        for t in range(turns):
            invalid = (traj + t) % 2 == 1
            prompt = [gen.randrange(10, 400) for _ in range(gen.randint(4, 9))]
            response = [gen.randrange(10, 400) for _ in range(gen.randint(2, 5))]
            shaping = -0.1 if invalid else 0.0
            out.append(
                TurnSample(prompt, response, t, traj, group, reward=ret + shaping, shaping=shaping, invalid=invalid)
            )
    return out


def _round(values) -> tuple:
    return tuple(round(float(v), 5) for v in values)


# ----------------------------------------------------------------------------- observers


def _param_dtypes(cfg: Config) -> Hashable:
    out = []
    for path in _checkpoints():
        cfg.model.path = path
        model, _ = setup.load_policy(cfg, torch.device("cpu"), train=False)  # bf16 weights: inference only
        out.append(str(next(model.parameters()).dtype))
    return tuple(out)


def _critic_kind(cfg: Config) -> Hashable:
    return type(setup.make_critic(_tiny()[0], cfg)).__name__


def _pool_workers(cfg: Config) -> Hashable:
    with setup.make_pool(cfg) as pool:
        return len(pool.worker_pids())


def _pool_kind(cfg: Config) -> Hashable:
    """The class setup.make_pool builds (not started here: test_ray_pool plays episodes on both kinds)."""
    return setup.pool_class(cfg).__name__


def _collector(cfg: Config):
    model, tokenizer = _tiny()
    return setup.make_collector(cfg, None, model, tokenizer)


def _prompts(cfg: Config) -> Hashable:
    """The prompt at turn 5 of an episode, in the quest world and in ScienceWorld (auto means each env's own)."""
    history = [(f"observation {k}", f"action {k}") for k in range(5)]
    texts = []
    for env in ("quest", "sciworld"):
        cfg.env.name = env
        texts.append(_collector(cfg).prompts.build_text("the task", "now", ["look", "wait"], history, 5))
    return tuple(texts)


def _backend_kind(cfg: Config) -> Hashable:
    """The backend class and the logged resolution (auto resolves per machine: to hf where vLLM is missing)."""
    from epo.rollout.backend_select import detect_backend

    return type(_collector(cfg).backend).__name__, detect_backend(cfg.rollout.backend)[1]


def _tis_loss(cfg: Config) -> Hashable:
    """TIS needs sampler log-probs (vLLM only): with hf it is a clear error at load; with sampler log-probs set,
    the loss weights change (see tests/test_vllm_logic.py for the values)."""
    return _loss(cfg)


def _advantages(cfg: Config) -> Hashable:
    model, tokenizer = _tiny()
    critic = setup.make_critic(model, cfg)
    data = prepare_step(model, _samples(), tokenizer.pad_token_id, cfg, critic=critic)
    return _round(torch.cat(data.advantages))


def _loss(cfg: Config) -> Hashable:
    """One micro-batch's loss and the metrics of the EPO/KL terms, as update_policy computes them."""
    policy, tokenizer = _tiny()
    pad, samples = tokenizer.pad_token_id, _samples()
    ref = setup.make_reference(policy, cfg)
    if ref is not None:  # a reference equal to the policy would make every KL estimate 0
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(0.05 * torch.randn_like(p))
    data = prepare_step(policy, samples, pad, cfg, ref_policy=ref, critic=setup.make_critic(policy, cfg))
    if data.old_logprobs is None:  # single pass, as update_policy prepares it
        data.entropy = [torch.empty(0)] * len(samples)
    # H̄_t at half each turn's mean entropy: the band [κ_l H̄, κ_r H̄] cuts through the tokens' entropies
    _, entropies = forward_pass(policy, samples, pad, cfg, with_entropy=True)
    turns = {s.turn_idx for s in samples}
    history = EntropyHistory.from_config(cfg.epo, max_turns=3)
    history.update(
        {t: 0.5 * float(torch.cat([h for s, h in zip(samples, entropies) if s.turn_idx == t]).mean()) for t in turns}
    )
    index = list(range(len(samples)))
    mb = collate(samples, index, pad)
    weights = trajectory_sample_weights(torch.tensor([s.traj_id for s in samples]))
    num_tokens = float(sum(len(s.response_ids) for s in samples))
    loss, metrics = micro_batch_loss(policy, mb, data, cfg, history, 3, weights, num_tokens, float(len(samples)), None)
    return _round([loss.item(), metrics.get("actor/kl_ref", 0.0), metrics.get("epo/beta", 0.0)])


def _precision(cfg: Config) -> Hashable:
    """The loss under train.precision's autocast, and the resolution's logged reason (auto resolves per machine:
    on a CPU without bf16 units it computes what fp32 computes, but says it chose so)."""
    from epo.models.precision import resolve_precision

    return _loss(cfg), resolve_precision(cfg.train.precision, "cpu").reason


def _monitor_decision(cfg: Config) -> Hashable:
    """What the trainer does on an early-collapse warning: save / stop flags and the next step's entropy coefficient."""
    from epo.diagnostics import MonitorActions

    actions = MonitorActions(cfg.diag)
    decision = actions.apply([{"kind": "early_collapse", "step": 3}])
    return decision.save, decision.stop, actions.effective(cfg).epo.entropy_coef


def _checkpoint_layout(cfg: Config) -> Hashable:
    """The files of a checkpoint the trainer writes (one process: train.parallel=fsdp2 shards nothing but writes the
    sharded torch.distributed.checkpoint format, resumable on N processes; test_fsdp.py runs it on 2)."""
    from pathlib import Path

    from rich.console import Console

    from epo.trainer.trainer import Trainer

    run = tempfile.mkdtemp(prefix="epo-choices-")
    atexit.register(shutil.rmtree, run, True)
    trainer = Trainer(cfg, Path(run) / "run", console=Console(quiet=True))
    ckpt = trainer._save()
    return tuple(sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*")))


def _history(cfg: Config) -> Hashable:
    # a window of 2 (shorter than the 3 updates) so that window differs from cumulative; set here, not as an
    # override, because the config refuses history_window under the other kinds
    history = EntropyHistory.from_config(dataclasses.replace(cfg.epo, history_window=2), max_turns=2)
    for means in ({0: 1.0, 1: 2.0}, {0: 3.0, 1: 5.0}, {0: 7.0, 1: 4.0}):
        history.update(means)
    return _round(v for _, v in sorted(history.as_dict().items()))


# ----------------------------------------------------------------------------- the registry: one line per key

EPO_LOSS = ["epo.mode=on", "epo.smoothing_coef=1.0", "epo.entropy_coef=0.1"]
CHECKS: dict[str, Check] = {
    "model.dtype": Check(_param_dtypes),
    "model.value_model": Check(_critic_kind, ["algo.name=ppo"]),
    "env.pool_mode": Check(_pool_workers),
    "env.executor": Check(_pool_kind, ["env.pool_mode=process"]),
    "agent.list_older_actions": Check(_prompts, ["agent.history_window=1"]),
    "agent.prompt_style": Check(_prompts),
    "rollout.backend": Check(_backend_kind),
    "algo.name": Check(_advantages, ["rollout.group_size=2"]),
    "algo.grpo_stats": Check(_advantages),
    "algo.gae_level": Check(_advantages, ["algo.name=ppo", "algo.gamma=0.9"]),
    "algo.loss_agg": Check(_loss),
    "algo.kl_type": Check(_loss, ["algo.kl_coef=0.5"]),
    "epo.mode": Check(_loss, ["epo.smoothing_coef=1.0", "epo.entropy_coef=0.1"]),
    "epo.entropy_level": Check(_loss, EPO_LOSS),
    "epo.smoothing_level": Check(_loss, EPO_LOSS),
    "epo.history": Check(_history),
    "epo.beta_schedule": Check(_loss, EPO_LOSS),
    "train.precision": Check(_precision, EPO_LOSS),
    "rollout.is_correction": Check(_tis_loss),
    "diag.monitor_action": Check(_monitor_decision, ["epo.mode=on"]),
    "train.parallel": Check(_checkpoint_layout, ["train.eval_at_start=false", "train.tensorboard=false"]),
}

# (key, value) pairs that may not have a distinct outcome yet. Keep this empty except while another branch lands
# the code that makes the value real; the coordinator removes the entry when registering its check.
PENDING: dict[tuple[str, str], str] = {}


def _outcome(key: str, value: str) -> Hashable:
    check = CHECKS[key]
    try:
        cfg = load_config(None, BASE + check.overrides + [f"{key}={value}"])
    except ConfigError as e:
        return ("ConfigError", str(e))
    return check.observe(cfg)


def test_every_choice_key_has_a_check():
    missing = sorted(set(CHOICES) - set(CHECKS))
    assert not missing, f"CHOICES keys without a registered check in tests/test_choices.py CHECKS: {missing}"
    stale = sorted(set(CHECKS) - set(CHOICES))
    assert not stale, f"CHECKS entries for keys no longer in CHOICES: {stale}"


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_each_value_changes_what_runs(key):
    if key not in CHECKS:
        pytest.fail(f"{key}: no check registered in CHECKS (see this module's docstring)")
    values = [v for v in CHOICES[key] if (key, v) not in PENDING]
    outcomes = {v: _outcome(key, v) for v in values}
    for i, a in enumerate(values):
        for b in values[i + 1 :]:
            assert outcomes[a] != outcomes[b], f"{key}: '{a}' and '{b}' run the same thing ({repr(outcomes[a])[:200]})"
