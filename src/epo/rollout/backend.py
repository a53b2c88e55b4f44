"""Generation backends: token ids in, sampled response token ids out.

The collector only sees `GenerationBackend.generate`, so a vLLM backend can replace the Hugging Face one without
touching it. Old log-probs for the PPO ratio are NOT taken from the sampler: the trainer recomputes them with the
same forward pass it trains with (`epo.models.response_logprobs`), so ratio = 1 exactly at the first update.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch

from epo.models.precision import autocast
from epo.rollout.types import SamplingParams

STOP_STRINGS = ["</action>"]


class GenerationBackend(Protocol):
    """Optional extras a backend may have: `last_logprobs` (the sampler's own log-probs of the tokens the last
    generate call returned, one list per prompt, or None) and `sync_weights()` (bring the engine's weights up to
    the policy's before a rollout; returns seconds spent). See epo.rollout.vllm_backend.

    A backend that sets `per_call_seed = True` draws from a random stream a checkpoint does not restore (vLLM's
    engine reseeds torch when it starts): the trainer gives each of its calls a seed (`call_seed`)."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        """Sample one response per prompt; each ends with EOS or the stop string, or at max_new_tokens."""
        ...


class HFBackend:
    """transformers `generate` with left padding, KV cache, one batched call per chunk of active envs."""

    def __init__(self, model, tokenizer, batch_size: int = 64, stop_strings: list[str] | None = None, precision=None):
        """precision: an `epo.models.precision.Precision`; generation runs under its autocast (None: fp32)."""
        self.model = model
        self.precision = precision
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.stop_strings = STOP_STRINGS if stop_strings is None else stop_strings
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = eos_token_ids(model, tokenizer)
        self._stop_criteria = None  # built once: StopStringCriteria preprocesses the whole vocabulary (~0.4 s)
        self.last_logprobs = None  # transformers' generate does not return the sampler's log-probs cheaply

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        if params.seed is None:
            return self._generate(prompts, params)
        with torch.random.fork_rng(devices=[]):  # a per-call seed: reproducible without touching the global stream
            torch.manual_seed(params.seed)
            return self._generate(prompts, params)

    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        # Sorting by length keeps padding (wasted prefill) small within each chunk.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[list[int]] = [[] for _ in prompts]
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, resp in zip(chunk, self._generate_chunk([prompts[i] for i in chunk], params)):
                out[i] = resp
        return out

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):  # left padding: generation continues from the right edge
            input_ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention_mask[row, width - len(p) :] = 1
        sampling = params.temperature > 0
        kwargs = dict(
            do_sample=sampling,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            stopping_criteria=self._stopping_criteria(),
            synced_gpus=False,  # under FSDP2 the weights are gathered first (trainer/fsdp.py): ranks need no lockstep
        )
        if sampling:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        else:  # greedy: silence the model's default sampling settings
            kwargs.update(temperature=None, top_p=None, top_k=None)
        was_training = self.model.training
        self.model.eval()
        try:
            with autocast(self.precision, device) if self.precision is not None else contextlib.nullcontext():
                seqs = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs
                )
        finally:
            self.model.train(was_training)
        return [self._trim(row.tolist()) for row in seqs[:, width:].cpu()]

    def _stopping_criteria(self):
        from transformers import StoppingCriteriaList, StopStringCriteria

        if self._stop_criteria is None:
            criteria = [StopStringCriteria(self.tokenizer, self.stop_strings)] if self.stop_strings else []
            self._stop_criteria = StoppingCriteriaList(criteria)
        return self._stop_criteria

    def _trim(self, tokens: list[int]) -> list[int]:
        """Cut at whichever comes first: an EOS (kept: the model must learn to stop) or the end of a stop string.

        Checked in one pass because the pad id may equal the EOS id: after a stop string, padding must not be
        mistaken for a sampled EOS."""
        return tokens[: trim_length(tokens, self.eos_ids, self.stop_strings, self.tokenizer)]


def call_seed(backend, seed: int) -> int | None:
    """A training rollout's seed: `seed` for a backend with `per_call_seed` (a resumed run then samples what the
    continuous run sampled); None for the others (HF: torch's global stream, which checkpoints save and restore).
    Evaluations always take their own seed (rollout/evaluate.py requires one)."""
    return seed if getattr(backend, "per_call_seed", False) else None


def trim_length(tokens: list[int], eos_ids: list[int], stop_strings: list[str], tokenizer) -> int:
    """Length of the response kept: up to and including the first EOS or the token that completes a stop string.

    The one trimming rule of every backend (HF and vLLM), so both return the same tokens for the same samples."""
    text = ""
    for k, tok in enumerate(tokens):
        if tok in eos_ids:
            return k + 1
        if stop_strings:
            text += tokenizer.decode([tok])
            if any(s in text for s in stop_strings):
                return k + 1
    return len(tokens)


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
