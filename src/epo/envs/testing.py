"""Conformance check for `TextEnv` plug-ins: the same checks the built-in envs (quest, alfworld, sciworld) pass.

    from epo.envs.testing import check_env
    report = check_env("my_pkg.my_env:SPEC")            # or an EnvSpec, or a registered name
    print(report)                                         # what was played; raises EnvCheckError on a violation

Put it in your test suite (`def test_my_env(): check_env(SPEC)`): it builds the env from the spec exactly as the
trainer's worker processes do (pickled factory, keyword arguments), then checks

1. `splits(**kwargs)` gives {split: [task_id, ...]} with non-empty, unique string ids;
2. `make(**kwargs)` returns an object with the `TextEnv` methods, and the factory pickles (worker processes
   receive it by reference, so it must be a module-level function, not a lambda or a closure);
3. `reset(options={"task_id"})` returns (str, info) with the info keys of `epo.envs.base` and the same
   observation and admissible actions each time for the same id (tasks are deterministic);
4. `step(action)` returns (str, float, bool, bool, info); `info["valid"]` is a bool and is False for an action
   that is not a command; the reward is 1.0 on the winning step and 0.0 on every other; `won` implies
   `terminated`; every info crosses a process boundary (pickles);
5. with an expert (`expert_action()` not None at the start), following it wins within `spec.max_turns` turns
   (set `expert_must_win=False` for an expert that is only a hint).

Only a few tasks of one split are played (`tasks`, `split`, or `task_ids`), so the check takes about as long as a few episodes.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

from epo.envs.base import EnvSpec
from epo.envs.registry import get_spec

NONSENSE_ACTION = "xyzzy plugh 42"  # not a command in any text game; the env must say so via info["valid"]
INFO_KEYS = {"task": str, "admissible_actions": list, "won": bool, "task_type": str}


class EnvCheckError(AssertionError):
    """An env breaks the TextEnv contract; the message says which rule, on which task and turn."""


@dataclass
class EnvCheckReport:
    name: str
    splits: dict[str, int]  # split -> number of task ids
    played: list[str] = field(default_factory=list)  # task ids played
    expert_wins: int = 0
    expert_episodes: int = 0
    steps: int = 0

    def __str__(self) -> str:
        sizes = ", ".join(f"{k} ({n})" for k, n in self.splits.items())
        expert = f"expert won {self.expert_wins}/{self.expert_episodes}" if self.expert_episodes else "no expert"
        return f"{self.name}: OK; splits {sizes}; played {len(self.played)} tasks, {self.steps} steps; {expert}"


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise EnvCheckError(message)


def check_env(
    spec: EnvSpec | str,
    env_kwargs: dict[str, Any] | None = None,
    split: str | None = None,
    tasks: int = 2,
    expert_must_win: bool = True,
    check_invalid: bool = True,
    task_ids: list[str] | None = None,
) -> EnvCheckReport:
    """Run the conformance checks (see the module docstring); raise EnvCheckError on the first violation.

    Plays the first `tasks` ids of `split` (default: train, else the first split), or exactly `task_ids`."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    _require(isinstance(spec, EnvSpec), f"expected an epo.envs.EnvSpec, got {type(spec).__name__}")
    _require(spec.max_turns > 0, f"{spec.name}: max_turns must be > 0, got {spec.max_turns}")
    kwargs = dict(env_kwargs or {})
    splits = _check_splits(spec, kwargs)
    split = split or ("train" if "train" in splits else next(iter(splits)))
    _require(split in splits, f"{spec.name}: no split '{split}' (splits: {', '.join(splits)})")
    report = EnvCheckReport(spec.name, {k: len(v) for k, v in splits.items()})
    try:
        pickle.dumps((spec.make, kwargs))
    except Exception as e:
        raise EnvCheckError(f"{spec.name}: make/kwargs do not pickle ({e}); use a module-level factory") from None
    env = spec.make(**kwargs)
    try:
        for name in ("reset", "step", "expert_action", "close"):
            _require(callable(getattr(env, name, None)), f"{spec.name}: the env has no {name}() method")
        for task_id in task_ids or splits[split][:tasks]:
            _check_task(spec, env, task_id, report, expert_must_win, check_invalid)
    finally:
        env.close()
    return report


def _check_splits(spec: EnvSpec, kwargs: dict[str, Any]) -> dict[str, list[str]]:
    splits = spec.splits(**kwargs)
    _require(isinstance(splits, dict) and splits, f"{spec.name}: splits() must return a non-empty dict")
    for name, ids in splits.items():
        _require(isinstance(name, str), f"{spec.name}: split names must be str, got {name!r}")
        _require(isinstance(ids, list) and ids, f"{spec.name}: split '{name}' must be a non-empty list of task ids")
        _require(all(isinstance(t, str) for t in ids), f"{spec.name}: split '{name}' has a non-str task id")
        _require(len(set(ids)) == len(ids), f"{spec.name}: split '{name}' has duplicate task ids")
    return splits


def _check_info(where: str, info: Any, step: bool) -> None:
    _require(isinstance(info, dict), f"{where}: info must be a dict, got {type(info).__name__}")
    for key, kind in INFO_KEYS.items():
        _require(key in info, f"{where}: info has no '{key}'")
        _require(isinstance(info[key], kind), f"{where}: info['{key}'] must be {kind.__name__}")
    _require(all(isinstance(a, str) for a in info["admissible_actions"]), f"{where}: admissible actions must be str")
    if step:
        _require(isinstance(info.get("valid"), bool), f"{where}: step info must have a bool 'valid'")
    try:
        pickle.dumps(info)
    except Exception as e:
        raise EnvCheckError(f"{where}: info does not pickle ({e}); worker processes send it through a pipe") from None


def _reset(spec: EnvSpec, env: Any, task_id: str) -> tuple[str, dict]:
    where = f"{spec.name} reset({task_id!r})"
    out = env.reset(options={"task_id": task_id})
    _require(isinstance(out, tuple) and len(out) == 2, f"{where}: must return (observation, info)")
    obs, info = out
    _require(isinstance(obs, str), f"{where}: the observation must be str, got {type(obs).__name__}")
    _check_info(where, info, step=False)
    _require(not info["won"], f"{where}: info['won'] is True before any action")
    return obs, info


def _step(spec: EnvSpec, env: Any, action: str, where: str) -> tuple[str, float, bool, bool, dict]:
    out = env.step(action)
    _require(
        isinstance(out, tuple) and len(out) == 5, f"{where}: step must return 5 values (obs, r, term, trunc, info)"
    )
    obs, reward, terminated, truncated, info = out
    _require(isinstance(obs, str), f"{where}: the observation must be str")
    _require(isinstance(reward, (int, float)) and not isinstance(reward, bool), f"{where}: the reward must be a number")
    _require(isinstance(terminated, bool) and isinstance(truncated, bool), f"{where}: terminated/truncated: bool")
    _check_info(where, info, step=True)
    _require(not info["won"] or terminated, f"{where}: info['won'] is True but terminated is False")
    _require(float(reward) == (1.0 if info["won"] else 0.0), f"{where}: reward {reward}; must be 1.0 on a win else 0.0")
    return obs, float(reward), terminated, truncated, info


def _check_task(spec: EnvSpec, env: Any, task_id: str, report: EnvCheckReport, expert_must_win: bool, invalid: bool):
    obs, info = _reset(spec, env, task_id)
    report.played.append(task_id)
    if invalid:
        where = f"{spec.name} {task_id} step({NONSENSE_ACTION!r})"
        _, _, terminated, _, step_info = _step(spec, env, NONSENSE_ACTION, where)
        report.steps += 1
        _require(not step_info["valid"], f"{where}: info['valid'] must be False for an action that is not a command")
        _require(not step_info["won"], f"{where}: a nonsense action won the task")
    obs2, info2 = _reset(spec, env, task_id)
    same = obs2 == obs and info2["admissible_actions"] == info["admissible_actions"] and info2["task"] == info["task"]
    _require(same, f"{spec.name} reset({task_id!r}) twice: different observation/actions/task (not deterministic)")
    if env.expert_action() is None:
        return
    report.expert_episodes += 1
    won = False
    for turn in range(spec.max_turns):
        action = env.expert_action()
        if action is None:
            break
        _require(isinstance(action, str), f"{spec.name} {task_id} turn {turn}: expert_action() must be str or None")
        *_, terminated, truncated, step_info = _step(spec, env, action, f"{spec.name} {task_id} turn {turn}")
        report.steps += 1
        won = step_info["won"]
        if terminated or truncated:
            break
    report.expert_wins += int(won)
    _require(won or not expert_must_win, f"{spec.name} {task_id}: the expert did not win in {spec.max_turns} turns")
