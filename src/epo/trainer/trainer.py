"""The RL loop: rollout -> rewards -> advantages -> updates -> EPO history -> metrics -> eval -> checkpoint.

    trainer = Trainer(cfg); result = trainer.train()        # or Trainer(cfg, run_dir=..., resume=True)

Everything a run needs to continue bit-for-bit (weights, optimizers, schedulers, EPO history, RNG states, task
sampler, monitor) goes into each checkpoint, so a resumed run logs the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from epo.algos import EntropyHistory, EntropyTrend
from epo.algos.advantages import shaping_share
from epo.algos.epo import reference_smoothing_note
from epo.config import Config, save_config, to_yaml
from epo.diagnostics import MonitorActions, StepDiagnostics, save_rollouts
from epo.errors import EnvResetFailed, ResumeConfigError
from epo.models import SharedValueHead, merge_and_save
from epo.rollout.backend import call_seed
from epo.rollout.collector import prompt_fit_metrics, score_metrics
from epo.rollout.evaluate import EvalResult
from epo.rollout.filtering import FilterStats, dynamic_sample
from epo.rollout.types import SamplingParams, TurnSample
from epo.telemetry.faults import EnvBatchFailed, FaultLog, collect_with_retries, fault_metrics, turn_limit_rate
from epo.telemetry.metrics import MetricsLogger, summary_line
from epo.telemetry.monitor import CascadeMonitor
from epo.telemetry.progress import StepProgress
from epo.telemetry.provenance import append_provenance, machine_record
from epo.trainer import dist_checkpoint, distributed, fsdp, setup
from epo.trainer.allocator import memory_metrics, reset_peak_rss, trim_after_phase
from epo.trainer.checkpoint import (
    CheckpointError,
    GracefulExit,
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from epo.trainer.rundir import apply_optim_overrides, atomic_dir, log_resume, resume_changes, saved_config
from epo.trainer.split_eval import EvalStopped, eval_sampling_seed, evaluate_split, no_win_note, stop_checking
from epo.trainer.update import NONFINITE_KEY, StepData, prepare_step, update_critic, update_policy


@dataclass
class TrainResult:
    run_dir: Path
    steps_done: int
    evals: dict[int, dict[str, EvalResult]] = field(default_factory=dict)
    interrupted: bool = False
    stop_signal: str = ""
    """SIGINT/SIGTERM when a signal stopped the run (after its checkpoint); empty otherwise."""
    stopped_by_monitor: bool = False
    """The cascade monitor ended the run (`diag.monitor_action=stop`, after its checkpoint); a signal wins."""


def default_run_dir(cfg: Config, preset_name: str = "run") -> Path:
    name = cfg.train.run_name or f"{preset_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.train.output_dir) / name


class Trainer:
    def __init__(
        self, cfg: Config, run_dir: str | Path | None = None, resume: bool = False, console: Console | None = None
    ):
        self.cfg = cfg
        self.dist = distributed.init_from_env(cfg.model.device)  # torchrun/accelerate: join the group; else 1 process
        self.console = console or Console()
        if not self.dist.is_main:  # one voice: rank 0 prints, logs, evaluates and writes checkpoints
            self.console = Console(quiet=True)
        self.run_dir = Path(distributed.from_main(str(run_dir) if run_dir else str(default_run_dir(cfg))))
        self.resume = resume
        self.splits = setup.check_env(cfg)  # fail fast on a bad env name/split, before loading any model
        setup.set_threads()
        setup.set_allocator(cfg)
        setup.seed_everything(cfg.train.seed, cfg.train.deterministic)
        self.device = setup.pick_device(distributed.local_device(cfg.model.device))
        self.policy, self.tokenizer = setup.load_policy(cfg, self.device)
        distributed.broadcast_parameters(self.policy)
        self.pad_id = self.tokenizer.pad_token_id
        self.optimizer = setup.make_optimizer(self.policy.parameters(), cfg.optim.lr, cfg)
        self.scheduler = setup.warmup_cosine(
            self.optimizer, cfg.train.total_steps, cfg.optim.warmup_ratio, cfg.optim.min_lr_ratio
        )
        self.reference = setup.make_reference(self.policy, cfg)
        self.critic = setup.make_critic(self.policy, cfg)
        self.critic_optimizer = self.critic_scheduler = None
        if self.critic is not None:
            self.critic.to(self.device)
            distributed.broadcast_parameters(self.critic)
            self.critic_optimizer = setup.make_optimizer(self.critic.parameters(), cfg.optim.value_lr, cfg)
            self.critic_scheduler = setup.warmup_cosine(
                self.critic_optimizer, cfg.train.total_steps, cfg.optim.warmup_ratio, cfg.optim.min_lr_ratio
            )
        self.sharded = fsdp.shard_trainer(self)  # train.parallel=fsdp2 under torchrun (after the copies above)
        self.sharded_checkpoints = cfg.train.parallel == "fsdp2"
        self.history = EntropyHistory.from_config(cfg.epo, setup.max_turns(cfg))
        self.trend = EntropyTrend()
        self.monitor = CascadeMonitor(total_steps=cfg.train.total_steps)
        self.monitor_actions = MonitorActions(cfg.diag)
        self.diagnostics = StepDiagnostics(cfg, self.tokenizer, self.pad_id)
        self.sampler = setup.TaskSampler(self.splits[cfg.env.train_split], seed=cfg.train.seed)
        self.shuffle_rng = random.Random(cfg.train.seed)
        self.step = 0
        self.faults: FaultLog | None = None  # set by train(): env faults -> console + faults.jsonl

    # ------------------------------------------------------------------ public
    def train(self, stop_after: int | None = None) -> TrainResult:
        """Run until train.total_steps (or until step `stop_after`, checkpointing there: simulates an interruption).

        The run dir is owned (locked) for the whole call, by rank 0 under torchrun; see trainer/rundir.py."""
        say = partial(self.console.print, markup=False)  # the path is not markup
        with distributed.own_run_dir_on_main(self.run_dir, resume=self.resume, on_stale=say):
            return self._train(stop_after)

    def _train(self, stop_after: int | None) -> TrainResult:
        cfg = self.cfg
        resume_step = self._resume_or_start()
        main = self.dist.is_main
        if main:
            save_config(cfg, self.run_dir / "config.yaml")
        result = TrainResult(self.run_dir, self.step)
        result.evals.update(self._saved_evals(self.step))  # a resume keeps its start in the before/after table
        self.console.print(
            f"[bold]epo[/] run dir: {escape(str(self.run_dir))}  ({cfg.algo.name}, EPO {cfg.epo.mode}, "
            f"{cfg.env.name}, model {escape(setup.model_source(cfg))}, device {self.device}"
            + (f", {self.dist.world_size} processes" if self.dist.enabled else "")
            + ")"
        )
        chosen = setup.log_precision(self.console, cfg, self.device)
        if main:
            append_provenance(self.run_dir, machine_record(self.device, chosen, self.step, self.dist.world_size))
        notes = (
            reference_smoothing_note(cfg.epo.mode, setup.max_turns(cfg)),
            setup.shared_critic_note(cfg),
            self.monitor.late_checks_note,
        )
        for note in notes:
            if note:
                self.console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
        with (
            setup.make_pool(cfg) as pool,
            (
                MetricsLogger(self.run_dir, cfg.train.tensorboard, cfg.train.wandb, resume_step=resume_step)
                if main
                else distributed.NullLogger()
            ) as logger,
            GracefulExit(self.console.print) as stop,
            StepProgress(self.console, cfg.train.total_steps, self.step) as progress,
        ):
            collector = setup.make_collector(cfg, pool, self.policy, self.tokenizer, self.console)
            collector.on_turn = progress.turn
            self.faults = FaultLog(self.run_dir, self.console.print, resume_step) if main else None
            stopped = False
            if self.step == 0 and cfg.train.eval_at_start and (main or self.sharded):
                with fsdp.gathered(self.policy):  # FSDP2: whole weights, so rank 0 evaluates without collectives
                    evals, stopped = self._first_eval(collector, progress, logger, stop) if main else ({}, False)
                if stopped:  # nothing trained and no checkpoint: a resume starts again from step 0
                    result.interrupted, result.stop_signal = True, stop.signal_name
                else:
                    result.evals[0] = evals
                    if note := no_win_note(evals):
                        self.console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
            while not stopped and self.step < cfg.train.total_steps:
                metrics = self._rl_step(collector, progress)
                self.step += 1
                if self._eval_due() and (main or self.sharded):  # evaluation runs on rank 0 only
                    with fsdp.gathered(self.policy):
                        evals = self._evaluate(collector, progress, None) if main else {}
                    result.evals[self.step] = evals
                    for ev in evals.values():
                        metrics.update(ev.metrics())
                logger.log(self.step, metrics)
                acted = self.monitor_actions.apply(self.monitor.update(self.step, metrics))
                logger.log_warnings(acted.records)
                for w in acted.records:
                    self.console.print(
                        f"[yellow]monitor:[/] {w['message']}" + (f" -> {w['action']}" if "action" in w else "")
                    )
                for key in (NONFINITE_KEY, "critic/nonfinite_grad_frac"):
                    if metrics.get(key, 0.0) > 0:  # the weights did not move on those mini-batches
                        self.console.print(
                            f"[yellow]warning:[/] step {self.step}: {key.split('/')[0]} gradient not finite in "
                            f"{metrics[key]:.0%} of the optimizer steps; those steps were skipped ({key})"
                        )
                progress.step_done(summary_line(metrics, self.step))
                stop_now = distributed.any_rank(stop.requested) or self.step == stop_after or acted.stop
                if checkpoint_due(self.step, cfg.train.save_every, cfg.train.total_steps) or stop_now or acted.save:
                    self._save()
                if stop_now:
                    result.interrupted = True
                    result.stop_signal = distributed.first_nonempty(stop.signal_name)  # every rank: same exit code
                    result.stopped_by_monitor = acted.stop and not result.stop_signal
                    break
        result.steps_done = self.step
        if self.step == cfg.train.total_steps and (main or self.sharded):
            self.export(self.run_dir / "final")  # consolidated HF export from rank 0 (FSDP2: gathered there first)
        distributed.barrier()
        return result

    def export(self, out_dir: Path) -> Path:
        """The policy as a Hugging Face model dir (LoRA merged) that transformers and `init_from` load. Written to a
        temp dir and renamed into place: `out_dir` is complete or absent, never half-written."""
        policy = dist_checkpoint.consolidated_policy(self) if self.sharded else self.policy  # FSDP2: collective
        if not self.dist.is_main:
            return out_dir
        with atomic_dir(out_dir) as tmp:
            merge_and_save(policy, self.tokenizer, tmp)
        self.console.print(f"final policy: {out_dir}", markup=False)
        return out_dir

    # ------------------------------------------------------------------ one RL step
    def _rl_step(self, collector, progress) -> dict:
        cfg = self.monitor_actions.effective(self.cfg)  # the config itself unless the monitor raised entropy
        t0 = time.perf_counter()
        seed = call_seed(collector.backend, distributed.rollout_seed(cfg.train.seed, self.step))  # vLLM: resumable
        params = SamplingParams(
            cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k, cfg.rollout.max_new_tokens, seed
        )
        progress.phase("rollout", collector.max_turns)
        rollout, played, retries, filtered = self._collect(collector, params, progress)
        if cfg.train.save_rollouts:
            save_rollouts(self.run_dir, self.step + 1, rollout.samples)
        t1 = time.perf_counter()
        progress.phase("update", 0)
        data, metrics, turn_entropy, hbar = self.update_step(rollout.samples, cfg)
        metrics.update(self.monitor_actions.metrics())
        turns = range(max(turn_entropy) + 1)
        metrics["actor/lr"] = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        entropy_mean = _mean_entropy(data)
        trend = self.trend.update(entropy_mean)
        metrics.update(trend)
        metrics.update(_rollout_metrics(played))  # every episode played, also those dynamic sampling dropped
        metrics["rollout/samples"] = float(len(rollout.samples))  # the update's batch
        metrics["rollout/batch_retries"] = float(retries)
        if filtered is not None:
            metrics.update(_filter_metrics(filtered))
        metrics.update(
            {
                "epo/entropy_mean": entropy_mean,
                "epo/entropy_per_turn": [turn_entropy.get(t, float("nan")) for t in turns],
                "epo/hbar_per_turn": [hbar.get(t, float("nan")) for t in turns],
                "time/rollout_s": t1 - t0,
                "time/update_s": time.perf_counter() - t1,
                "time/step_s": time.perf_counter() - t0,
                "perf/gen_tokens_per_s": played.stats.get("gen_tokens_per_s", 0.0),
                "time/weight_push_s": played.stats.get("weight_push_s", 0.0),
            }
        )
        trim_after_phase()  # train.malloc_trim: the update's free heap pages go back before the next rollout
        metrics.update(_peak_memory(self.device))
        return metrics

    def update_step(
        self, samples: list[TurnSample], cfg: Config
    ) -> tuple[StepData, dict, dict[int, float], dict[int, float]]:
        """Step `self.step + 1`'s update on a rollout's turn samples (the policy in eval mode, as sampling leaves it).
        One order for training and `epo ablate`'s replay (diagnostics/ablate.py): score -> diagnostics before ->
        policy (and critic) update -> diagnostics after, the EPO history fed after the update. Returns (data,
        metrics, this rollout's entropy per turn index, the H̄ per turn index the loss used)."""
        data = prepare_step(self.policy, samples, self.pad_id, cfg, self.reference, self.critic)
        self.diagnostics.before_update(self.policy, data, self.step + 1)
        # H̄ is the mean of *past* steps' entropies (docs/METHOD.md §4; P = 0 before any history), so this rollout enters it
        # after the update. "reference" mode adds it before, as the reference code does.
        history_first = cfg.epo.mode == "reference"
        turn_entropy = self._update_history(data) if history_first else {}
        hbar = self.history.as_dict()  # the band centres this step's loss uses
        self.policy.train()
        shared = isinstance(self.critic, SharedValueHead)
        metrics = update_policy(
            self.policy,
            self.optimizer,
            data,
            cfg,
            self.history,
            self.step,
            self.pad_id,
            self.shuffle_rng,
            self.critic if shared else None,
            self.critic_optimizer,
        )
        if self.critic is not None:
            if not shared:
                metrics.update(
                    update_critic(self.critic, self.critic_optimizer, data, cfg, self.pad_id, self.shuffle_rng)
                )
            self.critic_scheduler.step()
        metrics.update(self.diagnostics.after_update(self.policy, data))
        if cfg.algo.name == "grpo":
            metrics["actor/adv_shaping_share"] = _shaping_share(data)
        if not history_first:
            turn_entropy = self._update_history(data)
        return data, metrics, turn_entropy, hbar

    def _collect(self, collector, params: SamplingParams, progress=None):
        """Sample this step's tasks and collect them, again (same tasks) while every episode fails; log env faults.
        With rollout.filter_groups, rounds of fresh tasks until enough groups have mixed outcomes
        (rollout/filtering.py). Returns (training batch, everything played, retries used, FilterStats or None).

        Under torchrun every rank draws the same global task list and plays its chunk of whole groups; all ranks
        then hold the gathered global batch, so "every episode failed" and which groups are kept are decided on
        the whole batch, identically on every rank, and all ranks retry, refill (or stop) together. Rank 0 logs
        every rank's faults."""
        cfg = self.cfg
        rng, sampler = capture_rng_state(), self.sampler.state_dict()
        pool, step = collector.pool, self.step + 1
        if self.dist.enabled:
            distributed.seed_rollout(cfg.train.seed, self.step)
        retries_used = 0

        def failed(attempt: int, _rollout) -> None:
            self._record_faults(step, "rollout", pool)
            self.console.print(f"[yellow]env:[/] step {step}: every episode failed (attempt {attempt + 1})")

        def collect_round(tasks: list[str], round_: int):
            nonlocal retries_used
            p = params
            if round_:  # a refill round of dynamic sampling: its own per-call seed (vLLM), its own progress line
                p = replace(params, seed=None if params.seed is None else params.seed + round_ * 100_003)
                if progress is not None:
                    progress.phase(f"rollout (refill {round_})", collector.max_turns)

            def collect():
                if not self.dist.enabled:
                    return collector.collect(tasks, cfg.rollout.group_size, p)
                with fsdp.gathered(self.policy):  # FSDP2: ranks generate different numbers of tokens
                    mine = collector.collect(distributed.my_tasks(tasks), cfg.rollout.group_size, p)
                return distributed.gather_rollout(mine)

            rollout, retries = collect_with_retries(collect, cfg.env.batch_retries, failed)
            retries_used += retries
            return rollout

        try:
            if cfg.rollout.filter_groups:
                batch, played, filtered = dynamic_sample(
                    collect_round, self.sampler.sample, cfg.rollout.tasks_per_step, cfg.rollout.filter_max_rounds
                )
            else:  # the same global task list on every rank
                batch = played = collect_round(self.sampler.sample(cfg.rollout.tasks_per_step), 0)
                filtered = None
        except (EnvBatchFailed, EnvResetFailed) as e:  # env faults only: OOM, CUDA, NaN sampling keep their traceback
            # stop with a valid checkpoint of the last finished step, exactly as that step left things
            self._record_faults(step, "rollout", pool)
            restore_rng_state(rng)
            self.sampler.load_state_dict(sampler)

            def last_checkpoint() -> Path | None:  # every rank names it in its error
                ckpt = latest_checkpoint(self.run_dir)
                return None if ckpt is None or ckpt.name != f"step_{self.step:06d}" else ckpt

            ckpt = distributed.run_on_main(last_checkpoint) or distributed.from_main(self._save())
            raise EnvBatchFailed(
                f"{str(e).splitlines()[0]}; stopped after step {self.step} (checkpoint {ckpt}); "
                f"fix the env, then: epo train --resume {self.run_dir}"
            ) from None
        self._record_faults(step, "rollout", pool)
        return batch, played, retries_used, filtered

    def _record_faults(self, step: int, phase: str, pool) -> None:
        """Every rank's env faults since the last call, logged by rank 0 (a collective under torchrun)."""
        faults = distributed.gather_faults(pool.drain_faults())
        if self.faults is not None:
            self.faults.record(step, phase, faults)

    def _update_history(self, data: StepData) -> dict[int, float]:
        """Feed the per-turn-index entropy of the turn samples actually played to the EPO history."""
        width = max(len(h) for h in data.entropy)
        ent = torch.zeros(len(data.entropy), width)
        mask = torch.zeros(len(data.entropy), width)
        for b, h in enumerate(data.entropy):
            ent[b, : len(h)] = h
            mask[b, : len(h)] = 1
        turn_idx = torch.tensor([s.turn_idx for s in data.samples])
        return self.history.update_from_tensors(ent, mask, turn_idx)

    # ------------------------------------------------------------------ eval
    def _eval_due(self) -> bool:
        k = self.cfg.train.eval_every
        return self.step == self.cfg.train.total_steps or (k > 0 and self.step % k == 0)

    def _first_eval(self, collector, progress, logger, stop) -> tuple[dict[str, EvalResult], bool]:
        """The step-0 eval; a stop signal abandons it after the current turn (one process only: under torchrun
        the other ranks would wait in the first step's collectives). Splits that a stopped run finished (saved in
        eval/) are kept, not run again: the weights are the same at step 0. Returns (results, stopped)."""
        again = "this split is evaluated again"
        kept = {
            s: r for s in self.cfg.env.eval_splits if (r := self._load_eval(self._eval_path(0, s), again)) is not None
        }
        if self.dist.enabled:
            return self._evaluate(collector, progress, logger, kept), False
        on_turn = collector.on_turn
        collector.on_turn = stop_checking(on_turn, stop, "eval at step 0")
        try:
            return self._evaluate(collector, progress, logger, kept), False
        except EvalStopped as e:
            done = [s for s in self.cfg.env.eval_splits if self._eval_path(0, s).is_file()]
            self.console.print(
                f"{e}: kept {', '.join(done) or 'no split'}, no checkpoint (nothing trained yet); a resume starts at "
                "step 0 and evaluates the rest"
            )
            return {}, True
        finally:
            collector.on_turn = on_turn

    def _saved_evals(self, upto: int) -> dict[int, dict[str, EvalResult]]:
        """{step: {split: result}} of the evals that earlier stretches of this run saved in eval/ at steps <= upto
        (none on a fresh start, upto = 0: its step-0 eval is run, or kept, by `_first_eval`)."""
        found: dict[int, dict[str, EvalResult]] = {}
        if upto == 0:
            return found
        for path in sorted((self.run_dir / "eval").glob("step_*_*.json")):
            step = path.stem.split("_")[1]
            if not step.isdigit() or int(step) > upto:  # a later eval of a run resumed from an older checkpoint
                continue
            if (res := self._load_eval(path, "left out of the before/after table and the report")) is None:
                continue
            if res.split in self.cfg.env.eval_splits:
                found.setdefault(int(step), {})[res.split] = res
        return found

    def _load_eval(self, path: Path, consequence: str) -> EvalResult | None:
        """A saved eval; a file that is there but unreadable (a disk fault, an edit) is named, not passed over."""
        if (res := EvalResult.load(path)) is None and path.exists():
            self.console.print(f"[yellow]warning:[/] {escape(str(path))} is damaged (unreadable); {consequence}")
        return res

    def _eval_path(self, step: int, split: str) -> Path:
        return self.run_dir / "eval" / f"step_{step:06d}_{split}.json"

    def _evaluate(
        self, collector, progress, logger, kept: dict[str, EvalResult] | None = None
    ) -> dict[str, EvalResult]:
        """Every eval split at this step (those in `kept` already evaluated), saved to eval/ and logged."""
        cfg = self.cfg
        out = {}
        for split in cfg.env.eval_splits:
            if split in (kept or {}):
                out[split] = kept[split]
                self.console.print(f"  eval step {self.step} {kept[split].line()} (kept from the stopped run)")
                continue
            progress.phase(f"eval {split}", collector.max_turns)
            seed = eval_sampling_seed(cfg, self.step)  # own stream: see evaluate.py
            out[split] = res = evaluate_split(cfg, collector, split, self.splits[split], cfg.train.eval_episodes, seed)
            if self.faults is not None:
                self.faults.record(self.step, f"eval {split}", collector.pool.drain_faults())
            self._eval_path(self.step, split).parent.mkdir(exist_ok=True)
            res.save(self._eval_path(self.step, split))
            self.console.print(f"  eval step {self.step} {res.line()}")
        if cfg.train.eval_episodes > cfg.rollout.tasks_per_step * cfg.rollout.group_size:
            # the eval's extra envs would idle through training (ScienceWorld: a JVM each); rollouts make theirs anew
            collector.pool.release_envs()
        if logger is not None:
            metrics: dict = {}
            for ev in out.values():
                metrics.update(ev.metrics())
            logger.log(self.step, metrics)
        return out

    # ------------------------------------------------------------------ checkpoints
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        if self.cfg.model.lora.enabled:
            return {n: p.detach().cpu().clone() for n, p in self.policy.named_parameters() if p.requires_grad}
        return {n: t.detach().cpu().clone() for n, t in self.policy.state_dict().items()}

    def _save(self) -> Path | None:
        if self.sharded_checkpoints:  # train.parallel=fsdp2: DCP shards from every rank (trainer/dist_checkpoint.py)
            return dist_checkpoint.save(self)
        if not self.dist.is_main:  # replicated weights and state: rank 0's checkpoint is the whole run's
            return None
        optim = {"policy": self.optimizer.state_dict()}
        value_state = None
        if self.critic is not None:
            optim["critic"] = self.critic_optimizer.state_dict()
            value_state = {n: t.detach().cpu().clone() for n, t in self.critic.state_dict().items()}
        return self._write_checkpoint(self._trainable_state(), value_state, optim)

    def _write_checkpoint(self, model_state, value_state, optimizer_states, write_files=None) -> Path:
        """Rank 0: the checkpoint of this step with the given weights/optimizer states plus everything else."""
        sched = {"policy": self.scheduler.state_dict()}
        if self.critic is not None:
            sched["critic"] = self.critic_scheduler.state_dict()
        extra = {
            "step": self.step,
            "history": self.history.state_dict(),
            "trend": self.trend.state_dict(),
            "monitor": self.monitor.state_dict(),
            "monitor_actions": self.monitor_actions.state_dict(),
            "sampler": self.sampler.state_dict(),
            "shuffle_rng": list(self.shuffle_rng.getstate()[1]) + [self.shuffle_rng.getstate()[2] or 0],
        }
        path = save_checkpoint(
            self.run_dir,
            self.step,
            model_state=model_state,
            optimizer_states=optimizer_states,
            scheduler_states=sched,
            extra_state=extra,
            rng=capture_rng_state(),
            config_yaml=to_yaml(self.cfg),
            value_state=value_state,
            is_adapter=self.cfg.model.lora.enabled,
            keep_last=self.cfg.train.keep_last,
            write_files=write_files,
        )
        self.console.print(f"  checkpoint: {path}", markup=False)
        return path

    def _resume_or_start(self) -> int | None:
        """None for a new run; else the step metrics are truncated after: the checkpoint's step, or -1 for a run
        that was stopped before its first checkpoint (it starts over from step 0 with the same config and seed)."""
        if not self.resume:
            return None
        changes = resume_changes(saved_config(self.run_dir), self.cfg, self.run_dir)
        if list_checkpoints(self.run_dir):
            step = self._restore()
        else:
            self.console.print(
                f"{self.run_dir}: no checkpoint yet; starting the run over from step 0 (same seed)", markup=False
            )
            step = -1
        if self.dist.is_main:  # one resumes.jsonl line per resume, not per rank
            log_resume(self.run_dir, max(step, 0), changes, partial(self.console.print, markup=False))
        return step

    def _load_replicated(self, ckpt) -> None:
        """Weights and optimizer states of a full (train.parallel=ddp / one process) checkpoint."""
        if self.sharded:
            raise CheckpointError(
                f"{ckpt.path}: written with train.parallel=ddp; resume it with train.parallel=ddp (fsdp2 resumes "
                "fsdp2 checkpoints, written on any number of processes)"
            )
        missing, unexpected = self.policy.load_state_dict(ckpt.model_state, strict=not ckpt.is_adapter)
        if unexpected:
            raise CheckpointError(f"{ckpt.path}: checkpoint weights do not match the model ({unexpected[:3]} ...)")
        self.optimizer.load_state_dict(ckpt.optimizer_states["policy"])
        if self.critic is not None:
            self.critic.load_state_dict(ckpt.value_state)
            self.critic_optimizer.load_state_dict(ckpt.optimizer_states["critic"])

    def _restore(self) -> int | None:
        ckpt = load_checkpoint(self.run_dir)
        if dist_checkpoint.is_sharded(ckpt):  # weights + optimizers from DCP shards, any number of ranks
            dist_checkpoint.load(self, ckpt)
        else:
            self._load_replicated(ckpt)
        self.scheduler.load_state_dict(ckpt.scheduler_states["policy"])
        apply_optim_overrides(self.optimizer, self.scheduler, self.cfg.optim.lr, self.cfg.optim.weight_decay)
        if self.critic is not None:
            self.critic_scheduler.load_state_dict(ckpt.scheduler_states["critic"])
            apply_optim_overrides(
                self.critic_optimizer, self.critic_scheduler, self.cfg.optim.value_lr, self.cfg.optim.weight_decay
            )
        extra = ckpt.extra_state
        self.step = int(extra["step"])
        if self.step > self.cfg.train.total_steps:
            raise ResumeConfigError(
                f"train.total_steps: {self.cfg.train.total_steps} is below the checkpoint's step {self.step}"
            )
        self.history.load_state_dict(extra["history"])
        self.trend.load_state_dict(extra["trend"])
        self.monitor.load_state_dict(extra["monitor"])
        if "monitor_actions" in extra:  # absent in checkpoints written before monitor actions existed
            self.monitor_actions.load_state_dict(extra["monitor_actions"])
        self.sampler.load_state_dict(extra["sampler"])
        state = extra["shuffle_rng"]
        self.shuffle_rng.setstate((3, tuple(int(x) for x in state[:-1]), None))
        restore_rng_state(ckpt.rng)
        self.console.print(f"resumed from {ckpt.path} (step {self.step})", markup=False)
        return self.step


def checkpoint_due(step: int, save_every: int, total_steps: int) -> bool:
    """Periodic checkpoints every `save_every` steps (0: none) and always at the last step; a stop signal (Ctrl-C,
    SIGTERM) checkpoints on its own."""
    return (save_every > 0 and step % save_every == 0) or step == total_steps


def _peak_memory(device: torch.device) -> dict[str, float]:
    """Memory of this process over the step (rollout and update; env workers and JVMs are processes of their own):
    host RSS at the step's end and its peak (perf/rss_gb, perf/peak_rss_gb; Linux), glibc's free heap holes, and on
    CUDA torch's peak allocation (verl's perf/max_memory_allocated). Both peaks are reset for the next step."""
    out = memory_metrics()
    reset_peak_rss()
    if device.type == "cuda":
        out["perf/max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return out


def _mean_entropy(data: StepData) -> float:
    total = sum(float(h.sum()) for h in data.entropy)
    count = sum(len(h) for h in data.entropy)
    return total / max(count, 1)


def _shaping_share(data: StepData) -> float:
    """actor/adv_shaping_share: how much of this GRPO step's advantage comes from groups with one outcome."""
    adv = torch.tensor([float(a[0]) if len(a) else 0.0 for a in data.advantages])  # [N] one value per turn sample
    returns = torch.tensor([s.reward - s.shaping for s in data.samples], dtype=torch.float64)  # [N] episode R
    return shaping_share(adv, [s.group_id for s in data.samples], returns)


def _group_outcomes(trajs) -> dict[str, float]:
    """Fractions of this step's groups (2+ trajectories of one task) whose trajectories all lost / all won: GRPO
    learns nothing about winning from either (their outcome advantages are 0)."""
    groups: dict[int, list[bool]] = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(bool(t.won))
    compared = [won for won in groups.values() if len(won) > 1]
    n = max(len(compared), 1)
    return {
        "rollout/groups_all_lost": sum(not any(w) for w in compared) / n,
        "rollout/groups_all_won": sum(all(w) for w in compared) / n,
    }


def _filter_metrics(stats: FilterStats) -> dict[str, float]:
    """Dynamic sampling (rollout.filter_groups): how many collections the step took and what it kept."""
    return {
        "rollout/filter_rounds": float(stats.rounds),
        "rollout/filter_groups_kept": float(stats.groups_kept),
        "rollout/filter_episodes_played": float(stats.episodes_played),
    }


def _rollout_metrics(rollout) -> dict[str, float]:
    trajs = rollout.trajectories
    n = max(len(trajs), 1)
    turns = max(sum(t.length for t in trajs), 1)
    return {
        "rollout/success_rate": sum(t.won for t in trajs) / n,
        "rollout/return_mean": sum(t.episode_return for t in trajs) / n,  # R = win_reward·won: no penalties
        "rollout/episode_len": sum(t.length for t in trajs) / n,
        "rollout/invalid_rate": sum(t.invalid_turns for t in trajs) / turns,
        "rollout/truncated_rate": turn_limit_rate(trajs),
        **_group_outcomes(trajs),
        "rollout/samples": float(len(rollout.samples)),
        **fault_metrics(trajs),
        **prompt_fit_metrics(trajs),
        **score_metrics(trajs),
    }
