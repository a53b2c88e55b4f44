"""experiments/analysis/keep_pairs.py: a sweep's finished pairs survive the loss of the machine, and resume as done."""

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml

from epo.sweep.runner import read_status

SCRIPT = Path(__file__).parents[1] / "experiments" / "analysis" / "keep_pairs.py"
spec = importlib.util.spec_from_file_location("keep_pairs", SCRIPT)
keep_pairs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(keep_pairs)


def _sweep(root: Path, warm: Path, done: list[str]) -> Path:
    sweep = root / "sweep"
    sweep.mkdir()
    grid = {"base": "quest_demo_cpu", "seeds": [0, 1], "methods": {"grpo": [], "grpo_epo": []}}
    (sweep / "sweep.yaml").write_text(yaml.safe_dump(grid))
    for run_id in ("grpo/seed0", "grpo_epo/seed0", "grpo/seed1", "grpo_epo/seed1"):
        run = sweep / run_id
        (run / "checkpoints" / "step_000015").mkdir(parents=True)
        (run / "checkpoints" / "step_000015" / "model.safetensors").write_bytes(b"big")
        (run / "tensorboard").mkdir()
        (run / "final").mkdir()
        (run / "final" / "model.safetensors").write_bytes(b"big")
        (run / "eval").mkdir()
        (run / "eval" / "step_000030_iid.json").write_text("{}")
        (run / "metrics.jsonl").write_text("{}\n")
        (run / "config.yaml").write_text(yaml.safe_dump({"init_from": str(warm)}))
        Path(f"{run}.log").write_text("log\n")
    status = {r: {"state": "done", "seconds": 1.0} for r in done}
    (sweep / "status.json").write_text(json.dumps(status))
    return sweep


def test_only_whole_pairs_are_kept_without_checkpoints_and_with_the_warm_start_hash(tmp_path):
    warm = tmp_path / "warm" / "export"
    warm.mkdir(parents=True)
    (warm / "model.safetensors").write_bytes(b"weights")
    sweep = _sweep(tmp_path, warm.parent, ["grpo/seed0", "grpo_epo/seed0", "grpo/seed1"])  # seed 1: half a pair
    dest = tmp_path / "kept"
    assert keep_pairs.keep(sweep, dest) == ["grpo/seed0", "grpo_epo/seed0"]
    assert set(read_status(dest)) == {"grpo/seed0", "grpo_epo/seed0"}
    assert (dest / "grpo_epo" / "seed0" / "eval" / "step_000030_iid.json").is_file()
    assert (dest / "grpo_epo" / "seed0.log").is_file() and not (dest / "grpo" / "seed1").exists()
    assert not list(dest.glob("**/*.safetensors")) and not list(dest.glob("**/tensorboard"))
    shas = json.loads((dest / "warm_starts.json").read_text())
    assert shas == {"0": hashlib.sha256(b"weights").hexdigest()}

    # the next session, on a new machine: restore, finish seed 1, keep again; seed 0 is not copied twice
    shutil.rmtree(sweep)
    restored = tmp_path / "restored"
    shutil.copytree(dest, restored)
    assert read_status(restored)["grpo/seed0"]["state"] == "done"
    sweep = _sweep(tmp_path, warm.parent, ["grpo/seed1", "grpo_epo/seed1"])
    assert keep_pairs.keep(sweep, dest) == ["grpo/seed1", "grpo_epo/seed1"]
    assert len(read_status(dest)) == 4 and set(json.loads((dest / "warm_starts.json").read_text())) == {"0", "1"}


def test_restore_merges_kept_runs_from_several_places_and_replaces_unfinished_copies(tmp_path):
    def kept(name: str, runs: list[str]) -> Path:
        dest = tmp_path / name
        for run_id in runs:
            (dest / run_id / "eval").mkdir(parents=True)
            (dest / run_id / "eval" / "step_000060_iid.json").write_text(name)
            Path(f"{dest / run_id}.log").write_text("log\n")
        (dest / "status.json").write_text(json.dumps({r: {"state": "done", "seconds": 1.0} for r in runs}))
        return dest

    earlier = kept("earlier", ["grpo/seed0", "grpo/seed1"])  # another experiment's arm, shared
    this = kept("this", ["grpo/seed0", "ppo/seed0"])
    sweep = tmp_path / "sweep"
    (sweep / "ppo" / "seed0" / "checkpoints").mkdir(parents=True)  # interrupted before the machine was lost
    assert keep_pairs.restore(earlier, sweep) == ["grpo/seed0", "grpo/seed1"]
    assert keep_pairs.restore(this, sweep) == ["ppo/seed0"]  # grpo/seed0 is done already: left alone
    assert set(read_status(sweep)) == {"grpo/seed0", "grpo/seed1", "ppo/seed0"}
    assert (sweep / "grpo" / "seed0" / "eval" / "step_000060_iid.json").read_text() == "earlier"
    assert not (sweep / "ppo" / "seed0" / "checkpoints").exists() and (sweep / "ppo" / "seed0.log").is_file()
    # one arm only (an experiment whose baseline is an earlier one's arm); a method it does not keep is refused
    arm = tmp_path / "arm"
    assert keep_pairs.restore(this, arm, methods=["ppo"]) == ["ppo/seed0"]
    assert set(read_status(arm)) == {"ppo/seed0"} and not (arm / "grpo").exists()
    with pytest.raises(SystemExit, match="keeps no runs of sac"):
        keep_pairs.restore(this, arm, methods=["ppo", "sac"])
