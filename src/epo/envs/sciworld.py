"""ScienceWorld (PyPI `scienceworld`, a Scala simulator behind a JVM), one task variation at a time.

    env = make_env("sciworld")                      # cheap; the JVM starts on the first reset (~3 s)
    obs, info = env.reset(options={"task_id": "boil/3"})

- Task ids are "<task name>/<variation>" (never task indices: their order is an implementation detail). Splits
  come from the EPO reference's variation lists (splits.json, see shared/data/sciworld/README.md): train, iid
  (L0 test), ood (L1 test), l2_train, l2_test. task_type = the task name.
- One JVM per env instance, reused across resets (`load(task, variation, "easy")`); close() shuts it down.
  `jvm_options` (default "-Xmx1g -XX:+UseSerialGC", given to the JVM as JAVA_TOOL_OPTIONS) caps its heap: with the
  JVM's defaults (heap up to a quarter of RAM) each took 0.6-1.6 GB. Steps go through the simulator's server API
  with the valid-action list fetched in one py4j round trip (ScienceWorldEnv.step fetches it element by element,
  ~1000 round trips).
- Observation: the simulator's text; the first one is "look around". info["task"] = the task description,
  info["score"] = the simulator's score (0-100, negative when the task failed, e.g. focusing on a wrong object).
- won = the score reached 100 (the simulator marks the task completed); terminated = won or failed (score < 0);
  truncated = the simulator ended the episode for another reason (its own step limit, `env_step_limit`).
  The EPO reference counts `done and score > 0` as won, which also credits an episode cut by the simulator's step
  limit with partial progress; we count completed tasks only. reward is 1.0 on the winning step.
- Admissible actions: ScienceWorld's valid action-object combinations run to hundreds or thousands (every
  `move X to Y`, `pour X into Y`, ... pair, each object under several referents) and still miss a third of the
  gold actions (the parser also accepts `examine X`, `X in inventory`, ...). info["admissible_actions"] is a
  compact, concrete list instead: deduplicated, "reset task" removed, grouped by verb (zero-argument actions and
  navigation first, informational verbs like "look at" last, so a prompt that cuts the list from the end loses the
  least), at most `per_verb` per verb (median ~110 actions with the default 10). `action_list="full"` gives the
  whole deduplicated list. info["action_templates"] and info["objects"] carry the EPO reference's view (verb
  templates with OBJ slots + the object names in sight) for prompts that prefer it. Any text may be sent:
  info["valid"] is whether the parser understood it (not "No known action matches that input.").
- expert_action(): the simulator's gold action sequence, replayed open loop: the next gold action while the
  agent has followed the sequence exactly, None once it deviated or the sequence ran out. The gold path is made
  on the first expert_action() call of an episode (it costs ~0.3-3 s), by reloading the variation with gold
  generation on and replaying the episode's actions (the world is deterministic). The gold path itself is not:
  ScienceWorld picks among equivalent routes (e.g. which door to go through), so an expert first asked
  mid-episode only helps if the agent's actions so far happen to be a prefix of the path it draws then.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from epo.envs.base import EnvSpec, StepOutput
from epo.errors import DataNotFoundError, EnvSetupError

SPLIT_KEYS = {"train": "train", "iid": "iid_test", "ood": "ood_test", "l2_train": "l2_train", "l2_test": "l2_test"}
UNKNOWN_ACTION = ("No known action matches that input.", "Unknown action.")
DISABLED = {"reset task"}  # would restart the episode from inside it
# verb order of the compact list: cheap/general first, combinatorial next, informational last
VERBS = [
    "look around", "inventory", "task", "wait1", "wait", "teleport to", "go to", "open", "close", "activate",
    "deactivate", "pick up", "put down", "focus on", "use", "move", "pour", "mix", "dunk", "connect", "disconnect",
    "read", "look at", "look in", "eat", "flush",
]  # fmt: skip
_VERB_RANK = {verb: rank for rank, verb in enumerate(VERBS)}
# The JVM's own default heap is a quarter of the RAM per JVM: 16 idle ScienceWorld envs held 13 GB of 24 (0.6-1.6 GB
# each). A capped heap and the serial collector (no GC threads per core) keep each near its live set.
DEFAULT_JVM_OPTIONS = "-Xmx1g -XX:+UseSerialGC"
INSTALL_HINT = "ScienceWorld needs the 'scienceworld' package and Java >= 11: run scripts/install_envs.sh"


# ---- splits ----
def find_splits_file(splits_file: str | os.PathLike | None = None) -> Path:
    """`splits_file`, else $SCIWORLD_SPLITS, else ../shared/data/sciworld/splits.json next to the working
    directory or the repository, else the copy packaged with epo (envs/data/sciworld_splits.json, identical)."""
    explicit = splits_file if splits_file is not None else os.environ.get("SCIWORLD_SPLITS")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise DataNotFoundError(f"ScienceWorld splits file not found: {path}")
        return path
    repo = Path(__file__).resolve().parents[3]
    for base in (Path.cwd(), repo):
        path = base / "../shared/data/sciworld/splits.json"
        if path.is_file():
            return path.resolve()
    packaged = Path(__file__).resolve().parent / "data" / "sciworld_splits.json"
    if packaged.is_file():
        return packaged
    raise DataNotFoundError(
        "ScienceWorld splits not found: pass env kwarg splits_file or set SCIWORLD_SPLITS to splits.json"
    )


def sciworld_splits(splits_file: str | None = None, **_: Any) -> dict[str, list[str]]:
    data = json.loads(find_splits_file(splits_file).read_text())
    return {
        split: [f"{task}/{var}" for task, variations in data[key].items() for var in variations]
        for split, key in SPLIT_KEYS.items()
    }


def parse_task_id(task_id: str) -> tuple[str, int]:
    task, _, variation = str(task_id).rpartition("/")
    if not task or not variation.isdigit():
        raise ValueError(f"not a ScienceWorld task id: {task_id!r} (expected '<task name>/<variation>', e.g. 'boil/3')")
    return task, int(variation)


# ---- admissible actions ----
def verb_of(action: str) -> str:
    """The action's verb: a two-word verb from VERBS ("pick up"), else its first word."""
    words = action.split(" ", 2)
    two = " ".join(words[:2])
    return two if two in _VERB_RANK else words[0]


def compact_actions(valid: list[str], per_verb: int | None) -> list[str]:
    """Deduplicate, drop disabled actions, group by verb in VERBS order (unknown verbs, e.g. the digits that answer
    an ambiguity question, go first), keep at most `per_verb` per verb (None: all)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for action in dict.fromkeys(valid):
        if action not in DISABLED:
            groups[verb_of(action)].append(action)
    order = sorted(groups, key=lambda verb: _VERB_RANK.get(verb, -1))  # stable: unknown verbs first, as met
    return [action for verb in order for action in groups[verb][:per_verb]]


@contextlib.contextmanager
def _java_tool_options(options: str):
    """JAVA_TOOL_OPTIONS for the JVM started inside (scienceworld passes no options of its own to py4j's launcher);
    a user's own JAVA_TOOL_OPTIONS come after ours, so theirs win. Restored afterwards: inline envs share os.environ."""
    before = os.environ.get("JAVA_TOOL_OPTIONS")
    merged = " ".join(part for part in (options, before) if part)
    if merged:
        os.environ["JAVA_TOOL_OPTIONS"] = merged
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("JAVA_TOOL_OPTIONS", None)
        else:
            os.environ["JAVA_TOOL_OPTIONS"] = before


class SciWorldEnv:
    def __init__(
        self,
        splits_file: str | None = None,
        simplification: str = "easy",
        env_step_limit: int = 100,
        action_list: str = "compact",
        per_verb: int = 10,
        jar_path: str | None = None,
        jvm_options: str = DEFAULT_JVM_OPTIONS,
    ):
        if action_list not in ("compact", "full"):
            raise ValueError(f"sciworld: action_list must be 'compact' or 'full', got {action_list!r}")
        self.splits_file = splits_file
        self.simplification = simplification
        self.env_step_limit = env_step_limit
        self.per_verb = per_verb if action_list == "compact" else None
        self.jar_path = jar_path
        self.jvm_options = jvm_options
        self._sim: Any = None  # scienceworld.ScienceWorldEnv, started on the first reset
        self._task_names: list[str] = []
        self._train_ids: list[str] | None = None
        self._task_id = ""
        self._task, self._task_type, self._won = "", "", False
        self._history: list[str] = []  # actions sent this episode
        self._gold: list[str] | None = None
        self._templates: list[str] = []
        self._score, self._valid_actions = 0, []  # from the last simulator step

    # ---- protocol ----
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        task_id = (options or {}).get("task_id") or self._random_train_task(seed)
        task, variation = parse_task_id(task_id)
        self._start()
        self._check_task(task, variation)
        self._task_id, self._task_type = task_id, task
        obs = self._load(task, variation, gold=False)
        self._task = self._sim.get_task_description()
        self._templates = [t for t in self._sim.get_possible_actions() if t not in DISABLED]
        self._won, self._history, self._gold = False, [], None
        return obs, self._make_info(valid=None)

    def step(self, action: str) -> StepOutput:
        if self._sim is None or not self._task_id:
            raise RuntimeError("sciworld: call reset() before step()")
        command = " ".join(str(action).split())
        if command in DISABLED:
            return "That action is disabled here.", 0.0, self._won, False, self._make_info(valid=False)
        self._history.append(command)
        obs, done = self._sim_step(command)
        newly_won = self._score >= 100 and not self._won
        self._won = self._won or newly_won
        terminated = self._won or self._score < 0
        truncated = done and not terminated
        return obs, float(newly_won), terminated, truncated, self._make_info(valid=not obs.startswith(UNKNOWN_ACTION))

    def expert_action(self) -> str | None:
        if self._sim is None or not self._task_id or self._won:
            return None
        if self._gold is None:
            self._gold = self._make_gold()
        turn = len(self._history)
        if self._history != self._gold[:turn] or turn >= len(self._gold):
            return None
        return self._gold[turn]

    def close(self) -> None:
        sim, self._sim = self._sim, None
        if sim is None:
            return
        process = sim._gateway.java_process
        sim.close()
        try:
            process.wait(timeout=5)
        except Exception:  # still alive (or already reaped): make sure no JVM outlives the env
            process.kill()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn py4j down already
            self.close()

    # ---- internals ----
    def _start(self) -> None:
        if self._sim is not None:
            return
        try:
            from scienceworld import ScienceWorldEnv
        except ImportError as e:
            raise EnvSetupError(f"{INSTALL_HINT} ({e})") from e
        try:
            with _java_tool_options(self.jvm_options):
                self._sim = ScienceWorldEnv("", self.jar_path, envStepLimit=self.env_step_limit)
        except Exception as e:  # py4j's errors say little; the usual cause is a missing or too old java
            raise EnvSetupError(f"{INSTALL_HINT}; starting the JVM failed: {e}") from e
        self._task_names = list(self._sim.get_task_names())

    def _check_task(self, task: str, variation: int) -> None:
        if task not in self._task_names:
            raise ValueError(f"unknown ScienceWorld task {task!r}; known: {', '.join(self._task_names)}")
        n = self._sim.get_max_variations(task)
        if not 0 <= variation < n:
            raise ValueError(f"ScienceWorld task {task!r} has variations 0..{n - 1}, got {variation}")

    def _java_strings(self, java_list: Any) -> list[str]:
        """A Java list of strings in one py4j round trip (list(java_list) costs one per element: ~1000 here)."""
        joined = self._sim._gateway.jvm.java.lang.String.join("\n", java_list)
        return joined.split("\n") if joined else []

    def _sim_step(self, command: str) -> tuple[str, bool]:
        """One simulator step through its server API, as ScienceWorldEnv.step does but without the free look,
        inventory and task actions and with the valid-action list fetched in one round trip. Returns (obs, done)."""
        server = self._sim.server
        obs = server.step(command)
        self._score = int(round(100 * server.getScore()))
        self._valid_actions = self._java_strings(server.getValidActionObjectCombinations())
        done = bool(server.getCompleted()) or server.getNumMoves() > self.env_step_limit or self._score < 0
        return obs, done

    def _load(self, task: str, variation: int, gold: bool) -> str:
        """Load a variation and take the first look. (`load` leaves the world at move 0, so the simulator's
        reset(), which loads the variation once more, is not needed.)"""
        self._sim.load(task, variation, self.simplification, generateGoldPath=gold)
        return self._sim_step("look around")[0]

    def _make_gold(self) -> list[str]:
        """Reload with gold generation on and replay this episode's actions (deterministic) to come back here."""
        task, variation = parse_task_id(self._task_id)
        self._load(task, variation, gold=True)
        gold = [" ".join(a.split()) for a in self._sim.get_gold_action_sequence()]
        for command in self._history:
            self._sim_step(command)
        return gold

    def _make_info(self, valid: bool | None) -> dict[str, Any]:
        info: dict[str, Any] = {
            "task": self._task,
            "task_type": self._task_type,
            "won": self._won,
            "score": self._score,
            "admissible_actions": compact_actions(self._valid_actions, self.per_verb),
            "action_templates": list(self._templates),
            "objects": list(dict.fromkeys(self._java_strings(self._sim.server.getPossibleObjects()))),
        }
        if valid is not None:
            info["valid"] = valid
        return info

    def _random_train_task(self, seed: int | None) -> str:
        if self._train_ids is None:
            self._train_ids = sciworld_splits(self.splits_file)["train"]
        return random.Random(seed).choice(self._train_ids)


SPEC = EnvSpec(
    name="sciworld",
    description="ScienceWorld (30 elementary-science tasks, JVM simulator, 'easy' simplifications); splits "
    "train/iid/ood/l2_train/l2_test from the EPO reference",
    make=SciWorldEnv,
    splits=sciworld_splits,
    max_turns=30,
    list_older_actions=True,
    requires=("scienceworld",),
)
