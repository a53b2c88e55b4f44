"""QuestEnv: the TextEnv wrapper around a quest World."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from epo.envs.base import StepOutput
from epo.envs.quest import solver
from epo.envs.quest.config import QuestConfig, parse_kwargs
from epo.envs.quest.explorer import explorer_action
from epo.envs.quest.generator import generate
from epo.envs.quest.world import Game, World

_CACHE_SIZE = 256  # generated games kept per env (generation runs the solver, ~1 ms)


class QuestEnv:
    """Built-in long-horizon text world; see `epo.envs.quest` for the rules."""

    def __init__(self, config: QuestConfig):
        self.config = config
        self._games: OrderedDict[str, Game] = OrderedDict()
        self._world: World | None = None
        self._plan: list[str] = []  # the expert's remaining plan, valid while the agent follows it

    @property
    def world(self) -> World | None:
        """The live game state (for search, analysis and tests); None before the first reset."""
        return self._world

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> QuestEnv:
        return cls(parse_kwargs(**kwargs))

    def _game(self, task_id: str) -> Game:
        if task_id in self._games:
            self._games.move_to_end(task_id)
        else:
            self._games[task_id] = generate(self.config, task_id)
            if len(self._games) > _CACHE_SIZE:
                self._games.popitem(last=False)
        return self._games[task_id]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        task_id = (options or {}).get("task_id")
        if task_id is None:
            if seed is None:
                raise ValueError("QuestEnv.reset needs options={'task_id': 'train/00017'} (or a seed)")
            task_id = f"train/{seed % max(self.config.num_train, 1):05d}"
        self._world = World(self._game(task_id))
        self._plan = []
        return self._world.describe(), self._info()

    def _info(self, valid: bool | None = None) -> dict[str, Any]:
        w = self._world
        info = {
            "task": w.game.task,
            "admissible_actions": list(w.actions),
            "won": w.won,
            "task_type": w.game.task_type,
        }
        if valid is not None:
            info["valid"] = valid
        return info

    def step(self, action: str) -> StepOutput:
        if self._world is None:
            raise RuntimeError("QuestEnv.step called before reset")
        was_won = self._world.won
        obs, valid = self._world.act(action)
        if valid:
            # following the plan keeps the rest optimal (Bellman); anything else may change what is optimal
            self._plan = self._plan[1:] if self._plan and self._plan[0] == action else []
        won = self._world.won
        return obs, float(won and not was_won), won, False, self._info(valid)

    def expert_action(self) -> str | None:
        if self._world is None or self._world.won:
            return None
        if self.config.expert == "explorer":
            return explorer_action(self._world)
        if not self._plan:
            self._plan = solver.plan(self._world)
        return self._plan[0]

    def close(self) -> None:
        self._world = None
