"""Mixed precision: fp32 master weights keep 1e-6 updates that bf16 weights round away; run-time bf16 detection."""

from __future__ import annotations

import random

import pytest
import torch

from epo.algos import EntropyHistory
from epo.config import ConfigError, load_config
from epo.models import precision
from epo.models.loading import load_model_and_tokenizer
from epo.models.precision import bf16_unit_from_flags, read_cpu_flags, resolve_precision
from epo.rollout.types import TurnSample
from epo.trainer import setup
from epo.trainer.batching import collate
from epo.trainer.update import model_stats, prepare_step, update_policy

LR = 1e-6


def _samples() -> list[TurnSample]:
    gen = random.Random(0)
    return [
        TurnSample(
            [gen.randrange(10, 400) for _ in range(8)],
            [gen.randrange(10, 400) for _ in range(4)],
            turn_idx=0,
            traj_id=k,
            group_id=0,
            reward=float(k % 2),
        )
        for k in range(4)
    ]


def _one_update(model, cfg) -> tuple[list[torch.Tensor], list[torch.nn.Parameter]]:
    """One GRPO update at lr 1e-6 (AdamW's first step moves every weight with a gradient by ~lr); the weights
    before, and the parameters after (their .grad kept)."""
    before = [p.detach().clone() for p in model.parameters()]
    samples = _samples()
    data = prepare_step(model, samples, 0, cfg)
    optimizer = setup.make_optimizer(model.parameters(), LR, cfg)
    model.train()
    update_policy(model, optimizer, data, cfg, EntropyHistory(), 1, 0, random.Random(0))
    return before, list(model.parameters())


def _changed_fraction(before, after) -> float:
    """Fraction of the weights with a real gradient (|g| > 1e-6, so Adam's step is ~lr) that moved."""
    moved = total = 0
    for old, p in zip(before, after):
        live = p.grad is not None and p.grad.abs().gt(1e-6)
        if p.grad is None:
            continue
        moved += int((p.detach().float() != old.float())[live].sum())
        total += int(live.sum())
    assert total > 1000
    return moved / total


def test_a_1e6_update_of_a_bf16_computed_model_changes_the_fp32_master_weights():
    cfg = load_config(None, ["model.path=tiny", "train.precision=bf16", "optim.weight_decay=0"])
    torch.manual_seed(0)
    model, _ = setup.load_policy(cfg, torch.device("cpu"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # master weights
    mb = collate(_samples(), [0, 1], 0)
    with torch.no_grad():  # the forward really computes in bf16 (autocast), not in fp32
        mixed = model_stats(model, mb, cfg, with_entropy=False).logprobs
        fp32_cfg = load_config(None, ["model.path=tiny", "train.precision=fp32"])  # not auto: bf16 on avx512_bf16 CPUs
        fp32 = model_stats(model, mb, fp32_cfg, with_entropy=False).logprobs
    assert not torch.equal(mixed, fp32)
    assert torch.allclose(mixed, fp32, atol=0.1)
    assert _changed_fraction(*_one_update(model, cfg)) > 0.99


def test_the_old_pure_bf16_path_loses_the_same_1e6_update():
    """bf16 weights updated in place (what `model.dtype=bfloat16` did): one ulp at |w| ~ 0.1 is ~5e-4, so a 1e-6
    step rounds away for nearly every weight. This is why training now rejects bf16 trainable weights."""
    cfg = load_config(None, ["model.path=tiny", "train.precision=fp32", "optim.weight_decay=0"])
    torch.manual_seed(0)
    model, _ = load_model_and_tokenizer("tiny", dtype="bfloat16")
    assert _changed_fraction(*_one_update(model, cfg)) < 0.02


def test_training_bf16_weights_is_rejected_with_one_line_and_eval_still_loads_them():
    cfg = load_config(None, ["model.path=tiny", "model.dtype=bfloat16"])
    with pytest.raises(ConfigError, match=r"^model.dtype: .*bfloat16.*train.precision") as info:
        setup.load_policy(cfg, torch.device("cpu"))
    assert "\n" not in str(info.value)
    model, _ = setup.load_policy(cfg, torch.device("cpu"), train=False)  # inference copy: fine
    assert next(model.parameters()).dtype == torch.bfloat16


def test_lora_on_a_frozen_bf16_base_trains_fp32_adapters():
    cfg = load_config(None, ["model.path=tiny", "model.dtype=bfloat16", "model.lora.enabled=true"])
    model, _ = setup.load_policy(cfg, torch.device("cpu"))
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert trainable == {torch.float32}


def test_bf16_unit_detection_from_cpu_flags(tmp_path):
    assert bf16_unit_from_flags({"sse4_2", "avx2", "fma"}) is None  # this project's AVX2 machine
    assert bf16_unit_from_flags({"avx2", "avx512f", "avx512_bf16"}) == "avx512_bf16"
    assert bf16_unit_from_flags({"avx512_bf16", "amx_tile", "amx_bf16"}) == "amx_bf16"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_bf16\n\nflags\t: other\n")
    assert read_cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "avx512_bf16"}
    assert read_cpu_flags(str(tmp_path / "missing")) is None


def test_bf16_unit_falls_back_to_torch_probe_without_cpuinfo(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert bf16_unit_from_flags(None) == "avx512_bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert bf16_unit_from_flags(None) is None


@pytest.mark.parametrize(
    ("unit", "dtype"), [("avx512_bf16", torch.bfloat16), ("amx_bf16", torch.bfloat16), (None, torch.float32)]
)
def test_auto_precision_on_cpu_follows_the_bf16_units(monkeypatch, unit, dtype):
    monkeypatch.setattr(precision, "cpu_bf16_unit", lambda: unit)
    chosen = resolve_precision("auto", "cpu")
    assert chosen.dtype == dtype
    line = chosen.line()
    assert line.startswith("precision: ") and "\n" not in line
    assert (unit or "no bf16 units") in line
    assert resolve_precision("fp32", "cpu").dtype == torch.float32  # explicit settings win
    forced = resolve_precision("bf16", "cpu")
    assert forced.dtype == torch.bfloat16 and ("slower than fp32" in forced.reason) == (unit is None)


def test_auto_precision_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU-X")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", "cuda").dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", "cuda").dtype == torch.float32


def test_precision_is_a_validated_choice():
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(None, ["train.precision=fp16"])


def test_no_preset_trains_bf16_weights():
    from pathlib import Path

    presets = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))
    assert presets
    for path in presets:
        cfg = load_config(str(path), ["model.path=tiny"])
        assert cfg.model.dtype == "float32" or cfg.model.lora.enabled, path.name


@pytest.mark.parametrize(("setting", "dtype"), [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_rollouts_generate_under_the_run_precision(setting, dtype):
    """The collector's backend generates with the run's compute precision (bf16 matmuls from fp32 weights)."""
    from epo.rollout.backend import HFBackend
    from epo.rollout.types import SamplingParams

    cfg = load_config(None, ["model.path=tiny", f"train.precision={setting}"])
    torch.manual_seed(0)
    model, tokenizer = setup.load_policy(cfg, torch.device("cpu"))
    seen: set[torch.dtype] = set()
    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, out: seen.add(out.dtype))
    backend = HFBackend(model, tokenizer, precision=setup.precision(cfg, torch.device("cpu")))
    out = backend.generate([[11, 12, 13]], SamplingParams(temperature=0.0, max_new_tokens=2))
    hook.remove()
    assert len(out[0]) >= 1 and seen == {dtype}
    assert next(model.parameters()).dtype == torch.float32


def test_kl_reference_is_a_bf16_inference_copy_under_mixed_precision():
    from epo.trainer.update import forward_pass

    cfg = load_config(None, ["model.path=tiny", "train.precision=bf16", "algo.kl_coef=0.01"])
    torch.manual_seed(0)
    policy, _ = setup.load_policy(cfg, torch.device("cpu"))
    reference = setup.make_reference(policy, cfg)
    assert {p.dtype for p in reference.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    ref_logps, _ = forward_pass(reference, _samples(), 0, cfg, with_entropy=False)
    pol_logps, _ = forward_pass(policy, _samples(), 0, cfg, with_entropy=False)
    for r, p in zip(ref_logps, pol_logps):
        assert r.dtype == torch.float32 and torch.allclose(r, p, atol=0.1)
