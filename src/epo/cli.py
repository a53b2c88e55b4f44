"""`epo` command line: parses arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Entropy-regularized Policy Optimization for multi-turn LLM agents.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect configs.")
app.add_typer(config_app, name="config")
console = Console()

PRESET_HELP = "Preset name (see `epo presets`) or a YAML file."
OVERRIDES_HELP = "Dot-list overrides, e.g. epo.mode=on rollout.group_size=4."


def _fail(message: str) -> None:
    console.print(f"[red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(2)


def _guard(fn):
    """Known error types become one red line and exit code 2 (tracebacks are for bugs)."""
    from epo.config import ConfigError
    from epo.envs import UnknownEnvError
    from epo.trainer.checkpoint import CheckpointError

    try:
        return fn()
    except (ConfigError, UnknownEnvError, CheckpointError, FileNotFoundError, ValueError, RuntimeError) as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


def _load(preset: str | None, overrides: list[str] | None):
    from epo.config import load_config

    return load_config(preset, overrides or [])


@app.command()
def train(
    config: str = typer.Option("quest_demo_cpu", "--config", "-c", help=PRESET_HELP),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP),
    resume: Path = typer.Option(None, "--resume", help="Continue this run dir from its last valid checkpoint."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Where to write the run (default runs/<preset>-<time>)."),
):
    """Train with PPO/GRPO (+EPO); optional behaviour-cloning warm start; report at the end."""

    def go():
        from epo.trainer.pipeline import train_pipeline

        cfg = _load(config, overrides)
        if resume is not None:
            saved = resume / "config.yaml"
            if not saved.is_file():
                raise FileNotFoundError(f"--resume {resume}: no config.yaml there (not a run dir)")
            cfg_resumed = _load(str(saved), overrides)
            return train_pipeline(cfg_resumed, resume, resume=True, console=console)
        return train_pipeline(cfg, run_dir, preset_name=Path(config).stem, console=console)

    _guard(go)


@app.command()
def sft(
    config: str = typer.Option("quest_demo_cpu", "--config", "-c", help=PRESET_HELP),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP),
    out: Path = typer.Option(Path("runs/sft"), "--out", help="Output dir (export/ inside is the warm start)."),
):
    """Behaviour cloning on the env's oracle trajectories (warm start for RL)."""

    def go():
        from epo.trainer.sft import run_sft

        res = run_sft(_load(config, overrides), out, console=console)
        console.print(f"start RL from it with: epo train --config {config} init_from={res.out_dir}")

    _guard(go)


@app.command("eval")
def eval_cmd(
    config: str = typer.Option("quest_demo_cpu", "--config", "-c", help=PRESET_HELP),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP),
    model: str = typer.Option(None, "--model", help="Model path, SFT/RL output dir, or 'embedded' (default: config)."),
    split: list[str] = typer.Option(None, "--split", help="Split(s) to evaluate (default: env.eval_splits)."),
    episodes: int = typer.Option(None, "--episodes", "-n", help="Episodes per split."),
    temperature: float = typer.Option(None, "--temperature", help="0 = greedy (default: train.eval_temperature)."),
    out: Path = typer.Option(None, "--out", help="Write results JSON here."),
):
    """Evaluate a policy on env splits: success with 95% CI, turns, invalid rate, per-task-type table."""

    def go():
        from epo.trainer.pipeline import evaluate_policy

        extra = list(overrides or [])
        if model:
            extra.append(f"init_from={model}")
        if episodes is not None:
            extra.append(f"train.eval_episodes={episodes}")
        if temperature is not None:
            extra.append(f"train.eval_temperature={temperature}")
        cfg = _load(config, extra)
        results = evaluate_policy(cfg, split or cfg.env.eval_splits, console=console)
        _print_eval(results)
        if out:
            out.write_text(json.dumps({k: v.__dict__ for k, v in results.items()}, indent=1))
            console.print(f"results: {out}")

    _guard(go)


def _print_eval(results) -> None:
    for split, res in results.items():
        table = Table(title=f"{split}: {res.line()}")
        for col in ("task type", "episodes", "success", "mean turns"):
            table.add_column(col)
        for kind, row in res.per_type.items():
            table.add_row(kind, f"{row['episodes']:.0f}", f"{100 * row['success']:.1f}%", f"{row['mean_turns']:.1f}")
        console.print(table)


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run dirs to plot and compare."),
    out: Path = typer.Option(None, "--out", help="Output dir (default: RUN_DIR/report for one run, else ./report)."),
):
    """Plots (PNG) and a Markdown summary comparing runs."""

    def go():
        from epo.trainer.report import write_report

        for d in run_dirs:
            if not (d / "metrics.jsonl").is_file():
                raise FileNotFoundError(f"{d}: no metrics.jsonl (not a run dir)")
        target = out or (run_dirs[0] / "report" if len(run_dirs) == 1 else Path("report"))
        path = write_report(list(run_dirs), target)
        console.print(f"report: {path}")

    _guard(go)


@app.command()
def ablate(
    run_dir: Path = typer.Argument(..., help="Run dir trained with train.save_rollouts=true."),
    step: int = typer.Option(..., "--step", help="Replay RL step N from the checkpoint of step N-1."),
    regulariser: list[str] = typer.Option(None, "--reg", help="none|entropy|epo|epo_reference|kl (default: all)."),
    entropy_coef: float = typer.Option(None, "--entropy-coef", help="Plain entropy bonus (default: the run's)."),
    kl_coef: float = typer.Option(None, "--kl-coef", help="KL coefficient (default: the run's, else 0.01)."),
):
    """Replay one saved rollout batch under several regularisers from the same weights; per-turn ΔH, KL, clipping."""

    def go():
        from epo.diagnostics.ablate import run_ablation

        out = run_ablation(run_dir, step, regulariser, entropy_coef, kl_coef, console=console)
        path = run_dir / "ablate" / f"step_{step:06d}.md"
        console.print(path.read_text(), markup=False, highlight=False)
        console.print(f"ablation: {path} (and .json); {len(out['results'])} regularisers")

    _guard(go)


@app.command()
def envs():
    """List environments, their splits and sizes."""
    from epo.envs import get_spec, names

    table = Table(title="environments")
    for col in ("name", "max turns", "splits", "description"):
        table.add_column(col)
    for name in names():
        try:
            spec = get_spec(name)
            splits = ", ".join(f"{k} ({len(v)})" for k, v in spec.splits().items())
            table.add_row(name, str(spec.max_turns), splits, spec.description)
        except Exception as e:  # a missing optional dependency must not hide the other envs
            table.add_row(name, "-", "-", f"[yellow]unavailable: {str(e).splitlines()[0]}[/]")
    console.print(table)


@app.command()
def presets():
    """List the YAML presets in configs/."""
    from epo.config import list_presets, resolve_preset

    for name in list_presets():
        first = resolve_preset(name).read_text().splitlines()[0].lstrip("# ").strip()
        console.print(f"[bold]{name}[/]  {first}")


@config_app.command("show")
def config_show(
    preset: str = typer.Argument("quest_demo_cpu", help=PRESET_HELP),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP),
    doc: bool = typer.Option(False, "--doc", help="Show each key's documentation instead of the YAML."),
):
    """Print the resolved config (defaults <- preset <- overrides)."""

    def go():
        from epo.config import field_docs, to_yaml

        cfg = _load(preset, overrides)
        if not doc:
            sys.stdout.write(to_yaml(cfg))
            return
        for key, text in field_docs().items():
            console.print(f"[bold]{key}[/]: {text}")

    _guard(go)


if __name__ == "__main__":
    app()
