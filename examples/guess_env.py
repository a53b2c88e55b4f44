"""A plug-in environment outside the `epo` package: guess a secret number with "higher"/"lower" hints.

Use it by module path (the directory holding this file must be importable, e.g. `PYTHONPATH=examples`):

    epo train --config quest_demo_cpu env.name=guess_env:SPEC env.eval_splits=[test]
    python -c "from epo.envs.testing import check_env; print(check_env('guess_env:SPEC'))"

It follows the `epo.envs.TextEnv` protocol (see docs/ENVIRONMENTS.md): deterministic tasks named by id,
`info` with task / admissible_actions / won / valid / task_type, reward 1.0 on the winning step only, and an
expert (binary search) for behaviour cloning. Kwargs (`env.kwargs.high=...`) go to both `make` and `splits`.
"""

from __future__ import annotations

import random
from typing import Any

from epo.envs import EnvSpec


class GuessEnv:
    def __init__(self, high: int = 16, num_train: int = 500, num_test: int = 100):
        self.high = high
        self.low, self.top, self.secret, self.task_id = 1, high, 0, ""

    def _info(self, won: bool = False) -> dict[str, Any]:
        return {
            "task": f"Find the secret number between 1 and {self.high}.",
            "admissible_actions": [f"guess {k}" for k in range(self.low, self.top + 1)],
            "won": won,
            "task_type": "small" if self.high <= 16 else "large",
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        self.task_id = (options or {}).get("task_id") or f"train/{random.Random(seed).randrange(500):05d}"
        self.secret = random.Random(self.task_id).randint(1, self.high)  # same id -> same secret
        self.low, self.top = 1, self.high
        return "Make a guess.", self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        words = action.strip().lower().split()
        if len(words) != 2 or words[0] != "guess" or not words[1].isdigit():
            return "I only understand 'guess N'.", 0.0, False, False, {**self._info(), "valid": False}
        k = int(words[1])
        if k == self.secret:
            return f"{k} is right!", 1.0, True, False, {**self._info(won=True), "valid": True}
        if k < self.secret:
            self.low = max(self.low, k + 1)
        else:
            self.top = min(self.top, k - 1)
        hint = "higher" if k < self.secret else "lower"
        return f"{k} is wrong; the secret is {hint}.", 0.0, False, False, {**self._info(), "valid": True}

    def expert_action(self) -> str | None:
        return f"guess {(self.low + self.top) // 2}"  # binary search: at most log2(high)+1 turns

    def close(self) -> None:
        pass


def make(**kwargs: Any) -> GuessEnv:
    return GuessEnv(**kwargs)


def splits(high: int = 16, num_train: int = 500, num_test: int = 100) -> dict[str, list[str]]:
    return {
        "train": [f"train/{i:05d}" for i in range(num_train)],
        "test": [f"test/{i:05d}" for i in range(num_test)],
    }


SPEC = EnvSpec(
    name="guess",
    description="example plug-in: guess a number with higher/lower hints",
    make=make,
    splits=splits,
    max_turns=8,
)
