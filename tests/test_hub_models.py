"""model.path as a Hugging Face hub id: read from the HF cache offline, a one-line error when it is not there.
Nothing here downloads (conftest sets HF_HUB_OFFLINE=1; the cache is a temporary folder)."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub import constants

from epo.models import load_model_and_tokenizer
from epo.models.loading import hub_offline, is_hub_id


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_ids_are_recognised_but_local_paths_win(tmp_path, monkeypatch):
    assert is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") and is_hub_id("Qwen/Qwen2.5-3B-Instruct")
    for not_id in ("embedded", "/models/x", "./a/b", "a/b/c", "../x/y", "model.gguf"):
        assert not is_hub_id(not_id), not_id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not is_hub_id("org/name")  # an existing local dir of that name is a path


def test_offline_id_not_in_cache_is_one_line_saying_how_to_get_it(hub_cache):
    assert hub_offline()
    with pytest.raises(ValueError) as err:
        load_model_and_tokenizer("no-such-org/no-such-model")
    line = str(err.value)
    assert "\n" not in line and "no-such-org/no-such-model" in line
    assert "nor in the Hugging Face cache" in line and "HF_HUB_OFFLINE" in line and "hf download" in line


def test_offline_id_in_cache_loads_from_it(hub_cache):
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer("tiny")
    snapshot = hub_cache / "models--acme--tiny-agent" / "snapshots" / ("0" * 40)
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (hub_cache / "models--acme--tiny-agent" / "refs").mkdir()
    (hub_cache / "models--acme--tiny-agent" / "refs" / "main").write_text("0" * 40)
    loaded, loaded_tok = load_model_and_tokenizer("acme/tiny-agent")
    assert len(loaded_tok) == len(tokenizer)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_cli_eval_with_an_uncached_hub_id_is_one_red_line(hub_cache):
    from typer.testing import CliRunner

    from epo.cli import app

    args = ["eval", "--config", "quest_demo_cpu", "--model", "no-such-org/no-such-model", "env.pool_mode=inline"]
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: model path not found: no-such-org/no-such-model"), lines[0]
