"""Oracle episodes for behaviour cloning: the env's expert plays, we record the prompts the policy would see.

The samples use exactly the prompt/response format of RL (same PromptBuilder, same history), so the warm-started
policy is trained on the distribution it will act in.

An env fault (worker crash or hang, exception in the env, also inside `expert_action()`) ends that episode unwon,
with `truncated_reason` the pool's reason as in RL rollouts (`epo.telemetry.faults.is_fault` counts it); the pool
keeps the `PoolFault`s for the caller to log (`pool.drain_faults()`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from epo.agent import PromptBuilder
from epo.fsio import atomic_write_text
from epo.rollout.types import Trajectory, TurnSample


def collect_oracle(
    pool,
    prompts: PromptBuilder,
    tokenizer,
    task_ids: list[str],
    max_turns: int,
    only_won: bool = True,
    max_envs: int | None = None,
) -> tuple[list[TurnSample], list[Trajectory]]:
    """Play the expert on each task; return the won episodes' turn samples (all if not only_won) and every episode.

    max_envs: the most episodes played at once (one env instance each), the rest in later rounds; None = all at once.
    Each episode is played as it would be in one round (ScienceWorld picks among equivalent gold routes, and its
    choice changed with the JVM's options): the rounds change the memory held (a ScienceWorld env is a JVM: 32 at
    once filled 24 GB)."""
    at_once = max_envs or max(len(task_ids), 1)
    samples, trajs = [], []
    for first in range(0, len(task_ids), at_once):
        round_samples, round_trajs = _play(
            pool, prompts, tokenizer, task_ids[first : first + at_once], max_turns, first
        )
        samples += [smp for smp, traj in round_samples if traj.won or not only_won]
        trajs += round_trajs
    return samples, trajs


def _play(pool, prompts: PromptBuilder, tokenizer, task_ids: list[str], max_turns: int, first: int):
    """One round: the expert on each task (slot k plays task_ids[k], trajectory id first + k); returns
    ([(sample, its trajectory)], trajectories)."""
    resets = pool.reset(task_ids)
    state = []
    for k, (tid, (obs, info)) in enumerate(zip(task_ids, resets)):
        traj = Trajectory(traj_id=first + k, group_id=first + k, task_id=tid, task_type=info.get("task_type", ""))
        if info.get("error"):  # the env could not even start (fault at reset): ended now, like an RL rollout's
            traj.truncated, traj.truncated_reason = True, info.get("truncated_reason", "env_error")
        state.append(
            {
                "traj": traj,
                "task": info.get("task", ""),
                "obs": obs,
                "history": [],
                "samples": [],
                "admissible": list(info.get("admissible_actions", [])),
                "done": bool(info.get("error")),
            }
        )
    for turn in range(max_turns):
        active = [k for k, s in enumerate(state) if not s["done"]]
        if not active:
            break
        seen = len(pool.faults)
        experts = pool.expert_actions(active)
        faulted = _faulted_slots(pool, pool.faults[seen:], {k: state[k]["traj"].task_id for k in active})
        actions = {}
        for k in active:
            if experts.get(k) is None:  # no action: a fault in the expert call, else the oracle is stuck; unwon
                state[k]["done"] = True
                state[k]["traj"].truncated, state[k]["traj"].truncated_reason = True, faulted.get(k, "oracle_stuck")
            else:
                actions[k] = experts[k]
        outs = pool.step(actions) if actions else {}
        for k, action in actions.items():
            s = state[k]
            fit = prompts.fit(s["task"], s["obs"], s["admissible"], s["history"], turn)
            prompt = fit.ids  # shortened to agent.max_prompt_tokens as in RL; counted, so cloning reports it too
            s["traj"].shortened_prompts += int(fit.shortened)
            s["traj"].actions_cut_prompts += int(fit.actions_cut)
            response = tokenizer(prompts.response_text(action), add_special_tokens=False)["input_ids"]
            s["samples"].append(TurnSample(prompt, response, turn, first + k, first + k))
            obs, _r, terminated, truncated, info = outs[k]
            s["history"].append((s["obs"], action))
            s["obs"], s["admissible"] = obs, list(info.get("admissible_actions", []))
            s["traj"].length = turn + 1
            if terminated or truncated:
                s["done"] = True
                s["traj"].won = bool(info.get("won", False))
                if truncated and not s["traj"].won:  # a fault's reason ("worker_crash", ...) or the env's own
                    s["traj"].truncated, s["traj"].truncated_reason = True, info.get("truncated_reason", "env")
    return [(smp, s["traj"]) for s in state for smp in s["samples"]], [s["traj"] for s in state]


def _faulted_slots(pool, new_faults: list, tasks: dict[int, str]) -> dict[int, str]:
    """{slot: fault reason} for the slots in `tasks` ({slot: task id}) that `new_faults` (PoolFaults recorded by one
    pool call) ended. expert_actions() answers None for them as for a stuck oracle; the faults tell them apart, so
    the episode is counted as ended by an env fault, not by the oracle."""
    reasons = {(f.worker, f.task): f.reason for f in new_faults}
    return {k: reasons[key] for k, tid in tasks.items() if (key := (pool.worker_of(k), tid)) in reasons}


def save_oracle_play(path: str | Path, samples: list[TurnSample], trajs: list[Trajectory]) -> None:
    """The oracle's play as played (atomically): a resumed warm start clones the same samples without replaying it.
    Replaying is not enough: ScienceWorld's gold paths changed between plays (267 samples from 32 tasks under the
    JVM's default options, 253 twice under -Xmx1g), so a resume on a replay would clone other data, and the checkpoint check refuses it."""
    data = {
        "trajectories": [{k: v for k, v in asdict(t).items() if k != "transcript"} for t in trajs],
        "samples": [[s.prompt_ids, s.response_ids, s.turn_idx, s.traj_id, s.group_id] for s in samples],
    }
    atomic_write_text(Path(path), json.dumps(data, separators=(",", ":")))


def load_oracle_play(path: str | Path) -> tuple[list[TurnSample], list[Trajectory]] | None:
    """(samples, trajectories) saved by save_oracle_play; None when there is no such file or it cannot be read."""
    try:
        data = json.loads(Path(path).read_text())
        samples = [TurnSample(list(p), list(r), int(t), int(i), int(g)) for p, r, t, i, g in data["samples"]]
        return samples, [Trajectory(**t) for t in data["trajectories"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
