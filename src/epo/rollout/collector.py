"""The episode loop: B task instances x G copies, stepped in lockstep; one batched generate call per turn.

    slots:  task_0 copy_0 .. task_0 copy_{G-1}, task_1 copy_0, ...      (slot = trajectory id, task index = group id)
    turn t: prompts of all active slots -> backend.generate -> parse -> pool.step -> TurnSamples

Finished envs stop generating. Rewards are assigned when the episode ends, by the `agent.reward` function
(rollout/rewards.py); the default gives every turn sample of a trajectory the episode return R = win_reward·won, plus
its own invalid-action penalty / format bonus (docs/METHOD.md §1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from epo.agent import PromptBuilder, env_fallback_action, parse_action
from epo.agent.prompt import PromptFit
from epo.config import AgentConfig
from epo.rollout.backend import GenerationBackend
from epo.rollout.rewards import FORMAT_FAILURES, Episode, TurnRecord, assign, resolve_reward, scalar_info
from epo.rollout.types import SamplingParams, Trajectory, TurnSample


@dataclass
class RolloutResult:
    samples: list[TurnSample]
    trajectories: list[Trajectory]
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class _Slot:
    traj: Trajectory
    task: str = ""
    obs: str = ""
    admissible: list[str] = field(default_factory=list)
    history: list[tuple[str, str]] = field(default_factory=list)
    samples: list[TurnSample] = field(default_factory=list)
    turns: list[TurnRecord] = field(default_factory=list)  # what the reward function sees
    done: bool = False


class Collector:
    def __init__(
        self,
        pool,
        backend: GenerationBackend,
        prompts: PromptBuilder,
        tokenizer,
        agent_cfg: AgentConfig,
        max_turns: int,
    ):
        self.pool = pool
        self.backend = backend
        self.prompts = prompts
        self.tokenizer = tokenizer
        self.cfg = agent_cfg
        self.max_turns = max_turns
        self.reward_fn = resolve_reward(agent_cfg.reward)
        self.on_turn = None  # optional callback(turn, active_envs), e.g. a progress bar
        self.active_slots: list[int] = []  # slots whose prompts the current generate call holds, in order

    def collect(
        self, task_ids: list[str], group_size: int, params: SamplingParams, record_transcripts: int = 0
    ) -> RolloutResult:
        sync = getattr(self.backend, "sync_weights", None)  # an engine with its own weight copy (vLLM)
        push_s = sync() if sync is not None else 0.0
        slots = self._reset(task_ids, group_size, record_transcripts)
        gen_s = env_s = 0.0
        gen_tokens = 0
        for turn in range(self.max_turns):
            active = [k for k, s in enumerate(slots) if not s.done]
            if not active:
                break
            self.active_slots = active
            fits = [
                self.prompts.fit(slots[k].task, slots[k].obs, slots[k].admissible, slots[k].history, turn)
                for k in active
            ]
            prompt_ids = [f.ids for f in fits]
            t0 = time.perf_counter()
            turn_params = params if params.seed is None else replace(params, seed=params.seed + 7919 * turn)
            responses = self.backend.generate(prompt_ids, turn_params)
            sampler_logprobs = getattr(self.backend, "last_logprobs", None) or [None] * len(responses)
            gen_s += time.perf_counter() - t0
            gen_tokens += sum(len(r) for r in responses)
            texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
            parsed = {
                k: parse_action(text, slots[k].admissible, action_prefix=self.cfg.action_prefix)
                for k, text in zip(active, texts)
            }
            actions = {k: p.action if p.action is not None else env_fallback_action(p) for k, p in parsed.items()}
            t0 = time.perf_counter()
            outs = self.pool.step(actions)
            env_s += time.perf_counter() - t0
            for k, fit, resp, text, lps in zip(active, fits, responses, texts, sampler_logprobs):
                self._record(slots[k], turn, fit, resp, text, parsed[k], actions[k], outs[k])
                slots[k].samples[-1].sampler_logprobs = lps
            if self.on_turn is not None:
                self.on_turn(turn, sum(not s.done for s in slots))
        for s in slots:
            if not s.done:
                s.traj.truncated, s.traj.truncated_reason = True, "max_turns"
        release = getattr(self.backend, "sleep", None)  # vLLM sleep mode (GPU): free its memory for the update
        if release is not None:
            release()
        samples = self._finish(slots)
        trajs = [s.traj for s in slots]
        stats = {
            "gen_s": gen_s,
            "env_s": env_s,
            "gen_tokens": float(gen_tokens),
            "gen_tokens_per_s": gen_tokens / gen_s if gen_s > 0 else 0.0,
            "weight_push_s": push_s,
        }
        return RolloutResult(samples, trajs, stats)

    def _reset(self, task_ids: list[str], group_size: int, record_transcripts: int) -> list[_Slot]:
        slot_tasks = [tid for tid in task_ids for _ in range(group_size)]
        slots = []
        for k, (tid, (obs, info)) in enumerate(zip(slot_tasks, self.pool.reset(slot_tasks))):
            traj = Trajectory(traj_id=k, group_id=k // group_size, task_id=tid, task_type=info.get("task_type", ""))
            if k < record_transcripts:
                traj.transcript.append({"obs": obs, "task": info.get("task", "")})
            slots.append(_Slot(traj, info.get("task", ""), obs, list(info.get("admissible_actions", []))))
            if info.get("error"):  # the env could not even start: end it now, recorded as truncated
                slots[-1].done = True
                traj.truncated, traj.truncated_reason = True, info.get("truncated_reason", "env_error")
        return slots

    def _record(
        self, slot: _Slot, turn: int, fit: PromptFit, resp: list[int], text: str, parsed, action: str, out
    ) -> None:
        obs, env_reward, terminated, truncated, info = out
        crashed = bool(info.get("error"))
        # The env's verdict wins where it has one (ScienceWorld accepts free text beyond the listed actions);
        # a crashed worker is not the model's fault.
        format_failure = parsed.action is None and parsed.reason != "not_admissible"
        invalid = not crashed and (format_failure or not info.get("valid", True))
        slot.samples.append(
            TurnSample(
                fit.ids, resp, turn, slot.traj.traj_id, slot.traj.group_id, invalid=invalid, admissible=slot.admissible
            )
        )
        well_formed = parsed.reason not in FORMAT_FAILURES
        slot.turns.append(TurnRecord(turn, text, action, invalid, well_formed, float(env_reward), scalar_info(info)))
        slot.traj.length = turn + 1
        slot.traj.invalid_turns += int(invalid)
        slot.traj.shortened_prompts += int(fit.shortened)
        slot.traj.actions_cut_prompts += int(fit.actions_cut)
        if slot.traj.transcript:
            slot.traj.transcript.append({"output": text, "action": action, "valid": not invalid, "obs": obs})
        slot.history.append((slot.obs, action))
        slot.obs, slot.admissible = obs, list(info.get("admissible_actions", []))
        if "score" in info:  # a crashed worker's info has none: the score reached is kept
            slot.traj.score = episode_score(info["score"])
        if terminated or truncated:
            slot.done = True
            slot.traj.won = bool(info.get("won", False))
            if truncated and not slot.traj.won:
                slot.traj.truncated = True
                slot.traj.truncated_reason = info.get("truncated_reason", "env")

    def _finish(self, slots: list[_Slot]) -> list[TurnSample]:
        samples = []
        for s in slots:
            rewards = assign(self.reward_fn, Episode(s.traj, s.turns), self.cfg)
            s.traj.episode_return = rewards.episode_return
            for sample, reward in zip(s.samples, rewards.turn_rewards):
                sample.reward = float(reward)
                sample.shaping = sample.reward - rewards.episode_return  # the turn's own part (turn-level GAE)
            if s.samples:
                s.samples[-1].done = True
            samples.extend(s.samples)
        return samples


def episode_score(score: float) -> float:
    """An env's progress score as a metric: ScienceWorld's 0-100, whose negative values (a failed task, e.g. focus on
    a wrong object) count as 0, as `agent.reward=score` counts them."""
    return max(0.0, float(score))


def episode_scores(trajs: list[Trajectory]) -> list[float]:
    """Each episode's end score where the env keeps one (ScienceWorld), else []. An episode ended by a fault before
    its first step has none and counts 0, as it counts lost."""
    if all(t.score is None for t in trajs):
        return []
    return [0.0 if t.score is None else t.score for t in trajs]


def score_metrics(trajs: list[Trajectory]) -> dict[str, float]:
    """`rollout/score_mean`: the mean end-of-episode progress score where the env has one (ScienceWorld): it can
    move while success cannot (every episode lost). Nothing for envs without a score."""
    scores = episode_scores(trajs)
    return {"rollout/score_mean": sum(scores) / len(scores)} if scores else {}


def prompt_fit_metrics(trajs: list[Trajectory]) -> dict[str, float]:
    """Fractions of the step's turns whose prompt was shortened / lost admissible actions to fit
    agent.max_prompt_tokens: the policy acted (and is trained) on less than the env showed."""
    turns = max(sum(t.length for t in trajs), 1)
    return {
        "rollout/prompt_shortened_rate": sum(t.shortened_prompts for t in trajs) / turns,
        "rollout/prompt_actions_cut_rate": sum(t.actions_cut_prompts for t in trajs) / turns,
    }
