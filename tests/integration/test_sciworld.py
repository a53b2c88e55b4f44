"""ScienceWorld: splits and the compact action list (no JVM), then the real simulator and its gold paths.

The played variations have gold paths of 8-12 actions; one JVM serves the whole module.
"""

from __future__ import annotations

import os

import pytest

from epo.envs import make_env
from epo.envs.sciworld import SPEC, SciWorldEnv, compact_actions, parse_task_id, sciworld_splits
from epo.envs.testing import check_env

PLAYED = {  # split -> a variation with a short gold path
    "train": "find-animal/0",
    "iid": "find-animal/150",
    "ood": "find-animal/274",
    "l2_train": "find-animal/28",
    "l2_test": "find-plant/274",
}


# ---- no JVM needed ----
def test_splits_match_the_reference_lists():
    splits = SPEC.splits()
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"train": 3322, "iid": 1661, "ood": 1684, "l2_train": 2242, "l2_test": 549}  # data README
    train, iid, ood = (set(splits[k]) for k in ("train", "iid", "ood"))
    assert not train & iid and not train & ood and not iid & ood
    assert {parse_task_id(t)[0] for t in splits["l2_test"]} & {parse_task_id(t)[0] for t in splits["l2_train"]} == set()
    for split, task_id in PLAYED.items():
        assert task_id in splits[split]


def test_task_id_parsing():
    assert parse_task_id("boil/3") == ("boil", 3)
    assert parse_task_id("chemistry-mix-paint-secondary-color/12") == ("chemistry-mix-paint-secondary-color", 12)
    for bad in ("boil", "boil/x", "/3", "3"):
        with pytest.raises(ValueError, match="not a ScienceWorld task id"):
            parse_task_id(bad)


def test_compact_actions_groups_caps_and_orders_by_verb():
    valid = [
        "look at b", "focus on a", "focus on b", "focus on c", "move a to b", "reset task",
        "look around", "focus on a", "teleport to kitchen", "0", "open door", "inventory",
    ]  # fmt: skip
    assert compact_actions(valid, per_verb=2) == [
        "0", "look around", "inventory", "teleport to kitchen", "open door", "focus on a", "focus on b",
        "move a to b", "look at b",
    ]  # fmt: skip
    assert len(compact_actions(valid, per_verb=None)) == 10  # 12 - duplicate "focus on a" - "reset task"


def test_missing_splits_file_gives_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ScienceWorld splits file not found") as err:
        sciworld_splits(splits_file=str(tmp_path / "splits.json"))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="action_list must be"):
        SciWorldEnv(action_list="everything")


# ---- the real simulator ----
@pytest.fixture(scope="module")
def env():
    env = make_env("sciworld")  # no kwargs needed
    yield env
    env.close()


@pytest.mark.integration
@pytest.mark.parametrize("split", list(PLAYED))
def test_gold_path_wins_a_task_of_every_split(env, split):
    obs, info = env.reset(options={"task_id": PLAYED[split]})
    assert info["task"].startswith("Your task is to") and info["task_type"] == parse_task_id(PLAYED[split])[0]
    assert isinstance(info["score"], int) and not info["won"] and "valid" not in info
    assert "look around" in info["admissible_actions"] and "reset task" not in info["admissible_actions"]
    assert "focus on OBJ" in info["action_templates"] and "agent" in info["objects"]
    for _ in range(20):
        action = env.expert_action()
        assert isinstance(action, str)
        obs, reward, terminated, truncated, info = env.step(action)
        assert info["valid"] and not truncated and isinstance(obs, str)
        assert terminated == info["won"] and reward == (1.0 if info["won"] else 0.0)
        if terminated:
            break
    assert info["won"] and info["score"] == 100
    assert env.expert_action() is None


@pytest.mark.integration
def test_invalid_action_deviation_and_deterministic_reset(env):
    obs1, info1 = env.reset(options={"task_id": "find-animal/150"})
    assert isinstance(env.expert_action(), str)
    obs, reward, terminated, truncated, info = env.step("fly to the moon")
    assert obs == "No known action matches that input." and not info["valid"] and reward == 0.0
    assert not terminated and not truncated
    assert env.expert_action() is None  # open loop: the agent left the gold path
    _, _, _, _, info = env.step("reset task")
    assert not info["valid"]
    obs2, info2 = env.reset(options={"task_id": "find-animal/150"})
    assert obs2 == obs1 and info2["admissible_actions"] == info1["admissible_actions"]
    assert isinstance(env.expert_action(), str)  # a new episode: back on a (freshly drawn) gold path


@pytest.mark.integration
def test_expert_asked_mid_episode_replays_to_the_same_state(env):
    actions = ["open door to kitchen", "go to kitchen", "look around"]
    env.reset(options={"task_id": "find-animal/0"})
    plain = [env.step(a) for a in actions]
    env.reset(options={"task_id": "find-animal/0"})
    env.step(actions[0])
    env.expert_action()  # makes the gold path now: reload with gold generation, replay the first action
    replayed = [plain[0]] + [env.step(a) for a in actions[1:]]
    for (obs_a, *_, info_a), (obs_b, *_, info_b) in zip(plain, replayed):
        assert obs_a == obs_b and info_a["admissible_actions"] == info_b["admissible_actions"]
        assert info_a["score"] == info_b["score"]


@pytest.mark.integration
def test_bad_task_ids(env):
    with pytest.raises(ValueError, match="unknown ScienceWorld task 'boiling'"):
        env.reset(options={"task_id": "boiling/1"})
    with pytest.raises(ValueError, match=r"has variations 0\.\.\d+, got 100000"):
        env.reset(options={"task_id": "boil/100000"})


@pytest.mark.integration
def test_close_stops_the_jvm():
    env = SciWorldEnv()
    env.reset(options={"task_id": PLAYED["train"]})
    process = env._sim._gateway.java_process
    env.close()
    assert process.poll() is not None
    env.close()  # twice is fine


def test_jvm_options_reach_the_jvm_as_java_tool_options_and_are_restored(monkeypatch):
    from epo.envs.sciworld import _java_tool_options

    monkeypatch.delenv("JAVA_TOOL_OPTIONS", raising=False)
    with _java_tool_options("-Xmx1g"):
        assert os.environ["JAVA_TOOL_OPTIONS"] == "-Xmx1g"
    assert "JAVA_TOOL_OPTIONS" not in os.environ
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Xmx2g")  # the user's: after ours, so theirs win
    with _java_tool_options("-Xmx1g"):
        assert os.environ["JAVA_TOOL_OPTIONS"] == "-Xmx1g -Xmx2g"
    assert os.environ["JAVA_TOOL_OPTIONS"] == "-Xmx2g"


@pytest.mark.integration
def test_the_jvm_runs_with_the_capped_heap():
    env = SciWorldEnv(jvm_options="-Xmx300m -XX:+UseSerialGC")
    env.reset(options={"task_id": PLAYED["train"]})
    runtime = env._sim._gateway.jvm.java.lang.Runtime.getRuntime()
    assert runtime.maxMemory() <= 300 * 2**20
    env.close()


@pytest.mark.integration
def test_passes_the_public_conformance_check():
    report = check_env(SPEC, task_ids=[PLAYED["iid"]])
    assert report.expert_wins == report.expert_episodes == 1


@pytest.mark.integration
def test_score_reward_reads_the_partial_score_the_env_reports(env):
    from epo.config import AgentConfig
    from epo.rollout.rewards import Episode, TurnRecord, scalar_info, score_reward
    from epo.rollout.types import Trajectory

    env.reset(options={"task_id": PLAYED["train"]})
    turns = []
    while not turns or turns[-1].info["score"] <= 0:  # follow the gold path until it has partial credit
        obs, reward, terminated, _, info = env.step(env.expert_action())
        turns.append(TurnRecord(len(turns), "", "", False, True, reward, scalar_info(info)))
        assert not terminated and len(turns) < 20
    episode = Episode(Trajectory(0, 0, PLAYED["train"], "find-animal", length=len(turns)), turns)
    rewards = score_reward(episode, AgentConfig(win_reward=10.0, format_bonus=0.0))
    assert 0 < rewards.episode_return < 10 and rewards.episode_return == turns[-1].info["score"] / 10
