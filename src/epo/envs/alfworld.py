"""ALFWorld (text), one game at a time, through TextWorld's PDDL engine.

    env = make_env("alfworld")                      # cheap; the engine starts on the first reset
    obs, info = env.reset(options={"task_id": "valid_seen/look_at_obj_in_light-CD-None-DeskLamp-302/trial_T..."})

- Splits (from the offline game files, see alfworld_games): train = valid_train (200 games), iid = valid_seen (140),
  ood = valid_unseen (134). task_type: pick, look, clean, heat, cool, pick_two.
- One engine per env instance, reused across resets (fast-downward's library is loaded once); a reset loads one
  game, converted on first use into a cache folder; resetting to the game already loaded skips the reload.
  TextWorld's engine re-parses the same strings all the time: three pure parsers are memoised per process
  (see _install_textworld_memos), which makes steps ~3-4x faster.
- Observation: the engine's text. The initial one drops TextWorld's "-= Welcome to TextWorld, ALFRED! =-" banner
  and keeps the room description and "Your task is to: ..." (verl-agent shows it the same way); info["task"] holds
  the goal alone.
- Admissible actions: the engine's list (sorted) without "help", a meta-command that only prints the command list
  (verl-agent drops it too). Actions are lower-cased with whitespace collapsed before matching; any other text
  still goes to the engine (which answers "Nothing happens.") and gets info["valid"] = False.
- reward 1.0 on the winning step; the engine never truncates (the collector enforces the 50-turn limit).
- expert_action(): alfworld's hand-coded expert, closed loop (it watches every step, whoever chose the action).
  Its first action is always "look" (alfworld's own convention), and it is not perfect (~50/54 won, the misses are
  pick_two games). expert="planner" asks fast-downward for a fresh plan instead (always right when it finishes,
  but may take seconds to a minute); expert="none" skips the per-step bookkeeping (facts) entirely.
"""

from __future__ import annotations

import copy
import functools
import random
import sys
from typing import Any

from epo.envs.alfworld_games import GameCache, bundled_help_grammar, find_data_dir, list_task_ids, task_type
from epo.envs.base import EnvSpec, StepOutput
from epo.errors import EnvSetupError

BANNER = "-= Welcome to TextWorld, ALFRED! =-"
TASK_MARKER = "Your task is to: "
EXPERTS = ("handcoded", "planner", "none")
INSTALL_HINT = "ALFWorld needs the 'alfworld' package (with textworld[pddl]): run scripts/install_envs.sh"


def normalize(action: str) -> str:
    return " ".join(action.lower().split())


def _install_textworld_memos() -> None:
    """Memoise three pure, slow functions that TextWorld's PDDL engine calls over and over on the same strings
    (same observations and admissible lists, measured: steps ~3-4x faster, game loads ~1.3x):
    - fast-downward's PDDL -> SAS translation: each game is translated twice on load and twice again on every
      reset; the outputs are only read. (Also undoes the translator's rewrite of sys.argv.)
    - the text-grammar parser (tatsu) that re-parses the same rule strings for every derived sentence and every
      admissible command; callers mutate the parsed symbols, so each call gets a deep copy.
    - the logic-condition parser behind grammar conditions; the parsed Rule is only read."""
    import fast_downward
    from textworld.envs.pddl import textgen
    from textworld.logic import Rule

    if getattr(fast_downward.pddl2sas, "_epo_memo", False):
        return
    translate, parse_symbols = fast_downward.pddl2sas, textgen._parse_and_convert
    parse_query = Rule.parse_conjunctive_query.__func__

    @functools.lru_cache(maxsize=16)
    def cached_translate(domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> Any:
        argv = sys.argv
        try:
            return translate(domain, problem, verbose=verbose, optimize=optimize)
        finally:
            sys.argv = argv

    @functools.lru_cache(maxsize=4096)
    def cached_symbols(text: str, rule_name: str, trace: bool) -> Any:
        return parse_symbols(text, rule_name=rule_name, trace=trace)

    @functools.lru_cache(maxsize=4096)
    def cached_query(expr: str) -> Any:
        return parse_query(Rule, expr)

    cached_translate._epo_memo = True  # type: ignore[attr-defined]
    fast_downward.pddl2sas = cached_translate
    textgen._parse_and_convert = lambda text, rule_name, trace=False: copy.deepcopy(
        cached_symbols(text, rule_name, trace)
    )
    Rule.parse_conjunctive_query = classmethod(lambda cls, expr: cached_query(expr))


class AlfWorldEnv:
    def __init__(
        self,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        expert: str = "handcoded",
        expert_max_steps: int = 200,
    ):
        if expert not in EXPERTS:
            raise ValueError(f"alfworld: unknown expert {expert!r}; choose one of {', '.join(EXPERTS)}")
        self.data_dir = find_data_dir(data_dir)
        self._cache_dir = cache_dir
        self.expert_kind = expert
        self.expert_max_steps = expert_max_steps
        self._engine: Any = None  # textworld env (AlfredDemangler over PddlEnv), built on the first reset
        self._games: GameCache | None = None
        self._loaded = ""  # game file currently loaded in the engine
        self._train_ids: list[str] | None = None
        self._state: Any = None
        self._task, self._task_type, self._won = "", "", False
        self._expert: Any = None
        self._expert_next: str | None = None
        self._expert_rng_state: Any = None

    # ---- protocol ----
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        task_id = (options or {}).get("task_id") or self._random_train_task(seed)
        kind = task_type(task_id)
        self._start_engine()
        assert self._games is not None
        game_file = str(self._games.game_file(task_id))
        if game_file != self._loaded:  # the same game again (GRPO groups, repeats): reset() alone rebuilds it
            self._engine.load(game_file)
            self._loaded = game_file
        self._state = self._engine.reset()
        feedback = self._state["feedback"]
        obs = feedback.replace(BANNER, "", 1).strip()
        start = obs.find(TASK_MARKER)
        self._task = obs[start + len(TASK_MARKER) :].strip() if start >= 0 else ""
        self._task_type, self._won = kind, False
        self._reset_expert(game_file, feedback, seed)
        info = {"task": self._task, "task_type": kind, "won": False, "admissible_actions": self._admissible()}
        return obs, info

    def step(self, action: str) -> StepOutput:
        if self._state is None:
            raise RuntimeError("alfworld: call reset() before step()")
        command = normalize(action)
        valid = command in self._admissible()
        self._state, _, _ = self._engine.step(command)
        newly_won = bool(self._state["won"]) and not self._won
        self._won = self._won or newly_won
        self._advance_expert(command)
        info = {
            "task": self._task,
            "task_type": self._task_type,
            "won": self._won,
            "valid": valid,
            "admissible_actions": self._admissible(),
        }
        return self._state["feedback"].strip(), float(newly_won), self._won, False, info

    def expert_action(self) -> str | None:
        if self._state is None or self._won:
            return None
        if self.expert_kind == "planner":
            engine = self._engine.unwrapped
            plan = engine._pddl_state.replan(engine._entity_infos)
            return plan[0] if plan else None
        return self._expert_next

    def close(self) -> None:
        # PddlEnv holds no process or open file. Its copy of fast-downward's library stays mapped until the process
        # exits: dlclose() under live ctypes handles is unsafe, and one copy per env instance is a few MB.
        self._engine, self._state, self._loaded = None, None, ""

    # ---- internals ----
    def _start_engine(self) -> None:
        if self._engine is not None:
            return
        try:
            import textworld
            from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
            from textworld.envs.pddl import PddlEnv
        except ImportError as e:
            raise EnvSetupError(f"{INSTALL_HINT} ({e})") from e
        _install_textworld_memos()
        self._games = GameCache(self.data_dir, bundled_help_grammar(), self._cache_dir)
        wants_facts = self.expert_kind == "handcoded"  # the hand-coded expert reads the world's facts every step
        infos = textworld.EnvInfos(won=True, admissible_commands=True, feedback=True, facts=wants_facts)
        self._engine = AlfredDemangler(PddlEnv(infos))

    def _random_train_task(self, seed: int | None) -> str:
        if self._train_ids is None:
            self._train_ids = list_task_ids(self.data_dir)["train"]
        return random.Random(seed).choice(self._train_ids)

    def _admissible(self) -> list[str]:
        return [a for a in self._state["admissible_commands"] if a != "help"]

    def _reset_expert(self, game_file: str, feedback: str, seed: int | None) -> None:
        self._expert, self._expert_next = None, None
        if self.expert_kind != "handcoded":
            return
        from alfworld.agents.expert import HandCodedTWAgent

        self._expert = HandCodedTWAgent(max_steps=self.expert_max_steps)
        self._expert.reset(game_file)
        self._expert.observe(feedback)
        self._expert_next = "look"  # alfworld's AlfredExpert starts every game with "look"
        self._expert_rng_state = random.Random(0 if seed is None else seed).getstate()

    def _advance_expert(self, command: str) -> None:
        """Let the hand-coded expert see this step and pick the next action (None once it gives up)."""
        if self._expert is None or self._won:
            return
        outer_state = random.getstate()  # the expert draws from the global `random`: give it its own stream
        random.setstate(self._expert_rng_state)
        try:
            action = self._expert.act(self._state, 0, self._state["won"], command)
            self._expert_next = action if action in self._state["admissible_commands"] else "look"
        except Exception:  # HandCodedAgentTimeout / HandCodedAgentFailed, or a heuristic tripping on odd text
            self._expert, self._expert_next = None, None
        finally:
            self._expert_rng_state = random.getstate()
            random.setstate(outer_state)


def alfworld_splits(data_dir: str | None = None, **_: Any) -> dict[str, list[str]]:
    return list_task_ids(find_data_dir(data_dir))


SPEC = EnvSpec(
    name="alfworld",
    description="ALFWorld text games (TextWorld/PDDL household tasks); splits train/iid/ood = "
    "valid_train/valid_seen/valid_unseen",
    make=AlfWorldEnv,
    splits=alfworld_splits,
    max_turns=50,
    requires=("alfworld", "textworld", "fast_downward"),
)
