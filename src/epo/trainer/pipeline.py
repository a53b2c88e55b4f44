"""What the CLI runs: warm start -> RL -> report, and stand-alone evaluation."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from rich.console import Console
from rich.table import Table

from epo.config import Config, ConfigError, replace, save_config
from epo.report.data import BEFORE_AFTER_FILE
from epo.rollout.evaluate import EvalResult, gain_test
from epo.telemetry.provenance import machine_record
from epo.trainer import distributed, setup
from epo.trainer.checkpoint import list_checkpoints
from epo.trainer.rundir import CONFIG_FILE, resume_changes, saved_config
from epo.trainer.split_eval import eval_sampling_seed, evaluate_splits
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
    say = partial(console.print, markup=False)  # the path is not markup
    # under torchrun only rank 0 locks the dir; the others follow once it owns it, or fail with its error
    with distributed.own_run_dir_on_main(run_dir, resume=resume, on_stale=say):  # refuses before writing
        return _train_owned(cfg, run_dir, resume, console)


def _train_owned(cfg: Config, run_dir: Path, resume: bool, console: Console) -> TrainResult:
    """Rank 0 writes config.yaml, runs the warm start and reports; every rank learns the warm start's outcome (a
    stopped warm start ends all ranks, with rank 0's stop signal) and trains."""

    def prepare() -> bool:
        if resume:
            resume_changes(saved_config(run_dir), cfg, run_dir)  # fail fast, before loading models (Trainer logs)
        else:
            save_config(cfg, run_dir / CONFIG_FILE)  # resumable from now on, even if killed before a checkpoint
        return resume and bool(list_checkpoints(run_dir))  # a run without a checkpoint starts over from step 0

    started = distributed.run_on_main(prepare)
    sft_result = None
    sft_dir = run_dir / "sft"
    if cfg.sft.warm_start and not cfg.init_from and not started:

        def warm_start() -> tuple[bool, str]:
            nonlocal sft_result
            if resume and (sft_dir / "export").is_dir():  # the warm start finished: start RL from it
                return False, ""
            from epo.trainer.sft import run_sft

            console.rule("warm start: behaviour cloning")
            # resume: a warm start stopped by a signal continues from its checkpoint (sft/checkpoints)
            sft_result = run_sft(cfg, sft_dir, console=console, eval_after=False, resume=resume)
            return sft_result.interrupted, sft_result.stop_signal

        # behaviour cloning is small: rank 0 runs it, the others wait and start RL from its export
        interrupted, stop_signal = distributed.run_on_main(warm_start)
        if interrupted:
            distributed.shutdown()
            return TrainResult(run_dir, 0, interrupted=True, stop_signal=stop_signal)
        cfg = replace(cfg, init_from=str(sft_dir))  # keeps ${...} values unresolved in the saved config
    warm_started = bool(cfg.init_from) and Path(cfg.init_from).resolve() == sft_dir.resolve()
    console.rule("reinforcement learning")
    main = distributed.rank() == 0
    result = Trainer(cfg, run_dir, resume=resume, console=console).train()
    distributed.shutdown()  # train() ended with a barrier: no collective is left
    if not main:
        return result
    from epo.trainer.sft import saved_zero_shot

    # a resumed run whose warm start finished earlier reads that warm start's zero-shot eval back from its file
    zero_shot = sft_result.before if sft_result is not None else saved_zero_shot(sft_dir) if warm_started else {}
    _print_before_after(console, zero_shot, result)
    if cfg.train.report:
        from epo.report.summary import write_report

        path = write_report([result.run_dir], result.run_dir / "report")
        console.print(f"report: {path}", markup=False)
    return result


def _print_before_after(console: Console, zero_shot: dict[str, EvalResult], result: TrainResult) -> None:
    """Zero-shot -> start of RL -> end of RL, each with its Wilson CI, and one-sided exact p-values of the gains:
    McNemar's test when both evals ran the same tasks (paired), Fisher's otherwise; each p says which.

    Also written to RUN_DIR/before_after.json, so the numbers outlive the terminal."""
    if not result.evals:
        return
    first, last = min(result.evals), max(result.evals)
    starts = result.evals[first] if first != last else {}  # train.eval_at_start=false: no start-of-RL eval
    title = "success rate, 95% Wilson CI; p = one-sided exact test of the gain (McNemar: same tasks)"
    if any(r.mean_score is not None for evals in result.evals.values() for r in evals.values()):
        title += "; score: the env's mean progress score (0-100)"
    table = Table(title=title)
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
            | (
                {}
                if r.mean_score is None
                else {"mean_score": r.mean_score, "score_ci": [r.score_ci_low, r.score_ci_high]}
            )
            for name, r in (("zero_shot", before), ("start_of_rl", start), ("end_of_rl", end))
            if r is not None
        }
        rows[split]["p_rl_gain"], rows[split]["test_rl_gain"] = p_rl or (None, None)
        rows[split]["p_total_gain"], rows[split]["test_total_gain"] = p_total or (None, None)
    console.print(table)
    (result.run_dir / BEFORE_AFTER_FILE).write_text(json.dumps(rows, indent=1))


def _p_gain(before: EvalResult | None, after: EvalResult | None) -> tuple[float, str] | None:
    """(p, test name) of the gain, see `gain_test`."""
    if before is None or after is None:
        return None
    return gain_test(before, after)


def _gain(before: EvalResult | None, after: EvalResult, p: tuple[float, str] | None) -> str:
    if before is None or p is None:
        return "-"
    return f"{100 * (after.success - before.success):+.1f} pts (p={p[0]:.3f}, {p[1]})"


def _fmt(res: EvalResult | None) -> str:
    if res is None:
        return "-"
    cell = f"{100 * res.success:.1f}% [{100 * res.ci_low:.0f}-{100 * res.ci_high:.0f}] n={res.episodes}"
    return cell if res.mean_score is None else f"{cell}, score {res.mean_score:.1f}"  # ScienceWorld's progress


def evaluate_policy(
    cfg: Config,
    splits: list[str],
    console: Console | None = None,
    out: str | Path | None = None,
    as_step: int | None = None,
) -> dict[str, EvalResult]:
    """out: also write the results as JSON ({"provenance": what computed them and on which policy, "splits": ...}).
    as_step: sample with the RL loop's eval stream of that step (default: the warm start's, train.seed + 1)."""
    console = console or Console()
    all_splits = setup.check_env(cfg)
    unknown = [s for s in splits if s not in all_splits]
    if unknown:
        raise ConfigError(f"--split: {', '.join(unknown)} not in {cfg.env.name} (splits: {', '.join(all_splits)})")
    setup.set_threads()
    setup.set_allocator(cfg)
    setup.seed_everything(cfg.train.seed, cfg.train.deterministic)
    device = setup.pick_device(cfg.model.device)
    model, tokenizer = setup.load_policy(cfg, device, train=False)
    chosen = setup.log_precision(console, cfg, device)
    with setup.make_pool(cfg) as pool:
        collector = setup.make_collector(cfg, pool, model, tokenizer, console)
        episodes = cfg.train.eval_episodes
        results = evaluate_splits(cfg, collector, all_splits, splits, episodes, console, "eval", rl_step=as_step)
    if out:
        record = machine_record(device, chosen, from_step=None, phase="eval")
        record.update(
            policy=str(cfg.init_from or cfg.model.path),
            env=cfg.env.name,
            env_kwargs=dict(cfg.env.kwargs),
            seed=cfg.train.seed,
            temperature=cfg.train.eval_temperature,
            as_step=as_step,
            sampling_seed=eval_sampling_seed(cfg, as_step),
        )
        splits_json = {k: v.__dict__ for k, v in results.items()}
        Path(out).write_text(json.dumps({"provenance": record, "splits": splits_json}, indent=1))
    return results
