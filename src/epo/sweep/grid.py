"""A sweep grid: a base preset, common overrides, named methods (their own overrides) and seeds.

GRID.yaml:
    base: quest_fast_tier            # preset name or YAML path (relative paths: to the grid file)
    overrides: [train.total_steps=60]
    seeds: [0, 1, 2, 3, 4]
    baseline: grpo                   # paired tests compare every method with this one (default: the first)
    compare: {ppo_epo: [ppo]}        # extra paired comparisons: method -> other reference methods (optional)
    methods:
      grpo: []
      grpo_epo: [epo.mode=on]
    per_seed:                        # optional: overrides of one seed, for every method (e.g. its own task set)
      1: [env.kwargs.first_iid=8]

Run (method m, seed s) = base <- overrides <- per_seed[s] <- methods[m] <- train.seed=s, written to
SWEEP_DIR/m/seed<s>. Methods stay paired by seed, so with per_seed a pair also shares its task set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from epo.config import Config, ConfigError, load_config

GRID_FILE = "sweep.yaml"  # the grid as run, copied into SWEEP_DIR (marks a directory as a sweep)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class RunSpec:
    method: str
    seed: int
    overrides: tuple[str, ...]
    """Common overrides, then the method's, then train.seed."""

    @property
    def run_id(self) -> str:
        return f"{self.method}/seed{self.seed}"

    def run_dir(self, sweep_dir: Path) -> Path:
        return Path(sweep_dir) / self.method / f"seed{self.seed}"


@dataclass
class Grid:
    base: str
    seeds: list[int]
    methods: dict[str, list[str]]
    overrides: list[str] = field(default_factory=list)
    baseline: str = ""
    compare: dict[str, list[str]] = field(default_factory=dict)
    per_seed: dict[int, list[str]] = field(default_factory=dict)

    def runs(self) -> list[RunSpec]:
        """Seed-major order: every method's seed 0 first, so a sweep cut short still has paired seeds."""
        return [
            RunSpec(m, s, (*self.overrides, *self.per_seed.get(s, []), *self.methods[m], f"train.seed={s}"))
            for s in self.seeds
            for m in self.methods
        ]

    def config(self, run: RunSpec) -> Config:
        return load_config(self.base, list(run.overrides))

    def to_dict(self) -> dict:
        return {
            "base": self.base,
            "overrides": list(self.overrides),
            "seeds": list(self.seeds),
            "baseline": self.baseline,
            "methods": {k: list(v) for k, v in self.methods.items()},
            **({"compare": {k: list(v) for k, v in self.compare.items()}} if self.compare else {}),
            **({"per_seed": {s: list(v) for s, v in self.per_seed.items()}} if self.per_seed else {}),
        }


def load_grid(path: str | Path, check_configs: bool = True, extra: list[str] | tuple[str, ...] = ()) -> Grid:
    """Read and validate GRID.yaml; with check_configs every run's config is loaded (fails before any run starts).
    extra: overrides for every run, from the command line (`epo sweep GRID model.device=cuda`), appended to the
    grid's common overrides; a key that a method or a seed sets is refused, since the grid's own value would win."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the grid ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_grid(raw, path.parent, check_configs, where=str(path), extra=list(extra))


def parse_grid(
    raw: object, base_dir: Path, check_configs: bool = True, where: str = "grid", extra: list[str] | None = None
) -> Grid:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping with base, seeds and methods")
    unknown = set(raw) - {"base", "overrides", "seeds", "methods", "baseline", "compare", "per_seed"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    base = str(raw.get("base") or "")
    if not base:
        raise ConfigError(f"{where}: base: a preset name or YAML path is required")
    if (base_dir / base).is_file():
        base = str((base_dir / base).resolve())
    seeds, methods = raw.get("seeds"), raw.get("methods")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"{where}: seeds: a non-empty list of non-negative integers is required")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds: duplicates in {seeds}")
    if not isinstance(methods, dict) or not methods:
        raise ConfigError(f"{where}: methods: a mapping name -> list of overrides is required")
    for name, ovr in methods.items():
        if not _NAME.match(str(name)):
            raise ConfigError(f"{where}: methods.{name}: names may hold only letters, digits, '_', '-', '.'")
        if not isinstance(ovr, list) or not all(isinstance(o, str) for o in ovr):
            raise ConfigError(f"{where}: methods.{name}: must be a list of 'key=value' strings")
    common = raw.get("overrides") or []
    if not isinstance(common, list) or not all(isinstance(o, str) for o in common):
        raise ConfigError(f"{where}: overrides: must be a list of 'key=value' strings")
    per_seed = _parse_per_seed(raw.get("per_seed"), seeds, where)
    common = [*common, *_check_extra(extra or [], methods, per_seed, where)]
    every = [*common, *sum(methods.values(), []), *sum(per_seed.values(), [])]
    if any(_key(o) == "train.seed" for o in every):
        raise ConfigError(f"{where}: train.seed is set by the grid's seeds; remove it from the overrides")
    baseline = str(raw.get("baseline") or next(iter(methods)))
    if baseline not in methods:
        raise ConfigError(f"{where}: baseline: '{baseline}' is not one of the methods ({', '.join(methods)})")
    compare = _parse_compare(raw.get("compare"), methods, where)
    grid = Grid(
        base, list(seeds), {str(k): list(v) for k, v in methods.items()}, list(common), baseline, compare, per_seed
    )
    if check_configs:
        # every method at the first seed, and the baseline at each seed with per_seed overrides (not every
        # method × per_seed pair: a clash between a method's and a seed's overrides would show only when it runs)
        checked = [r for r in grid.runs() if r.seed == seeds[0] or (r.seed in per_seed and r.method == baseline)]
        for run in checked:
            try:
                grid.config(run)
            except ConfigError as e:
                raise ConfigError(f"{where}: method '{run.method}': {e}") from None
    return grid


def _key(override: str) -> str:
    return override.split("=", 1)[0].strip().lstrip("+~")


def _check_extra(extra: list[str], methods: dict, per_seed: dict, where: str) -> list[str]:
    """Command-line overrides: 'key=value' each, and no key that a method or a seed of the grid sets."""
    for o in extra:
        if "=" not in o:
            raise ConfigError(f"sweep override '{o}': expected key=value")
        owners = [f"method {m}" for m, ovr in methods.items() if _key(o) in map(_key, ovr)]
        owners += [f"seed {s}" for s, ovr in per_seed.items() if _key(o) in map(_key, ovr)]
        if owners:
            raise ConfigError(
                f"sweep override '{o}': {_key(o)} is set by the grid's {', '.join(owners[:3])}, whose value would "
                f"win; edit {where} instead"
            )
    return extra


def _parse_per_seed(raw: object, seeds: list[int], where: str) -> dict[int, list[str]]:
    """`per_seed: {seed: [overrides]}`: every key one of the grid's seeds, every value a list of 'key=value'."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: per_seed: must be a mapping seed -> list of overrides")
    for seed, ovr in raw.items():
        if seed not in seeds:
            raise ConfigError(f"{where}: per_seed.{seed}: not one of the seeds {seeds}")
        if not isinstance(ovr, list) or not all(isinstance(o, str) for o in ovr):
            raise ConfigError(f"{where}: per_seed.{seed}: must be a list of 'key=value' strings")
    return {int(s): list(v) for s, v in raw.items()}


def _parse_compare(raw: object, methods: dict, where: str) -> dict[str, list[str]]:
    """`compare: {method: [reference, ...]}` (a single reference may be a string); every name must be a method."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: compare: must be a mapping method -> list of reference methods")
    out = {}
    for m, refs in raw.items():
        refs = [refs] if isinstance(refs, str) else refs
        if not isinstance(refs, list) or not refs:
            raise ConfigError(f"{where}: compare.{m}: must be a method name or a list of them")
        for name in [m, *refs]:
            if str(name) not in methods:
                raise ConfigError(f"{where}: compare: '{name}' is not one of the methods ({', '.join(methods)})")
        if str(m) in map(str, refs):
            raise ConfigError(f"{where}: compare.{m}: a method cannot be compared with itself")
        out[str(m)] = [str(r) for r in refs]
    return out
