"""LoRA adapters (peft) for the policy and the value model, and export of a merged plain HF model dir."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from torch import nn

from epo.errors import ModelLoadError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: list[str] | tuple[str, ...] | str = DEFAULT_TARGETS,
) -> nn.Module:
    """Wrap ``model`` with fresh LoRA adapters (only adapters train; a ValueModel's head stays trainable too).

    ``target_modules`` is a list of module-name suffixes or "all-linear". A causal LM comes back as a
    ``PeftModelForCausalLM``; for a :class:`~epo.models.ValueModel` the adapters go on its backbone in place.
    """
    from peft import LoraConfig, get_peft_model

    from epo.models.value import ValueModel

    if r < 1 or alpha <= 0 or not 0.0 <= dropout < 1.0:
        raise ModelLoadError(
            f"invalid LoRA settings r={r}, alpha={alpha}, dropout={dropout} (need r>=1, alpha>0, 0<=p<1)"
        )
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    if tied and "lm_head" in targets:
        raise ModelLoadError(
            "LoRA on lm_head is not supported for models whose lm_head is tied to the input embeddings"
        )
    is_value_model = isinstance(model, ValueModel)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        task_type=None if is_value_model else "CAUSAL_LM",
    )
    try:
        if is_value_model:
            model.backbone = get_peft_model(model.backbone, config)
            return model
        return get_peft_model(model, config)
    except ValueError as error:  # e.g. "Target modules {...} not found in the base model"
        raise ModelLoadError(
            f"could not apply LoRA with target_modules={targets}: {str(error).splitlines()[0]}"
        ) from None


def merge_and_save(model: nn.Module, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write a plain HF model dir (LoRA merged into a copy; ``model`` keeps its adapters) plus the tokenizer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain = copy.deepcopy(model).merge_and_unload() if hasattr(model, "peft_config") else model
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def only_adapters_train(model: nn.Module) -> bool:
    """True for a peft model whose trainable parameters are all LoRA adapters: its base (adapters disabled) is then
    exactly the initial policy, since LoRA's B matrices start at zero and the base never changes."""
    if not hasattr(model, "peft_config"):
        return False
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    return bool(trainable) and all("lora_" in n for n in trainable)


def adapter_disabled(model: nn.Module):
    """Context in which a peft model runs as its base model (the KL reference without a second copy); a no-op
    context for any other model."""
    return model.disable_adapter() if hasattr(model, "peft_config") else nullcontext()
