"""The collector end to end on the quest world: a scripted expert backend and the tiny random model."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
import torch

from epo.agent import PromptBuilder
from epo.config import AgentConfig
from epo.envs import get_spec, register
from epo.envs.pool import EnvPool
from epo.models import load_model_and_tokenizer
from epo.rollout.backend import HFBackend
from epo.rollout.collector import Collector, prompt_fit_metrics
from epo.rollout.evaluate import eval_task_ids, evaluate, wilson_interval
from epo.rollout.types import SamplingParams


class ExpertBackend:
    """Replays the env oracle's action for every active slot, in the exact response format RL trains on."""

    def __init__(self, pool, prompts: PromptBuilder, tokenizer):
        self.pool, self.prompts, self.tokenizer = pool, prompts, tokenizer
        self.collector: Collector | None = None

    def generate(self, prompts, params):
        experts = self.pool.expert_actions(self.collector.active_slots)
        texts = [self.prompts.response_text(experts[k]) for k in self.collector.active_slots]
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model_and_tokenizer("tiny")


@pytest.fixture(scope="module")
def pool():
    with EnvPool("quest", {"difficulty": "easy"}, num_workers=2, mode="inline") as p:
        yield p


def _expert_collector(pool, tokenizer, cfg: AgentConfig) -> Collector:
    """A collector whose backend replays the quest expert."""
    prompts = PromptBuilder(tokenizer, cfg, list_older_actions=False, env_name="quest")
    backend = ExpertBackend(pool, prompts, tokenizer)
    backend.collector = Collector(pool, backend, prompts, tokenizer, cfg, max_turns=40)
    return backend.collector


def test_expert_backend_wins_every_episode_through_the_collector(pool, tiny):
    cfg = AgentConfig(action_prefix=True, max_prompt_tokens=1024)
    collector = _expert_collector(pool, tiny[1], cfg)
    tasks = get_spec("quest").splits(difficulty="easy")["train"][:3]
    result = collector.collect(tasks, group_size=2, params=SamplingParams())
    trajs = result.trajectories
    assert len(trajs) == 6
    assert all(t.won and not t.truncated for t in trajs)
    assert [t.group_id for t in trajs] == [0, 0, 1, 1, 2, 2]
    assert [t.task_id for t in trajs] == [tasks[0], tasks[0], tasks[1], tasks[1], tasks[2], tasks[2]]
    # one sample per executed turn, turn indices 0..L-1, the episode return on every turn
    assert len(result.samples) == sum(t.length for t in trajs)
    for t in trajs:
        mine = [s for s in result.samples if s.traj_id == t.traj_id]
        assert [s.turn_idx for s in mine] == list(range(t.length))
        assert all(s.group_id == t.group_id for s in mine)
        assert all(s.reward == pytest.approx(cfg.win_reward) for s in mine)
        assert [s.done for s in mine] == [False] * (t.length - 1) + [True]
        assert not any(s.invalid for s in mine)
    # both copies of a task play the same deterministic game
    assert trajs[0].length == trajs[1].length


def test_random_model_rollout_is_consistent_and_penalised(pool, tiny):
    model, tokenizer = tiny
    cfg = AgentConfig(action_prefix=True, max_prompt_tokens=512, invalid_penalty=0.1)
    prompts = PromptBuilder(tokenizer, cfg, list_older_actions=False, env_name="quest")
    collector = Collector(pool, HFBackend(model, tokenizer, batch_size=8), prompts, tokenizer, cfg, max_turns=3)
    tasks = get_spec("quest").splits(difficulty="easy")["train"][:2]
    torch.manual_seed(1)
    result = collector.collect(tasks, group_size=2, params=SamplingParams(temperature=1.0, max_new_tokens=6))
    assert len(result.trajectories) == 4
    assert len(result.samples) == sum(t.length for t in result.trajectories)
    for t in result.trajectories:
        assert t.length <= 3
        if not t.won:  # a random model practically never wins; then it is cut at the turn limit
            assert t.truncated and t.truncated_reason == "max_turns" and t.length == 3
    for s in result.samples:
        assert 0 < len(s.response_ids) <= 6 + 1
        expected = (10.0 if result.trajectories[s.traj_id].won else 0.0) - (0.1 if s.invalid else 0.0)
        assert s.reward == pytest.approx(expected)
        assert s.shaping == pytest.approx(-0.1 if s.invalid else 0.0)  # the turn's own part (turn-level GAE)
    assert sum(s.invalid for s in result.samples) == sum(t.invalid_turns for t in result.trajectories)


def test_prompt_truncation_is_counted_per_trajectory_and_in_the_rollout_metrics(pool, tiny):
    # history_window=4 grows the prompt past 200 tokens after a few turns; 200 also cuts quest's action lists
    cfg = AgentConfig(action_prefix=True, max_prompt_tokens=200, history_window=4)
    collector = _expert_collector(pool, tiny[1], cfg)
    real_fit, calls = collector.prompts.fit, []
    shortened, cut = Counter(), Counter()

    def spy(task, obs, admissible, history, turn):  # the k-th prompt of a turn is active_slots[k]'s
        fit = real_fit(task, obs, admissible, history, turn)
        slot = collector.active_slots[calls.count(turn)]
        calls.append(turn)
        shortened[slot] += fit.shortened
        cut[slot] += fit.actions_cut
        return fit

    collector.prompts.fit = spy
    tasks = get_spec("quest").splits(difficulty="easy")["train"][:2]
    trajs = collector.collect(tasks, group_size=2, params=SamplingParams()).trajectories
    turns = sum(t.length for t in trajs)
    assert [t.shortened_prompts for t in trajs] == [shortened[t.traj_id] for t in trajs]
    assert [t.actions_cut_prompts for t in trajs] == [cut[t.traj_id] for t in trajs]
    assert 0 < sum(cut.values()) <= sum(shortened.values()) < turns  # the first turns fit whole
    assert prompt_fit_metrics(trajs) == {
        "rollout/prompt_shortened_rate": sum(shortened.values()) / turns,
        "rollout/prompt_actions_cut_rate": sum(cut.values()) / turns,
    }


def test_prompts_that_fit_count_no_truncation(pool, tiny):
    collector = _expert_collector(pool, tiny[1], AgentConfig(action_prefix=True, max_prompt_tokens=1024))
    trajs = collector.collect(
        get_spec("quest").splits(difficulty="easy")["train"][:2], 1, SamplingParams()
    ).trajectories
    assert all(t.shortened_prompts == t.actions_cut_prompts == 0 for t in trajs)
    assert set(prompt_fit_metrics(trajs).values()) == {0.0}


def test_evaluate_summarises_with_wilson_interval(pool, tiny):
    cfg = AgentConfig(action_prefix=True, max_prompt_tokens=1024)
    collector = _expert_collector(pool, tiny[1], cfg)
    ids = eval_task_ids(get_spec("quest").splits(difficulty="easy")["iid"], 5)
    res = evaluate(collector, "iid", ids, temperature=0.0, max_new_tokens=16, transcripts=2, seed=0)
    assert res.episodes == 5 and res.success == 1.0
    assert (res.ci_low, res.ci_high) == pytest.approx(wilson_interval(5, 5))
    assert len(res.transcripts) == 2 and res.transcripts[0][0]["obs"]
    assert sum(int(v["episodes"]) for v in res.per_type.values()) == 5


def test_wilson_interval_by_hand():
    # p = 0.5, n = 100, z = 1.96: center = (0.5 + 0.019208) / 1.038416 = 0.5; half = 1.96*sqrt(0.0025 + 0.00009604)/1.038416
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.5 - 0.0961, abs=1e-3) and hi == pytest.approx(0.5 + 0.0961, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] > 0.2


def test_fisher_one_sided_matches_hand_computed_tails():
    from epo.rollout.evaluate import fisher_one_sided

    assert fisher_one_sided(0, 8, 3, 8) == pytest.approx(56 / 560)  # C(8,3) / C(16,3)
    assert fisher_one_sided(0, 16, 6, 16) == pytest.approx(8008 / 906192)
    assert fisher_one_sided(1, 10, 6, 10) == pytest.approx((210 * 10 + 120) / 77520)  # scipy: 0.02864
    assert fisher_one_sided(3, 8, 3, 8) > 0.5  # no difference: not significant
    assert fisher_one_sided(0, 8, 0, 8) == 1.0


def test_oracle_samples_match_what_the_collector_builds_on_the_same_actions(pool, tiny):
    """Behaviour cloning trains on exactly the (prompt, response) pairs RL sees: token for token."""
    from epo.rollout.oracle import collect_oracle

    tokenizer = tiny[1]
    cfg = AgentConfig(action_prefix=True, max_prompt_tokens=1024, prompt_style="compact", thinking=False)
    tasks = get_spec("quest").splits(difficulty="easy")["train"][:2]
    collector = _expert_collector(pool, tokenizer, cfg)
    rl = collector.collect(tasks, group_size=1, params=SamplingParams()).samples
    oracle, _ = collect_oracle(pool, collector.prompts, tokenizer, tasks, max_turns=40)
    key = lambda s: (s.traj_id, s.turn_idx)  # noqa: E731
    assert len(rl) == len(oracle) > 10
    for a, b in zip(sorted(rl, key=key), sorted(oracle, key=key)):
        assert a.prompt_ids == b.prompt_ids, tokenizer.decode(a.prompt_ids) + "\n---\n" + tokenizer.decode(b.prompt_ids)
        assert a.response_ids == b.response_ids


class ScoredQuest:
    """The quest world with ScienceWorld's progress score in its infos: 100 on the win, else -10 after odd turns
    (a failed task's negative score) and 30 after even ones."""

    def __init__(self, **kwargs):
        self.env, self.turns = get_spec("quest").make(**kwargs), 0

    def reset(self, **kwargs):
        self.turns = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.turns += 1
        score = 100 if info["won"] else -10 if self.turns % 2 else 30
        return obs, reward, terminated, truncated, {**info, "score": score}

    def expert_action(self):
        return self.env.expert_action()

    def close(self):
        self.env.close()


def make_scored_quest(**kwargs) -> ScoredQuest:
    return ScoredQuest(**kwargs)


def test_the_episode_keeps_the_last_progress_score_and_evals_report_its_mean(tiny):
    quest = get_spec("quest")
    register(replace(quest, name="scored_quest_test", make=make_scored_quest))
    model, tokenizer = tiny
    cfg = AgentConfig(action_prefix=True, max_prompt_tokens=512)
    with EnvPool("scored_quest_test", {"difficulty": "easy"}, num_workers=1, mode="inline") as scored:
        prompts = PromptBuilder(tokenizer, cfg, list_older_actions=False, env_name="quest")
        collector = Collector(scored, HFBackend(model, tokenizer, batch_size=8), prompts, tokenizer, cfg, max_turns=2)
        tasks = quest.splits(difficulty="easy")["train"][:4]
        torch.manual_seed(2)
        result = evaluate(collector, "train", tasks, temperature=1.0, max_new_tokens=6, seed=3)
    # a lost episode is cut at the turn limit after turn 2: its score is the last turn's (30), not turn 1's (-10)
    expected = [100.0 if won else 30.0 for won in result.episode_wins]
    assert result.episode_scores == expected and result.mean_score == pytest.approx(sum(expected) / 4)
    assert f"mean score {result.mean_score:.1f}" in result.line()
