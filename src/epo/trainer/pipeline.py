"""What the CLI runs: warm start -> RL -> report, and stand-alone evaluation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from epo.config import Config
from epo.rollout.evaluate import EvalResult, eval_task_ids, evaluate, fisher_one_sided
from epo.trainer import distributed, setup
from epo.trainer.report_data import BEFORE_AFTER_FILE
from epo.trainer.trainer import Trainer, TrainResult, default_run_dir


def train_pipeline(
    cfg: Config,
    run_dir: str | Path | None = None,
    resume: bool = False,
    preset_name: str = "run",
    console: Console | None = None,
) -> TrainResult:
    console = console or Console()
    main = distributed.init_from_env(cfg.model.device).is_main  # under torchrun: N processes, rank 0 reports
    if not main:
        console = Console(quiet=True)
    run_dir = Path(distributed.from_main(str(run_dir) if run_dir else str(default_run_dir(cfg, preset_name))))
    setup.check_env(cfg)
    sft_result = None
    if cfg.sft.warm_start and not cfg.init_from and not resume:
        from epo.trainer.sft import run_sft

        console.rule("warm start: behaviour cloning")
        if main:  # behaviour cloning is small: rank 0 runs it, the others wait and start RL from its export
            sft_result = run_sft(cfg, run_dir / "sft", console=console, eval_after=False)
        distributed.barrier()
        cfg = dataclasses.replace(cfg, init_from=str(run_dir / "sft"))
    console.rule("reinforcement learning")
    result = Trainer(cfg, run_dir, resume=resume, console=console).train()
    distributed.shutdown()  # train() ended with a barrier: no collective is left
    if not main:
        return result
    _print_before_after(console, sft_result, result)
    if cfg.train.report:
        from epo.trainer.report import write_report

        path = write_report([result.run_dir], result.run_dir / "report")
        console.print(f"report: {path}")
    return result


def _print_before_after(console: Console, sft_result, result: TrainResult) -> None:
    """Zero-shot -> start of RL -> end of RL, each with its Wilson CI, and one-sided Fisher p-values of the gains.

    Also written to RUN_DIR/before_after.json, so the numbers outlive the terminal."""
    if not result.evals:
        return
    first, last = min(result.evals), max(result.evals)
    zero_shot = sft_result.before if sft_result is not None else {}
    starts = result.evals[first] if first != last else {}  # train.eval_at_start=false: no start-of-RL eval
    table = Table(title="success rate, 95% Wilson CI; p = one-sided Fisher exact test of the gain")
    table.add_column("split")
    if zero_shot:
        table.add_column("zero-shot")
    if starts:
        table.add_column(f"start of RL (step {first})")
    table.add_column(f"end of RL (step {last})")
    if starts:
        table.add_column("RL gain")
    if zero_shot:
        table.add_column("total gain")
    rows = {}
    for split, end in result.evals[last].items():
        start, before = starts.get(split), zero_shot.get(split)
        p_rl, p_total = _p_gain(start, end), _p_gain(before, end)
        row = [split] + ([_fmt(before)] if zero_shot else []) + ([_fmt(start)] if starts else []) + [_fmt(end)]
        if starts:
            row.append(_gain(start, end, p_rl))
        if zero_shot:
            row.append(_gain(before, end, p_total))
        table.add_row(*row)
        rows[split] = {
            name: {"wins": r.wins, "episodes": r.episodes, "success": r.success, "ci": [r.ci_low, r.ci_high]}
            for name, r in (("zero_shot", before), ("start_of_rl", start), ("end_of_rl", end))
            if r is not None
        }
        rows[split]["p_rl_gain"], rows[split]["p_total_gain"] = p_rl, p_total
    console.print(table)
    (result.run_dir / BEFORE_AFTER_FILE).write_text(json.dumps(rows, indent=1))


def _p_gain(before: EvalResult | None, after: EvalResult | None) -> float | None:
    if before is None or after is None:
        return None
    return fisher_one_sided(before.wins, before.episodes, after.wins, after.episodes)


def _gain(before: EvalResult | None, after: EvalResult, p: float | None) -> str:
    if before is None:
        return "-"
    return f"{100 * (after.success - before.success):+.1f} pts (p={p:.3f})"


def _fmt(res: EvalResult | None) -> str:
    if res is None:
        return "-"
    return f"{100 * res.success:.1f}% [{100 * res.ci_low:.0f}-{100 * res.ci_high:.0f}] n={res.episodes}"


def evaluate_policy(cfg: Config, splits: list[str], console: Console | None = None) -> dict[str, EvalResult]:
    console = console or Console()
    all_splits = setup.check_env(cfg)
    unknown = [s for s in splits if s not in all_splits]
    if unknown:
        raise ValueError(f"--split: {', '.join(unknown)} not in {cfg.env.name} (splits: {', '.join(all_splits)})")
    setup.set_threads()
    setup.seed_everything(cfg.train.seed)
    device = setup.pick_device(cfg.model.device)
    model, tokenizer = setup.load_policy(cfg, device)
    out = {}
    with setup.make_pool(cfg) as pool:
        collector = setup.make_collector(cfg, pool, model, tokenizer)
        for split in splits:
            ids = eval_task_ids(all_splits[split], cfg.train.eval_episodes, seed=cfg.train.seed + 1)
            with torch.no_grad():
                out[split] = evaluate(collector, split, ids, cfg.train.eval_temperature, cfg.rollout.max_new_tokens)
    return out
