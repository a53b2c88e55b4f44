"""`epo sft`: behaviour cloning on oracle trajectories, the warm start for RL.

    oracle episodes (env expert) -> turn samples in the RL prompt format -> token-mean NLL of the response
    -> eval before/after -> export (LoRA merged) to OUT/export, which `epo train init_from=OUT` starts from.

A 135M model cannot act zero-shot in these envs (no reward ever), so sparse-reward RL needs this first.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from epo.config import Config, save_config
from epo.errors import TrainingError
from epo.models import merge_and_save, response_logprobs
from epo.models.precision import autocast_for
from epo.rollout.evaluate import EvalResult, eval_task_ids, evaluate
from epo.rollout.oracle import collect_oracle
from epo.trainer import setup
from epo.trainer.batching import collate, pack_by_tokens
from epo.trainer.progress import StepProgress


@dataclass
class SFTResult:
    out_dir: Path
    export_dir: Path
    before: dict[str, EvalResult] = field(default_factory=dict)
    after: dict[str, EvalResult] = field(default_factory=dict)
    oracle_win_rate: float = 0.0
    samples: int = 0


def run_sft(cfg: Config, out_dir: str | Path, console: Console | None = None, eval_after: bool = True) -> SFTResult:
    """eval_after=False when RL follows at once: its step-0 evaluation measures the same policy."""
    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    splits = setup.check_env(cfg)
    setup.set_threads()
    setup.seed_everything(cfg.train.seed)
    device = setup.pick_device(cfg.model.device)
    model, tokenizer = setup.load_policy(cfg, device)
    setup.log_precision(console, cfg, device)
    result = SFTResult(out, out / "export")
    with setup.make_pool(cfg) as pool:
        collector = setup.make_collector(cfg, pool, model, tokenizer)
        result.before = _eval_all(cfg, collector, splits, console, "before SFT")
        ids = random.Random(cfg.train.seed).sample(
            sorted(splits[cfg.env.train_split]), min(cfg.sft.episodes, len(splits[cfg.env.train_split]))
        )
        t0 = time.perf_counter()
        samples, trajs = collect_oracle(pool, collector.prompts, tokenizer, ids, collector.max_turns)
        result.oracle_win_rate = sum(t.won for t in trajs) / max(len(trajs), 1)
        result.samples = len(samples)
        console.print(
            f"oracle: {len(trajs)} episodes, won {100 * result.oracle_win_rate:.0f}%, "
            f"{len(samples)} turn samples ({time.perf_counter() - t0:.1f}s)"
        )
        if not samples:
            raise TrainingError(f"sft: the {cfg.env.name} oracle won no episode; nothing to clone")
        losses = _train(cfg, model, tokenizer.pad_token_id, samples, console, out)
        if eval_after:
            result.after = _eval_all(cfg, collector, splits, console, "after SFT")
    model.eval()
    merge_and_save(model, tokenizer, result.export_dir)
    summary = {
        "oracle_win_rate": result.oracle_win_rate,
        "samples": result.samples,
        "final_loss": losses[-1],
        "before": {k: v.success for k, v in result.before.items()},
        "after": {k: v.success for k, v in result.after.items()},
    }
    (out / "sft_summary.json").write_text(json.dumps(summary, indent=1))
    console.print(f"SFT model exported to {result.export_dir}")
    return result


def _eval_all(cfg: Config, collector, splits, console: Console, label: str) -> dict[str, EvalResult]:
    out = {}
    if cfg.sft.eval_episodes <= 0:
        return out
    for split in cfg.env.eval_splits:
        ids = eval_task_ids(splits[split], cfg.sft.eval_episodes, seed=cfg.train.seed + 1)
        with torch.no_grad():
            out[split] = evaluate(collector, split, ids, cfg.train.eval_temperature, cfg.rollout.max_new_tokens)
        console.print(f"  {label}: {out[split].line()}")
    return out


def _train(cfg: Config, model, pad_id: int, samples, console: Console, out: Path) -> list[float]:
    """Token-mean NLL of the oracle responses; micro-batches normalised by the batch's token count."""
    steps_per_epoch = (len(samples) + cfg.sft.batch_size - 1) // cfg.sft.batch_size
    total = steps_per_epoch * cfg.sft.epochs
    optimizer = setup.make_optimizer(model.parameters(), cfg.sft.lr, cfg)
    scheduler = setup.warmup_cosine(optimizer, total, cfg.optim.warmup_ratio, cfg.optim.min_lr_ratio)
    rng = random.Random(cfg.train.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    losses: list[float] = []
    model.train()
    with StepProgress(console, total, label="SFT steps") as progress, open(out / "sft_metrics.jsonl", "w") as log:
        progress.phase("behaviour cloning", 0)
        for epoch in range(cfg.sft.epochs):
            order = list(range(len(samples)))
            rng.shuffle(order)
            for start in range(0, len(order), cfg.sft.batch_size):
                batch = order[start : start + cfg.sft.batch_size]
                num_tokens = float(sum(len(samples[i].response_ids) for i in batch))
                optimizer.zero_grad(set_to_none=True)
                total_loss = 0.0
                for micro in pack_by_tokens(batch, samples, cfg.train.micro_batch_tokens):
                    mb = collate(samples, micro, pad_id).to(next(model.parameters()).device)
                    with autocast_for(cfg.train.precision, mb.input_ids.device):
                        stats = response_logprobs(
                            model,
                            mb.input_ids,
                            mb.attention_mask,
                            mb.response_mask,
                            chunk_tokens=cfg.model.logprob_chunk_tokens,
                            with_entropy=False,
                        )
                    loss = -(stats.logprobs * mb.response_mask).sum() / num_tokens
                    loss.backward()
                    total_loss += float(loss.detach())
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf"))
                optimizer.step()
                scheduler.step()
                losses.append(total_loss)
                log.write(json.dumps({"epoch": epoch, "step": len(losses), "loss": total_loss}) + "\n")
                progress.step_done(f"sft epoch {epoch} step {len(losses)}/{total} loss {total_loss:.4f}")
    return losses
