"""What `epo report` reads from a run dir: metrics.jsonl, warnings.jsonl, faults.jsonl (and its warm start's,
sft/faults.jsonl), config.yaml, before_after.json, provenance.jsonl."""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from epo.errors import RunDirError
from epo.report.health import read_metrics_checked
from epo.telemetry.faults import FAULTS_FILE
from epo.telemetry.metrics import METRICS_FILE, decode_line, read_warnings
from epo.telemetry.provenance import read_provenance

BEFORE_AFTER_FILE = "before_after.json"
WARM_START_DIR = "sft"  # `epo train`'s warm start (`epo sft` into RUN/sft)
WARM_START = "warm start"
_EVAL_SUCCESS = re.compile(r"^eval/([^/]+)/success$")
# Other names the same quantity has been logged under (older runs, other code paths); first match wins.
ALIASES = {
    "critic/explained_var": ("critic/explained_variance",),
    "epo/penalty_term": ("epo/smoothing_term",),
}


@dataclass
class RunData:
    path: Path
    label: str
    records: list[dict[str, Any]]
    warnings: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    """Flattened config.yaml (dotted keys); empty when the run has none."""
    before_after: dict[str, Any] = field(default_factory=dict)
    """before_after.json of `epo train` (zero-shot / start / end of RL per split); empty when absent."""
    faults: list[dict[str, Any]] = field(default_factory=list)
    """Env worker faults (step, phase, worker, reason, task, message): the warm start's first (sft/faults.jsonl,
    phase prefixed "warm start ", marked warm_start=True), then the RL loop's (faults.jsonl)."""
    issues: list[str] = field(default_factory=list)
    """One line per problem found in metrics.jsonl (torn lines, duplicate steps)."""
    provenance: list[dict[str, Any]] = field(default_factory=list)
    """provenance.jsonl: the code, libraries and machine of each start and resume (empty for older runs)."""

    def has(self, key: str) -> bool:
        return len(self.series(key)[0]) > 0

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the steps that logged a finite scalar under key (or one of its ALIASES)."""
        for name in (key, *ALIASES.get(key, ())):
            pairs = [(r["step"], r[name]) for r in self.records if _is_finite_number(r.get(name))]
            if pairs:
                break
        if not pairs:
            return np.zeros(0), np.zeros(0)
        steps, values = zip(*pairs, strict=True)
        return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)

    def per_turn(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps (S,), grid (T, S)) of a per-turn-index list metric; NaN where a step has no value for a turn."""
        rows = [(r["step"], r[key]) for r in self.records if isinstance(r.get(key), list)]
        if not rows:
            return np.zeros(0), np.zeros((0, 0))
        n_turns = max(len(v) for _, v in rows)
        grid = np.full((n_turns, len(rows)), np.nan)
        for j, (_, values) in enumerate(rows):
            grid[: len(values), j] = [v if _is_finite_number(v) else np.nan for v in values]
        return np.asarray([s for s, _ in rows], dtype=float), grid

    def eval_splits(self) -> list[str]:
        found = {m.group(1) for r in self.records for k in r if (m := _EVAL_SUCCESS.match(k))}
        return sorted(found)


def load_run(path: str | Path, label: str | None = None) -> RunData:
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: not a run directory")
    if not (path / METRICS_FILE).is_file():
        raise RunDirError(f"{path}: no {METRICS_FILE} (is this a run directory?)")
    records, issues = read_metrics_checked(path / METRICS_FILE)
    warm = [
        {**f, "phase": f"{WARM_START} {f.get('phase', '')}".rstrip(), "warm_start": True}
        for f in _read_faults(path / WARM_START_DIR / FAULTS_FILE, issues)
    ]
    return RunData(
        path,
        label or path.name,
        records,
        read_warnings(path),
        _read_config(path / "config.yaml"),
        _read_json(path / BEFORE_AFTER_FILE),
        warm + _read_faults(path / FAULTS_FILE, issues),
        issues,
        read_provenance(path),
    )


def _read_faults(path: Path, issues: list[str]) -> list[dict[str, Any]]:
    """The records of a faults.jsonl ([] when absent); a line that is not a JSON record is skipped and said in
    `issues` (a damaged file must neither stop the report nor hide the rest of its faults)."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(dict(decode_line(line)))
        except (ValueError, AttributeError, TypeError):  # torn (a crash mid-write), or JSON that is not an object
            issues.append(f"{path}:{number}: torn or malformed line (not a JSON fault record); skipped")
    return records


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        warnings.warn(f"{path}: unreadable; ignoring it", RuntimeWarning, stacklevel=2)
        return {}
    return data if isinstance(data, dict) else {}


def _read_config(path: Path) -> dict[str, Any]:
    """Flattened config.yaml (read as OmegaConf reads it, so 1e-3 is a float); {} if missing or unreadable."""
    if not path.is_file():
        return {}
    try:
        tree = OmegaConf.to_container(OmegaConf.create(path.read_text()))
    except Exception as e:  # a broken config must not prevent the report
        warnings.warn(f"{path}: unreadable ({str(e).splitlines()[0]}); ignoring it", RuntimeWarning, stacklevel=2)
        return {}
    return flatten(tree) if isinstance(tree, dict) else {}


def load_runs(paths: list[Path]) -> list[RunData]:
    """Load runs; labels are dir names, or parent/name where names collide."""
    if not paths:
        raise RunDirError("report: no run directories given")
    names = [Path(p).resolve().name for p in paths]
    labels = [
        f"{Path(p).resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)
    ]
    return [load_run(p, label) for p, label in zip(paths, labels, strict=True)]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
