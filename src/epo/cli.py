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


def _override_keys(overrides: list[str] | None) -> set[str]:
    """The keys that the command line's dot-list overrides (`key=value`) set."""
    return {o.split("=", 1)[0].strip() for o in overrides or [] if "=" in o}


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
    run_dir: Path = typer.Option(
        None,
        "--run-dir",
        help="Where to write the run (default train.output_dir/train.run_name, i.e. runs/<preset>-<time>).",
    ),
):
    """Train with PPO/GRPO (+EPO); optional behaviour-cloning warm start; report at the end.

    Exit codes: 0 done, 2 an error (one line), 130/143 stopped by SIGINT/SIGTERM after a checkpoint (resumable)."""
    if run_dir is not None:
        given = [k for k in ("train.run_name", "train.output_dir") if k in _override_keys(overrides)]
        if given:
            _fail(f"--run-dir names the run dir, so {' and '.join(given)} would be ignored; give one or the other")

    def go():
        from epo import api

        return api.train(config, overrides, run_dir=run_dir, resume=resume, console=console)

    result = _guard(go)
    if result is not None and result.interrupted:
        _exit_interrupted(result)


def _exit_interrupted(result) -> None:
    import signal

    from epo.trainer.rundir import EXIT_INTERRUPTED, EXIT_MONITOR_STOP, resume_command

    resume = resume_command(result.run_dir)
    if getattr(result, "stopped_by_monitor", False):  # the run chose to stop: exit 3, not a Ctrl-C's 130
        console.print(
            f"stopped by its monitor (diag.monitor_action=stop) at step {result.steps_done}; "
            f"to go on past it: {resume}",
            markup=False,
        )
        raise typer.Exit(EXIT_MONITOR_STOP)
    console.print(f"stopped at step {result.steps_done}; continue with: {resume}", markup=False)
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
        # with overrides, OUT/config.yaml: the config it trained with, the overrides included
        base = config if config and not overrides else out / "config.yaml"
        console.print(
            f"start RL from it with: epo train --config {base} init_from={res.out_dir}",
            soft_wrap=True,
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
    model: str = typer.Option(
        None, "--model", help="Model path, SFT/RL output dir, or 'embedded' (sets init_from; default: config)."
    ),
    split: list[str] = typer.Option(None, "--split", help="Split(s) to evaluate (default: env.eval_splits)."),
    episodes: int = typer.Option(None, "--episodes", "-n", help="Episodes per split (sets train.eval_episodes)."),
    temperature: float = typer.Option(
        None, "--temperature", help="0 = greedy (sets train.eval_temperature; default: the config's)."
    ),
    out: Path = typer.Option(None, "--out", help="Write results JSON here."),
    as_step: int = typer.Option(
        None,
        "--as-step",
        help="Only sets the sampling seed to that of the RL loop's eval of step K (default: the warm start's eval "
        "seed). It replays RUN/eval/step_K only with the run's config.yaml as --config and --model "
        "RUN/checkpoints/step_K, which it does not check. Refused at temperature 0 (greedy: no seed to set).",
    ),
):
    """Evaluate a policy on env splits: success with 95% CI, turns, invalid rate, per-task-type table."""
    flags = (
        ("--model", model, "init_from"),
        ("--split", split, "env.eval_splits"),
        ("--episodes", episodes, "train.eval_episodes"),
        ("--temperature", temperature, "train.eval_temperature"),
    )
    for flag, value, key in flags:  # the flag would win: refused unless both say the same
        if flag == "--episodes" and value is not None and value < 1:
            continue  # api.evaluate refuses the value itself
        if value is not None and not (isinstance(value, (list, tuple)) and not value):
            _refuse_flag_and_override(flag, value, key, overrides)

    def go():
        from epo import api

        if as_step is not None:
            from epo.config import ConfigError

            temp = temperature if temperature is not None else _load(config, overrides).train.eval_temperature
            if temp == 0:
                raise ConfigError(
                    "--as-step sets the eval's sampling seed, which greedy decoding (temperature 0) does not use; "
                    "drop it, or sample (--temperature > 0)"
                )

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


def _refuse_flag_and_override(flag: str, value, key: str, overrides: list[str] | None) -> None:
    """One line, naming the flag, when the dot-list overrides set `key` to another value than `flag` does."""
    from epo.api import conflicting_override

    other = conflicting_override(value, key, overrides)
    if other is not None:
        shown = ",".join(value) if isinstance(value, (list, tuple)) else value
        _fail(f"{flag} {shown} and the override {other} set {key} differently; give one of them")


def _print_eval(results) -> None:
    for res in results.values():
        table = Table(title=res.line())  # the line names the split
        scored = res.mean_score is not None  # ScienceWorld: the env's progress score per task type too
        for col in ("task type", "episodes", "success", "mean turns", *(["mean score"] if scored else [])):
            table.add_column(col)
        for kind, row in res.per_type.items():
            cells = [kind, f"{row['episodes']:.0f}", f"{100 * row['success']:.1f}%", f"{row['mean_turns']:.1f}"]
            table.add_row(*cells, *([f"{row['score']:.1f}"] if scored else []))
        console.print(table)


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(
        ...,
        help="One or more run dirs to plot and compare, or one sweep dir (`epo sweep` output) to aggregate over seeds.",
    ),
    out: Path = typer.Option(
        None, "--out", help="Output dir (default: DIR/report for one run or sweep dir, else ./report)."
    ),
):
    """Plots (PNG) and a Markdown summary comparing runs, or a sweep's report aggregated over seeds."""

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
    cpus_per_run: float = typer.Option(
        None, "--cpus-per-run", help="CPUs Ray reserves for each run (--ray only; default 1)."
    ),
    gpus_per_run: float = typer.Option(
        0.0,
        "--gpus-per-run",
        help="GPUs for each run: Ray reserves them (--ray), or each of the --jobs lanes gets its own.",
    ),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Runs at once on this machine (each gets cores/jobs threads)."),
    methods: str = typer.Option(None, "--methods", help="Run only these methods (comma-separated); the rest later."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Check the options and the sweep dir as a run would, print the runs' commands; run nothing.",
    ),
):
    """Run a grid of (method overrides x seeds) resumably, then write the aggregated report (`epo report DIR`)."""
    if cpus_per_run is not None and not ray:
        _fail("--cpus-per-run acts only with --ray (Ray reserves them); runs on this machine share its cores: --jobs")

    def go():
        from epo.sweep import load_grid, run_sweep, write_sweep_report
        from epo.sweep.runner import FINISHED, SweepStopped, finished_line, plan, read_status, train_command

        g = load_grid(grid, extra=overrides or [])
        target = out or Path("sweeps") / grid.stem
        # paths stay on one line; no markup, or an override such as env.eval_splits=[iid] prints as "env.eval_splits="
        echo = lambda line: console.print(line, soft_wrap=True, highlight=False, markup=False)  # noqa: E731
        only = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
        status = read_status(target)
        chosen, pending = plan(g, status, only)
        # a dry run refuses what a run would; a real run's own check prints the --ray device line
        _check_sweep(g, target, chosen, ray, jobs, gpus_per_run, echo if dry_run else lambda line: None)
        if dry_run:  # what a real (re)run would do now: done runs are skipped, started ones resumed
            echo(f"sweep {target}: {finished_line(chosen, pending, status)}, {len(pending)} to run (dry run)")
            for run in pending:
                echo(" ".join(train_command(g, run, target)[1:]))
            return
        try:
            status = run_sweep(
                g,
                target,
                ray=ray,
                cpus_per_run=1.0 if cpus_per_run is None else cpus_per_run,
                echo=echo,
                jobs=jobs,
                methods=only,
                gpus_per_run=gpus_per_run,
            )
        except SweepStopped as e:  # Ctrl-C / SIGTERM: the interrupted runs kept their checkpoints
            console.print(str(e), markup=False)
            raise typer.Exit(e.exit_code) from None
        console.print(f"report: {write_sweep_report(target, on_alert=_warn)}", markup=False)
        failed = sorted(k for k, v in status.items() if v["state"] not in FINISHED)  # stopped (exit 3): listed
        if failed:
            _fail(f"{len(failed)} run(s) failed: {', '.join(failed)} (logs in {target}); rerun to retry them")

    _guard(go)


def _check_sweep(grid, target: Path, chosen, ray: bool, jobs: int, gpus_per_run: float, echo) -> None:
    """The refusals of `run_sweep` before it starts anything (--jobs, --ray, --gpus-per-run, a sweep dir that holds
    another grid), without writing: `--dry-run` runs them too."""
    from epo.config import ConfigError
    from epo.sweep.runner import check_gpus, local_gpu_slots, prepare

    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if ray and jobs != 1:
        raise ConfigError("--jobs is for this machine; with --ray, Ray packs the runs by --cpus-per-run")
    check_gpus(grid, chosen, ray, gpus_per_run, echo)
    if not ray:
        local_gpu_slots(jobs, gpus_per_run)
    prepare(grid, target, write=False)  # its lines (grid extended, base moved) are printed by the real run


@app.command()
def ablate(
    run_dir: Path = typer.Argument(..., help="Run dir trained with train.save_rollouts=true."),
    step: int = typer.Option(..., "--step", help="Replay RL step N from the checkpoint of step N-1."),
    regulariser: list[str] = typer.Option(None, "--reg", help="none|entropy|epo|epo_reference|kl (default: all)."),
    entropy_coef: float = typer.Option(
        None,
        "--entropy-coef",
        help="Coefficient of the 'entropy' regulariser's plain entropy bonus (default: the run's algo.entropy_coef, "
        "else its epo.entropy_coef); needs 'entropy' among --reg.",
    ),
    kl_coef: float = typer.Option(
        None,
        "--kl-coef",
        help="KL coefficient of the 'kl' regulariser (default: the run's algo.kl_coef, else 0.01); needs 'kl' among "
        "--reg.",
    ),
):
    """Replay one saved rollout batch under several regularisers from the same weights; per-turn ΔH, KL, clipping."""
    for flag, value, name in (("--entropy-coef", entropy_coef, "entropy"), ("--kl-coef", kl_coef, "kl")):
        if value is not None and regulariser and name not in regulariser:
            _fail(f"{flag} acts only on the '{name}' regulariser; add --reg {name} (or leave --reg out: all)")

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
    failures = []
    for name in names():
        try:
            spec = get_spec(name)
            splits = ", ".join(f"{k} ({len(v)})" for k, v in spec.splits().items())
            table.add_row(name, str(spec.max_turns), splits, escape(spec.description))
        except Exception as e:  # a missing optional dependency must not hide the other envs
            table.add_row(
                name,
                "-",
                "-",
                f"[yellow]unavailable: {escape(str(e).splitlines()[0] if str(e) else type(e).__name__)}[/]",
            )
            failures.append((name, e))
    console.print(table)
    if _DEBUG["on"]:  # --debug: each unavailable env's full traceback, after the table
        import traceback

        for name, e in failures:
            text = "".join(traceback.format_exception(e))
            console.print(f"{name}:\n{text}", markup=False, highlight=False, soft_wrap=True)


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
    doc: bool = typer.Option(
        False, "--doc", help="Show each key as `key = value  # documentation` (the resolved value) instead of YAML."
    ),
):
    """Print the resolved config (defaults <- preset <- overrides)."""

    def go():
        import json

        import yaml
        from rich.markup import escape

        from epo.config import field_docs, to_yaml

        cfg = _load(preset, overrides)
        if not doc:
            sys.stdout.write(to_yaml(cfg))
            return
        values = yaml.safe_load(to_yaml(cfg))  # as the YAML shows them: ${oc.env:...} stays unresolved
        docs = field_docs()
        for key, text in docs.items():
            if any(k.startswith(key + ".") for k in docs):  # a section (diag): its keys follow with their values
                console.print(f"[bold]{key}[/]: {escape(text)}", highlight=False)
                continue
            value = values
            for part in key.split("."):
                value = value[part]
            shown = escape(json.dumps(value, default=str))
            console.print(f"[bold]{key}[/] = {shown}  # {escape(text)}", highlight=False)  # docs quote `epo[vllm]`

    _guard(go)


if __name__ == "__main__":
    app()
