"""ALFWorld game files: where they are, which split holds which game, and the 2.1.1 -> 2.1.2 conversion.

The offline games are ALFWorld's `json_2.1.1` files (one folder per trial with `game.tw-pddl` + `traj_data.json`).
alfworld >= 0.4 expects the 2.1.2 form: its hand-coded expert emits `move X to Y` and needs a `help` action. We
convert one game at a time, on first use, into a cache folder (the source copy is never modified):

1. `pddl_domain`: a `help` action (parameter `?a - agent`, empty precondition, effect `(checked ?a)`) is added
   before the domain's final `)`;
2. `grammar`: `You arrive at {lend.name}.` -> `You arrive at {r.name}.`;
3. `grammar`: the template `put {o} in/on {r}` -> `move {o} to {r}` and its feedback
   `You put the {o.name} in/on the {r.name}.` -> `You move the {o.name} to the {r.name}.`;
4. `grammar`: the `action help {...}` block from the alfred.twl2 shipped in the alfworld package is appended.

Each edit is skipped when already present, so converting a 2.1.2 file is a no-op. This module needs no alfworld
install except for `bundled_help_grammar` (edit 4).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from epo.errors import DataNotFoundError, EnvSetupError
from epo.fsio import atomic_write_text

CONVERSION_VERSION = "1"  # bump when convert_game changes: it names the cache folder
GAME_FILE, TRAJ_FILE, JSON_DIR = "game.tw-pddl", "traj_data.json", "json_2.1.1"
SPLIT_DIRS = {"train": "valid_train", "iid": "valid_seen", "ood": "valid_unseen"}
# ALFRED task-type folder prefix -> the short family name used in per-type tables
TASK_TYPES = {
    "pick_and_place_simple": "pick",
    "look_at_obj_in_light": "look",
    "pick_clean_then_place_in_recep": "clean",
    "pick_heat_then_place_in_recep": "heat",
    "pick_cool_then_place_in_recep": "cool",
    "pick_two_obj_and_place": "pick_two",
}
HELP_PDDL = "\n(:action help\n    :parameters (?a - agent)\n    :precondition ()\n    :effect (and (checked ?a))\n)\n"
GRAMMAR_EDITS = [
    ("You arrive at {lend.name}.", "You arrive at {r.name}."),
    ("put {o} in/on {r}", "move {o} to {r}"),
    ("You put the {o.name} in/on the {r.name}.", "You move the {o.name} to the {r.name}."),
]
HELP_GRAMMAR_START = "\naction help {"


# ---- where the games are ----
GET_DATA = (
    "run `alfworld-download` (pip install alfworld; it fills $ALFWORLD_DATA, default ~/.cache/alfworld), or pass "
    "env kwarg data_dir / set ALFWORLD_DATA to the folder holding json_2.1.1/"
)


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding `json_2.1.1/`: `data_dir` if given, else the first of $ALFWORLD_DATA, ~/.cache/alfworld
    (where `alfworld-download` puts it by default) and ../shared/data/alfworld next to the working directory or the
    repository that has one. ($ALFWORLD_DATA is only a candidate: importing alfworld sets it to ~/.cache/alfworld
    when unset.) The repository's tests use a small fixture subset (tests/fixtures/alfworld) through `data_dir`."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not (path / JSON_DIR).is_dir():
            raise DataNotFoundError(f"ALFWorld data not found: {path} has no {JSON_DIR}/ folder")
        return path.resolve()
    repo = Path(__file__).resolve().parents[3]
    candidates = [
        os.environ.get("ALFWORLD_DATA"),
        "~/.cache/alfworld",
        Path.cwd() / "../shared/data/alfworld",
        repo / "../shared/data/alfworld",
    ]
    tried = [Path(c).expanduser() for c in candidates if c]
    for path in tried:
        if (path / JSON_DIR).is_dir():
            return path.resolve()
    raise DataNotFoundError(f"ALFWorld data not found (no {JSON_DIR}/ in {', '.join(map(str, tried))}): {GET_DATA}")


def list_task_ids(data_dir: Path) -> dict[str, list[str]]:
    """{split: sorted task ids}; a task id is '<alfworld split>/<task folder>/<trial folder>'."""
    splits = {}
    for split, folder in SPLIT_DIRS.items():
        root = data_dir / JSON_DIR / folder
        games = sorted(root.glob(f"*/*/{GAME_FILE}")) if root.is_dir() else []
        splits[split] = [str(game.parent.relative_to(data_dir / JSON_DIR).as_posix()) for game in games]
    return splits


def task_type(task_id: str) -> str:
    """'valid_seen/pick_heat_then_place_in_recep-Egg-None-Fridge-1/trial_x' -> 'heat'."""
    parts = task_id.split("/")
    prefix = parts[1].split("-")[0] if len(parts) == 3 else ""
    if prefix not in TASK_TYPES:
        raise ValueError(f"not an ALFWorld task id: {task_id!r} (expected '<split>/<task>-.../<trial>')")
    return TASK_TYPES[prefix]


# ---- the 2.1.1 -> 2.1.2 conversion ----
def convert_game(game: dict[str, Any], help_grammar: str) -> dict[str, Any]:
    """The four edits of the module docstring, on a parsed game.tw-pddl (returns a new dict)."""
    game = dict(game)
    domain = game["pddl_domain"]
    if "(:action help" not in domain:
        end = domain.rstrip().rfind(")")
        game["pddl_domain"] = domain[:end] + HELP_PDDL + domain[end:]
    grammar = game["grammar"]
    for old, new in GRAMMAR_EDITS:
        grammar = grammar.replace(old, new)
    if HELP_GRAMMAR_START not in grammar:
        grammar += help_grammar
    game["grammar"] = grammar
    return game


def bundled_help_grammar() -> str:
    """The `action help {...}` block at the end of the alfred.twl2 shipped in the alfworld package."""
    spec = importlib.util.find_spec("alfworld")
    if spec is None or not spec.submodule_search_locations:
        raise EnvSetupError("ALFWorld needs the 'alfworld' package: run scripts/install_envs.sh")
    twl2 = Path(next(iter(spec.submodule_search_locations))) / "data" / "alfred.twl2"
    text = twl2.read_text()
    start = text.find(HELP_GRAMMAR_START)
    if start < 0:
        raise EnvSetupError(f"no 'action help' block in {twl2}: unsupported alfworld version")
    return text[start:]


class GameCache:
    """Converted games, one folder per task id, made on first use under `cache_dir`
    (default $XDG_CACHE_HOME or ~/.cache, then epo/alfworld/<hash of source folder, conversion version, help block>)."""

    def __init__(self, data_dir: Path, help_grammar: str, cache_dir: str | os.PathLike | None = None):
        self.data_dir = data_dir
        self.help_grammar = help_grammar
        if cache_dir is None:
            key = f"{data_dir}\n{CONVERSION_VERSION}\n{help_grammar}".encode()
            cache_root = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "epo" / "alfworld"
            cache_dir = cache_root / hashlib.sha1(key).hexdigest()[:12]
        self.cache_dir = Path(cache_dir)

    def game_file(self, task_id: str) -> Path:
        """Path of the converted game.tw-pddl (with traj_data.json beside it, which alfworld's expert reads)."""
        source = self.data_dir / JSON_DIR / task_id
        if ".." in Path(task_id).parts or not (source / GAME_FILE).is_file():
            raise ValueError(f"unknown ALFWorld task id {task_id!r}: no {GAME_FILE} in {source}")
        target = self.cache_dir / task_id
        if not (target / GAME_FILE).is_file():
            game = convert_game(json.loads((source / GAME_FILE).read_text()), self.help_grammar)
            target.mkdir(parents=True, exist_ok=True)  # temp file + rename: parallel env workers never read half a game
            atomic_write_text(target / TRAJ_FILE, (source / TRAJ_FILE).read_text())
            atomic_write_text(target / GAME_FILE, json.dumps(game))  # written last: marks the folder done
        return target / GAME_FILE
