"""Models: offline loading (embedded SmolLM2 GGUF, HF dirs, tiny test model), LoRA, critics, response log-probs."""

from __future__ import annotations

from epo.models.loading import (
    build_tiny_model,
    enable_activation_checkpointing,
    find_embedded_gguf,
    freeze_to_top_layers,
    load_embedded_tokenizer,
    load_model_and_tokenizer,
)
from epo.models.logprobs import (
    ResponseStats,
    position_ids_from_mask,
    reference_response_logprobs,
    response_logprobs,
)
from epo.models.lora import adapter_disabled, apply_lora, merge_and_save, only_adapters_train
from epo.models.value import SharedValueHead, ValueModel

__all__ = [
    "ResponseStats",
    "adapter_disabled",
    "SharedValueHead",
    "ValueModel",
    "apply_lora",
    "build_tiny_model",
    "enable_activation_checkpointing",
    "find_embedded_gguf",
    "freeze_to_top_layers",
    "load_embedded_tokenizer",
    "load_model_and_tokenizer",
    "merge_and_save",
    "only_adapters_train",
    "position_ids_from_mask",
    "reference_response_logprobs",
    "response_logprobs",
]
