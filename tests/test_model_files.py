"""A model dir whose files lack weights the architecture expects fails at load with one line, instead of starting
those weights at random (transformers only logs it, and epo silences its logs)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from epo.errors import ModelLoadError
from epo.models.loading import load_model_and_tokenizer


def test_a_model_dir_missing_a_weight_is_one_line(tmp_path):
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer("tiny")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    reloaded, _ = load_model_and_tokenizer(str(tmp_path / "m"))  # whole: loads, same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
    files = list((tmp_path / "m").glob("*.safetensors"))
    assert len(files) == 1
    weights = load_file(files[0])
    del weights["model.layers.0.mlp.up_proj.weight"]
    save_file(weights, files[0], metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"lack 1 of its weights \(model.layers.0.mlp.up_proj.weight\)"):
        load_model_and_tokenizer(str(tmp_path / "m"))
