"""One GRPO policy update, full fine-tuning: ours in fp32, ours in mixed precision, TRL's GRPOTrainer, against the
machine's matmul ceiling measured in the same run.

Work: 8 sequences of 192 prompt + 64 response tokens (random ids: the cost does not depend on them), one
optimizer step (forward, backward, AdamW), the embedded SmolLM2-135M, every weight trainable.

    ours fp32     trainer.update.update_policy, single pass (old log-probs from the loss forward), GRPO, EPO off
    ours mixed    the same with train.precision=bf16: fp32 master weights and AdamW state, bf16 autocast compute
    TRL fp32      trl.GRPOTrainer.compute_loss (its fused LM head + token-level loss, loss_type=bnpo, beta=0) and
                  accelerate's backward, then the same AdamW step; TRL is imported from the interpreter running us
    ceiling       the update's own GEMMs (every projection, attention and LM-head matmul of forward and backward:
                  3x the forward's model FLOPs, no recomputation) run back to back as bare torch.mm/bmm in the
                  same dtype: the time a perfect implementation would need on this machine. % of ceiling =
                  ceiling seconds / update seconds

Methods are interleaved (one of each per repeat) and the best repeat is kept. bf16 rows run where
`train.precision=auto` picks bf16 (CUDA, CPUs with avx512_bf16/AMX) or with --bf16 on; elsewhere only the bf16
GEMM speed of one projection shape is measured, to show why auto picks fp32. Results replace the
"## RL update: precision and TRL" section of docs/BENCHMARKS.md.

    /work/venvs/trl/bin/python bench/bench_precision.py     # TRL lives in its own venv (see the section)
    python bench/bench_precision.py --smoke                  # tiny model, seconds: what CI runs
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from common import machine_info, write_section
from epo.algos import EntropyHistory
from epo.config import load_config
from epo.models import load_model_and_tokenizer
from epo.models.precision import resolve_precision
from epo.rollout.types import TurnSample
from epo.trainer import setup
from epo.trainer.update import prepare_step, update_policy

SECTION = "## RL update: precision and TRL"
NOTES = (
    "TRL runs from its own venv (`python -m venv /work/venvs/trl`, a .pth file pointing at the project venv's "
    "site-packages, `pip install trl`: it adds datasets/pandas/pyarrow and leaves torch and transformers as they "
    "are). Both updates are single on-policy passes (old log-probs = the loss forward's, detached) and compute "
    "entropies; TRL scores the completion positions with its fused LM head, ours the response rows with a chunked "
    "head that recomputes logits in backward (one extra LM-head GEMM, ~2% of the FLOPs here). What separates "
    "either from its ceiling is everything that is not a GEMM: AdamW over all 135M weights, gradient clipping, the "
    "dense embedding gradient (tied 49152 x 576), attention softmax, and HF Llama's eager RMSNorm/RoPE/SiLU/residual "
    "element-wise ops; a loaded machine also slows the GEMMs inside the update more than the bare ones."
)


@dataclass
class Gemm:
    """``count`` products [batch, m, k] @ [batch, k, n] (batch 1: a plain mm)."""

    m: int
    k: int
    n: int
    count: int
    batch: int = 1

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.m * self.k * self.n * self.count


def update_gemms(config, batch: int, seq: int, response: int) -> list[Gemm]:
    """Every matmul of one forward + backward of a Llama-style causal LM over [batch, seq] tokens with the LM head
    on ``response`` tokens per row; backward of C = A @ B is dA = dC @ B^T and dB = A^T @ dC."""
    tokens, hidden, layers = batch * seq, config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_width, kv_width = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    inter, heads = config.intermediate_size, config.num_attention_heads
    forward = [
        Gemm(tokens, hidden, q_width, layers),  # q
        Gemm(tokens, hidden, kv_width, 2 * layers),  # k, v
        Gemm(tokens, q_width, hidden, layers),  # o
        Gemm(tokens, hidden, inter, 2 * layers),  # gate, up
        Gemm(tokens, inter, hidden, layers),  # down
        Gemm(seq, head_dim, seq, layers, batch * heads),  # q @ k^T
        Gemm(seq, seq, head_dim, layers, batch * heads),  # p @ v
        Gemm(batch * response, hidden, config.vocab_size, 1),  # LM head on response rows
    ]
    backward = [Gemm(g.m, g.n, g.k, g.count, g.batch) for g in forward]  # dA
    backward += [Gemm(g.k, g.m, g.n, g.count, g.batch) for g in forward]  # dB
    return forward + backward


def time_gemm(g: Gemm, dtype: torch.dtype, repeats: int = 3) -> float:
    """Best-of-``repeats`` seconds of one product of ``g``'s shape (times its count)."""
    a = torch.randn(g.batch, g.m, g.k, dtype=dtype).squeeze(0)
    b = torch.randn(g.batch, g.k, g.n, dtype=dtype).squeeze(0)
    out = torch.empty(g.batch, g.m, g.n, dtype=dtype).squeeze(0)
    mm = torch.bmm if g.batch > 1 else torch.mm
    mm(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return best * g.count


def ceiling_seconds(gemms: list[Gemm], dtype: torch.dtype) -> float:
    return sum(time_gemm(g, dtype) for g in gemms)


def synthetic_samples(n: int, prompt: int, response: int, vocab: int) -> list[TurnSample]:
    """One GRPO group of ``n`` single-turn samples with rewards 0/10 (advantages ±1)."""
    gen = random.Random(0)
    return [
        TurnSample(
            [gen.randrange(10, vocab) for _ in range(prompt)],
            [gen.randrange(10, vocab) for _ in range(response)],
            turn_idx=0,
            traj_id=k,
            group_id=0,
            reward=10.0 * (k % 2),
        )
        for k in range(n)
    ]


class OurUpdate:
    def __init__(self, model, samples: list[TurnSample], precision: str):
        tokens = sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)
        self.cfg = load_config(
            None,
            [
                "algo.name=grpo",
                "epo.mode=off",
                f"train.precision={precision}",
                f"train.mini_batch_size={len(samples)}",
                f"train.micro_batch_tokens={tokens}",  # one micro-batch, as TRL's one forward
                "rollout.temperature=1.0",
            ],
        )
        self.model = model
        self.optimizer = setup.make_optimizer(model.parameters(), 1e-7, self.cfg)

    def __call__(self, samples: list[TurnSample]) -> float:
        t0 = time.perf_counter()
        data = prepare_step(self.model, samples, 0, self.cfg)
        self.model.train()
        update_policy(self.model, self.optimizer, data, self.cfg, EntropyHistory(), 1, 0, random.Random(0))
        return time.perf_counter() - t0


class TRLUpdate:
    """trl.GRPOTrainer's loss on prepared completions (no generation), accelerate's backward, one AdamW step."""

    def __init__(self, model, tokenizer, samples: list[TurnSample], bf16: bool):
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        n = len(samples)
        args = GRPOConfig(
            output_dir=tempfile.mkdtemp(prefix="epo-bench-trl-"),
            per_device_train_batch_size=n,
            num_generations=n,
            gradient_accumulation_steps=1,
            max_completion_length=len(samples[0].response_ids),
            beta=0.0,
            loss_type="bnpo",  # token-mean over the batch: our algo.loss_agg=token-mean
            learning_rate=1e-7,
            use_cpu=not torch.cuda.is_available(),
            bf16=bf16,
            report_to=[],
        )
        self.trainer = GRPOTrainer(
            model=model,
            reward_funcs=lambda completions, **_: [0.0] * len(completions),
            args=args,
            train_dataset=Dataset.from_dict({"prompt": ["x"] * n}),
            processing_class=tokenizer,
        )
        self.trainer.current_gradient_accumulation_steps = 1
        self.model = self.trainer.model
        self.optimizer = setup.make_optimizer(self.model.parameters(), 1e-7, load_config(None, []))

    @staticmethod
    def inputs(samples: list[TurnSample]) -> dict[str, torch.Tensor]:
        """What GRPOTrainer's generation step hands its loss: equal-length prompts and completions here."""
        adv = torch.tensor([s.reward for s in samples])
        return {
            "prompt_ids": torch.tensor([s.prompt_ids for s in samples]),
            "prompt_mask": torch.ones(len(samples), len(samples[0].prompt_ids), dtype=torch.long),
            "completion_ids": torch.tensor([s.response_ids for s in samples]),
            "completion_mask": torch.ones(len(samples), len(samples[0].response_ids), dtype=torch.long),
            "advantages": (adv - adv.mean()) / adv.std(),
        }

    def __call__(self, samples: list[TurnSample]) -> float:
        t0 = time.perf_counter()
        inputs = self.inputs(samples)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.trainer.compute_loss(self.model, inputs)
        self.trainer.accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return time.perf_counter() - t0


def trl_status() -> str | None:
    """None when TRL imports, else the one-line reason."""
    try:
        import trl
    except ImportError as error:
        return f"TRL not importable here ({error}); run this script with the TRL venv's python"
    del trl
    return None


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=192)
    parser.add_argument("--response", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="run the bf16 rows even where auto picks fp32")
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 x (16 + 8) tokens, 1 repeat, no write")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.sequences, args.prompt, args.response, args.repeats = "tiny", 2, 16, 8, 1
        args.no_write = True
    setup.set_threads()
    torch.manual_seed(0)
    device = torch.device("cpu")
    model, tokenizer = load_model_and_tokenizer(args.model)
    vocab = model.config.vocab_size
    samples = synthetic_samples(args.sequences, args.prompt, args.response, vocab)
    tokens = args.sequences * (args.prompt + args.response)
    auto = resolve_precision("auto", device)
    run_bf16 = auto.mixed or args.bf16
    gemms = update_gemms(model.config, args.sequences, args.prompt + args.response, args.response)
    flops = sum(g.flops for g in gemms)

    methods: dict[str, object] = {"ours fp32": OurUpdate(copy.deepcopy(model), samples, "fp32")}
    if run_bf16:
        methods["ours mixed (bf16 autocast)"] = OurUpdate(copy.deepcopy(model), samples, "bf16")
    trl_note = "skipped (--no-trl)" if args.no_trl else trl_status()
    if trl_note is None:
        import trl

        methods["TRL GRPOTrainer fp32"] = TRLUpdate(copy.deepcopy(model), tokenizer, samples, bf16=False)
        if run_bf16:
            methods["TRL GRPOTrainer bf16"] = TRLUpdate(copy.deepcopy(model), tokenizer, samples, bf16=True)
        trl_note = f"trl {trl.__version__}"
    del model
    ceilings = {"fp32": torch.float32} | ({"bf16": torch.bfloat16} if run_bf16 else {})
    best: dict[str, float] = {}
    warm = synthetic_samples(2, 24, 8, vocab)  # warm-up on a little work: first-call allocations, AdamW state
    for name, run in methods.items():
        run(warm)
        print(f"warm-up {name} done", flush=True)
    for rep in range(args.repeats):
        for label, dtype in ceilings.items():
            secs = ceiling_seconds(gemms, dtype)
            best[f"ceiling {label}"] = min(secs, best.get(f"ceiling {label}", float("inf")))
            print(f"repeat {rep}: ceiling {label}: {secs:.2f}s", flush=True)
        for name, run in methods.items():
            secs = run(samples)
            best[name] = min(secs, best.get(name, float("inf")))
            print(f"repeat {rep}: {name}: {secs:.2f}s", flush=True)
    big = gemms[3]  # gate/up projection: the largest backbone GEMM, on 256 rows (bf16 may be very slow)
    probe = Gemm(min(big.m, 256), big.k, big.n, 1)
    probe_gflops = {
        label: probe.flops / time_gemm(probe, dtype, repeats=1) / 1e9
        for label, dtype in {"fp32": torch.float32, "bf16": torch.bfloat16}.items()
    }
    body = report(args, argv, best, tokens, flops, auto, trl_note, probe, probe_gflops)
    print(body)
    if not args.no_write:
        write_section(SECTION, body)
    return {name: tokens / secs for name, secs in best.items()}


def command_line(argv: list[str] | None) -> str:
    """How this run was started: thread setting, niceness, interpreter (TRL lives in its own venv), arguments."""
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    nice = f"nice -n {os.nice(0)} " if os.nice(0) > 0 else ""
    return f"{threads}{nice}{sys.executable} {' '.join(['bench/bench_precision.py', *(argv or sys.argv[1:])])}"


def report(args, argv, best, tokens, flops, auto, trl_note, probe, probe_gflops) -> str:
    fp32_ceiling, ours = best["ceiling fp32"], best["ours fp32"]
    lines = [
        f"Command: `{command_line(argv)}`",
        "",
        machine_info(f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), {trl_note}"),
        "",
        f"{args.sequences} sequences x ({args.prompt} prompt + {args.response} response) = {tokens} tokens, model "
        f"{args.model}, full fine-tuning, one GRPO update (forward, backward, AdamW), best of {args.repeats}, "
        f"methods interleaved. Model FLOPs of the update: {flops / 1e9:,.1f} GFLOP. {auto.line()}.",
        "",
        "| update | seconds | tokens/s | GFLOP/s | % of its dtype's matmul ceiling | vs ours fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for name, secs in best.items():
        ceiling = best["ceiling bf16"] if "bf16" in name else fp32_ceiling
        share = "-" if name.startswith("ceiling") else f"{100 * ceiling / secs:.0f}%"
        lines.append(
            f"| {name} | {secs:.2f} | {tokens / secs:.0f} | {flops / secs / 1e9:.1f} | {share} | {ours / secs:.2f}x |"
        )
    ratio = probe_gflops["fp32"] / probe_gflops["bf16"]  # > 1: bf16 is slower
    speed = f"{ratio:.1f}x slower" if ratio > 1 else f"{1 / ratio:.1f}x faster"
    lines += [
        "",
        f"bf16 GEMM speed here ([{probe.m}, {probe.k}] @ [{probe.k}, {probe.n}]): "
        f"{probe_gflops['bf16']:.1f} GFLOP/s vs fp32 {probe_gflops['fp32']:.1f} ({speed}).",
    ]
    lines += ["", NOTES]
    if "ceiling bf16" not in best:
        lines.append(
            "No bf16 units on this CPU (no avx512_bf16/AMX): `train.precision=auto` picks fp32 and the bf16 rows are "
            "not run (a bf16 update would take hours here); run with --bf16 to force them, or on a machine with "
            "bf16 units, where the mixed-precision target is >= 1.6x ours fp32."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
