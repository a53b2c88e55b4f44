"""Random-weight HF model dirs in the shapes of SmolLM2-135M and Qwen2.5-3B, for the device check (bench/gpu_check.sh).

A GPU machine here has no hub access and takes at most 64 MiB of files, so the paper's models cannot travel; speed and
memory depend on the shapes, not on the weights. Each dir holds bf16 safetensors and a tokenizer (the embedded one,
whose vocabulary is smaller than Qwen's: the extra embedding rows are never sampled by a valid token, as in Qwen's own
padded vocabulary). Random weights never emit `</action>`, so every turn generates `max_new_tokens`: a worst case.

    python bench/gpu_models.py OUT_DIR [--tokenizer DIR] [--device cuda] [--tiny]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

SHAPES = {
    # HuggingFaceTB/SmolLM2-135M-Instruct's config.json
    "smollm2_135m": dict(
        model_type="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
    # Qwen/Qwen2.5-3B-Instruct's config.json (docs/SCALING.md's 1-GPU preset)
    "qwen25_3b": dict(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def write_model(out: Path, shape: dict, tokenizer, device: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(shape)
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device(device):  # initialising 3B weights on a GPU takes seconds, on 16 CPU cores a minute
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"{out.name}: {n / 1e6:.1f} M parameters, bf16", flush=True)
    del model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--tokenizer", help="a HF tokenizer dir (default: the embedded model's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="2-block, 64-wide versions of both (a CPU dry run)")
    args = parser.parse_args()
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    else:
        from epo.models.loading import load_embedded_tokenizer

        tokenizer = load_embedded_tokenizer()
    for name, shape in SHAPES.items():
        out = args.out / name
        shutil.rmtree(out, ignore_errors=True)
        write_model(out, {**shape, **(TINY if args.tiny else {})}, tokenizer, args.device)


if __name__ == "__main__":
    main()
