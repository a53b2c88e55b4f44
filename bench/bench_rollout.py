"""Rollout throughput: the full collector loop vs the ceiling of raw `model.generate` on the same prompts.

    python bench/bench_rollout.py [--model embedded] [--envs 16] [--turns 4] [--new-tokens 24] [--write]
    python bench/bench_rollout.py --smoke       # tiny model, seconds: what CI runs

Both are measured in one run, on the same model and the same batch of first-turn prompts, so their ratio is
meaningful on a noisy shared machine. With --write the table replaces the "## Rollout" section of
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import machine_info, publish
from epo.config import load_config
from epo.rollout.backend import HFBackend
from epo.rollout.types import SamplingParams
from epo.trainer import setup

SECTION = "## Rollout"


def raw_generate(model, tokenizer, prompts: list[list[int]], new_tokens: int) -> tuple[float, int]:
    """One plain left-padded generate call over all prompts: the ceiling (no env, no parsing, no stop checks)."""
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=None,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=pad,
        )
    return time.perf_counter() - t0, int((out[:, width:] != pad).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--envs", type=int, default=16, help="parallel episodes (tasks x group)")
    parser.add_argument("--turns", type=int, default=4, help="turn limit of the measured rollout")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 4 episodes, 1 turn, 4 tokens (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.envs, args.turns, args.new_tokens, args.write = "tiny", 4, 1, 4, False
    overrides = [
        f"model.path={args.model}",
        "model.trainable_layers=0",  # generation only: freeze tuning does not apply
        "env.kwargs.difficulty=easy",
        f"env.max_turns={args.turns}",
        f"rollout.max_new_tokens={args.new_tokens}",
        "agent.action_prefix=false",
    ]
    cfg = load_config("quest_demo_cpu", overrides)
    setup.set_threads()
    setup.seed_everything(0)
    model, tokenizer = setup.load_policy(cfg, torch.device("cpu"))
    tasks = setup.env_splits(cfg)["train"][: args.envs // 4]
    params = SamplingParams(1.0, 1.0, 0, args.new_tokens)
    rows = []
    with setup.make_pool(cfg) as pool:
        collector = setup.make_collector(cfg, pool, model, tokenizer)
        collector.collect(tasks[:1], 2, SamplingParams(1.0, 1.0, 0, 4))  # warm-up
        t0 = time.perf_counter()
        result = collector.collect(tasks, 4, params)
        loop_s = time.perf_counter() - t0
        first_prompts = [s.prompt_ids for s in result.samples if s.turn_idx == 0]
        gen_tokens = int(result.stats["gen_tokens"])
        steps = len(result.samples)
        rows.append(("collector (full loop)", loop_s, gen_tokens, steps))
        rows.append(("  of which generate", result.stats["gen_s"], gen_tokens, steps))
        rows.append(("  of which env steps", result.stats["env_s"], 0, steps))
        ceiling_s, ceiling_tokens = 0.0, 0
        for _ in range(args.turns):  # the same number of generate calls, each producing max_new_tokens
            s, n = raw_generate(model, tokenizer, first_prompts, args.new_tokens)
            ceiling_s, ceiling_tokens = ceiling_s + s, ceiling_tokens + n
        rows.append(("raw model.generate (ceiling)", ceiling_s, ceiling_tokens, 0))
        single = HFBackend(model, tokenizer, batch_size=1)
        t0 = time.perf_counter()
        single_out = single.generate(first_prompts[:4], params)
        rows.append(("backend, batch size 1 (4 prompts)", time.perf_counter() - t0, sum(map(len, single_out)), 0))
    table = _table(rows, args, first_prompts)
    publish(table, args.write)


def _table(rows, args, prompts) -> str:
    mean_prompt = sum(len(p) for p in prompts) / len(prompts)
    lines = [
        SECTION,
        "",
        machine_info(f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)"),
        "",
        f"Model: {args.model}. {args.envs} parallel quest episodes, "
        f"{args.turns} turns, max {args.new_tokens} new tokens, mean prompt {mean_prompt:.0f} tokens.",
        "",
        f"Command: `python bench/bench_rollout.py --model {args.model} --envs {args.envs} --turns {args.turns} "
        f"--new-tokens {args.new_tokens} --write`",
        "",
        "| what | seconds | tokens | tokens/s | env steps/s |",
        "|---|---|---|---|---|",
    ]
    for name, secs, tokens, steps in rows:
        tps = f"{tokens / secs:.1f}" if tokens else "-"
        sps = f"{steps / secs:.1f}" if steps else "-"
        lines.append(f"| {name} | {secs:.2f} | {tokens} | {tps} | {sps} |")
    loop, ceiling = rows[0], rows[3]
    lines += [
        "",
        f"Full loop / ceiling tokens/s: {(loop[2] / loop[1]) / (ceiling[2] / ceiling[1]):.2f} "
        "(the loop stops each sequence at `</action>`, so it generates fewer tokens per call than the "
        "ceiling, which is forced to max_new_tokens).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
