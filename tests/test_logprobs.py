"""response_logprobs against hand-computed values, a naive full-logits implementation, and finite differences."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from epo.models import (
    apply_lora,
    build_tiny_model,
    enable_activation_checkpointing,
    reference_response_logprobs,
    response_logprobs,
)
from epo.models.logprobs import _ChunkedHeadStats, position_ids_from_mask, run_backbone, token_stats

VOCAB = 49152


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_tiny_model()


def make_batch(seed: int = 1):
    """3 rows: left-padded, unpadded, right-padded; responses of 8, 12 and 5 tokens."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 20), generator=gen)
    attention = torch.ones(3, 20, dtype=torch.long)
    attention[0, :5] = 0
    attention[2, 15:] = 0
    response = torch.zeros(3, 20, dtype=torch.long)
    response[0, 12:] = 1
    response[1, 8:] = 1
    response[2, 10:15] = 1
    return ids, attention, response


def loss_of(stats) -> torch.Tensor:
    """A loss that weights log-probs and entropies differently, so both gradient paths are exercised."""
    return (stats.logprobs * 0.3).sum() + (stats.entropy * 0.7).sum()


def grads(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(ours: dict, ref: dict, rtol: float) -> None:
    assert ours.keys() == ref.keys() and ours
    for name in ref:
        scale = ref[name].abs().max().clamp(min=1e-6)
        assert (ours[name] - ref[name]).abs().max() <= rtol * scale, name


def test_hand_computed_logprob_and_entropy_with_temperature():
    # one row, 3-token vocabulary, logits [0, ln 2, ln 3] -> probabilities 1/6, 2/6, 3/6
    head = nn.Linear(1, 3, bias=False)
    head.weight.data = torch.tensor([[0.0], [math.log(2)], [math.log(3)]])
    rows, target = torch.ones(1, 1), torch.tensor([2])
    logprob, entropy = token_stats(head, rows, target, temperature=1.0, chunk_tokens=8, with_entropy=True)
    probs = [1 / 6, 2 / 6, 3 / 6]
    assert logprob.item() == pytest.approx(math.log(0.5), abs=1e-6)
    assert entropy.item() == pytest.approx(-sum(p * math.log(p) for p in probs), abs=1e-6)
    # temperature 2 halves the logits: probabilities proportional to 1, sqrt 2, sqrt 3
    logprob, entropy = token_stats(head, rows, target, temperature=2.0, chunk_tokens=8, with_entropy=True)
    weights = [1.0, math.sqrt(2), math.sqrt(3)]
    probs = [w / sum(weights) for w in weights]
    assert logprob.item() == pytest.approx(math.log(probs[2]), abs=1e-6)
    assert entropy.item() == pytest.approx(-sum(p * math.log(p) for p in probs), abs=1e-6)


@pytest.mark.parametrize("chunk", [2, 64])
def test_custom_backward_passes_gradcheck_in_float64(chunk):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(11, 4, generator=gen, dtype=torch.float64, requires_grad=True)  # [V, H]
    rows = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)  # [N, H]
    targets = torch.tensor([0, 3, 10, 3, 7])

    def fn(rows, weight):
        return _ChunkedHeadStats.apply(rows, weight, targets, 1 / 0.7, chunk, True)

    assert torch.autograd.gradcheck(fn, (rows, weight), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize(("temperature", "chunk"), [(1.0, 1024), (0.7, 3)])
def test_matches_naive_full_logits_values_and_grads_fp32(tiny, temperature, chunk):
    ids, attention, response = make_batch()
    ours = response_logprobs(tiny, ids, attention, response, temperature=temperature, chunk_tokens=chunk)
    ours_grads = grads(tiny, loss_of(ours))
    ref = reference_response_logprobs(tiny, ids, attention, response, temperature=temperature)
    ref_grads = grads(tiny, loss_of(ref))
    torch.testing.assert_close(ours.logprobs, ref.logprobs, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ours.entropy, ref.entropy, atol=2e-5, rtol=1e-5)
    assert_grads_close(ours_grads, ref_grads, rtol=1e-4)
    assert ours.logprobs.dtype == torch.float32 and ours.entropy.dtype == torch.float32


def test_zero_off_response_and_valid_on_response(tiny):
    ids, attention, response = make_batch()
    with torch.no_grad():
        stats = response_logprobs(tiny, ids, attention, response)
    off = response == 0
    assert (stats.logprobs[off] == 0).all() and (stats.entropy[off] == 0).all()
    on = response == 1
    assert (stats.logprobs[on] < 0).all()
    assert ((stats.entropy[on] > 0) & (stats.entropy[on] <= math.log(VOCAB) + 1e-4)).all()


def test_left_padding_does_not_change_results(tiny):
    ids, attention, response = make_batch()
    with torch.no_grad():
        padded = response_logprobs(tiny, ids[:1], attention[:1], response[:1])
        unpadded = response_logprobs(tiny, ids[:1, 5:], attention[:1, 5:], response[:1, 5:])
    torch.testing.assert_close(padded.logprobs[:, 5:], unpadded.logprobs, atol=1e-5, rtol=1e-5)
    assert position_ids_from_mask(attention[:1])[0, 5:].tolist() == list(range(15))


def test_no_grad_and_inference_mode_give_same_values_without_graph(tiny):
    ids, attention, response = make_batch()
    with_grad = response_logprobs(tiny, ids, attention, response)
    with torch.no_grad():
        no_grad = response_logprobs(tiny, ids, attention, response)
    with torch.inference_mode():
        inference = response_logprobs(tiny, ids, attention, response, with_entropy=False)
    assert with_grad.logprobs.requires_grad and not no_grad.logprobs.requires_grad
    assert inference.entropy is None
    torch.testing.assert_close(no_grad.logprobs, with_grad.logprobs.detach())
    torch.testing.assert_close(inference.logprobs, with_grad.logprobs.detach())


def test_logprob_only_gradient_matches_naive(tiny):
    ids, attention, response = make_batch()
    ours = response_logprobs(tiny, ids, attention, response, with_entropy=False, chunk_tokens=4)
    ours_grads = grads(tiny, ours.logprobs.sum())
    ref_grads = grads(tiny, reference_response_logprobs(tiny, ids, attention, response).logprobs.sum())
    assert_grads_close(ours_grads, ref_grads, rtol=1e-4)


def test_autograd_graph_holds_no_vocabulary_sized_tensor(tiny):
    ids, attention, response = make_batch()
    param_ptrs = {p.data_ptr() for p in tiny.parameters()}

    def vocab_sized_saved(fn) -> list[tuple[int, ...]]:
        found = []

        def pack(tensor):
            if tensor.data_ptr() not in param_ptrs and VOCAB in tensor.shape:
                found.append(tuple(tensor.shape))
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return found

    assert vocab_sized_saved(lambda: reference_response_logprobs(tiny, ids, attention, response))  # check can fail
    assert vocab_sized_saved(lambda: response_logprobs(tiny, ids, attention, response, chunk_tokens=4)) == []


def test_bfloat16_model_matches_naive_within_bf16_tolerance():
    torch.manual_seed(0)
    model = build_tiny_model().to(torch.bfloat16)
    ids, attention, response = make_batch()
    ours = response_logprobs(model, ids, attention, response, chunk_tokens=7)
    ours_grads = grads(model, loss_of(ours))
    ref = reference_response_logprobs(model, ids, attention, response)
    ref_grads = grads(model, loss_of(ref))
    assert ours.logprobs.dtype == torch.float32
    torch.testing.assert_close(ours.logprobs, ref.logprobs, atol=0.05, rtol=0.01)
    torch.testing.assert_close(ours.entropy, ref.entropy, atol=0.05, rtol=0.01)
    assert_grads_close(ours_grads, ref_grads, rtol=0.05)


def test_peft_wrapped_model_matches_naive_and_trains_only_adapters(tiny):
    torch.manual_seed(0)
    model = apply_lora(build_tiny_model(), r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    for name, param in model.named_parameters():
        if "lora_B" in name:  # fresh LoRA B is zero, which would make the adapter invisible
            nn.init.normal_(param, std=0.1)
    ids, attention, response = make_batch()
    ours_grads = grads(model, loss_of(response_logprobs(model, ids, attention, response, chunk_tokens=5)))
    ref_grads = grads(model, loss_of(reference_response_logprobs(model, ids, attention, response)))
    assert all("lora_" in name for name in ours_grads) and len(ours_grads) == 8
    assert_grads_close(ours_grads, ref_grads, rtol=1e-4)


def test_generic_head_path_matches_linear_path():
    """An LM head that is not a plain bias-free Linear goes through per-chunk checkpointing instead."""
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(8, 50, bias=False)
    wrapped = nn.Sequential(nn.Linear(8, 50, bias=False))
    wrapped[0].weight = linear.weight
    rows = torch.randn(9, 8, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (9,), generator=gen)
    results = []
    for head in (linear, wrapped):
        rows.grad, linear.weight.grad = None, None
        logprob, entropy = token_stats(head, rows, targets, 0.8, chunk_tokens=4, with_entropy=True)
        (logprob.sum() - 2 * entropy.sum()).backward()
        results.append((logprob.detach(), entropy.detach(), rows.grad.clone(), linear.weight.grad.clone()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_return_hidden_aligns_states_with_predicted_tokens(tiny):
    ids, attention, response = make_batch()
    with torch.no_grad():
        stats = response_logprobs(tiny, ids, attention, response, return_hidden=True)
        hidden = run_backbone(tiny, ids, attention)
    assert stats.hidden.shape == (3, 20, 64)
    torch.testing.assert_close(stats.hidden[1, 8], hidden[1, 7])  # token 8 is predicted by the state at 7
    assert (stats.hidden[response == 0] == 0).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"response_first": True}, "position 0"),
        ({"response_on_padding": True}, "attention_mask masks out"),
        ({"temperature": 0.0}, "temperature"),
        ({"chunk_tokens": 0}, "chunk_tokens"),
        ({"shape": True}, r"\[B, T\]"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny, change, message):
    ids, attention, response = make_batch()
    if change.get("response_first"):
        response[1, 0] = 1
    if change.get("response_on_padding"):
        response[0, 2] = 1
    if change.get("shape"):
        response = response[:, :-1]
    kwargs = {k: v for k, v in change.items() if k in ("temperature", "chunk_tokens")}
    with pytest.raises(ValueError, match=message):
        response_logprobs(tiny, ids, attention, response, **kwargs)


def test_gradient_checkpointing_on_a_lora_model_keeps_adapter_gradients():
    """HF activation checkpointing inside the backbone must still deliver LoRA gradients (frozen embeddings)."""
    ids, attention, response = make_batch()
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = apply_lora(build_tiny_model(), r=4, alpha=8, target_modules=["q_proj", "v_proj"])
        for name, param in model.named_parameters():
            if "lora_B" in name:
                nn.init.normal_(param, std=0.1)
        if checkpointing:
            enable_activation_checkpointing(model)
        model.train()
        results.append(grads(model, loss_of(response_logprobs(model, ids, attention, response))))
    assert_grads_close(results[1], results[0], rtol=1e-5)
