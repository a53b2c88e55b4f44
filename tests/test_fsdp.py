"""FSDP2 (train.parallel=fsdp2) on gloo, CPU, 2 real processes, equals one process with the same global batch.

The harness of dist_harness.py (prompt-hash generation, so both runs play the same episodes): after two RL
steps the logged metrics, the last mini-batch's gradients (gathered from FSDP's shards), the weights and the EPO
history must agree to float tolerance, for GRPO+EPO, PPO+EPO (separate critic: sharded too) and GRPO+EPO with
LoRA, a KL reference (the base model with the adapter disabled, sharded with the policy) and activation
checkpointing. The checkpoints are sharded (torch.distributed.checkpoint): the 2-process run's step-2 checkpoint
resumed on 1 process, and the 1-process run's resumed on 2, give the same step-3 metrics as continuing the
2-process run on 2 processes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console

from dist_harness import (
    RL_STEPS,
    assert_same_metrics,
    assert_same_result,
    join_process_group,
    one_and_two_processes,
    resume_here,
    run_on_two,
    spawn,
)
from epo.config import load_config
from epo.trainer import distributed
from epo.trainer.checkpoint import latest_checkpoint, load_checkpoint
from epo.trainer.trainer import Trainer
from test_distributed import BASE, CASES

FSDP_CASES = {
    "grpo_epo": CASES["grpo_epo"],
    "ppo_epo": CASES["ppo_epo"],
    "grpo_epo_lora_kl": CASES["grpo_epo"] + ["model.lora.enabled=true", "model.lora.r=4", "algo.kl_coef=0.05",
                                             "optim.lr=1e-2", "model.gradient_checkpointing=true"],
}  # fmt: skip


def _config(case: str):
    return load_config(None, BASE + FSDP_CASES[case] + ["train.parallel=fsdp2"])


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP's shard -> the whole tensor (collective)


def _run(case: str, run_dir: Path, resume: bool = False, stop_after: int | None = RL_STEPS) -> dict:
    trainer = Trainer(_config(case), run_dir, resume=resume, console=Console(quiet=True))
    trainer.train(stop_after=stop_after)
    trainable = [p for p in trainer.policy.parameters() if p.requires_grad]
    return {
        "sharded": trainer.sharded,
        "reference_is_policy": trainer.reference is trainer.policy,
        "params": torch.cat([_full(p.detach()).flatten() for p in trainer.policy.parameters()]),
        "grads": torch.cat(
            [(torch.zeros_like(_full(p)) if p.grad is None else _full(p.grad)).flatten() for p in trainable]
        ),  # fmt: skip
        "history": trainer.history.state_dict(),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    yield root, *one_and_two_processes(_run, root, sorted(FSDP_CASES))
    shutil.rmtree(root, ignore_errors=True)  # ~1 GB of checkpoints: CI machines have small disks


@pytest.mark.parametrize("case", sorted(FSDP_CASES))
def test_fsdp2_two_processes_equal_one(runs, case):
    root, single, double = runs
    one, two = single[case], double[case]
    assert two["sharded"] and not one["sharded"]  # really fully_shard on 2 ranks; 1 process has nothing to shard
    if "model.lora.enabled=true" in FSDP_CASES[case]:  # the KL reference: the sharded policy, adapters disabled
        assert two["reference_is_policy"]
    assert_same_metrics(root / f"{case}_1p", root / f"{case}_2p", [1, 2])
    assert_same_result(one, two)
    # the checkpoints are sharded (DCP) and still hold consolidated weights for `--model`
    for n in ("1p", "2p"):
        ckpt = latest_checkpoint(root / f"{case}_{n}")
        assert (ckpt / "dcp" / ".metadata").is_file()
        assert any(ckpt.glob("*model.safetensors"))
    shards = {p.name for p in (latest_checkpoint(root / f"{case}_2p") / "dcp").glob("*.distcp")}
    assert len(shards) == 2, shards  # one file per rank


def test_fsdp2_resume_on_a_different_number_of_processes(runs, tmp_path):
    """2 -> 1, 1 -> 2 and 2 -> 2 (the reference): the same step-3 metrics."""
    root, _, _ = runs
    case = "grpo_epo"
    dirs = {}
    for src, dst in (("2p", "1p"), ("1p", "2p"), ("2p", "2p")):
        dirs[src, dst] = tmp_path / f"from{src}_on{dst}"
        shutil.copytree(root / f"{case}_{src}", dirs[src, dst])
    resume_here(_run, case, [dirs["2p", "1p"]])
    run_on_two(_run, tmp_path, [(case, str(dirs[src, "2p"]), True) for src in ("1p", "2p")])
    for run_dir in dirs.values():
        assert_same_metrics(dirs["2p", "2p"], run_dir, [1, 2, 3])
    # the final export (rank 0, consolidated) loads as a plain model; so does a sharded checkpoint dir
    from epo.models import load_model_and_tokenizer
    from epo.trainer.checkpoint_model import load_checkpoint_model

    final, _ = load_model_and_tokenizer(str(dirs["2p", "2p"] / "final"), dtype="float32", device="cpu")
    from_ckpt, _ = load_checkpoint_model(str(latest_checkpoint(dirs["2p", "2p"])))
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), from_ckpt.state_dict().values()))


def test_fsdp2_lora_resume_two_to_one(runs, tmp_path):
    """LoRA (only the adapters and their optimizer state in the shards): 2 -> 1 equals 1 -> 1, and the final
    export (adapters merged) loads as a plain model."""
    root, _, _ = runs
    case = "grpo_epo_lora_kl"
    # the adapters come back from the 2-process shards exactly (they equal rank 0's consolidated copy)
    shutil.copytree(root / f"{case}_2p", tmp_path / "check")
    trainer = Trainer(_config(case), tmp_path / "check", resume=True, console=Console(quiet=True))
    trainer._resume_or_start()
    saved = load_checkpoint(tmp_path / "check").model_state
    adapters = {n: p for n, p in trainer.policy.named_parameters() if p.requires_grad}
    assert sorted(adapters) == sorted(saved) and all(torch.equal(p, saved[n]) for n, p in adapters.items())
    assert any(saved[n].abs().sum() > 0 for n in saved if "lora_B" in n)  # trained: not the fresh zero init
    for src in ("1p", "2p"):
        shutil.copytree(root / f"{case}_{src}", tmp_path / src)
    resume_here(_run, case, [tmp_path / "1p", tmp_path / "2p"])
    assert_same_metrics(tmp_path / "1p", tmp_path / "2p", [1, 2, 3])
    from epo.models import load_model_and_tokenizer

    merged, _ = load_model_and_tokenizer(str(tmp_path / "2p" / "final"), dtype="float32", device="cpu")
    assert not hasattr(merged, "peft_config")


def _bf16_worker(rank: int, world: int, port: int, out: str) -> None:
    from epo.models import build_tiny_model
    from epo.trainer import fsdp

    join_process_group(rank, world, port)
    distributed.init_from_env("cpu", timeout_s=120)
    torch.manual_seed(0)
    model = build_tiny_model().float()
    fsdp.shard_causal_lm(model, torch.device("cpu"), torch.bfloat16)
    seen = []
    block = fsdp.decoder_blocks(model)[0]
    block.register_forward_pre_hook(lambda m, _args: seen.append(m.self_attn.q_proj.weight.dtype))
    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(rank))
    mask, resp = torch.ones_like(ids), torch.zeros_like(ids)
    resp[:, 5:] = 1
    stats = fsdp.response_logprobs(model, ids, mask, resp)
    (stats.logprobs.sum() + stats.entropy.sum()).backward()
    master = {p.dtype for p in model.parameters()} | {p.grad.dtype for p in model.parameters() if p.grad is not None}
    torch.save({"gathered": seen, "master": master, "finite": bool(torch.isfinite(stats.logprobs).all())},
               Path(out) / f"bf16_rank{rank}.pt")  # fmt: skip
    distributed.shutdown()


def test_fsdp2_bf16_policy_gathers_bf16_keeps_fp32_master(tmp_path):
    """train.precision=bf16: blocks compute with bf16 all-gathered weights, while the sharded (master) weights and
    their reduced gradients stay fp32 (MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32))."""
    spawn(_bf16_worker, str(tmp_path))
    for rank in range(2):
        out = torch.load(tmp_path / f"bf16_rank{rank}.pt")
        assert out["gathered"] == [torch.bfloat16] and out["master"] == {torch.float32} and out["finite"]


def _generate_worker(rank: int, world: int, port: int, out: str) -> None:
    import copy

    from epo.models import build_tiny_model, load_embedded_tokenizer
    from epo.rollout.backend import HFBackend
    from epo.rollout.types import SamplingParams
    from epo.trainer import fsdp

    join_process_group(rank, world, port)
    distributed.init_from_env("cpu", timeout_s=120)
    torch.manual_seed(0)
    model = build_tiny_model().float()
    plain = copy.deepcopy(model)
    fsdp.shard_causal_lm(model, torch.device("cpu"), torch.float32)
    tokenizer = load_embedded_tokenizer()
    prompts, params = [[1, 5, 9, 13, 2], [7, 3]], SamplingParams(temperature=0, max_new_tokens=6)
    result = {}
    with fsdp.gathered(model):  # every rank gathers; then only rank 0 generates (as evaluation does)
        if rank == 0:
            result["sharded"] = HFBackend(model, tokenizer, stop_strings=[]).generate(prompts, params)
            result["plain"] = HFBackend(plain, tokenizer, stop_strings=[]).generate(prompts, params)
    # afterwards the units are sharded again and a training forward/backward still works (collectives line up)
    ids = torch.randint(0, 1000, (1, 8), generator=torch.Generator().manual_seed(rank))
    mask, resp = torch.ones_like(ids), torch.zeros_like(ids)
    resp[:, 4:] = 1
    fsdp.response_logprobs(model, ids, mask, resp).logprobs.sum().backward()
    result["sharded_after"] = all(hasattr(p, "full_tensor") for p in model.parameters())
    torch.save(result, Path(out) / f"gen_rank{rank}.pt")
    distributed.shutdown()


def test_fsdp2_generation_inside_gathered_on_one_rank(tmp_path):
    """HF generate (a different number of forwards per rank) runs on gathered weights without collectives: rank 0
    alone generates the same tokens as an unsharded copy."""
    spawn(_generate_worker, str(tmp_path))
    out = torch.load(tmp_path / "gen_rank0.pt")
    assert out["sharded"] == out["plain"] and len(out["sharded"][0]) == 6
    assert out["sharded_after"] and torch.load(tmp_path / "gen_rank1.pt")["sharded_after"]
