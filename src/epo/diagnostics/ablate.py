"""`epo ablate RUN --step N`: one saved rollout batch, replayed under several regularisers from the same weights.

For each regulariser the run's own config is rebuilt with only the regularisation changed, the policy, optimizer,
scheduler, EPO history and shuffle RNG are restored from the checkpoint written after step N-1 (for N = 1: the
initial weights, rebuilt from the config and seed), and step N's update runs on the batch saved by
`train.save_rollouts`. Reported per turn index: the realised entropy change, KL(before || after) and the fraction
of tokens whose ratio left the PPO clip range (the StepDiagnostics definitions), plus the update's own clip
fraction. Identical data and weights make this a controlled comparison; "none" on a run trained without
regularisation reproduces the run's own logged step (tested). A batch saved before the per-turn shaping and the
sampler log-probs were kept replays without them: one console line and a "note" in the outputs say how it differs.

    none           no entropy term, no KL
    entropy        plain token-mean entropy bonus, algo.entropy_coef (default: the run's, else its epo.entropy_coef)
    epo            epo.mode=on (the run's EPO settings)
    epo_reference  epo.mode=reference (the released code's behaviour)
    kl             KL to the initial policy, algo.kl_coef (default: the run's, else 0.01)
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from epo.config import Config, ConfigError, load_config, reset_unused, validate
from epo.diagnostics.rollouts_io import fields_missing, load_rollouts, read_batch
from epo.errors import RunDirError
from epo.trainer.checkpoint import CHECKPOINTS_DIR, CheckpointError, list_checkpoints

REGULARISERS = ("none", "entropy", "epo", "epo_reference", "kl")
PER_TURN = ("entropy_change", "kl_update", "ratio_outside_clip", "cov_logp_adv")
ALL_SAMPLES = 1 << 30


def variant_config(base: Config, name: str, entropy_coef: float, kl_coef: float) -> Config:
    """The run's config with only the regulariser changed (and diagnostics set to what the replay measures)."""
    if name not in REGULARISERS:
        raise ConfigError(f"ablate: unknown regulariser '{name}' (choices: {', '.join(REGULARISERS)})")
    cfg = copy.deepcopy(base)
    cfg.epo.mode, cfg.algo.entropy_coef, cfg.algo.kl_coef = "off", 0.0, 0.0
    if name == "entropy":
        cfg.algo.entropy_coef = entropy_coef
    elif name == "epo":
        cfg.epo.mode = "on"
    elif name == "epo_reference":
        cfg.epo.mode = "reference"
    elif name == "kl":
        cfg.algo.kl_coef = kl_coef
    cfg.diag.action_entropy_turns = 0
    # the run's subset when it logged the decomposition (so the numbers compare), else the whole batch
    cfg.diag.entropy_change_samples = base.diag.entropy_change_samples or ALL_SAMPLES
    cfg.diag.monitor_action = "none"
    cfg.train.save_rollouts = False
    return validate(reset_unused(cfg))  # e.g. the run's kl_type once the variant's kl_coef is 0


def checkpoint_before(run_dir: Path, step: int) -> Path | None:
    """The checkpoint written after step-1 (None for step 1: the initial weights)."""
    if step < 1:
        raise ConfigError(f"ablate: --step must be >= 1, got {step}")
    if step == 1:
        return None
    path = run_dir / CHECKPOINTS_DIR / f"step_{step - 1:06d}"
    if not path.is_dir():
        have = ", ".join(p.name for p in list_checkpoints(run_dir)) or "none"
        raise CheckpointError(
            f"{run_dir}: no checkpoint of step {step - 1} to replay step {step} from (have: {have}; "
            "train with train.save_every=1 and a larger train.keep_last)"
        )
    return path


# how the update differs without each field (rollouts_io.REPLAY_FIELDS), for the replay gap note
_GAPS = {
    "shaping": "every turn's reward counts as episode return (shaping 0), which changes turn-level GAE "
    "(algo.gae_level=turn) and actor/adv_shaping_share",
    "sampler_logprobs": "no sampler log-probs, so no TIS correction (rollout.is_correction=tis) and no "
    "rollout/logp_mismatch",
}


def replay_gap_note(missing: list[str]) -> str:
    """One sentence on what a batch saved without `missing` fields changes in the replay ("" when nothing)."""
    if not missing:
        return ""
    effects = "; ".join(_GAPS.get(name, f"{name} is absent") for name in missing)
    return (
        f"the saved batch lacks {', '.join(missing)} (saved by an older version): the replay uses {effects}; "
        "where the run used them, its numbers differ from the logged step"
    )


def replay_step(trainer, samples) -> dict:
    """Step `trainer.step + 1`'s update on `samples` (Trainer.update_step, as in training); returns its metrics."""
    trainer.policy.eval()  # as after a rollout (HFBackend.generate)
    return trainer.update_step(samples, trainer.cfg)[1]


def run_ablation(
    run_dir: str | Path,
    step: int,
    regularisers: list[str] | None = None,
    entropy_coef: float | None = None,
    kl_coef: float | None = None,
    console: Console | None = None,
) -> dict:
    """Replay step `step` of `run_dir` under each regulariser; writes RUN_DIR/ablate/step_N.{json,md}."""
    from epo.trainer.trainer import Trainer

    run_dir = Path(run_dir)
    console = console or Console(quiet=True)
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir}: no config.yaml (not a run dir)")
    base = load_config(run_dir / "config.yaml")
    regularisers = list(regularisers or REGULARISERS)
    for given, reg in ((entropy_coef, "entropy"), (kl_coef, "kl")):
        if given is not None and reg not in regularisers:
            raise ConfigError(f"{reg}_coef acts only on the '{reg}' regulariser, which is not among {regularisers}")
    entropy_coef = entropy_coef if entropy_coef is not None else (base.algo.entropy_coef or base.epo.entropy_coef)
    kl_coef = kl_coef if kl_coef is not None else (base.algo.kl_coef or 0.01)
    ckpt = checkpoint_before(run_dir, step)
    samples = load_rollouts(run_dir, step)
    note = replay_gap_note(fields_missing(read_batch(run_dir, step)))
    if note:
        console.print(f"[yellow]ablate note:[/] {escape(note)}")
    results: dict = {}
    for name in regularisers:
        cfg = variant_config(base, name, entropy_coef, kl_coef)
        console.print(f"ablate step {step}: {name}")
        trainer = Trainer(cfg, run_dir=ckpt, resume=ckpt is not None, console=Console(quiet=True))
        if ckpt is not None:
            trainer._restore()
        metrics = replay_step(trainer, copy.deepcopy(samples))
        results[name] = {k.removeprefix("diag/"): v for k, v in metrics.items() if k.startswith(("diag/", "actor/"))}
    out = {
        "run": str(run_dir),
        "step": step,
        "from_checkpoint": str(ckpt) if ckpt else "initial weights",
        "entropy_coef": entropy_coef if "entropy" in regularisers else None,  # only the coefficients that acted
        "kl_coef": kl_coef if "kl" in regularisers else None,
        "samples": len(samples),
        "results": results,
    }
    if note:
        out["note"] = note
    out_dir = run_dir / "ablate"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"step_{step:06d}.json").write_text(json.dumps(_finite(out), indent=1))
    (out_dir / f"step_{step:06d}.md").write_text(render_markdown(out))
    return out


def _finite(obj):
    """NaN -> None so the JSON is strict."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:+.2e}"


def _coefs(out: dict) -> str:
    """'; entropy bonus coef X, KL coef Y' for the regularisers that ran ('' when neither did)."""
    parts = [f"{label} {out[key]:g}" for key, label in (("entropy_coef", "entropy bonus coef"), ("kl_coef", "KL coef"))
             if out.get(key) is not None]  # fmt: skip
    return "; " + ", ".join(parts) if parts else ""


def render_markdown(out: dict) -> str:
    res = out["results"]
    lines = [
        f"# ablate {out['run']} step {out['step']}",
        "",
        f"From {out['from_checkpoint']}; {out['samples']} turn samples{_coefs(out)}.",
        *(["", f"Note: {out['note']}."] if out.get("note") else []),
        "",
        "## Whole batch",
        "",
        "| regulariser | ΔH | KL(before‖after) | ratio outside clip | update clip frac | Cov(log p, A) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in res.items():
        cells = [m.get("entropy_change"), m.get("kl_update"), m.get("ratio_outside_clip")]
        cells += [m.get("actor/clip_frac"), m.get("cov_logp_adv")]
        lines.append(f"| {name} | " + " | ".join(_fmt(c) for c in cells) + " |")
    n_turns = max((len(m.get("entropy_change_per_turn", [])) for m in res.values()), default=0)
    for key, title in (
        ("entropy_change", "ΔH per turn"),
        ("kl_update", "KL per turn"),
        ("ratio_outside_clip", "ratio outside clip range per turn"),
    ):
        lines += ["", f"## {title}", "", "| regulariser | " + " | ".join(f"t{t}" for t in range(n_turns)) + " |"]
        lines.append("|---" * (n_turns + 1) + "|")
        for name, m in res.items():
            vals = m.get(f"{key}_per_turn", [])
            lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in vals) + " |")
    return "\n".join(lines) + "\n"
