"""Benchmark one GRPO+EPO policy update on real turn samples: two-pass vs single-pass, and the micro-batch budget.

    two-pass     prepare_step's no-grad forward (old log-probs + entropies), then the loss forward + backward
    single-pass  the update's own forward gives the old log-probs (detached) and entropies: what the trainer does
                 when ppo_epochs = 1 and the batch is one mini-batch (`trainer.update.single_pass`)
Samples are behaviour-cloning turns of the quest world in the demo's prompt format (quest_demo_cpu), so prompt
lengths are realistic. Methods are interleaved and the best of --repeats is kept. Results replace the
"## RL update" section of docs/BENCHMARKS.md.

    python bench/bench_update.py                      # embedded SmolLM2-135M, 32 samples
    python bench/bench_update.py --model tiny --samples 8 --repeats 1 --no-write
    python bench/bench_update.py --smoke              # tiny model, seconds: what CI runs
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import torch

from common import machine_info, write_section
from epo.agent import PromptBuilder
from epo.algos import EntropyHistory
from epo.config import load_config
from epo.models import freeze_to_top_layers, load_model_and_tokenizer
from epo.rollout.oracle import collect_oracle
from epo.trainer import setup
from epo.trainer.update import forward_pass, prepare_step, update_policy

SECTION = "## RL update"


def oracle_samples(cfg, tokenizer, n: int):
    splits = setup.check_env(cfg)
    with setup.make_pool(cfg) as pool:
        prompts = PromptBuilder(tokenizer, cfg.agent, list_older_actions=False, env_name=cfg.env.name)
        ids = sorted(splits[cfg.env.train_split])[: max(2, n // 6)]
        samples, _ = collect_oracle(pool, prompts, tokenizer, ids, cfg.env.max_turns)
    rng = random.Random(0)
    for s in samples:
        s.reward = rng.choice([0.0, 10.0])  # GRPO needs reward variance within the group
    return samples[:n]


def one_update(model, samples, cfg, pad_id: int, two_pass: bool, top_layers: int = 0) -> float:
    for p in model.parameters():
        p.requires_grad_(True)
    freeze_to_top_layers(model, top_layers)
    optimizer = setup.make_optimizer(model.parameters(), 1e-7, cfg)
    history = EntropyHistory()
    history.update({t: 0.5 for t in range(cfg.env.max_turns)})
    t0 = time.perf_counter()
    data = prepare_step(model, samples, pad_id, cfg)
    if two_pass:
        data.old_logprobs, data.entropy = forward_pass(model, samples, pad_id, cfg, with_entropy=True)
    model.train()
    update_policy(model, optimizer, data, cfg, history, 1, pad_id, random.Random(0))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budgets", default="512,1024,2048,4096", help="train.micro_batch_tokens values")
    parser.add_argument("--top-layers", type=int, default=10, help="model.trainable_layers row (0: none)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 4 samples, 1 repeat, no write (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.samples, args.repeats, args.budgets, args.top_layers = "tiny", 4, 1, "256,512", 1
        args.no_write = True
    setup.set_threads()
    budgets = [int(b) for b in args.budgets.split(",")]
    base = ["env.pool_mode=inline", "train.mini_batch_size=1024", "epo.mode=on"]
    cfg0 = load_config("quest_demo_cpu", base)
    model, tokenizer = load_model_and_tokenizer(args.model)
    samples = oracle_samples(cfg0, tokenizer, args.samples)
    tokens = sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    runs = [("two-pass", b) for b in budgets[-1:]] + [("single-pass", b) for b in budgets]
    runs += [(f"single-pass, top {args.top_layers} blocks", 1024)] if args.top_layers else []
    best: dict[tuple[str, int], float] = {}
    one_update(model, samples[:2], cfg0, tokenizer.pad_token_id, False)  # warm-up: first-call allocations
    for rep in range(args.repeats):
        for mode, budget in runs:
            cfg = load_config("quest_demo_cpu", base + [f"train.micro_batch_tokens={budget}"])
            top = args.top_layers if "top" in mode else 0
            secs = one_update(model, samples, cfg, tokenizer.pad_token_id, mode == "two-pass", top)
            best[(mode, budget)] = min(secs, best.get((mode, budget), float("inf")))
            print(f"repeat {rep}: {mode} budget {budget}: {secs:.1f}s", flush=True)
    ref = best[runs[0]]
    lines = [
        f"Command: `python {' '.join(sys.argv)}`",
        "",
        machine_info(f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)"),
        "",
        f"{len(samples)} quest turn samples ({tokens} tokens, responses {sum(len(s.response_ids) for s in samples)}), "
        f"model {args.model}, GRPO+EPO, best of {args.repeats}, methods interleaved.",
        "",
        "| update | micro-batch tokens | seconds | tokens/s | speed-up vs two-pass |",
        "|---|---|---|---|---|",
    ]
    for mode, budget in runs:
        secs = best[(mode, budget)]
        lines.append(f"| {mode} | {budget} | {secs:.1f} | {tokens / secs:.0f} | {ref / secs:.2f}x |")
    lines += [
        "",
        "Single-pass skips the no-grad forward over the batch (old log-probs and entropies come from the loss "
        "forward, so the PPO ratio is exactly 1, as before); it applies when the whole batch is one mini-batch and "
        "ppo_epochs = 1 (GRPO presets on CPU). Smaller micro-batches pad less (rows are sorted by length within the "
        "mini-batch) and keep activations in cache. `model.trainable_layers=N` (freeze tuning) stops backward at the "
        "lowest trainable block.",
    ]
    if args.top_layers:  # the one quoted freeze-tuning speed-up (README and config docs point here)
        full, frozen = best.get(("single-pass", 1024)), best[runs[-1]]
        if full is not None:
            lines[-1] += (
                f" **Training the top {args.top_layers} blocks makes the single-pass update {full / frozen:.2f}x "
                f"faster than training all blocks ({full:.1f} s -> {frozen:.1f} s, same micro-batch budget 1024, "
                "this run)**. This is the one place the freeze-tuning speed-up is quoted; other docs point here."
            )
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
