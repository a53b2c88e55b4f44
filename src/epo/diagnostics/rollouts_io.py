"""One RL step's rollout batch on disk, for `epo ablate` (`train.save_rollouts=true`). No pickle:

RUN_DIR/rollouts/step_000007.safetensors   prompt_ids, response_ids (int64, concatenated) and their lengths
RUN_DIR/rollouts/step_000007.json          {"format_version", "step", "samples": [{turn_idx, traj_id, group_id,
                                            reward, invalid, done, admissible}, ...]}  (written last)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from epo.errors import DataNotFoundError, RunDirError
from epo.rollout.types import TurnSample

ROLLOUTS_DIR = "rollouts"
FORMAT_VERSION = 1
_META = ("turn_idx", "traj_id", "group_id", "reward", "invalid", "done", "admissible")


def rollout_paths(run_dir: str | Path, step: int) -> tuple[Path, Path]:
    base = Path(run_dir) / ROLLOUTS_DIR / f"step_{step:06d}"
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def _flat(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.int64)
    return ids, lens


def save_rollouts(run_dir: str | Path, step: int, samples: list[TurnSample]) -> Path:
    """Write the batch of RL step `step` (1-based: the update that step k made); returns the JSON path."""
    tensors_path, meta_path = rollout_paths(run_dir, step)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    prompt_ids, prompt_lens = _flat([s.prompt_ids for s in samples])
    response_ids, response_lens = _flat([s.response_ids for s in samples])
    tmp = tensors_path.with_name(f".{tensors_path.name}.tmp-{os.getpid()}")
    save_file(
        {
            "prompt_ids": prompt_ids,
            "prompt_lens": prompt_lens,
            "response_ids": response_ids,
            "response_lens": response_lens,
        },
        str(tmp),
    )
    os.replace(tmp, tensors_path)
    meta = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "samples": [{k: getattr(s, k) for k in _META} for s in samples],
    }
    tmp = meta_path.with_name(f".{meta_path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, meta_path)
    return meta_path


def saved_steps(run_dir: str | Path) -> list[int]:
    root = Path(run_dir) / ROLLOUTS_DIR
    return sorted(int(p.stem.split("_")[1]) for p in root.glob("step_*.json")) if root.is_dir() else []


def load_rollouts(run_dir: str | Path, step: int) -> list[TurnSample]:
    tensors_path, meta_path = rollout_paths(run_dir, step)
    if not meta_path.is_file() or not tensors_path.is_file():
        have = ", ".join(map(str, saved_steps(run_dir))) or "none (train with train.save_rollouts=true)"
        raise DataNotFoundError(f"{run_dir}: no saved rollout batch for step {step} (saved steps: {have})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise RunDirError(f"{meta_path}: unknown format_version {meta.get('format_version')}")
    t = load_file(str(tensors_path))
    prompts = _split(t["prompt_ids"], t["prompt_lens"])
    responses = _split(t["response_ids"], t["response_lens"])
    if not len(prompts) == len(responses) == len(meta["samples"]):
        raise RunDirError(f"{meta_path}: sample counts differ between the JSON and the safetensors file")
    return [TurnSample(p, r, **m) for p, r, m in zip(prompts, responses, meta["samples"], strict=True)]


def _split(ids: torch.Tensor, lens: torch.Tensor) -> list[list[int]]:
    return [chunk.tolist() for chunk in torch.split(ids, lens.tolist())]
