"""The env's expert on a preset's own eval episodes: the success a cloned policy could reach at best.

Plays `expert_action()` on exactly the episodes `epo train --config PRESET` evaluates (the same split sample: eval
seed train.seed + 1, train.eval_episodes per split) and counts wins within the preset's turn limit and without one
(up to --uncapped-turns). A preset whose turn limit cuts the expert's own path short caps every policy trained on
it; docs/RESULTS.md ("the ALFWorld and ScienceWorld CPU presets") reports both presets.

    python experiments/analysis/expert_ceiling.py --config sciworld_grpo_epo_cpu [key=value ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from epo.config import load_config
from epo.envs.registry import get_spec, make_env
from epo.rollout.evaluate import eval_task_ids, wilson_interval


@dataclass
class Episode:
    task: str
    turns: int
    """Expert actions played (the episode ended, or the expert had no next action)."""
    won: bool


def play_expert(env, task_id: str, max_turns: int) -> Episode:
    """The expert from reset until the episode ends, the expert has no action, or max_turns actions."""
    env.reset(options={"task_id": task_id})
    for turn in range(max_turns):
        action = env.expert_action()
        if action is None:
            return Episode(task_id, turn, False)
        _, reward, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            return Episode(task_id, turn + 1, terminated and reward > 0)
    return Episode(task_id, max_turns, False)


def ceiling(cfg, uncapped_turns: int) -> dict[str, dict]:
    """Per eval split: the expert's wins within the preset's turn limit and within uncapped_turns."""
    spec = get_spec(cfg.env.name)
    limit = cfg.env.max_turns or spec.max_turns
    splits = spec.splits(**dict(cfg.env.kwargs))
    env = make_env(cfg.env.name, **dict(cfg.env.kwargs))
    try:
        out = {}
        for split in cfg.env.eval_splits:
            ids = eval_task_ids(splits[split], cfg.train.eval_episodes, seed=cfg.train.seed + 1)
            episodes = [play_expert(env, task_id, max(limit, uncapped_turns)) for task_id in ids]
            within = sum(e.won and e.turns <= limit for e in episodes)
            out[split] = {
                "episodes": len(episodes),
                "turn_limit": limit,
                "won_within_limit": within,
                "ci_within_limit": list(wilson_interval(within, len(episodes))),
                "won_uncapped": sum(e.won for e in episodes),
                "uncapped_turns": uncapped_turns,
                "episode_rows": [asdict(e) for e in episodes],
            }
        return out
    finally:
        env.close()


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="preset name or YAML path")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--uncapped-turns", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_intermixed_args(argv)  # key=value overrides before or after the options
    result = ceiling(load_config(args.config, args.overrides), args.uncapped_turns)
    for split, r in result.items():
        lo, hi = r["ci_within_limit"]
        print(
            f"{split}: expert won {r['won_within_limit']}/{r['episodes']} within {r['turn_limit']} turns "
            f"[95% CI {lo:.1%}-{hi:.1%}], {r['won_uncapped']}/{r['episodes']} within {r['uncapped_turns']}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
