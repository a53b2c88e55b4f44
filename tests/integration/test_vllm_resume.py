"""Exact resume on the vLLM backend (embedded SmolLM2-135M, CPU build): 2 RL steps equal 1 step + resume + 1 step,
with the engine started afresh for the resumed part as a new process would (its start reseeds torch).

Runs in the second venv (`make test-vllm`); elsewhere it says in one line why it cannot run."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from epo.rollout.backend_select import cpu_flags, vllm_device_problem, vllm_distribution

pytestmark = pytest.mark.integration

OVERRIDES = [
    "rollout.backend=vllm",
    "rollout.vllm_kv_cache_gb=1",
    "rollout.group_size=2",
    "env.max_turns=3",
    "env.pool_mode=inline",
    "train.total_steps=2",
    "train.save_every=1",
    "train.eval_episodes=2",
    "train.eval_temperature=1.0",
    "train.save_rollouts=true",
    "train.tensorboard=false",
    "train.report=false",
]


def test_resumed_vllm_run_equals_the_continuous_run(tmp_path):
    problem = vllm_device_problem(vllm_distribution(), torch.cuda.is_available(), cpu_flags())
    if problem:
        pytest.skip(f"vLLM backend cannot run here: {problem} (make test-vllm installs the CPU build)")
    from epo.config import load_config
    from epo.diagnostics.rollouts_io import load_rollouts
    from epo.rollout import vllm_backend
    from epo.telemetry.metrics import read_metrics
    from epo.trainer.trainer import Trainer

    quiet = Console(quiet=True)
    cfg = load_config("quest_demo_cpu", OVERRIDES)
    Trainer(cfg, tmp_path / "full", console=quiet).train()
    Trainer(cfg, tmp_path / "part", console=quiet).train(stop_after=1)
    vllm_backend._ENGINES.clear()  # a resumed run is a new process: a fresh engine start, which reseeds torch
    Trainer(cfg, tmp_path / "part", resume=True, console=quiet).train()

    for step in (1, 2):
        a, b = load_rollouts(tmp_path / "full", step), load_rollouts(tmp_path / "part", step)
        assert [s.response_ids for s in a] == [s.response_ids for s in b], f"step {step}: sampled responses differ"
    first, second = (load_rollouts(tmp_path / "full", k) for k in (1, 2))
    assert [s.response_ids for s in first] != [s.response_ids for s in second]  # the seed moves with the step

    def comparable(run):
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in read_metrics(run)]

    full, part = comparable(tmp_path / "full"), comparable(tmp_path / "part")
    assert [r["step"] for r in full] == [1, 2] and "eval/iid/mean_turns" in full[1]
    assert full == part
