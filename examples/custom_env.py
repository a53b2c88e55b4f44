"""A custom environment from outside the package: check it, then train on it by module path.

The env is examples/guess_env.py (the TextEnv protocol + an EnvSpec named SPEC); see docs/ENVIRONMENTS.md.

    python examples/custom_env.py            # embedded SmolLM2: warm start on the expert, 2 RL steps, eval
    python examples/custom_env.py --smoke    # seconds: tiny random model, 1 RL step
"""

from __future__ import annotations

import argparse

from _smoke import smoke

import epo
from epo.envs.testing import check_env


def main(argv: list[str] | None = None) -> epo.TrainResult:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 1 RL step (for tests)")
    parser.add_argument("--run-dir", default="runs/guess")
    args = parser.parse_args(argv)

    # 1. the conformance check the built-in envs pass (put this in your env's tests)
    print(check_env("guess_env:SPEC", {"high": 16}))

    # 2. train on it: 'module:SPEC' needs no registration (epo.register_env(SPEC) would allow env.name=guess).
    #    Process mode: the env runs in worker processes, as in real runs.
    cfg = epo.load_config("quest_demo_cpu", [*smoke(args.smoke), "env.pool_mode=process"])
    cfg.env.name = "guess_env:SPEC"
    cfg.env.kwargs = {"high": 16}  # replaces the preset's quest kwargs (a dot-list override would merge them)
    cfg.env.eval_splits = ["test"]
    cfg.env.max_turns = 3 if args.smoke else 6
    result = epo.train(cfg, run_dir=args.run_dir)
    print(f"run dir: {result.run_dir}")
    return result


if __name__ == "__main__":
    main()
