"""Evaluate a saved model: a run's final/ dir, an `epo sft` output, a local HF dir, a hub id, or 'embedded'.

python examples/evaluate_saved.py runs/from_python/final --split iid --episodes 32
python examples/evaluate_saved.py --smoke      # saves a tiny random model first, then evaluates it
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _smoke import smoke

import epo


def save_tiny_model(out: Path) -> Path:
    """Stands in for a trained model in --smoke: a tiny random model saved as a HF dir."""
    model, tokenizer = epo.load_model_and_tokenizer("tiny")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None, help="model dir, run dir, hub id or 'embedded'")
    parser.add_argument("--config", default="quest_demo_cpu", help="preset or YAML (env, prompt format)")
    parser.add_argument("--split", action="append", default=None, help="split(s) (default: env.eval_splits)")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 2 episodes (for tests)")
    args = parser.parse_args(argv)
    overrides = smoke(args.smoke)
    model, episodes = args.model or "embedded", args.episodes
    if overrides:
        model = args.model or str(save_tiny_model(Path(tempfile.mkdtemp(prefix="epo-tiny-"))))
        episodes = 2

    results = epo.evaluate(args.config, overrides, model=model, splits=args.split, episodes=episodes)
    for split, res in results.items():
        print(f"{split}: {res.line()}")
        for task_type, row in res.per_type.items():
            print(f"  {task_type}: {row['success']:.1%} of {row['episodes']:.0f}")
    return results


if __name__ == "__main__":
    main()
