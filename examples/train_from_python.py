"""Train from Python: load a preset, change it in code, run warm start -> RL -> report, read the results.

python examples/train_from_python.py                 # the CPU demo (~13 min on 2 cores)
python examples/train_from_python.py --smoke         # seconds: tiny random model, 1 RL step
"""

from __future__ import annotations

import argparse

from _smoke import smoke

import epo


def main(argv: list[str] | None = None) -> epo.TrainResult:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 1 RL step (for tests)")
    parser.add_argument("--run-dir", default="runs/from_python")
    args = parser.parse_args(argv)

    # the same as `epo train --config quest_demo_cpu epo.mode=on`: a preset plus dot-list overrides ...
    cfg = epo.load_config("quest_demo_cpu", ["epo.mode=on", *smoke(args.smoke)])
    # ... and fields can be set directly; epo.train validates the result (a bad value raises epo.ConfigError)
    cfg.epo.smoothing_alpha = 0.1
    cfg.train.seed = 1

    result = epo.train(cfg, run_dir=args.run_dir)

    last = max(result.evals)  # evals: {rl step: {split: EvalResult}}
    for split, res in result.evals[last].items():
        print(f"step {last} {split}: success {res.success:.1%} [{res.ci_low:.0%}-{res.ci_high:.0%}] n={res.episodes}")
    print(f"run dir: {result.run_dir} (final model: {result.run_dir / 'final'})")
    return result


if __name__ == "__main__":
    main()
