"""Per-token log-probabilities and entropies of response tokens: the hot path of every RL update.

The backbone runs once over the whole sequence; the LM head runs only on the hidden states that predict response
tokens (position p-1 predicts token p), a chunk of rows at a time, with the softmax math in fp32. Full-vocabulary
logits are never kept for backward: a custom autograd Function saves only the inputs and the per-row logsumexp and
entropy, and recomputes each chunk's logits in backward. For an LM head that is not a plain bias-free Linear (for
example LoRA on ``lm_head``) the same math runs under per-chunk activation checkpointing instead.

Entropy here is the full-vocabulary Shannon entropy ``h = logsumexp(z) - sum_v softmax(z)_v * z_v`` with
``z = logits / temperature``; its gradient is ``dh/dz = -softmax(z) * (z - E_p[z])``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@dataclass
class ResponseStats:
    """Aligned with ``input_ids``: entry ``[b, p]`` is about token ``p`` given tokens ``< p``; zero off-response."""

    logprobs: Tensor  # [B, T] fp32
    entropy: Tensor | None  # [B, T] fp32, or None when not requested
    hidden: Tensor | None = None  # [B, T, H] model dtype: the hidden state that predicted token p (for value heads)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, as HF ``generate`` does, so left padding does not shift RoPE."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)


def response_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    with_entropy: bool = True,
    return_hidden: bool = False,
) -> ResponseStats:
    """Log-probs (and entropies) of the response tokens of ``input_ids`` [B, T] under ``model``.

    ``response_mask`` [B, T] is 1 on response tokens (a subset of the attended tokens). Works with and without grad,
    for HF causal LMs and peft-wrapped ones, with either padding side.
    """
    _check_inputs(input_ids, attention_mask, response_mask, temperature, chunk_tokens)
    hidden = run_backbone(model, input_ids, attention_mask)  # [B, T, H]
    predicts = response_mask[:, 1:].bool()  # [B, T-1]: row p-1 predicts token p
    rows = hidden[:, :-1][predicts]  # [N, H]
    targets = input_ids[:, 1:][predicts]  # [N]
    logprobs, entropy = token_stats(
        model.get_output_embeddings(), rows, targets, temperature, chunk_tokens, with_entropy
    )
    return ResponseStats(
        logprobs=_unpack(logprobs, predicts),
        entropy=_unpack(entropy, predicts) if with_entropy else None,
        hidden=_unpack(rows, predicts) if return_hidden else None,
    )


def reference_response_logprobs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor, temperature: float = 1.0
) -> ResponseStats:
    """Plain full-logits version of :func:`response_logprobs` (materialises [B, T, V]); for tests and benchmarks."""
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).logits
    logits = logits[:, :-1].float() / temperature  # [B, T-1, V]
    log_probs = logits.log_softmax(dim=-1)
    token_logprobs = log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    mask = response_mask[:, 1:].to(token_logprobs.dtype)
    return ResponseStats(
        logprobs=F.pad(token_logprobs * mask, (1, 0)),
        entropy=F.pad(entropy * mask, (1, 0)),
    )


def run_backbone(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Final hidden states [B, T, H] (after the last norm) of the decoder under ``model``'s LM head."""
    decoder = model.get_decoder()
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,  # training never reuses the KV cache; building it costs memory
    )
    return out.last_hidden_state


def token_stats(
    lm_head: nn.Module, rows: Tensor, targets: Tensor, temperature: float, chunk_tokens: int, with_entropy: bool
) -> tuple[Tensor, Tensor]:
    """Log-prob of ``targets`` [N] and entropy [N] (zeros if not ``with_entropy``) from hidden ``rows`` [N, H]."""
    inv_temp = 1.0 / temperature
    if type(lm_head) is nn.Linear and lm_head.bias is None:
        return _ChunkedHeadStats.apply(rows, lm_head.weight, targets, inv_temp, chunk_tokens, with_entropy)
    return _checkpointed_head_stats(lm_head, rows, targets, inv_temp, chunk_tokens, with_entropy)


def _compute_dtype(rows: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype autocast picks when it is on (train.precision=bf16); otherwise fp32 on CPU and the weight's dtype
    on accelerators.

    CPUs without AMX/avx512_bf16 run bf16 matmuls 5-100x slower than fp32 (measured on AVX2: 0.4-5 vs 30-55
    GFLOPS for the LM-head shapes), so bf16 weights outside autocast still get fp32 head math on CPU; autocast on
    CPU is only chosen automatically where bf16 units exist (epo.models.precision).
    """
    device_type = rows.device.type
    if torch.is_autocast_enabled(device_type) and weight.dtype != torch.float64:
        return torch.get_autocast_dtype(device_type)
    if device_type == "cpu":
        return torch.promote_types(weight.dtype, torch.float32)  # fp64 stays fp64 (gradcheck)
    return weight.dtype


def _chunk_logits(rows: Tensor, weight: Tensor, inv_temp: float) -> Tensor:
    """Logits [C, V] of a chunk in fp32 (or fp64); the matmul runs in the inputs' (compute) dtype."""
    logits = _at_least_fp32(F.linear(rows, weight))
    return logits.mul_(inv_temp) if inv_temp != 1.0 else logits


def _at_least_fp32(tensor: Tensor) -> Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _chunk_forward(logits: Tensor, targets: Tensor, with_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(logprob [C], logsumexp [C], entropy [C]) from fp32 ``logits`` [C, V], leaving ``logits`` unchanged.

    In-place ops keep it to one [C, V] temporary; only for use without autograd (inside the custom Function).
    """
    row_max = logits.amax(dim=-1, keepdim=True)  # [C, 1]
    exp_shifted = (logits - row_max).exp_()  # [C, V]
    sum_exp = exp_shifted.sum(dim=-1)  # [C]
    lse = row_max.squeeze(-1) + sum_exp.log()
    logprob = logits.gather(1, targets[:, None]).squeeze(1) - lse
    if not with_entropy:
        return logprob, lse, torch.zeros_like(lse)
    mean_logit = exp_shifted.mul_(logits).sum(dim=-1) / sum_exp  # E_p[z]
    return logprob, lse, lse - mean_logit


class _ChunkedHeadStats(torch.autograd.Function):
    """LM head + log-softmax + entropy over row chunks, recomputing logits in backward instead of storing them."""

    @staticmethod
    def forward(
        ctx: Any, rows: Tensor, weight: Tensor, targets: Tensor, inv_temp: float, chunk: int, with_entropy: bool
    ):
        compute_dtype = _compute_dtype(rows, weight)
        logprob = rows.new_empty(rows.shape[0], dtype=torch.promote_types(compute_dtype, torch.float32))
        lse, entropy = torch.empty_like(logprob), torch.zeros_like(logprob)
        with torch.autocast(rows.device.type, enabled=False):
            w = weight.to(compute_dtype)
            for start in range(0, rows.shape[0], chunk):
                sl = slice(start, start + chunk)
                logits = _chunk_logits(rows[sl].to(compute_dtype), w, inv_temp)
                logprob[sl], lse[sl], entropy[sl] = _chunk_forward(logits, targets[sl], with_entropy)
        ctx.save_for_backward(rows, weight, targets, lse, entropy)
        ctx.inv_temp, ctx.chunk, ctx.with_entropy, ctx.compute_dtype = inv_temp, chunk, with_entropy, compute_dtype
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logprob, entropy

    @staticmethod
    def backward(ctx: Any, grad_logprob: Tensor, grad_entropy: Tensor | None):
        rows, weight, targets, lse, entropy = ctx.saved_tensors
        need_rows, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        use_entropy = ctx.with_entropy and grad_entropy is not None
        cd = ctx.compute_dtype
        grad_rows = torch.empty_like(rows) if need_rows else None
        grad_weight = None
        accumulate_fp32 = torch.finfo(cd).bits < 32 and rows.shape[0] > ctx.chunk  # bf16 sums over chunks lose bits
        with torch.autocast(rows.device.type, enabled=False):
            w = weight.to(cd)
            for start in range(0, rows.shape[0], ctx.chunk):
                sl = slice(start, start + ctx.chunk)
                h = rows[sl].to(cd)
                logits = _chunk_logits(h, w, ctx.inv_temp)  # [C, V]
                g_logprob = grad_logprob[sl, None]  # [C, 1]
                probs = (logits - lse[sl, None]).exp_()
                if use_entropy:  # dL/dz = -p * (g_logprob + g_entropy * (z - E_p[z])) + g_logprob * onehot
                    mean_logit = (lse[sl] - entropy[sl])[:, None]
                    grad_logits = logits.sub_(mean_logit).mul_(grad_entropy[sl, None]).add_(g_logprob)
                    grad_logits.mul_(probs).neg_()
                else:
                    grad_logits = probs.mul_(-g_logprob)
                grad_logits.scatter_add_(1, targets[sl, None], g_logprob)
                grad_logits = grad_logits.to(cd)
                if need_rows:
                    grad_rows[sl] = (grad_logits @ w).mul_(ctx.inv_temp)
                if need_weight:
                    grad_weight = _accumulate_matmul(grad_weight, grad_logits.T, h, accumulate_fp32)
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(ctx.inv_temp).to(weight.dtype)
        elif need_weight:  # no rows at all
            grad_weight = torch.zeros_like(weight)
        return grad_rows, grad_weight, None, None, None, None


def _accumulate_matmul(total: Tensor | None, a: Tensor, b: Tensor, fp32: bool) -> Tensor:
    """``total + a @ b`` without an extra [V, H] temporary when dtypes allow (``addmm_`` writes in place)."""
    if total is None:
        product = a @ b
        return product.float() if fp32 else product
    if total.dtype == a.dtype:
        return total.addmm_(a, b)
    return total.add_(a @ b)


def _head_chunk_stats(lm_head: nn.Module, rows: Tensor, targets: Tensor, inv_temp: float, with_entropy: bool):
    """Autograd-friendly (no in-place ops) version of :func:`_chunk_forward` for any LM head module."""
    logits = _at_least_fp32(lm_head(rows))
    logits = logits * inv_temp if inv_temp != 1.0 else logits
    lse = logits.logsumexp(dim=-1)
    logprob = logits.gather(1, targets[:, None]).squeeze(1) - lse
    if not with_entropy:
        return logprob, torch.zeros_like(lse)
    return logprob, lse - (logits.softmax(dim=-1) * logits).sum(dim=-1)


def _checkpointed_head_stats(
    lm_head: nn.Module, rows: Tensor, targets: Tensor, inv_temp: float, chunk: int, with_entropy: bool
) -> tuple[Tensor, Tensor]:
    """Generic path: any LM head module, one checkpointed chunk at a time (logits are recomputed in backward)."""
    outputs = []
    for start in range(0, rows.shape[0], chunk):
        args = (lm_head, rows[start : start + chunk], targets[start : start + chunk], inv_temp, with_entropy)
        if torch.is_grad_enabled():
            outputs.append(checkpoint(_head_chunk_stats, *args, use_reentrant=False))
        else:
            outputs.append(_head_chunk_stats(*args))
    if not outputs:
        empty = rows.new_zeros(0, dtype=torch.float32)
        return empty, empty
    logprobs, entropies = zip(*outputs, strict=True)
    return torch.cat(logprobs), torch.cat(entropies)


def _unpack(values: Tensor, predicts: Tensor) -> Tensor:
    """Scatter per-row values [N, ...] back to [B, T, ...] (row p-1 -> column p), zeros elsewhere."""
    batch, width = predicts.shape
    out = values.new_zeros(batch, width, *values.shape[1:]).masked_scatter(
        predicts.view(batch, width, *([1] * (values.dim() - 1))), values
    )
    return F.pad(out, (0, 0) * (values.dim() - 1) + (1, 0))


def _check_inputs(
    input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor, temperature: float, chunk_tokens: int
) -> None:
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape or response_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids, attention_mask and response_mask must all be [B, T]; got {tuple(input_ids.shape)}, "
            f"{tuple(attention_mask.shape)}, {tuple(response_mask.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if response_mask[:, 0].any():
        raise ValueError("response_mask is 1 at position 0: the first token has no context to be predicted from")
    if (response_mask.bool() & ~attention_mask.bool()).any():
        raise ValueError("response_mask marks tokens that attention_mask masks out")
