"""Difficulty presets, split parameters and task ids of the quest world.

A game is a deterministic function of (split parameters, index): `train` and `iid` share the base parameters and
differ only in their seeds; `ood` uses harder parameters derived from the base ones (more rooms, a longer lock
chain, more distractors). Every keyword that `SPEC.make` accepts is also accepted by `SPEC.splits` and vice versa.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from epo.envs.quest.names import CONTAINER_NAMES, JUNK, KEY_COLORS, RECIPES, ROOM_NAMES
from epo.errors import EnvSetupError

TASK_TYPES = ("fetch", "craft")
SPLITS = ("train", "iid", "ood")


@dataclass(frozen=True)
class LevelParams:
    """Generator knobs; every (lo, hi) range is inclusive and sampled uniformly per game."""

    rooms: tuple[int, int]
    locks: tuple[int, int]  # length of the lock chain (locked doors or locked containers, each needs the previous)
    containers: tuple[int, int]  # closed decoy containers (items may hide in them)
    junk: tuple[int, int]  # distractor objects
    distractor_keys: tuple[int, int]  # keys that open a decoy locked container holding junk
    ingredients: tuple[int, int]  # per recipe, for craft tasks
    solution_len: tuple[int, int]  # accepted range of the optimal solution length (rejection sampling)
    task_types: tuple[str, ...] = TASK_TYPES


PRESETS: dict[str, LevelParams] = {
    "easy": LevelParams(
        rooms=(3, 4),
        locks=(1, 1),
        containers=(1, 2),
        junk=(1, 2),
        distractor_keys=(0, 1),
        ingredients=(2, 2),
        solution_len=(6, 15),
    ),
    "medium": LevelParams(
        rooms=(5, 7),
        locks=(2, 3),
        containers=(2, 3),
        junk=(2, 4),
        distractor_keys=(1, 1),
        ingredients=(2, 2),
        solution_len=(10, 32),
    ),
    "hard": LevelParams(
        rooms=(7, 9),
        locks=(3, 4),
        containers=(3, 4),
        junk=(3, 5),
        distractor_keys=(1, 2),
        ingredients=(2, 3),
        solution_len=(16, 36),
    ),
}
MAX_SOLUTION_LEN = 40  # == SPEC.max_turns: no split of any preset asks for more actions than the turn limit


def harder(p: LevelParams) -> LevelParams:
    """The OOD parameters: a bigger map, one more lock in the chain, more distractors, longer solutions."""

    def plus(r: tuple[int, int], k: int) -> tuple[int, int]:
        return (r[0] + k, r[1] + k)

    lo, hi = p.solution_len
    return replace(
        p,
        rooms=plus(p.rooms, 2),
        locks=plus(p.locks, 1),
        containers=plus(p.containers, 1),
        junk=plus(p.junk, 1),
        distractor_keys=plus(p.distractor_keys, 1),
        solution_len=(lo + 4, min(hi + 8, MAX_SOLUTION_LEN)),
    )


@dataclass(frozen=True)
class QuestConfig:
    base: LevelParams  # train and iid
    ood: LevelParams
    num_train: int = 2000
    num_iid: int = 200
    num_ood: int = 200
    first_train: int = 0  # a split's task ids are <split>/<first> .. <first + num - 1>: a window of its games
    first_iid: int = 0
    first_ood: int = 0
    difficulty: str = "medium"
    expert: str = "exact"  # "exact": shortest plan, knows everything; "explorer": acts on what was observed

    def params(self, split: str) -> LevelParams:
        return self.ood if split == "ood" else self.base

    def split_size(self, split: str) -> int:
        return {"train": self.num_train, "iid": self.num_iid, "ood": self.num_ood}[split]

    def split_start(self, split: str) -> int:
        return {"train": self.first_train, "iid": self.first_iid, "ood": self.first_ood}[split]


_RANGE_FIELDS = tuple(f.name for f in fields(LevelParams) if f.name != "task_types")
_SIZE_FIELDS = ("num_train", "num_iid", "num_ood", "first_train", "first_iid", "first_ood")
EXPERTS = ("exact", "explorer")


def _as_range(name: str, value: Any) -> tuple[int, int]:
    """Accept 3, (2, 4) or [2, 4] (YAML lists)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise EnvSetupError(f"quest: {name} must be an int or a [lo, hi] pair of ints, got {value!r}")
    lo, hi = value
    if not 0 <= lo <= hi:
        raise EnvSetupError(f"quest: {name} needs 0 <= lo <= hi, got {value!r}")
    return (lo, hi)


def parse_kwargs(**kwargs: Any) -> QuestConfig:
    """Build a QuestConfig from env kwargs: difficulty=easy|medium|hard, per-knob overrides, split sizes and starts
    (num_iid=4 first_iid=4: the games iid/00004..iid/00007)."""
    difficulty = kwargs.pop("difficulty", "medium")
    if difficulty not in PRESETS:
        raise EnvSetupError(f"quest: unknown difficulty {difficulty!r}; choose one of {', '.join(PRESETS)}")
    expert = kwargs.pop("expert", "exact")
    if expert not in EXPERTS:
        raise EnvSetupError(f"quest: unknown expert {expert!r}; choose one of {', '.join(EXPERTS)}")
    sizes = {k: kwargs.pop(k) for k in _SIZE_FIELDS if k in kwargs}
    for name, n in sizes.items():
        if not (isinstance(n, int) and n >= 0):
            raise EnvSetupError(f"quest: {name} must be a non-negative int, got {n!r}")
    overrides: dict[str, Any] = {}
    for name in list(kwargs):
        if name in _RANGE_FIELDS:
            overrides[name] = _as_range(name, kwargs.pop(name))
        elif name == "task_types":
            types = tuple(kwargs.pop(name))
            if not types or any(t not in TASK_TYPES for t in types):
                raise EnvSetupError(f"quest: task_types must be a non-empty subset of {TASK_TYPES}, got {types!r}")
            overrides[name] = types
    if kwargs:
        known = ", ".join(("difficulty", "expert", *_SIZE_FIELDS, *_RANGE_FIELDS, "task_types"))
        raise EnvSetupError(f"quest: unknown env kwargs {sorted(kwargs)}; known: {known}")
    base = replace(PRESETS[difficulty], **overrides)
    _check_limits(base, harder(base))
    return QuestConfig(base=base, ood=harder(base), difficulty=difficulty, expert=expert, **sizes)


def _check_limits(base: LevelParams, ood: LevelParams) -> None:
    """The word lists bound how big a game can be; say so up front rather than failing inside the generator."""
    if base.locks[0] < 1 or base.rooms[0] < 1 or base.ingredients[0] < 1:
        raise EnvSetupError("quest: rooms, locks and ingredients need at least 1")
    limits = {
        "rooms": (ood.rooms[1], len(ROOM_NAMES)),
        "locks + distractor_keys": (ood.locks[1] + ood.distractor_keys[1], len(KEY_COLORS)),
        "locks + containers + distractor_keys": (
            ood.locks[1] + ood.containers[1] + ood.distractor_keys[1],
            len(CONTAINER_NAMES),
        ),
        "junk": (ood.junk[1], len(JUNK)),
        "ingredients": (ood.ingredients[1], min(len(r) for r in RECIPES.values())),
    }
    for name, (value, limit) in limits.items():
        if value > limit:
            raise EnvSetupError(f"quest: {name} can be at most {limit} (OOD adds to the base ranges), got {value}")


def parse_task_id(task_id: str) -> tuple[str, int]:
    """'train/00017' -> ('train', 17)."""
    split, sep, index = str(task_id).partition("/")
    if not sep or split not in SPLITS or not index.isdigit():
        raise EnvSetupError(f"quest: bad task id {task_id!r}; expected '<split>/<index>' with split in {SPLITS}")
    return split, int(index)


def task_ids(config: QuestConfig) -> dict[str, list[str]]:
    ids = {}
    for split in SPLITS:
        start = config.split_start(split)
        ids[split] = [f"{split}/{i:05d}" for i in range(start, start + config.split_size(split))]
    return ids
