"""Reward functions: a finished episode -> the number each of its turns is trained on (`agent.reward`).

    rewards = fn(episode, agent_cfg)     # episode: Episode (trajectory + one TurnRecord per turn)
    rewards.turn_rewards[i]              # -> TurnSample.reward of turn i (GRPO score / PPO reward at its last token)
    rewards.episode_return               # -> Trajectory.episode_return (logged)

A turn's reward is what that turn is credited with, a return-to-go: the paper gives every turn of a trajectory
the episode return R = 10·won, plus the turn's own invalid-action penalty (docs/METHOD.md §1).

Built-in (`BUILTIN`):
    paper   R = win_reward·won; each turn R - invalid_penalty if invalid else R + format_bonus (the default)
    score   R = win_reward·max(0, final info["score"])/100 (ScienceWorld's 0-100 partial score, negative on a
            failed task: counted as 0; the last turn that has a score counts, so a worker crash keeps the score
            reached); turns as `paper`. An env without info["score"] is an error.
    format  R = win_reward·won; each turn R + format_bonus if its output is in the <action>...</action> format
            (admissible or not), R - invalid_penalty if it is not (needs agent.format_bonus > 0)
Anything else is 'package.module:function' with the signature of `RewardFn`; it is imported at config load.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from epo.errors import TrainingError
from epo.rollout.types import Trajectory

if TYPE_CHECKING:
    from epo.config import AgentConfig

# parser reasons that mean the output was not in the requested format at all (vs. a clean but unknown action)
FORMAT_FAILURES = ("no_tag", "multiple_tags", "empty", "unprintable", "too_long")


@dataclass
class TurnRecord:
    """What happened at one executed turn, as a reward function sees it."""

    turn_idx: int
    output: str  # the model's decoded text
    action: str  # what the env was stepped with
    invalid: bool  # the turn counts as an invalid action (parser or env verdict; a crashed worker never does)
    well_formed: bool  # the output had one clean <action>...</action> block (whether or not it was admissible)
    env_reward: float  # the env's own step reward (1.0 on the winning step)
    info: dict[str, Any] = field(default_factory=dict)  # the env's scalar info entries after the step


@dataclass
class Episode:
    """One finished trajectory: won / length / truncated / task_id / task_type, and its turns in order."""

    trajectory: Trajectory
    turns: list[TurnRecord]


@dataclass
class Rewards:
    episode_return: float
    """Logged as the trajectory's return (success is `won`, not this)."""
    turn_rewards: list[float]
    """One per turn, in order: the reward each turn sample is trained on."""

    @classmethod
    def broadcast(cls, episode_return: float, episode: Episode, agent: AgentConfig) -> Rewards:
        """The paper's shape: R on every turn, minus invalid_penalty on invalid turns, plus format_bonus on valid ones."""
        bonus = [-agent.invalid_penalty if t.invalid else agent.format_bonus for t in episode.turns]
        return cls(episode_return, [episode_return + b for b in bonus])


RewardFn = Callable[[Episode, "AgentConfig"], Rewards]


def paper_reward(episode: Episode, agent: AgentConfig) -> Rewards:
    return Rewards.broadcast(agent.win_reward * float(episode.trajectory.won), episode, agent)


def score_reward(episode: Episode, agent: AgentConfig) -> Rewards:
    scores = [t.info["score"] for t in episode.turns if "score" in t.info]
    if not scores and any("error" not in t.info for t in episode.turns):  # a crashed worker's info has no score
        raise TrainingError("agent.reward=score: this env reports no info['score'] (ScienceWorld does); use paper")
    final = 100.0 if episode.trajectory.won else float(scores[-1]) if scores else 0.0
    return Rewards.broadcast(agent.win_reward * max(0.0, min(final, 100.0)) / 100.0, episode, agent)


def format_reward(episode: Episode, agent: AgentConfig) -> Rewards:
    ret = agent.win_reward * float(episode.trajectory.won)
    turns = [ret + (agent.format_bonus if t.well_formed else -agent.invalid_penalty) for t in episode.turns]
    return Rewards(ret, turns)


BUILTIN: dict[str, RewardFn] = {"paper": paper_reward, "score": score_reward, "format": format_reward}


def resolve_reward(name: str) -> RewardFn:
    """A built-in name or 'package.module:function'; one-line ValueError if it cannot be used."""
    if name in BUILTIN:
        return BUILTIN[name]
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"'{name}' is not one of {', '.join(BUILTIN)} or 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except ImportError as e:
        raise ValueError(f"cannot import '{module_name}' for '{name}': {str(e).splitlines()[0]}") from None
    except AttributeError:
        raise ValueError(f"'{module_name}' has no '{attr}'") from None
    if not callable(fn):
        raise ValueError(f"'{name}' is not callable")
    return fn


def assign(fn: RewardFn, episode: Episode, agent: AgentConfig) -> Rewards:
    """Call a reward function and check what it returned (one-line errors name the function's mistake)."""
    out = fn(episode, agent)
    name = getattr(fn, "__qualname__", repr(fn))
    if not isinstance(out, Rewards):
        raise TypeError(f"agent.reward: {name} returned {type(out).__name__}, expected epo.Rewards")
    if len(out.turn_rewards) != len(episode.turns):
        raise ValueError(
            f"agent.reward: {name} returned {len(out.turn_rewards)} turn rewards for {len(episode.turns)} turns"
        )
    return out


def scalar_info(info: dict[str, Any]) -> dict[str, Any]:
    """The info entries a reward function gets: scalars only (admissible-action lists stay out of memory)."""
    return {k: v for k, v in info.items() if isinstance(v, (bool, int, float, str))}
