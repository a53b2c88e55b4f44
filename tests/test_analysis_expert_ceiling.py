"""experiments/analysis/expert_ceiling.py (the expert's success on a preset's eval episodes) on the quest world."""

import importlib.util
import json
import sys
from pathlib import Path

from epo.config import load_config
from epo.envs.registry import get_spec
from epo.rollout.evaluate import eval_task_ids

SCRIPT = Path(__file__).parents[1] / "experiments" / "analysis" / "expert_ceiling.py"
spec = importlib.util.spec_from_file_location("expert_ceiling", SCRIPT)
expert_ceiling = importlib.util.module_from_spec(spec)
sys.modules["expert_ceiling"] = expert_ceiling  # its dataclass looks its module up there
spec.loader.exec_module(expert_ceiling)


def test_expert_plays_the_presets_eval_episodes_and_the_turn_limit_caps_it(tmp_path, capsys):
    args = ["--config", "quest_demo_cpu", "train.eval_episodes=6", "--json", str(tmp_path / "c.json")]
    free = expert_ceiling.main(args)
    capped = expert_ceiling.main([*args, "env.max_turns=2"])  # the demo's solutions take 4-10 actions
    cfg = load_config("quest_demo_cpu", ["train.eval_episodes=6"])
    splits = get_spec("quest").splits(**dict(cfg.env.kwargs))
    for split in cfg.env.eval_splits:
        rows = free[split]["episode_rows"]
        assert [r["task"] for r in rows] == eval_task_ids(splits[split], 6, seed=cfg.train.seed + 1)
        assert free[split]["won_uncapped"] == capped[split]["won_uncapped"] > 0  # the limit does not change play
        assert capped[split]["won_within_limit"] == 0 and capped[split]["turn_limit"] == 2
        assert free[split]["won_within_limit"] == sum(r["won"] and r["turns"] <= 12 for r in rows)
    assert json.loads((tmp_path / "c.json").read_text())["iid"]["episodes"] == 6  # the capped run wrote it last
    assert "within 2 turns" in capsys.readouterr().out
