"""The rollout collector on real ALFWorld games: the tiny random model, and the env's expert through the loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from epo.agent import PromptBuilder
from epo.config import AgentConfig
from epo.envs import get_spec
from epo.envs.pool import EnvPool
from epo.models import load_model_and_tokenizer
from epo.rollout.backend import HFBackend
from epo.rollout.collector import Collector
from epo.rollout.types import SamplingParams

pytestmark = pytest.mark.integration
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "alfworld"  # the repository's own games


class ExpertBackend:
    def __init__(self, pool, prompts, tokenizer):
        self.pool, self.prompts, self.tokenizer, self.collector = pool, prompts, tokenizer, None

    def generate(self, prompts, params):
        experts = self.pool.expert_actions(self.collector.active_slots)
        return [
            self.tokenizer(self.prompts.response_text(experts[k]), add_special_tokens=False)["input_ids"]
            for k in self.collector.active_slots
        ]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer("tiny")
    cfg = AgentConfig(action_prefix=True, max_prompt_tokens=1024)
    prompts = PromptBuilder(tokenizer, cfg, list_older_actions=False, env_name="alfworld")
    ids = get_spec("alfworld").splits(data_dir=str(FIXTURE))["iid"]
    look = [t for t in ids if "look_at_obj" in t][:1]  # the hand-coded expert solves these reliably
    with EnvPool("alfworld", {"data_dir": str(FIXTURE)}, num_workers=2, mode="process", step_timeout_s=120) as pool:
        yield model, tokenizer, cfg, prompts, pool, look


def test_tiny_model_rollout_on_alfworld(setup):
    model, tokenizer, cfg, prompts, pool, look = setup
    collector = Collector(pool, HFBackend(model, tokenizer), prompts, tokenizer, cfg, max_turns=3)
    result = collector.collect(look, group_size=2, params=SamplingParams(temperature=1.0, max_new_tokens=8))
    assert [t.group_id for t in result.trajectories] == [0, 0]
    assert len(result.samples) == sum(t.length for t in result.trajectories) == 6
    for t in result.trajectories:
        turns = [s.turn_idx for s in result.samples if s.traj_id == t.traj_id]
        assert turns == [0, 1, 2]
        assert t.truncated_reason == "max_turns" and not t.won
    for s in result.samples:
        assert s.reward == pytest.approx(-0.1 if s.invalid else 0.0)


def test_expert_through_the_collector_wins_alfworld(setup):
    _, tokenizer, cfg, prompts, pool, look = setup
    backend = ExpertBackend(pool, prompts, tokenizer)
    collector = Collector(pool, backend, prompts, tokenizer, cfg, max_turns=50)
    backend.collector = collector
    result = collector.collect(look, group_size=1, params=SamplingParams())
    (traj,) = result.trajectories
    assert traj.won and not traj.truncated
    assert all(s.reward == pytest.approx(10.0) for s in result.samples)
    assert not any(s.invalid for s in result.samples)
