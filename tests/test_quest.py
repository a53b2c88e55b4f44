"""The built-in quest world: rules, determinism, splits, and the exact expert."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import replace

import pytest

from epo.envs import get_spec
from epo.envs.quest import SPEC, make, parse_kwargs, solver
from epo.envs.quest.world import INVENTORY, Container, Game, World

SPLITS = ("train", "iid", "ood")


def play_expert(env, max_steps: int) -> tuple[int, float, list[str]]:
    """Follow the expert; returns (steps, total reward, actions)."""
    actions, total = [], 0.0
    for _ in range(max_steps):
        action = env.expert_action()
        actions.append(action)
        _, reward, terminated, truncated, info = env.step(action)
        total += reward
        assert info["valid"], action
        assert not truncated
        if terminated:
            assert info["won"] and reward == 1.0
            return len(actions), total, actions
        assert reward == 0.0
    raise AssertionError(f"expert did not win within {max_steps} steps: {actions}")


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_expert_solves_sampled_games_of_every_split_within_range(difficulty):
    config = parse_kwargs(difficulty=difficulty)
    env = make(difficulty=difficulty)
    for split in SPLITS:
        lo, hi = config.params(split).solution_len
        lengths = []
        for task_id in SPEC.splits(difficulty=difficulty)[split][:50]:
            _, info = env.reset(options={"task_id": task_id})
            steps, total, _ = play_expert(env, SPEC.max_turns)
            assert total == 1.0
            assert lo <= steps <= hi <= SPEC.max_turns, (task_id, steps)
            lengths.append(steps)
        assert max(lengths) > min(lengths)  # a family of games, not one game


def test_default_and_easy_lengths_match_the_documented_targets():
    for difficulty, (lo, hi) in {"easy": (6, 15), "medium": (10, 40)}.items():
        env = make(difficulty=difficulty)
        lengths = []
        for i in range(40):
            env.reset(options={"task_id": f"train/{i:05d}"})
            lengths.append(play_expert(env, 40)[0])
        assert lo <= min(lengths) and max(lengths) <= hi
        assert sum(lengths) / len(lengths) >= lo + 2  # not all trivially short


def trajectory(env, task_id: str, seed: int, steps: int = 12) -> list:
    obs, info = env.reset(options={"task_id": task_id})
    rng = random.Random(seed)
    out = [(obs, info["task"], tuple(info["admissible_actions"]))]
    for _ in range(steps):
        obs, reward, terminated, _, info = env.step(rng.choice(info["admissible_actions"]))
        out.append((obs, reward, tuple(info["admissible_actions"])))
        if terminated:
            break
    return out


def test_same_task_id_gives_same_game_and_different_ids_differ():
    a, b = make(), make()
    assert trajectory(a, "train/00017", seed=3) == trajectory(b, "train/00017", seed=3)
    starts = {trajectory(a, f"train/{i:05d}", seed=0, steps=0)[0] for i in range(50)}
    assert len(starts) >= 48
    assert trajectory(a, "train/00003", 0, 0) != trajectory(a, "iid/00003", 0, 0)
    assert trajectory(a, "iid/00003", 0, 0) != trajectory(a, "ood/00003", 0, 0)


def test_expert_is_closed_loop_after_random_actions():
    env = make()
    rng = random.Random(0)
    for i in range(30):
        task_id = f"train/{i:05d}"
        env.reset(options={"task_id": task_id})
        optimal = play_expert(env, 40)[0]
        _, info = env.reset(options={"task_id": task_id})
        k = rng.randint(1, 15)
        for _ in range(k):
            _, _, terminated, _, info = env.step(rng.choice(info["admissible_actions"]))
            if terminated:
                break
        else:
            # any random action is undone by at most one action (go back, reopen, take back) or is harmless
            assert play_expert(env, 60)[0] <= optimal + k


def test_invalid_action_is_flagged_and_changes_nothing():
    env = make()
    _, info = env.reset(options={"task_id": "train/00005"})
    look_before = env.step("look")[0]
    obs, reward, terminated, truncated, info2 = env.step("fly to the moon")
    assert "can't" in obs and "fly to the moon" in obs
    assert (reward, terminated, truncated, info2["valid"], info2["won"]) == (0.0, False, False, False, False)
    assert info2["admissible_actions"] == info["admissible_actions"]
    assert env.step("look")[0] == look_before
    assert env.step("  LOOK ")[4]["valid"]  # case and spaces are normalised


def test_every_admissible_action_is_valid():
    env = make(difficulty="hard")
    rng = random.Random(1)
    for i in range(10):
        _, info = env.reset(options={"task_id": f"ood/{i:05d}"})
        for _ in range(15):
            for action in info["admissible_actions"]:
                assert env.world.copy().act(action)[1], action
            _, _, terminated, _, info = env.step(rng.choice(info["admissible_actions"]))
            if terminated:
                break


def test_observations_and_action_lists_stay_compact():
    env = make()
    sizes, words = [], []
    for i in range(30):
        obs, info = env.reset(options={"task_id": f"train/{i:05d}"})
        while not info["won"]:
            sizes.append(len(info["admissible_actions"]))
            words.append(len(obs.split()))
            obs, _, _, _, info = env.step(env.expert_action())
    assert 3 <= sum(sizes) / len(sizes) <= 15 and max(sizes) <= 30
    assert max(words) <= 80


def hand_game() -> Game:
    """hall (start) -east-> kitchen behind a red door; the red key is in the closed chest in the hall."""
    return Game(
        task_id="train/00000", task_type="fetch", task="Put the golden crown in the trophy case.",
        rooms=["hall", "kitchen"], exits=[{"east": 1}, {"west": 0}], door_keys={(0, 1): "red key"},
        containers={"chest": Container("chest", 0), "trophy case": Container("trophy case", 0)},
        items={"red key": "chest", "golden crown": 1, "apple": 0}, goal_item="golden crown", target="trophy case",
    ).index()  # fmt: skip


def test_hand_built_game_text_rules_and_plan():
    world = World(hand_game())
    assert world.describe() == (
        "You are in the hall. You see a closed chest, a closed trophy case, an apple. Exits: east (locked red door)."
    )
    assert sorted(world.actions) == ["inventory", "look", "open chest", "open trophy case", "take apple"]
    plan = solver.plan(world)
    # open chest, take red key, unlock, go east, take crown, go west, open trophy case, put = 8 (by hand)
    assert len(plan) == 8 and plan[-1] == "put golden crown in trophy case"
    for action in plan:
        assert not world.won
        _, valid = world.act(action)
        assert valid
    assert world.won and world.loc["golden crown"] == "trophy case" and world.loc["red key"] == INVENTORY


def test_wrong_key_does_nothing_and_reward_only_on_the_winning_step():
    game = hand_game()
    game.items["blue key"] = 0
    env = make()
    env._world = World(game)  # play the hand-built game through the TextEnv interface
    for action in ("take blue key", "open chest", "take red key"):
        env.step(action)
    obs, reward, _, _, info = env.step("unlock east door with blue key")
    assert info["valid"] and "does not fit" in obs and "go east" not in info["admissible_actions"]
    rewards = [env.step(a)[1] for a in solver.plan(env.world)]
    assert rewards[-1] == 1.0 and sum(rewards) == 1.0
    obs, reward, terminated, _, info = env.step("look")
    assert (reward, terminated, info["valid"]) == (0.0, True, False)


def _bfs_length(world: World) -> int:
    """Brute-force shortest winning length over primitive actions (puts other than the final one pruned:
    they only move an item away from where it is needed, so they never shorten a plan)."""
    g = world.game
    final_put = f"put {g.goal_item} in {g.target}"

    def key(w: World) -> tuple:
        return (w.room, frozenset(w.unlocked), frozenset(w.opened), tuple(sorted(w.loc.items())))

    seen, queue = {key(world)}, deque([(world, 0)])
    while queue:
        w, depth = queue.popleft()
        for action in list(w.actions):
            if action.startswith("put") and action != final_put:
                continue
            nxt = w.copy()
            nxt.act(action)
            if nxt.won:
                return depth + 1
            if key(nxt) not in seen:
                seen.add(key(nxt))
                queue.append((nxt, depth + 1))
    raise AssertionError("unsolvable")


def test_expert_plan_is_shortest_against_brute_force():
    env = make(difficulty="easy", junk=1, containers=1, distractor_keys=0)
    for task_id in [f"train/{i:05d}" for i in range(8)] + [f"ood/{i:05d}" for i in range(4)]:  # 1 and 2 locks
        env.reset(options={"task_id": task_id})
        assert len(solver.plan(env.world)) == _bfs_length(env.world)


def test_splits_kwargs_and_errors():
    assert get_spec("quest") is SPEC and SPEC.max_turns == 40
    sizes = {k: len(v) for k, v in SPEC.splits().items()}
    assert sizes == {"train": 2000, "iid": 200, "ood": 200}
    kwargs = {"difficulty": "easy", "num_train": 7, "rooms": [3, 5]}
    assert SPEC.splits(**kwargs)["train"][-1] == "train/00006"
    window = SPEC.splits(difficulty="easy", num_iid=4, first_iid=4)["iid"]  # another fixed set of practised games
    assert window == ["iid/00004", "iid/00005", "iid/00006", "iid/00007"]
    with pytest.raises(ValueError, match="first_iid must be a non-negative int"):
        SPEC.splits(first_iid=-1)
    obs, info = SPEC.make(**kwargs).reset(options={"task_id": "ood/00001"})
    assert info["task_type"] in ("fetch", "craft") and obs.startswith("You are in the")
    with pytest.raises(ValueError, match="unknown difficulty"):
        SPEC.make(difficulty="nightmare")
    with pytest.raises(ValueError, match="unknown env kwargs"):
        SPEC.splits(colour="red")
    with pytest.raises(ValueError, match="rooms"):
        SPEC.make(rooms=[5, 2])
    with pytest.raises(ValueError, match="bad task id"):
        make().reset(options={"task_id": "test/1"})


def _explorer_run(world: World, max_steps: int = 80) -> list[str]:
    from epo.envs.quest.explorer import explorer_action

    actions = []
    while not world.won and len(actions) < max_steps:
        action = explorer_action(world)
        _, valid = world.act(action)
        assert valid, action
        actions.append(action)
    return actions


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_explorer_wins_every_sampled_game_with_valid_actions(difficulty):
    env = make(difficulty=difficulty, expert="explorer")
    for k in range(40):
        env.reset(options={"task_id": f"iid/{k:05d}"})
        exact = len(solver.plan(env.world.copy()))
        actions = _explorer_run(env.world)
        assert env.world.won, (difficulty, k, actions)
        assert len(actions) >= exact  # it can only be as short as the shortest plan


def _first_difference(game_a: Game, game_b: Game, policy) -> tuple[int, World]:
    """Play `policy` in both games in lockstep; return the step where the actions first differ, and world a."""
    a, b = World(game_a), World(game_b)
    for step in range(80):
        if a.won:
            return step, a
        act_a, act_b = policy(a), policy(b)
        if act_a != act_b:
            return step, a
        a.act(act_a)
        b.act(act_b)
    return 80, a


def test_explorer_acts_only_on_what_it_has_seen():
    """Swap the contents of two containers: the explorer must act identically until it looks into one of them.

    The exact solver (which knows where everything is) fails the same check on some games, so the check has teeth."""
    from epo.envs.quest.explorer import explorer_action

    config = parse_kwargs(difficulty="medium")
    exact_leaks = checked = 0
    for k in range(30):
        game = make(difficulty="medium")._game(f"train/{k:05d}")
        # keys stay put (moving one behind its own lock would make the game unsolvable)
        full = sorted({where for item, where in game.items.items() if isinstance(where, str) and "key" not in item})
        if len(full) < 2:
            continue
        c1, c2 = full[0], full[1]
        swap = {c1: c2, c2: c1}
        items = {item: where if "key" in item else swap.get(where, where) for item, where in game.items.items()}
        swapped = replace(game, items=items)
        checked += 1
        step, world = _first_difference(game, swapped, explorer_action)
        assert c1 in world.looked_in or c2 in world.looked_in or world.won, (k, step)
        step, world = _first_difference(game, swapped, lambda w: solver.plan(w)[0])
        exact_leaks += not (c1 in world.looked_in or c2 in world.looked_in or world.won)
    assert checked >= 10 and exact_leaks > 0
    assert config.expert == "exact"  # the default expert stays the shortest-plan one
