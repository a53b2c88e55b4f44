"""A custom reward: `agent.reward=custom_reward:fast_win_reward` (module:function, imported at config load).

A reward function gets the finished episode (epo.Episode: the trajectory and one epo.TurnRecord per turn) and the
agent config, and returns epo.Rewards: the episode return (logged) and one reward per turn (what that turn is
trained on). This one pays more for short wins and keeps the paper's per-turn invalid-action penalty.

    python examples/custom_reward.py --smoke     # seconds: tiny random model, 1 RL step
"""

from __future__ import annotations

import argparse

from _smoke import smoke

import epo


def fast_win_reward(episode: epo.Episode, agent) -> epo.Rewards:
    """win_reward · won · (1 - 0.5 · turns / 40), on every turn, minus each invalid turn's own penalty."""
    traj = episode.trajectory
    ret = agent.win_reward * float(traj.won) * (1.0 - 0.5 * min(traj.length, 40) / 40)
    return epo.Rewards.broadcast(ret, episode, agent)


def main(argv: list[str] | None = None) -> epo.TrainResult:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 1 RL step (for tests)")
    parser.add_argument("--run-dir", default="runs/fast_win")
    args = parser.parse_args(argv)
    # the module must be importable by this name: it is when run as a script (its folder is on sys.path)
    overrides = ["agent.reward=custom_reward:fast_win_reward", *smoke(args.smoke)]
    result = epo.train("quest_demo_cpu", overrides, run_dir=args.run_dir)
    print(f"run dir: {result.run_dir}")
    return result


if __name__ == "__main__":
    main()
