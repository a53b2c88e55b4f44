"""`epo` command line: parses arguments and calls the Python API (epo.api); nothing else lives here."""

from __future__ import annotations

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


_DEBUG = {"on": False}


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of every error.")) -> None:
    _DEBUG["on"] = debug


def _fail(message: str) -> None:
    from rich.markup import escape

    console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(2)


def _warn(message: str) -> None:
    from rich.markup import escape

    console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True, highlight=False)


def _guard(fn):
    """The project's own errors (`epo.errors.EpoError`: bad input or a bad state on disk) become one line and exit
    code 2. Anything else (out of memory, CUDA errors, bugs) keeps its traceback; `epo --debug` shows it for all."""
    from epo.errors import EpoError

    console._epo_precision_line = None  # each command prints its precision line once (setup.log_precision)
    if _DEBUG["on"]:
        return fn()
    try:
        return fn()
    except EpoError as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


def _load(preset: str | None, overrides: list[str] | None):
    from epo.config import load_config

    return load_config(preset, overrides or [])


@app.command()
def train(
    config: str = typer.Option(None, "--config", "-c", help=PRESET_HELP + " [default: quest_demo_cpu]"),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP),
    resume: Path = typer.Option(
        None, "--resume", help="Continue this run dir from its last valid checkpoint, with its saved config."
    ),
    run_dir: Path = typer.Option(None, "--run-dir", help="Where to write the run (default runs/<preset>-<time>)."),
):
    """Train with PPO/GRPO (+EPO); optional behaviour-cloning warm start; report at the end.

    Exit codes: 0 done, 2 an error (one line), 130/143 stopped by SIGINT/SIGTERM after a checkpoint (resumable)."""

    def go():
        from epo import api

        return api.train(config, overrides, run_dir=run_dir, resume=resume, console=console)

    result = _guard(go)
    if result is not None and result.interrupted:
        _exit_interrupted(result)


def _exit_interrupted(result) -> None:
    import signal

    from epo.trainer.rundir import EXIT_INTERRUPTED, resume_command

    console.print(f"stopped at step {result.steps_done}; continue with: {resume_command(result.run_dir)}", markup=False)
    sig = getattr(signal, result.stop_signal, signal.SIGINT) if result.stop_signal else signal.SIGINT
    raise typer.Exit(EXIT_INTERRUPTED[sig])


@app.command()
def sft(
    config: str = typer.Option(None, "--config", "-c", help=PRESET_HELP + " Default: quest_demo_cpu."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP),
    out: Path = typer.Option(Path("runs/sft"), "--out", help="Output dir (export/ inside is the warm start)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue a stopped run in --out from its checkpoint, with its saved config."
    ),
):
    """Behaviour cloning on the env's oracle trajectories (warm start for RL)."""

    def go():
        from epo import api

        if resume:
            res = api.sft(config, overrides, out=out, resume=True, console=console)
        else:
            res = api.sft(config or "quest_demo_cpu", overrides, out=out, console=console)
        if res.interrupted:
            console.print(f"resume with: epo sft --out {out} --resume", soft_wrap=True, markup=False)
            return res
        console.print(
            f"start RL from it with: epo train --config {config or out / 'config.yaml'} init_from={res.out_dir}",
            markup=False,
        )
        return res

    res = _guard(go)
    if res is not None and res.interrupted:  # 130/143 as for `epo train`
        import signal

        from epo.trainer.rundir import EXIT_INTERRUPTED

        raise typer.Exit(EXIT_INTERRUPTED[getattr(signal, res.stop_signal or "SIGINT", signal.SIGINT)])


@app.command("eval")
def eval_cmd(
    config: str = typer.Option("quest_demo_cpu", "--config", "-c", help=PRESET_HELP),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP),
    model: str = typer.Option(None, "--model", help="Model path, SFT/RL output dir, or 'embedded' (default: config)."),
    split: list[str] = typer.Option(None, "--split", help="Split(s) to evaluate (default: env.eval_splits)."),
    episodes: int = typer.Option(None, "--episodes", "-n", help="Episodes per split."),
    temperature: float = typer.Option(None, "--temperature", help="0 = greedy (default: train.eval_temperature)."),
    out: Path = typer.Option(None, "--out", help="Write results JSON here."),
    as_step: int = typer.Option(
        None,
        "--as-step",
        help="Sample as the RL loop's eval of step K does (with the run's config.yaml as --config and --model "
        "RUN/checkpoints/step_K, replays RUN/eval/step_K; default: the warm start's sampling seed).",
    ),
):
    """Evaluate a policy on env splits: success with 95% CI, turns, invalid rate, per-task-type table."""

    def go():
        from epo import api

        results = api.evaluate(
            config,
            overrides,
            model=model,
            splits=split,
            episodes=episodes,
            temperature=temperature,
            console=console,
            out=out,
            as_step=as_step,
        )
        _print_eval(results)
        if out:
            console.print(f"results: {out}", markup=False)

    _guard(go)


def _print_eval(results) -> None:
    for res in results.values():
        table = Table(title=res.line())  # the line names the split
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
        from epo import api

        console.print(f"report: {api.report(list(run_dirs), out, on_issue=_warn)}", markup=False)

    _guard(go)


@app.command()
def sweep(
    grid: Path = typer.Argument(..., help="GRID.yaml: base preset, overrides, methods (overrides each) and seeds."),
    overrides: list[str] = typer.Argument(
        None, help="Dot-list overrides for every run (e.g. model.device=cuda), added to the grid's; saved with it."
    ),
    out: Path = typer.Option(
        None, "--out", help="Sweep dir (default sweeps/<grid name>); a grid that adds seeds or methods extends it."
    ),
    ray: bool = typer.Option(False, "--ray", help="Run the runs as Ray tasks (RAY_ADDRESS or a local instance)."),
    cpus_per_run: float = typer.Option(1.0, "--cpus-per-run", help="CPUs Ray reserves for each run."),
    gpus_per_run: float = typer.Option(
        0.0,
        "--gpus-per-run",
        help="GPUs for each run: Ray reserves them (--ray), or each of the --jobs lanes gets its own.",
    ),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Runs at once on this machine (each gets cores/jobs threads)."),
    methods: str = typer.Option(None, "--methods", help="Run only these methods (comma-separated); the rest later."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the runs' commands; run nothing."),
):
    """Run a grid of (method overrides x seeds) resumably, then write the aggregated report (`epo report DIR`)."""

    def go():
        from epo.sweep import load_grid, run_sweep, write_sweep_report
        from epo.sweep.runner import SweepStopped, plan, read_status, train_command

        g = load_grid(grid, extra=overrides or [])
        target = out or Path("sweeps") / grid.stem
        # paths stay on one line; no markup, or an override such as env.eval_splits=[iid] prints as "env.eval_splits="
        echo = lambda line: console.print(line, soft_wrap=True, highlight=False, markup=False)  # noqa: E731
        only = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
        if dry_run:  # what a real (re)run would do now: done runs are skipped, started ones resumed
            chosen, pending = plan(g, read_status(target), only)
            echo(f"sweep {target}: {len(chosen) - len(pending)} done, {len(pending)} to run (dry run)")
            for run in pending:
                echo(" ".join(train_command(g, run, target)[1:]))
            return
        try:
            status = run_sweep(
                g,
                target,
                ray=ray,
                cpus_per_run=cpus_per_run,
                echo=echo,
                jobs=jobs,
                methods=only,
                gpus_per_run=gpus_per_run,
            )
        except SweepStopped as e:  # Ctrl-C / SIGTERM: the interrupted runs kept their checkpoints
            console.print(str(e), markup=False)
            raise typer.Exit(e.exit_code) from None
        console.print(f"report: {write_sweep_report(target, on_alert=_warn)}", markup=False)
        failed = sorted(k for k, v in status.items() if v["state"] != "done")
        if failed:
            _fail(f"{len(failed)} run(s) failed: {', '.join(failed)} (logs in {target}); rerun to retry them")

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
        console.print(f"ablation: {path} (and .json); {len(out['results'])} regularisers", markup=False)

    _guard(go)


@app.command()
def envs():
    """List environments, their splits and sizes."""
    from rich.markup import escape

    from epo.envs import get_spec, names

    table = Table(title="environments")
    for col in ("name", "max turns", "splits", "description"):
        table.add_column(col)
    for name in names():
        try:
            spec = get_spec(name)
            splits = ", ".join(f"{k} ({len(v)})" for k, v in spec.splits().items())
            table.add_row(name, str(spec.max_turns), splits, escape(spec.description))
        except Exception as e:  # a missing optional dependency must not hide the other envs
            table.add_row(name, "-", "-", f"[yellow]unavailable: {escape(str(e).splitlines()[0])}[/]")
    console.print(table)


@app.command()
def presets():
    """List the YAML presets in configs/."""
    from rich.markup import escape

    from epo.config import list_presets, resolve_preset

    for name in list_presets():
        first = resolve_preset(name).read_text().splitlines()[0].lstrip("# ").strip()
        console.print(f"[bold]{escape(name)}[/]  {escape(first)}")


@config_app.command("show")
def config_show(
    preset: str = typer.Argument("quest_demo_cpu", help=PRESET_HELP),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP),
    doc: bool = typer.Option(False, "--doc", help="Show each key's documentation instead of the YAML."),
):
    """Print the resolved config (defaults <- preset <- overrides)."""

    def go():
        from rich.markup import escape

        from epo.config import field_docs, to_yaml

        cfg = _load(preset, overrides)
        if not doc:
            sys.stdout.write(to_yaml(cfg))
            return
        for key, text in field_docs().items():
            console.print(f"[bold]{key}[/]: {escape(text)}")  # docs quote `epo[vllm]`

    _guard(go)


if __name__ == "__main__":
    app()
