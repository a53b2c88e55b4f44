"""agent.reward: the built-in reward functions, a user's module:function, load-time validation, and the
collector handing each turn the reward the function chose."""

from __future__ import annotations

import pytest
import torch

from epo.agent import PromptBuilder
from epo.config import AgentConfig, ConfigError, load_config
from epo.envs.pool import EnvPool
from epo.models import load_model_and_tokenizer
from epo.rollout.collector import Collector
from epo.rollout.rewards import Episode, Rewards, TurnRecord, format_reward, paper_reward, score_reward
from epo.rollout.types import SamplingParams, Trajectory

AGENT = AgentConfig(invalid_penalty=0.1, format_bonus=0.05, win_reward=10.0)


def _episode(won: bool, turns: list[tuple[bool, bool]], scores: list[int] | None = None) -> Episode:
    """turns: (invalid, well_formed) per turn; scores: info['score'] after each turn."""
    records = [
        TurnRecord(i, "out", "act", invalid, well_formed, 0.0, {} if scores is None else {"score": scores[i]})
        for i, (invalid, well_formed) in enumerate(turns)
    ]
    traj = Trajectory(0, 0, "t", "k", length=len(turns), won=won)
    return Episode(traj, records)


def test_paper_reward_is_the_episode_return_plus_each_turns_own_penalty_or_bonus():
    out = paper_reward(_episode(True, [(True, False), (False, True), (True, True)]), AGENT)
    assert out.episode_return == 10.0
    assert out.turn_rewards == pytest.approx([9.9, 10.05, 9.9])
    assert paper_reward(_episode(False, [(False, True)]), AGENT).turn_rewards == pytest.approx([0.05])


def test_score_reward_uses_the_final_partial_score():
    out = score_reward(_episode(False, [(False, True), (True, True)], scores=[25, 40]), AGENT)
    assert out.episode_return == pytest.approx(4.0)
    assert out.turn_rewards == pytest.approx([4.05, 3.9])
    assert score_reward(_episode(True, [(False, True)], scores=[100]), AGENT).episode_return == 10.0
    failed = score_reward(_episode(False, [(False, True), (False, True)], scores=[50, -100]), AGENT)
    assert failed.episode_return == 0.0  # a failed ScienceWorld task scores < 0: no credit
    crashed = _episode(False, [(False, True), (False, True)], scores=[30, 0])
    crashed.turns[-1].info = {"error": "worker crashed"}  # the pool's info for a crashed worker has no score
    assert score_reward(crashed, AGENT).episode_return == pytest.approx(3.0)
    crashed.turns[0].info = {"error": "worker crashed"}
    crashed.turns = crashed.turns[:1]
    assert score_reward(crashed, AGENT).episode_return == 0.0
    with pytest.raises(RuntimeError, match="no info\\['score'\\]"):
        score_reward(_episode(False, [(False, True)]), AGENT)


def test_format_reward_pays_for_the_format_not_for_admissibility():
    # turn 0: no <action> tag; turn 1: well formed but not admissible (invalid); turn 2: valid
    out = format_reward(_episode(False, [(True, False), (True, True), (False, True)]), AGENT)
    assert out.turn_rewards == pytest.approx([-0.1, 0.05, 0.05])


def turn_index_reward(episode: Episode, agent: AgentConfig) -> Rewards:
    """Test reward: each turn gets its own index, the return is the number of turns."""
    return Rewards(float(len(episode.turns)), [float(t.turn_idx) for t in episode.turns])


def wrong_length_reward(episode: Episode, agent: AgentConfig) -> Rewards:
    return Rewards(0.0, [0.0])


def test_config_validates_the_reward_at_load():
    assert load_config(None, ["agent.reward=test_rewards:turn_index_reward"]).agent.reward.endswith("index_reward")
    for bad, message in [
        ("no_such_module_xyz:fn", "agent.reward: cannot import 'no_such_module_xyz'"),
        ("test_rewards:nope", "agent.reward: 'test_rewards' has no 'nope'"),
        ("shaped", "agent.reward: 'shaped' is not one of paper, score, format"),
    ]:
        with pytest.raises(ConfigError, match=message) as err:
            load_config(None, [f"agent.reward={bad}"])
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="agent.format_bonus: agent.reward=format needs a bonus > 0"):
        load_config(None, ["agent.reward=format"])


class ScriptedBackend:
    """Turn 0: no action tag; turn 1: a well-formed action that is not admissible."""

    def __init__(self, tokenizer):
        self.tokenizer, self.turn = tokenizer, 0

    def generate(self, prompts, params):
        text = ["I am not sure.", "<action>dance</action>"][min(self.turn, 1)]
        self.turn += 1
        return [self.tokenizer(text, add_special_tokens=False)["input_ids"] for _ in prompts]


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    return load_model_and_tokenizer("tiny")[1]


@pytest.mark.parametrize(
    "reward, expected, episode_return",
    [
        ("paper", [-0.1, -0.1], 0.0),
        ("format", [-0.1, 0.05], 0.0),
        ("test_rewards:turn_index_reward", [0.0, 1.0], 2.0),
    ],
)
def test_collector_gives_each_turn_the_chosen_reward(tokenizer, reward, expected, episode_return):
    cfg = load_config(None, [f"agent.reward={reward}", "agent.format_bonus=0.05", "agent.invalid_penalty=0.1"]).agent
    with EnvPool("quest", {"difficulty": "easy"}, num_workers=1, mode="inline") as pool:
        prompts = PromptBuilder(tokenizer, cfg, list_older_actions=False, env_name="quest")
        collector = Collector(pool, ScriptedBackend(tokenizer), prompts, tokenizer, cfg, max_turns=2)
        result = collector.collect(["train/00000"], group_size=2, params=SamplingParams())
    assert [s.reward for s in result.samples] == pytest.approx(expected * 2)
    assert [t.episode_return for t in result.trajectories] == [episode_return] * 2


def test_a_reward_function_returning_the_wrong_shape_is_named(tokenizer):
    cfg = load_config(None, ["agent.reward=test_rewards:wrong_length_reward"]).agent
    with EnvPool("quest", {"difficulty": "easy"}, num_workers=1, mode="inline") as pool:
        prompts = PromptBuilder(tokenizer, cfg, list_older_actions=False, env_name="quest")
        collector = Collector(pool, ScriptedBackend(tokenizer), prompts, tokenizer, cfg, max_turns=2)
        with pytest.raises(ValueError, match="wrong_length_reward returned 1 turn rewards for 2 turns"):
            collector.collect(["train/00000"], group_size=1, params=SamplingParams())
