"""`epo sft`: behaviour cloning on oracle trajectories, the warm start for RL.

    oracle episodes (env expert) -> turn samples in the RL prompt format -> token-mean NLL of the response
    -> eval before/after -> export (LoRA merged) to OUT/export, which `epo train init_from=OUT` starts from.

A 135M model cannot act zero-shot in these envs (no reward ever), so sparse-reward RL needs this first.

Stop and resume work as in the RL loop: the first SIGINT/SIGTERM finishes the current optimizer step, writes
OUT/checkpoints/step_N (weights or LoRA adapter, optimizer, scheduler, epoch order and position, losses, RNG
states) and returns with `interrupted=True`; a second signal aborts at once. `run_sft(..., resume=True)` (and
`epo train --resume RUN` for a warm start that was stopped) re-collects the oracle episodes (deterministic), skips
the zero-shot eval already done (OUT/sft_before.json) and continues from the checkpoint: the result equals an
uninterrupted run bit for bit. `sft.save_every` also checkpoints every N optimizer steps (for SIGKILL).

Env faults while the oracle plays (a worker crash or hang, an exception in the env) end those episodes unwon, as in
RL: one console line each ("env fault: step 0 oracle: ..."), OUT/faults.jsonl (the RL record format), the count in
the oracle's summary line, `SFTResult.oracle_faults` and sft_summary.json. Env faults of the evals before and after
cloning are logged the same way, phase "eval <split> before SFT" / "eval <split> after SFT" (step 0). A fresh run
starts OUT/faults.jsonl anew; a resume keeps only the faults of the zero-shot splits it does not run again.
`epo report RUN` lists RUN/sft/faults.jsonl with the run's own faults, as the warm start's.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from epo.config import Config, save_config, to_yaml
from epo.errors import TrainingError
from epo.fsio import atomic_write_text
from epo.models import merge_and_save, response_logprobs
from epo.models.precision import autocast_for
from epo.rollout.collector import prompt_fit_metrics
from epo.rollout.evaluate import EvalResult, wilson_interval
from epo.rollout.oracle import collect_oracle, load_oracle_play, save_oracle_play
from epo.rollout.types import Trajectory, TurnSample
from epo.telemetry.faults import FaultLog, is_fault, keep_faults
from epo.telemetry.metrics import truncate_after
from epo.telemetry.progress import StepProgress
from epo.telemetry.provenance import append_provenance, machine_record
from epo.trainer import setup
from epo.trainer.allocator import memory_metrics, reset_peak_rss, trim_after_phase
from epo.trainer.batching import iter_micro_batches
from epo.trainer.checkpoint import (
    CheckpointError,
    GracefulExit,
    capture_rng_state,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from epo.trainer.rundir import atomic_dir
from epo.trainer.split_eval import EvalStopped, evaluate_splits
from epo.trainer.update import step_if_finite

BEFORE_FILE = "sft_before.json"
METRICS_FILE = "sft_metrics.jsonl"
SUMMARY_FILE = "sft_summary.json"
ORACLE_FILE = "oracle_play.json"  # the oracle's samples as played, for a resume (gold paths can differ on a replay)
BEFORE, AFTER = "before SFT", "after SFT"  # the labels of the evals before and after cloning


@dataclass
class SFTResult:
    out_dir: Path
    export_dir: Path
    before: dict[str, EvalResult] = field(default_factory=dict)
    after: dict[str, EvalResult] = field(default_factory=dict)
    oracle_win_rate: float = 0.0
    oracle_faults: int = 0
    """Oracle episodes ended by an env fault (unwon, not cloned); each fault is a record of OUT/faults.jsonl."""
    samples: int = 0
    prompt_shortened_rate: float = 0.0
    """Share of the cloned (won) episodes' turns whose prompt was shortened to fit agent.max_prompt_tokens."""
    prompt_actions_cut_rate: float = 0.0
    """Share of them whose prompt left admissible actions out to fit (a subset of the above)."""
    interrupted: bool = False
    """Stopped by SIGINT/SIGTERM (or stop_after): resume with run_sft(..., resume=True); nothing exported."""
    stop_signal: str = ""
    """SIGINT/SIGTERM when a signal stopped it; empty otherwise."""


def run_sft(
    cfg: Config,
    out_dir: str | Path,
    console: Console | None = None,
    eval_after: bool = True,
    resume: bool = False,
    stop_after: int | None = None,
) -> SFTResult:
    """eval_after=False when RL follows at once: its step-0 evaluation measures the same policy.

    resume: continue OUT from its newest checkpoint (or from the start if it has none). stop_after: stop after
    that optimizer step as a signal would (tests)."""
    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    splits = setup.check_env(cfg)
    setup.set_threads()
    setup.set_allocator(cfg)
    setup.seed_everything(cfg.train.seed, cfg.train.deterministic)
    device = setup.pick_device(cfg.model.device)
    model, tokenizer = setup.load_policy(cfg, device)
    chosen = setup.log_precision(console, cfg, device)
    resume_from = latest_checkpoint(out) if resume else None  # None: cloning starts at step 0
    from_step = 0 if resume_from is None else checkpoint_step(resume_from)
    append_provenance(out, machine_record(device, chosen, from_step=from_step, phase="sft"))
    result = SFTResult(out, out / "export")
    faults = FaultLog(out, console.print)
    with GracefulExit(console.print) as stop, setup.make_pool(cfg) as pool:
        collector = setup.make_collector(cfg, pool, model, tokenizer, console)
        played = load_oracle_play(out / ORACLE_FILE) if resume else None
        if resume and played is None and (out / ORACLE_FILE).exists():
            console.print(f"{out / ORACLE_FILE}: unreadable; the oracle plays again", markup=False)
        result.before = _before_eval(cfg, collector, splits, console, out, resume, stop, faults, played is not None)
        if stop.requested:  # nothing trained yet: a resume starts training from scratch (the eval is kept)
            result.interrupted, result.stop_signal = True, stop.signal_name
            return result
        samples = _play_oracle(cfg, splits, pool, collector, tokenizer, console, faults, result, played)
        pool.release_envs()  # idle while cloning (ScienceWorld: a JVM each); the eval after makes new ones
        loop = _SFTLoop(cfg, model, tokenizer.pad_token_id, samples, out, stop, stop_after)
        reset_peak_rss()
        losses = loop.run(console, resume_from)
        peak_gb = memory_metrics().get("perf/peak_rss_gb")  # this process while cloning (Linux)
        trim_after_phase()  # train.malloc_trim: cloning's free heap pages go back before the export and evals
        if losses is None:
            result.interrupted, result.stop_signal = True, stop.signal_name
            console.print(f"behaviour cloning stopped after step {len(loop.losses)}/{loop.total}")
            return result
        model.eval()  # exported before the after-SFT eval, so a crash or a stop there loses no training
        with atomic_dir(result.export_dir) as tmp:  # complete or absent: `epo train --resume` trusts an export/
            merge_and_save(model, tokenizer, tmp)
        console.print(f"SFT model exported to {result.export_dir}", markup=False)
        if peak_gb is not None:
            console.print(f"behaviour cloning: peak memory {peak_gb:.1f} GB (this process)", markup=False)
        if eval_after:
            try:
                result.after = _eval_all(cfg, collector, splits, console, AFTER, faults=faults, stop=stop)
            except EvalStopped as e:
                console.print(
                    f"{e}: the export is complete; measure it with `epo eval --model {result.export_dir}`", markup=False
                )
    summary = {
        "oracle_win_rate": result.oracle_win_rate,
        "oracle_faults": result.oracle_faults,
        "samples": result.samples,
        "prompt_shortened_rate": result.prompt_shortened_rate,
        "prompt_actions_cut_rate": result.prompt_actions_cut_rate,
        "final_loss": losses[-1],
        "cloning_peak_rss_gb": peak_gb,
        "before": {k: v.success for k, v in result.before.items()},
        "after": {k: v.success for k, v in result.after.items()},
    }
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=1))
    return result


def _play_oracle(
    cfg: Config, splits, pool, collector, tokenizer, console: Console, faults: FaultLog, result, played=None
):
    """The oracle's turn samples of sft.episodes train tasks, saved to OUT/oracle_play.json; `played`: those of an
    earlier start (resume), used as they are. Its win rate and env faults go to `result`, the console and
    OUT/faults.jsonl (logged even when the collection raises, e.g. every reset failing)."""
    t0 = time.perf_counter()
    if played is not None:
        samples, trajs = played
        console.print(f"oracle: the episodes played before the stop ({result.out_dir / ORACLE_FILE})", markup=False)
    else:
        samples, trajs = _play(cfg, splits, pool, collector, tokenizer, console, faults)
        save_oracle_play(result.out_dir / ORACLE_FILE, samples, trajs)
    result.oracle_win_rate = sum(t.won for t in trajs) / max(len(trajs), 1)
    result.oracle_faults = sum(is_fault(t) for t in trajs)
    result.samples = len(samples)
    cloned = prompt_fit_metrics([t for t in trajs if t.won])  # the samples are the won episodes' turns
    result.prompt_shortened_rate = cloned["rollout/prompt_shortened_rate"]
    result.prompt_actions_cut_rate = cloned["rollout/prompt_actions_cut_rate"]
    console.print(
        f"oracle: {_oracle_outcome(trajs)}, {len(samples)} turn samples ({time.perf_counter() - t0:.1f}s)",
        markup=False,
    )
    if result.prompt_shortened_rate > 0:  # the clone learns to act on less than the env showed: say so
        console.print(
            f"[yellow]warning:[/] {100 * result.prompt_shortened_rate:.1f}% of the cloned turns' prompts were "
            f"shortened to fit agent.max_prompt_tokens={cfg.agent.max_prompt_tokens} "
            f"({100 * result.prompt_actions_cut_rate:.1f}% lost admissible actions)"
        )
    if not samples:
        lost = f" ({result.oracle_faults} ended by env faults: see {faults.path})" if result.oracle_faults else ""
        raise TrainingError(f"sft: the {cfg.env.name} oracle won no episode{lost}; nothing to clone")
    return samples


def _play(cfg: Config, splits, pool, collector, tokenizer, console: Console, faults: FaultLog):
    ids = random.Random(cfg.train.seed).sample(
        sorted(splits[cfg.env.train_split]), min(cfg.sft.episodes, len(splits[cfg.env.train_split]))
    )
    # no more envs at once than the RL phase holds (a rollout's or an eval's), a size the user chose for the machine
    at_once = max(cfg.rollout.tasks_per_step * cfg.rollout.group_size, cfg.train.eval_episodes, 1)
    rounds = f", {at_once} at a time" if len(ids) > at_once else ""
    console.print(f"oracle: playing {len(ids)} expert episodes on {cfg.env.train_split}{rounds} ...")
    try:
        return collect_oracle(pool, collector.prompts, tokenizer, ids, collector.max_turns, max_envs=at_once)
    finally:
        faults.record(0, "oracle", pool.drain_faults())


def _oracle_outcome(trajs: list[Trajectory]) -> str:
    """The oracle's outcome: N episodes, won k (p% [95% CI lo-hi]), and ", F ended by env faults" only when F > 0
    (the usual case says no more)."""
    wins, faults = sum(t.won for t in trajs), sum(is_fault(t) for t in trajs)
    lo, hi = wilson_interval(wins, len(trajs))
    text = (
        f"{len(trajs)} episodes, won {wins} ({100 * wins / max(len(trajs), 1):.1f}% "
        f"[95% CI {100 * lo:.1f}-{100 * hi:.1f}])"
    )
    return text + (f", {faults} ended by env faults" if faults else "")


def saved_zero_shot(out: Path) -> dict[str, EvalResult]:
    """The zero-shot eval a warm start in OUT saved ({} where there is none or it cannot be read)."""
    try:
        return {split: EvalResult(**res) for split, res in json.loads((out / BEFORE_FILE).read_text()).items()}
    except (OSError, ValueError, TypeError, AttributeError):  # AttributeError: valid JSON that is not an object
        return {}


def _before_eval(
    cfg: Config,
    collector,
    splits,
    console: Console,
    out: Path,
    resume: bool,
    stop: GracefulExit,
    faults: FaultLog,
    keep_oracle_faults: bool = False,
) -> dict[str, EvalResult]:
    """The zero-shot eval, saved to OUT/sft_before.json split by split, so a resumed warm start does not repeat the
    splits that finished. A stop signal abandons the split being evaluated at once (nothing is trained yet, so
    nothing is lost but that split, which a resume runs again).

    First OUT/faults.jsonl keeps only the env faults of the zero-shot splits kept (none on a fresh start) and, with
    keep_oracle_faults (the oracle's saved play is reused), the oracle's: a resume runs everything else again (the
    rest of this eval, the eval after cloning) and logs its faults anew."""
    path = out / BEFORE_FILE
    done = saved_zero_shot(out) if resume else {}
    if resume and path.is_file() and not done:  # written atomically, so only damaged from outside: redo, say so
        console.print(f"{path}: unreadable; the zero-shot eval runs again")
    kept_phases = {eval_phase(split, BEFORE) for split in done} | ({"oracle"} if keep_oracle_faults else set())
    keep_faults(out, lambda rec: rec.get("phase") in kept_phases)
    if set(cfg.env.eval_splits) <= done.keys():
        return done

    def save(finished: dict[str, EvalResult]) -> None:
        atomic_write_text(path, json.dumps({split: asdict(res) for split, res in finished.items()}))

    try:
        return _eval_all(cfg, collector, splits, console, BEFORE, faults=faults, stop=stop, done=done, on_split=save)
    except EvalStopped as e:
        kept = sorted(json.loads(path.read_text())) if path.is_file() else []
        console.print(f"{e}: kept {', '.join(kept) or 'no split'}; a resume runs the rest of this eval")
        return {}


def eval_phase(split: str, label: str) -> str:
    """The phase of a warm-start eval's env faults in OUT/faults.jsonl: the RL loop's "eval <split>" and which eval
    ("eval iid before SFT"); step 0, like the oracle's."""
    return f"eval {split} {label}"


def _eval_all(
    cfg: Config, collector, splits, console: Console, label: str, *, faults: FaultLog, stop=None, **kw
) -> dict[str, EvalResult]:
    if cfg.sft.eval_episodes <= 0:
        return {}
    names = list(cfg.env.eval_splits)

    def on_faults(split: str, found) -> None:
        faults.record(0, eval_phase(split, label), found)

    episodes = cfg.sft.eval_episodes
    return evaluate_splits(cfg, collector, splits, names, episodes, console, label, stop, on_faults=on_faults, **kw)


class _SFTLoop:
    """Epochs of shuffled optimizer steps over the oracle samples, with checkpoints at a stop (or every
    sft.save_every steps) and exact resume."""

    def __init__(self, cfg: Config, model, pad_id: int, samples, out: Path, stop: GracefulExit, stop_after):
        self.cfg, self.model, self.pad_id, self.samples, self.out = cfg, model, pad_id, samples, out
        self.stop, self.stop_after = stop, stop_after
        self.steps_per_epoch = (len(samples) + cfg.sft.batch_size - 1) // cfg.sft.batch_size
        self.total = self.steps_per_epoch * cfg.sft.epochs
        self.optimizer = setup.make_optimizer(model.parameters(), cfg.sft.lr, cfg)
        self.scheduler = setup.warmup_cosine(self.optimizer, self.total, cfg.optim.warmup_ratio, cfg.optim.min_lr_ratio)
        self.rng = random.Random(cfg.train.seed)
        self.losses: list[float] = []
        self.epoch, self.order, self.start = 0, [], 0  # position: epoch, its shuffled sample order, next batch start

    def run(self, console: Console, resume_from: Path | None) -> list[float] | None:
        """The per-step losses, or None when stopped (a checkpoint was written). resume_from: a checkpoint of OUT."""
        if resume_from is not None:
            self._restore(console, resume_from)
        truncate_after(self.out / METRICS_FILE, len(self.losses))  # drop steps after the checkpoint
        self.model.train()
        with (
            StepProgress(console, self.total, len(self.losses), label="SFT steps") as progress,
            open(self.out / METRICS_FILE, "a") as log,
        ):
            progress.phase("behaviour cloning", 0)
            while self.epoch < self.cfg.sft.epochs:
                if not self.order:
                    self.order = list(range(len(self.samples)))
                    self.rng.shuffle(self.order)
                while self.start < len(self.order):
                    loss, skipped = self._step(self.order[self.start : self.start + self.cfg.sft.batch_size])
                    self.start += self.cfg.sft.batch_size
                    self.losses.append(loss)
                    row = {"epoch": self.epoch, "step": len(self.losses), "loss": loss}
                    log.write(json.dumps(row | ({"skipped_nonfinite_grad": True} if skipped else {})) + "\n")
                    log.flush()
                    line = f"sft epoch {self.epoch} step {len(self.losses)}/{self.total} loss {loss:.4f}"
                    progress.step_done(line + (" (gradient not finite: step skipped)" if skipped else ""))
                    if self.start >= len(self.order):
                        self.epoch, self.order, self.start = self.epoch + 1, [], 0
                    stopping = self.stop.requested or len(self.losses) == self.stop_after
                    every = self.cfg.sft.save_every
                    if stopping or (every > 0 and len(self.losses) % every == 0 and len(self.losses) < self.total):
                        console.print(f"  SFT checkpoint: {self._save()}", markup=False)
                    if stopping:
                        return None
        return self.losses

    def _step(self, batch: list[int]) -> tuple[float, bool]:
        """One optimizer step (`clone_step`) and the schedule's. Returns (loss, skipped)."""
        loss, skipped = clone_step(self.model, self.optimizer, self.samples, batch, self.pad_id, self.cfg)
        self.scheduler.step()
        return loss, skipped

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        if self.cfg.model.lora.enabled:
            return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        return {n: t.detach().cpu().clone() for n, t in self.model.state_dict().items()}

    def _save(self) -> Path:
        rng_state = self.rng.getstate()
        extra = {
            "epoch": self.epoch,
            "order": list(self.order),
            "start": self.start,
            "losses": list(self.losses),
            "samples": len(self.samples),
            "shuffle_rng": list(rng_state[1]) + [rng_state[2] or 0],
        }
        return save_checkpoint(
            self.out,
            len(self.losses),
            model_state=self._trainable_state(),
            optimizer_states={"sft": self.optimizer.state_dict()},
            scheduler_states={"sft": self.scheduler.state_dict()},
            extra_state=extra,
            rng=capture_rng_state(),
            config_yaml=to_yaml(self.cfg),
            is_adapter=self.cfg.model.lora.enabled,
            keep_last=self.cfg.train.keep_last,
        )

    def _restore(self, console: Console, path: Path) -> None:
        ckpt = load_checkpoint(path)
        extra = ckpt.extra_state
        if int(extra["samples"]) != len(self.samples):
            raise TrainingError(
                f"{ckpt.path}: was trained on {extra['samples']} oracle samples, now there are {len(self.samples)} "
                "(the env or sft config changed); start a new warm start"
            )
        _missing, unexpected = self.model.load_state_dict(ckpt.model_state, strict=not ckpt.is_adapter)
        if unexpected:
            raise CheckpointError(f"{ckpt.path}: checkpoint weights do not match the model ({unexpected[:3]} ...)")
        self.optimizer.load_state_dict(ckpt.optimizer_states["sft"])
        self.scheduler.load_state_dict(ckpt.scheduler_states["sft"])
        self.epoch, self.start = int(extra["epoch"]), int(extra["start"])
        self.order, self.losses = [int(i) for i in extra["order"]], [float(x) for x in extra["losses"]]
        state = extra["shuffle_rng"]
        self.rng.setstate((3, tuple(int(x) for x in state[:-1]), None))
        restore_rng_state(ckpt.rng)
        console.print(
            f"resumed behaviour cloning from {ckpt.path} (step {len(self.losses)}/{self.total})", markup=False
        )


def clone_step(model, optimizer, samples: list[TurnSample], batch: list[int], pad_id: int, cfg: Config):
    """One optimizer step on the token-mean NLL of the oracle responses samples[batch] (micro-batches normalised by
    the batch's token count). Returns (loss, skipped): skipped when the gradient was not finite and so not applied."""
    num_tokens = float(sum(len(samples[i].response_ids) for i in batch))
    optimizer.zero_grad(set_to_none=True)
    total_loss = 0.0
    device = next(model.parameters()).device
    for mb in iter_micro_batches(samples, batch, pad_id, cfg.train.micro_batch_tokens, device):
        with autocast_for(cfg.train.precision, mb.input_ids.device):  # fp32 master weights, bf16 compute
            stats = response_logprobs(
                model,
                mb.input_ids,
                mb.attention_mask,
                mb.response_mask,
                chunk_tokens=cfg.model.logprob_chunk_tokens,
                with_entropy=False,
            )
        loss = -(stats.logprobs * mb.response_mask).sum() / num_tokens  # [B, T] masked to response tokens
        loss.backward()
        total_loss += float(loss.detach())
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf")))
    return total_loss, not step_if_finite([optimizer], [grad_norm])
