"""quest: the built-in procedurally generated long-horizon text world (pure Python, no dependencies).

Each game is a small house of rooms on a compass grid. The goal is either to *fetch* a treasure into a target
container ("Put the golden crown in the trophy case.") or to *craft* an object from ingredients at a workbench.
What you need lies behind a chain of locks: a locked door or a locked container opens with the key of its colour,
and that key is itself hidden (often in a closed container, often behind the previous lock, in another room).
Decoy containers, junk objects and distractor keys (they open a decoy locked box of junk) make exploration matter.

    obs:     "You are in the hall. You see a closed chest, a locked safe (red lock), an apple.
              Exits: north (locked blue door), east to the kitchen."
    actions: look, inventory, go <dir>, take <item>, open/close <container>, unlock <container> with <key>,
             unlock <dir> door with <key>, put <item> in <container>, craft <product>

Task ids are "<split>/<index>": train (2000), iid (200, held-out seeds, same parameters) and ood (200, harder:
2 more rooms, 1 more lock, more distractors). Env kwargs (same for make and splits): difficulty=easy|medium|hard,
overrides of any `LevelParams` range (rooms, locks, containers, junk, distractor_keys, ingredients,
solution_len, task_types), num_train/num_iid/num_ood and first_train/first_iid/first_ood (a split's
window: num_iid=4 first_iid=4 is iid/00004..00007). Optimal solution lengths (checked per game by the exact
solver, out-of-range games are regenerated): easy 6-15 (ood 10-23), medium 10-32 (ood 14-40),
hard 16-36 (ood 20-40); the default is medium, max_turns is 40. Reward 1.0 on the winning step only; an action
not in info["admissible_actions"] changes nothing and gives info["valid"] = False. `expert_action()` replans from
the current state, so it works after any detour: `expert=exact` (default) is the shortest-plan solver that knows
where everything is (solver.py); `expert=explorer` acts only on what the player has seen (explorer.py: search
nearest-first, then the exact plan once it uses only known things; easy games: 11.1 vs 9.2 turns on average,
always won) and is the better behaviour-cloning teacher. About 20-40k env steps/s on one core (bench/bench_envs.py).
"""

from __future__ import annotations

from typing import Any

from epo.envs.base import EnvSpec
from epo.envs.quest.config import MAX_SOLUTION_LEN, PRESETS, QuestConfig, parse_kwargs, task_ids
from epo.envs.quest.env import QuestEnv


def make(**kwargs: Any) -> QuestEnv:
    return QuestEnv.from_kwargs(**kwargs)


def splits(**kwargs: Any) -> dict[str, list[str]]:
    return task_ids(parse_kwargs(**kwargs))


SPEC = EnvSpec(
    name="quest",
    description="built-in procedurally generated text world: keys, locked doors, containers, crafting (pure Python)",
    make=make,
    splits=splits,
    max_turns=MAX_SOLUTION_LEN,
)

__all__ = ["PRESETS", "QuestConfig", "QuestEnv", "SPEC", "make", "parse_kwargs", "splits"]
