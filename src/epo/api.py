"""The Python API: what `epo train | sft | eval | report` run, callable from a program or a notebook.

    import epo

    cfg = epo.load_config("quest_demo_cpu", ["train.total_steps=20"])    # or epo.Config() and set fields
    result = epo.train(cfg, run_dir="runs/mine")                         # warm start -> RL -> report
    results = epo.evaluate(cfg, model=result.run_dir / "final", splits=["iid"], episodes=32)
    print(results["iid"].success, results["iid"].ci_low, results["iid"].ci_high)

Every function takes a `Config`, a preset name or a YAML path (`config`), plus optional dot-list `overrides`
(the CLI's syntax), and validates the result: a bad value raises `ConfigError` naming the key. For a custom loop,
`epo.Trainer(epo.as_config(cfg), run_dir).train(stop_after=n)` is the RL loop alone (no warm start, no report;
Trainer takes the config as given, so validate it first). Plug-ins: `epo.register_env(spec)` (or
`env.name=module:SPEC`), `agent.reward=module:function` (see `epo.Episode`, `epo.Rewards`), and
`epo.envs.testing.check_env`. docs/ENVIRONMENTS.md has the contracts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from epo.config import Config, ConfigError, load_config, validate

if TYPE_CHECKING:
    from rich.console import Console

    from epo.rollout.evaluate import EvalResult
    from epo.trainer.sft import SFTResult
    from epo.trainer.trainer import TrainResult

ConfigLike = Config | str | Path | None


def as_config(config: ConfigLike = None, overrides: list[str] | tuple[str, ...] | None = None) -> Config:
    """A validated Config from a Config (copied, not changed), a preset name / YAML path, or None (defaults)."""
    if not isinstance(config, Config):
        return load_config(config, list(overrides or []))
    try:
        merged = OmegaConf.structured(config)
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{key + ': ' if key else ''}{str(e).splitlines()[0]}") from None
    assert isinstance(cfg, Config)
    return validate(cfg)


def _preset_name(config: ConfigLike) -> str:
    return Path(config).stem if isinstance(config, (str, Path)) else "run"


def train(
    config: ConfigLike = None,
    overrides: list[str] | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    console: Console | None = None,
) -> TrainResult:
    """Warm start (if `sft.warm_start`) -> RL -> before/after table -> report. Returns the run's TrainResult
    (run_dir, steps_done, evals: {step: {split: EvalResult}}, interrupted). config defaults to quest_demo_cpu.

    resume=RUN_DIR continues that run from its last valid checkpoint with its own saved config (plus `overrides`,
    which the resume allow-list checks, docs/RELIABILITY.md); `config` and `run_dir` cannot be combined with it."""
    from epo.errors import RunDirError
    from epo.trainer.pipeline import train_pipeline

    if resume is None:
        config = "quest_demo_cpu" if config is None else config
        cfg = as_config(config, overrides)
        return train_pipeline(cfg, run_dir, preset_name=_preset_name(config), console=console)
    if config is not None or run_dir is not None:
        flag = "--config" if config is not None else "--run-dir"
        raise RunDirError(f"--resume uses the run's own config.yaml and dir; {flag} cannot be combined with it")
    saved = Path(resume) / "config.yaml"
    if not saved.is_file():
        raise RunDirError(f"--resume {resume}: no config.yaml there (not a run dir)")
    return train_pipeline(load_config(saved, list(overrides or [])), resume, resume=True, console=console)


def sft(
    config: ConfigLike = None,
    overrides: list[str] | None = None,
    *,
    out: str | Path = "runs/sft",
    resume: bool = False,
    console: Console | None = None,
) -> SFTResult:
    """Behaviour cloning on the env's expert episodes; the model is exported to OUT/export (`init_from=OUT`).

    A SIGINT/SIGTERM checkpoints and returns `interrupted=True`; resume=True continues OUT from its checkpoint
    with the config saved in OUT/config.yaml (config and overrides must then be left out)."""
    from epo.trainer.sft import run_sft

    if resume:
        return run_sft(sft_resume_config(out, config, overrides), out, console=console, resume=True)
    return run_sft(as_config(config, overrides), out, console=console)


def sft_resume_config(out: str | Path, config: ConfigLike = None, overrides: list[str] | None = None) -> Config:
    """The saved config of a stopped warm start: a resume trains exactly what was started (same episodes, seed)."""
    saved = Path(out) / "config.yaml"
    if config is not None or overrides:
        raise ConfigError(f"sft --resume continues with {saved}; drop --config and the overrides")
    if not saved.is_file():
        raise ConfigError(f"{out}: no config.yaml, so nothing to resume; start it without --resume")
    return load_config(str(saved))


def evaluate(
    config: ConfigLike = "quest_demo_cpu",
    overrides: list[str] | None = None,
    *,
    model: str | Path | None = None,
    splits: list[str] | None = None,
    episodes: int | None = None,
    temperature: float | None = None,
    console: Console | None = None,
    out: str | Path | None = None,
    as_step: int | None = None,
) -> dict[str, EvalResult]:
    """Success (with a Wilson 95% interval), turns, invalid rate and a per-task-type table, per split; `out`: write
    them as JSON with the provenance of the evaluation (code, machine, precision, policy, env, seed).

    model: a model dir, an `epo sft` output, an RL run dir (its final/), a hub id or 'embedded' (default: the
    config's init_from / model.path). splits default to env.eval_splits; episodes to train.eval_episodes.
    as_step: sample with the RL loop's eval stream of step k (default: the warm start's): with the run's config and
    `model=RUN/checkpoints/step_k` it replays RUN/eval/step_k_*.json (same games, same sampling)."""
    from epo.trainer.pipeline import evaluate_policy

    if episodes is not None and episodes < 1:
        raise ConfigError(f"--episodes/-n: must be >= 1, got {episodes}")
    for name, value, key in (
        ("model", model, "init_from"),
        ("splits", splits, "env.eval_splits"),
        ("episodes", episodes, "train.eval_episodes"),
        ("temperature", temperature, "train.eval_temperature"),
    ):
        if value is not None and (other := conflicting_override(value, key, overrides)) is not None:
            raise ConfigError(f"{name}={value!r} and the override {other} set {key} differently; give one of them")
    extra = list(overrides or [])
    if as_step is not None and as_step < 0:
        raise ConfigError(f"--as-step: must be >= 0, got {as_step}")
    if model:
        extra.append(f"init_from={model}")
    if episodes is not None:
        extra.append(f"train.eval_episodes={episodes}")
    if temperature is not None:
        extra.append(f"train.eval_temperature={temperature}")
    cfg = as_config(config, extra)
    return evaluate_policy(cfg, list(splits or cfg.env.eval_splits), console=console, out=out, as_step=as_step)


def conflicting_override(value: Any, key: str, overrides: list[str] | None) -> str | None:
    """The dot-list override (the last one for `key` counts) that sets `key` to another value than `value`, else
    None; an override that does not parse is left to the config's own error. An argument of evaluate() and an
    override of the same key would otherwise have the argument win silently."""
    given = [o for o in overrides or [] if "=" in o and o.split("=", 1)[0].strip() == key]
    if not given or (isinstance(value, (list, tuple)) and not value):
        return None
    try:
        other = OmegaConf.select(OmegaConf.from_dotlist(given[-1:]), key)
    except Exception:
        return None
    other = OmegaConf.to_container(other) if OmegaConf.is_config(other) else other
    if isinstance(value, (list, tuple)):
        same = isinstance(other, list) and [str(v) for v in other] == [str(v) for v in value]
    elif isinstance(value, (int, float)):
        same = isinstance(other, (int, float)) and not isinstance(other, bool) and float(other) == float(value)
    else:
        same = str(other) == str(value)
    return None if same else given[-1]


def report(
    run_dirs: list[str | Path] | str | Path,
    out: str | Path | None = None,
    on_issue: Callable[[str], None] | None = None,
) -> Path:
    """Plots (PNG) and summary.md comparing runs; returns the summary's path. One sweep dir (`epo sweep` output,
    holding sweep.yaml) is aggregated over seeds instead (epo.sweep.write_sweep_report). on_issue(line) is called
    once per problem in a metrics.jsonl (torn line, duplicate step), or for a sweep once per method with collapsed
    runs, env faults or damaged metrics; the summary lists them too."""
    from epo.errors import RunDirError
    from epo.report.summary import write_report

    dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
    if len(dirs) == 1 and (dirs[0] / "sweep.yaml").is_file():
        from epo.sweep import write_sweep_report

        return write_sweep_report(dirs[0], out, on_alert=on_issue)
    for d in dirs:
        if not (d / "metrics.jsonl").is_file():
            raise RunDirError(f"{d}: no metrics.jsonl (not a run dir)")
    target = Path(out) if out else (dirs[0] / "report" if len(dirs) == 1 else Path("report"))
    return write_report(dirs, target, on_issue=on_issue)
