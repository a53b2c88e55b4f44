"""Dynamic sampling (DAPO, Yu et al. 2025; verl's `algorithm.filter_groups`): keep only GRPO groups whose episodes
had different outcomes, and collect fresh tasks until the step has `n_groups` of them.

A group whose rollouts all won (or all lost) has outcome advantage 0 under GRPO: it teaches nothing about winning,
and with a per-turn penalty its only signal is the penalty, which the group's std then inflates (docs/RESULTS.md,
Experiment 3). Dropping such groups makes every update carry outcome signal, at the cost of extra rollouts.

    round r: sample (n_groups - kept) fresh tasks -> collect -> keep the groups with mixed outcomes
    stop when kept == n_groups or after max_rounds rounds; no mixed group at all -> the last round's batch as is
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from epo.algos.advantages import SAME_OUTCOME_RTOL  # the same rule as actor/adv_shaping_share's groups
from epo.rollout.collector import RolloutResult


@dataclass
class FilterStats:
    rounds: int  # collections this step (1 = the first batch was enough)
    groups_kept: int  # groups with mixed outcomes in the training batch (0: it is the last round's batch as is)
    groups_played: int  # groups collected over all rounds
    episodes_played: int


def mixed_groups(rollout: RolloutResult) -> list[int]:
    """Group ids (in order of appearance) whose trajectories' episode returns R differ."""
    returns: dict[int, list[float]] = {}
    for t in rollout.trajectories:
        returns.setdefault(t.group_id, []).append(t.episode_return)
    out = []
    for group, values in returns.items():
        scale = max(1.0, max(abs(v) for v in values))
        if max(values) - min(values) > SAME_OUTCOME_RTOL * scale:
            out.append(group)
    return out


def concat(parts: list[RolloutResult]) -> RolloutResult:
    """One RolloutResult of several (rounds played one after another): group and trajectory ids renumbered densely
    in order, samples and trajectories copied (the parts are left as they were); times and token counts add up."""
    samples, trajs, stats = [], [], {}
    group_off = traj_off = 0
    for part in parts:
        groups = _dense({t.group_id for t in part.trajectories} | {s.group_id for s in part.samples})
        ids = _dense({t.traj_id for t in part.trajectories} | {s.traj_id for s in part.samples})
        samples += [
            replace(s, group_id=group_off + groups[s.group_id], traj_id=traj_off + ids[s.traj_id]) for s in part.samples
        ]
        trajs += [
            replace(t, group_id=group_off + groups[t.group_id], traj_id=traj_off + ids[t.traj_id])
            for t in part.trajectories
        ]
        group_off, traj_off = group_off + len(groups), traj_off + len(ids)
        for k, v in part.stats.items():
            stats[k] = stats.get(k, 0.0) + v
    if stats.get("gen_s"):
        stats["gen_tokens_per_s"] = stats.get("gen_tokens", 0.0) / stats["gen_s"]
    return RolloutResult(samples, trajs, stats)


def select_groups(rollout: RolloutResult, groups: list[int]) -> RolloutResult:
    """The samples and trajectories of `groups` only (ids unchanged)."""
    keep = set(groups)
    return RolloutResult(
        [s for s in rollout.samples if s.group_id in keep],
        [t for t in rollout.trajectories if t.group_id in keep],
        dict(rollout.stats),
    )


def dynamic_sample(
    collect: Callable[[list[str], int], RolloutResult],
    sample_tasks: Callable[[int], list[str]],
    n_groups: int,
    max_rounds: int,
) -> tuple[RolloutResult, RolloutResult, FilterStats]:
    """Collect rounds until `n_groups` groups with mixed outcomes are kept, or `max_rounds` rounds ran.

    collect(tasks, round) plays one GRPO group per task; sample_tasks(n) draws the next n training tasks. Returns
    (training batch, everything played, stats). The batch holds the kept groups; when no round found a mixed group
    it is the last round's batch unfiltered (what GRPO without filtering would train on: its outcome advantages
    are 0, so only the entropy terms and any per-turn shaping act)."""
    kept: list[RolloutResult] = []
    played: list[RolloutResult] = []
    n_kept = 0
    for round_ in range(max_rounds):
        rollout = collect(sample_tasks(n_groups - n_kept), round_)
        played.append(rollout)
        mixed = mixed_groups(rollout)[: n_groups - n_kept]
        if mixed:
            kept.append(select_groups(rollout, mixed))
            n_kept += len(mixed)
        if n_kept == n_groups:
            break
    everything = concat(played)
    batch = concat(kept) if n_kept else concat(played[-1:])
    groups_played = len({t.group_id for t in everything.trajectories})
    stats = FilterStats(len(played), n_kept, groups_played, len(everything.trajectories))
    return batch, everything, stats


def _dense(ids: set[int]) -> dict[int, int]:
    return {old: new for new, old in enumerate(sorted(ids))}
