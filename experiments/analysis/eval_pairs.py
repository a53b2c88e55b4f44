"""Two evals of the same games, paired game by game (docs/RESULTS.md, Experiment 13: a warm start against another).

Each side is an `epo eval --out` JSON, or a run dir and a step (its eval/step_NNNNNN_<split>.json files). Per split
and pooled over the splits both sides have: wins of each side with Wilson 95% intervals, the discordant games (won by
one side only) and the exact two-sided McNemar p-value. The games must match in order; evals of different games are
refused (they are not pairs).

    python experiments/analysis/eval_pairs.py BASE VARIANT [--base-step 0] [--variant-step 0] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from epo.rollout.evaluate import EvalResult, mcnemar_one_sided, wilson_interval


def load_evals(path: Path, step: int) -> dict[str, EvalResult]:
    """{split: result} of an `epo eval --out` JSON, or of a run dir's evals at `step`."""
    if path.is_file():
        return {split: EvalResult(**res) for split, res in json.loads(path.read_text())["splits"].items()}
    found = sorted((path / "eval").glob(f"step_{step:06d}_*.json"))
    evals = {res.split: res for f in found if (res := EvalResult.load(f)) is not None}
    if not evals:
        raise SystemExit(f"{path}: no `epo eval --out` JSON and no eval/step_{step:06d}_*.json")
    return evals


def mcnemar_two_sided(only_base: int, only_variant: int) -> float:
    """Exact McNemar: twice the smaller binomial tail of the discordant games, at most 1."""
    tail = min(mcnemar_one_sided(only_variant, only_base), mcnemar_one_sided(only_base, only_variant))
    return min(1.0, 2 * tail)


def compare(base: list[int], variant: list[int]) -> dict:
    """Wins of both sides (Wilson 95%) and the discordant games of one set of paired games."""
    n = len(base)
    only_base = sum(b and not v for b, v in zip(base, variant, strict=True))
    only_variant = sum(v and not b for b, v in zip(base, variant, strict=True))
    return {
        "games": n,
        "base_wins": sum(base),
        "base_ci": list(wilson_interval(sum(base), n)),
        "variant_wins": sum(variant),
        "variant_ci": list(wilson_interval(sum(variant), n)),
        "only_base": only_base,
        "only_variant": only_variant,
        "mcnemar_p_two_sided": mcnemar_two_sided(only_base, only_variant),
    }


def pair_evals(base: dict[str, EvalResult], variant: dict[str, EvalResult]) -> dict[str, dict]:
    """compare() per split both sides evaluated, and pooled over them ("all")."""
    out, pooled_base, pooled_variant = {}, [], []
    for split in sorted(base.keys() & variant.keys()):
        b, v = base[split], variant[split]
        if b.episode_tasks != v.episode_tasks:
            raise SystemExit(f"{split}: the two evals played different games; they cannot be paired")
        out[split] = compare(b.episode_wins, v.episode_wins)
        pooled_base += b.episode_wins
        pooled_variant += v.episode_wins
    if not out:
        raise SystemExit("the two sides share no split")
    out["all"] = compare(pooled_base, pooled_variant)
    return out


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("variant", type=Path)
    parser.add_argument("--base-step", type=int, default=0)
    parser.add_argument("--variant-step", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = pair_evals(load_evals(args.base, args.base_step), load_evals(args.variant, args.variant_step))
    for split, r in result.items():
        (bl, bh), (vl, vh) = r["base_ci"], r["variant_ci"]
        print(
            f"{split}: base {r['base_wins']}/{r['games']} [{bl:.1%}-{bh:.1%}], variant {r['variant_wins']}/{r['games']}"
            f" [{vl:.1%}-{vh:.1%}]; won by base only {r['only_base']}, by variant only {r['only_variant']}, "
            f"exact McNemar p = {r['mcnemar_p_two_sided']:.3g} (two-sided)"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
