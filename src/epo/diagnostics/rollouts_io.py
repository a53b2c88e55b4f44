"""One RL step's rollout batch on disk, for `epo ablate` (`train.save_rollouts=true`). No pickle:

RUN_DIR/rollouts/step_000007.safetensors   prompt_ids, response_ids (int64, concatenated) and their lengths;
                                            sampler_logprobs (float64, concatenated) of the samples that have them
RUN_DIR/rollouts/step_000007.json          {"format_version", "step", "samples": [{turn_idx, traj_id, group_id,
                                            reward, shaping, invalid, done, admissible, has_sampler_logprobs},
                                            ...]}  (written last)

`shaping` and the sampler log-probs make the replayed update the logged one (turn-level GAE and GRPO's shaping
share read `shaping`; TIS weights and rollout/logp_mismatch the log-probs). Batches saved before they were kept
still load, with shaping 0 and no log-probs; `fields_missing` names what such a batch lacks.
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
_META = ("turn_idx", "traj_id", "group_id", "reward", "shaping", "invalid", "done", "admissible")
HAS_LOGPROBS = "has_sampler_logprobs"  # per sample: its log-probs are in the safetensors file (None otherwise)
# replay field -> the per-sample JSON key whose absence means the batch was saved without it
REPLAY_FIELDS = {"shaping": "shaping", "sampler_logprobs": HAS_LOGPROBS}


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
    logprobs = [s.sampler_logprobs for s in samples if s.sampler_logprobs is not None]
    logprob_lens = torch.tensor([len(lp) for lp in logprobs], dtype=torch.int64)
    flat_logprobs = torch.tensor([x for lp in logprobs for x in lp], dtype=torch.float64)  # exact Python floats
    tmp = tensors_path.with_name(f".{tensors_path.name}.tmp-{os.getpid()}")
    save_file(
        {
            "prompt_ids": prompt_ids,
            "prompt_lens": prompt_lens,
            "response_ids": response_ids,
            "response_lens": response_lens,
            "sampler_logprobs": flat_logprobs,
            "sampler_logprobs_lens": logprob_lens,
        },
        str(tmp),
    )
    os.replace(tmp, tensors_path)
    meta = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "samples": [
            {**{k: getattr(s, k) for k in _META}, HAS_LOGPROBS: s.sampler_logprobs is not None} for s in samples
        ],
    }
    tmp = meta_path.with_name(f".{meta_path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, meta_path)
    return meta_path


def saved_steps(run_dir: str | Path) -> list[int]:
    root = Path(run_dir) / ROLLOUTS_DIR
    return sorted(int(p.stem.split("_")[1]) for p in root.glob("step_*.json")) if root.is_dir() else []


def read_batch(run_dir: str | Path, step: int) -> dict:
    """The JSON document of step `step`'s saved batch (its per-sample fields), checked to exist and be readable."""
    tensors_path, meta_path = rollout_paths(run_dir, step)
    if not meta_path.is_file() or not tensors_path.is_file():
        have = ", ".join(map(str, saved_steps(run_dir))) or "none (train with train.save_rollouts=true)"
        raise DataNotFoundError(f"{run_dir}: no saved rollout batch for step {step} (saved steps: {have})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise RunDirError(f"{meta_path}: unknown format_version {meta.get('format_version')}")
    return meta


def fields_missing(batch: dict) -> list[str]:
    """The replay fields (REPLAY_FIELDS) a saved batch (`read_batch`) lacks: it was saved before they were kept."""
    samples = batch.get("samples", [])
    return [name for name, key in REPLAY_FIELDS.items() if any(key not in m for m in samples)]


def load_rollouts(run_dir: str | Path, step: int) -> list[TurnSample]:
    meta = read_batch(run_dir, step)
    tensors_path, meta_path = rollout_paths(run_dir, step)
    t = load_file(str(tensors_path))
    prompts = _split(t["prompt_ids"], t["prompt_lens"])
    responses = _split(t["response_ids"], t["response_lens"])
    if not len(prompts) == len(responses) == len(meta["samples"]):
        raise RunDirError(f"{meta_path}: sample counts differ between the JSON and the safetensors file")
    samples = [TurnSample(p, r, **_fields(m)) for p, r, m in zip(prompts, responses, meta["samples"], strict=True)]
    _attach_logprobs(samples, meta["samples"], t, meta_path)
    return samples


def _fields(meta: dict) -> dict:
    """A sample's JSON record as TurnSample fields (older files lack `shaping`: the dataclass default 0.0)."""
    return {k: v for k, v in meta.items() if k in _META}


def _attach_logprobs(samples: list[TurnSample], metas: list[dict], t: dict, meta_path: Path) -> None:
    owners = [s for s, m in zip(samples, metas, strict=True) if m.get(HAS_LOGPROBS)]
    if not owners:  # also every file saved before the log-probs were kept
        return
    chunks = _split(t["sampler_logprobs"], t["sampler_logprobs_lens"]) if "sampler_logprobs" in t else []
    if len(chunks) != len(owners):
        raise RunDirError(f"{meta_path}: sampler log-prob counts differ between the JSON and the safetensors file")
    for s, lp in zip(owners, chunks, strict=True):
        s.sampler_logprobs = lp


def _split(ids: torch.Tensor, lens: torch.Tensor) -> list[list[int]]:
    return [chunk.tolist() for chunk in torch.split(ids, lens.tolist())]
