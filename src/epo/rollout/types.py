"""Plain records the collector emits and the trainer consumes (no framework, no tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 512
    seed: int | None = None  # per-call seed (None: the backend's own RNG stream)


@dataclass
class TurnSample:
    """One executed turn: the unit of training (a trajectory of length L gives L samples)."""

    prompt_ids: list[int]
    response_ids: list[int]
    turn_idx: int  # 0-based turn index within its trajectory
    traj_id: int
    group_id: int  # same task instance => same group (GRPO)
    reward: float = 0.0  # at the last response token: episode return R + this turn's own invalid penalty/bonus
    shaping: float = 0.0  # this turn's own part of `reward` (its invalid penalty / format bonus); reward - shaping = R
    invalid: bool = False
    done: bool = False  # this turn ended the episode (won, or the env ended it)
    sampler_logprobs: list[float] | None = None  # the generation engine's log-prob of each response token, if given
    admissible: list[str] = field(default_factory=list)  # the env's listed actions at this turn (diagnostics)


@dataclass
class Trajectory:
    traj_id: int
    group_id: int
    task_id: str
    task_type: str
    length: int = 0  # turns played
    won: bool = False
    episode_return: float = 0.0  # R, from the agent.reward function (paper: win_reward * won)
    invalid_turns: int = 0
    shortened_prompts: int = 0  # turns whose prompt lost history/text to fit agent.max_prompt_tokens
    actions_cut_prompts: int = 0  # turns whose prompt left admissible actions out to fit it (a subset of the above)
    truncated: bool = False
    truncated_reason: str = ""  # "" | "max_turns" | "worker_crash" | "timeout" | "env_error" | env's own reason
    transcript: list[dict] = field(default_factory=list)  # [{"obs", "output", "action", "valid"}], if recorded
    score: float | None = None  # the env's progress score at the end, 0-100 (ScienceWorld's); None: the env has none
