"""Per-step metrics: run_dir/metrics.jsonl (the source of truth), TensorBoard and optional W&B.

One JSON object per RL step: {"step": k, "<group>/<name>": float | list[float], ...}; see docs/METRICS.md.
Non-finite floats are written as JSON-valid tokens and read back as floats: NaN -> null, +inf -> "Infinity",
-inf -> "-Infinity" (also inside lists, e.g. epo/hbar_per_turn is NaN for turn indices without history).
Monitor warnings go to run_dir/warnings.jsonl, one object per warning.

Resuming from step k: `MetricsLogger(run_dir, resume_step=k)` drops every line with step > k from both files (and
TensorBoard purges its events after k), so the files equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from epo.errors import EnvSetupError, RunDirError
from epo.fsio import atomic_write_text

METRICS_FILE = "metrics.jsonl"
WARNINGS_FILE = "warnings.jsonl"
_NONFINITE_IN = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


# ----------------------------------------------------------------------------- JSON encoding


def _to_number(value: Any, key: str) -> float | int | str | list:
    """float-like (Python/NumPy scalars, 0-d tensors) -> float; sequences -> list; strings pass."""
    if isinstance(value, str | bool):
        return value if isinstance(value, str) else float(value)
    if isinstance(value, int):
        return value
    if isinstance(value, list | tuple) or (hasattr(value, "ndim") and value.ndim == 1):
        return [_to_number(v, key) for v in value]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"metric '{key}': {type(value).__name__} is not a number or list of numbers") from None


def _encode(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if value is None:
        return math.nan
    if isinstance(value, str):
        return _NONFINITE_IN.get(value, value)
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def encode_line(record: dict[str, Any]) -> str:
    return json.dumps({k: _encode(v) for k, v in record.items()}, allow_nan=False)


def decode_line(line: str) -> dict[str, Any]:
    return {k: (v if k == "step" else _decode(v)) for k, v in json.loads(line).items()}


# ----------------------------------------------------------------------------- files


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics/warnings file; a torn last line (crash mid-write) is ignored, a bad middle line is not."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(decode_line(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON object") from None
    return records


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All logged steps of a run, in file order (NaN/inf restored as floats)."""
    return read_jsonl(Path(run_dir) / METRICS_FILE)


def read_warnings(run_dir: str | Path) -> list[dict[str, Any]]:
    """Monitor warnings of a run: dicts with kind, step, message."""
    return read_jsonl(Path(run_dir) / WARNINGS_FILE)


def truncate_after(path: Path, step: int) -> int:
    """Atomically drop records with "step" > step (and a torn last line). Returns how many records were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for rec in read_jsonl(path):
        if rec.get("step", -1) > step:
            dropped += 1
        else:
            kept.append(encode_line(rec))
    atomic_write_text(path, "".join(line + "\n" for line in kept))
    return dropped


# ----------------------------------------------------------------------------- logger


class MetricsLogger:
    """Append-only metrics sink. `log(step, metrics)` writes one line and mirrors scalars to TensorBoard / W&B."""

    def __init__(
        self,
        run_dir: str | Path,
        tensorboard: bool = True,
        wandb: bool = False,
        resume_step: int | None = None,
        wandb_project: str = "epo",
        wandb_config: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self.warnings_path = self.run_dir / WARNINGS_FILE
        if resume_step is not None:
            truncate_after(self.path, resume_step)
            truncate_after(self.warnings_path, resume_step)
        elif self.path.is_file() and self.path.stat().st_size > 0:
            raise RunDirError(f"{self.path}: already exists; resume (resume_step) or use a new run dir")
        self._file = open(self.path, "a")  # noqa: SIM115 (kept open for the whole run)
        self._tb = _open_tensorboard(self.run_dir, resume_step) if tensorboard else None
        self._wandb = _open_wandb(self.run_dir, wandb_project, wandb_config) if wandb else None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if "step" in metrics and int(metrics["step"]) != step:
            raise ValueError(f"metric 'step' ({metrics['step']}) differs from the step argument ({step})")
        record: dict[str, Any] = {"step": int(step)}
        record.update({k: _to_number(v, k) for k, v in metrics.items() if k != "step"})
        self._file.write(encode_line(record) + "\n")
        self._file.flush()  # a crash loses at most the line being written
        scalars = dict(flatten_scalars(record))
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, global_step=step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def log_warnings(self, warnings: Iterable[Any]) -> None:
        """Append monitor warnings (objects with kind, step, message, or dicts) to warnings.jsonl."""
        lines = []
        for w in warnings:
            rec = w if isinstance(w, dict) else {"kind": w.kind, "step": w.step, "message": w.message}
            lines.append(encode_line(rec) + "\n")
            if self._tb is not None:
                self._tb.add_text(f"monitor/{rec['kind']}", rec["message"], global_step=rec["step"])
        if lines:
            with open(self.warnings_path, "a") as f:
                f.writelines(lines)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def flatten_scalars(record: dict[str, Any]) -> Iterable[tuple[str, float]]:
    """Finite scalars for dashboards; a per-turn list becomes key/t00, key/t01, ... (NaN entries skipped)."""
    for key, value in record.items():
        if key == "step" or isinstance(value, str):
            continue
        if isinstance(value, list):
            for t, v in enumerate(value):
                if isinstance(v, int | float) and math.isfinite(v):
                    yield f"{key}/t{t:02d}", float(v)
        elif math.isfinite(value):
            yield key, float(value)


def _open_tensorboard(run_dir: Path, resume_step: int | None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise EnvSetupError(
            "train.tensorboard=true but the tensorboard package is not installed "
            "(pip install tensorboard, or set train.tensorboard=false)"
        ) from None
    # purge_step: TensorBoard hides events at or after this step left by the interrupted run.
    purge = None if resume_step is None else resume_step + 1
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)


def _open_wandb(run_dir: Path, project: str, config: dict[str, Any] | None) -> Any:
    try:
        import wandb
    except ImportError:
        raise EnvSetupError("train.wandb=true but wandb is not installed (pip install wandb)") from None
    # A stable id per run dir lets a resumed run continue the same W&B run.
    id_file = run_dir / "wandb_id.txt"
    if not id_file.is_file():
        id_file.write_text(wandb.util.generate_id())
    wandb.init(
        project=project,
        name=run_dir.name,
        id=id_file.read_text().strip(),
        resume="allow",
        dir=str(run_dir),
        config=config,
    )
    return wandb


# ----------------------------------------------------------------------------- console


def summary_line(metrics: dict[str, Any], step: int | None = None) -> str:
    """One console line per RL step; missing metrics are left out. The step comes from `step` or metrics["step"]."""
    step = metrics.get("step", step)
    parts = [] if step is None else [f"step {int(step):4d}"]
    fields = [
        ("succ", "rollout/success_rate", ".3f"),
        ("score", "rollout/score_mean", ".1f"),
        ("ret", "rollout/return_mean", ".2f"),
        ("len", "rollout/episode_len", ".1f"),
        ("H", "epo/entropy_mean", ".3f"),
        ("P", "epo/P", ".2e"),
        ("β", "epo/beta", ".2f"),
        ("kl", "actor/approx_kl", ".1e"),
        ("clip", "actor/clip_frac", ".3f"),
        ("lr", "actor/lr", ".1e"),
    ]
    for label, key, fmt in fields:
        value = metrics.get(key)
        if isinstance(value, int | float):
            parts.append(f"{label} {value:{fmt}}")
    evals = sorted(k.split("/")[1] for k in metrics if k.startswith("eval/") and k.endswith("/success"))
    if evals:
        parts.append("eval " + " ".join(f"{s} {metrics[f'eval/{s}/success']:.3f}" for s in evals))
    times = [(label, metrics.get(key)) for label, key in (("roll", "time/rollout_s"), ("upd", "time/update_s"))]
    timing = " ".join(f"{label} {v:.1f}s" for label, v in times if isinstance(v, int | float))
    if isinstance(metrics.get("time/step_s"), int | float):
        timing = f"{metrics['time/step_s']:.1f}s" + (f" ({timing})" if timing else "")
    if timing:
        parts.append(timing)
    return " | ".join(parts)
