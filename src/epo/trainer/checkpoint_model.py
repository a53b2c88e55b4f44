"""A training checkpoint as a model: `model.path`/`init_from`/`epo eval --model` accept RUN/checkpoints/step_N,
RUN/checkpoints, or a run dir without final/ (an interrupted run: its newest valid checkpoint).

    model, tokenizer = load_checkpoint_model("runs/x/checkpoints/step_000020")

A checkpoint holds the trained weights (all of them, or only a LoRA adapter) and the run's config. The base
model is rebuilt from that config exactly as the run built it (its model.path / init_from, seeded with its
train.seed, so even `model.path=tiny` comes back bit-identical), the weights are loaded (checksums verified), and
a LoRA adapter is merged into plain weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from epo.config import Config, validate
from epo.trainer.checkpoint import CHECKPOINTS_DIR, MANIFEST_FILE, CheckpointError, load_checkpoint


def is_checkpoint_source(path: str) -> bool:
    """A checkpoint dir, a run's checkpoints/ dir, or a run dir with checkpoints/ (not an HF model dir)."""
    p = Path(path)
    if not p.is_dir() or (p / "config.json").is_file():
        return False
    return (p / MANIFEST_FILE).is_file() or p.name == CHECKPOINTS_DIR or (p / CHECKPOINTS_DIR).is_dir()


def load_checkpoint_model(path: str, dtype: str = "float32", _depth: int = 0) -> tuple[Any, Any]:
    """(plain HF causal LM with the checkpoint's weights, LoRA merged; tokenizer) on CPU."""
    from epo.models import apply_lora, load_model_and_tokenizer
    from epo.trainer.setup import model_source

    ckpt = load_checkpoint(path)
    run_cfg = _run_config(ckpt.config_yaml, ckpt.path)
    base = model_source(run_cfg)
    if _depth > 8:
        raise CheckpointError(f"{ckpt.path}: its model source chain is too deep (a loop of init_from?)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run_cfg.train.seed)  # `tiny` bases are random weights that follow the run's seed
        if is_checkpoint_source(base):
            model, tokenizer = load_checkpoint_model(base, dtype, _depth + 1)
        else:
            model, tokenizer = load_model_and_tokenizer(base, dtype=dtype, device="cpu")
        if ckpt.is_adapter:
            lc = run_cfg.model.lora
            model = apply_lora(
                model, r=lc.r, alpha=lc.alpha, dropout=lc.dropout, target_modules=list(lc.target_modules)
            )
    if ckpt.model_state is None:
        raise CheckpointError(f"{ckpt.path}: holds no model weights")
    _missing, unexpected = model.load_state_dict(ckpt.model_state, strict=not ckpt.is_adapter)
    if unexpected:
        raise CheckpointError(f"{ckpt.path}: weights do not match the run's model ({', '.join(unexpected[:3])} ...)")
    if ckpt.is_adapter:
        model = model.merge_and_unload()
    return model.eval(), tokenizer


def _run_config(text: str, where: Path) -> Config:
    if not text.strip():
        raise CheckpointError(f"{where}: has no config.yaml, so its base model is unknown")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(text))
        cfg = OmegaConf.to_object(merged)
    except Exception as e:
        raise CheckpointError(f"{where}/config.yaml: unreadable ({str(e).splitlines()[0]})") from None
    assert isinstance(cfg, Config)
    return validate(cfg)
