"""ALFWorld: game conversion and splits (no alfworld needed), then the real engine + hand-coded expert.

All tests run on the repository's fixture games (tests/fixtures/alfworld: one game per task type and split), so a
bare clone passes them; only the check of the full splits' sizes needs the full data. The played games were checked
to be won by alfworld's hand-coded expert (seeded: its random choices are reproducible) in at most 12 steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from epo.envs import alfworld_games, make_env
from epo.envs.alfworld import SPEC, AlfWorldEnv
from epo.envs.alfworld_games import (
    GAME_FILE,
    JSON_DIR,
    GameCache,
    convert_game,
    find_data_dir,
    list_task_ids,
    task_type,
)
from epo.envs.testing import check_env
from epo.errors import EpoError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "alfworld"
FAKE_HELP = '\naction help {\n    template :: "help";\n}\n'
# two games per split: a "look" and a "pick" game, the task types the hand-coded expert solves reliably
PLAYED = {
    "train": [
        "valid_train/look_at_obj_in_light-Book-None-DeskLamp-302/trial_T20190909_085137_911990",
        "valid_train/pick_and_place_simple-AlarmClock-None-Dresser-319/trial_T20190910_195319_108102",
    ],
    "iid": [
        "valid_seen/look_at_obj_in_light-AlarmClock-None-DeskLamp-323/trial_T20190909_044715_250790",
        "valid_seen/pick_and_place_simple-CellPhone-None-ArmChair-318/trial_T20190909_120047_968274",
    ],
    "ood": [
        "valid_unseen/look_at_obj_in_light-AlarmClock-None-DeskLamp-308/trial_T20190908_222917_366542",
        "valid_unseen/pick_and_place_simple-Mug-None-Desk-308/trial_T20190909_210238_431966",
    ],
}
ONE_GAME = PLAYED["iid"][0]


# ---- no alfworld needed ----
def test_conversion_applies_the_four_edits_once():
    source = json.loads((find_data_dir(FIXTURE) / JSON_DIR / ONE_GAME / GAME_FILE).read_text())
    assert source["grammar"].count("put {o} in/on {r}") == 2  # PutObject + PutEmptyReceptacleObjectinReceptacle
    game = convert_game(source, FAKE_HELP)
    domain, grammar = game["pddl_domain"], game["grammar"]
    assert domain.count("(:action help") == 1 and "(checked ?a)" in domain
    assert domain.rstrip().endswith(")") and domain.index("(:action help") > domain.index("(:action SliceObject")
    assert "{lend.name}" not in grammar and "You arrive at {r.name}." in grammar
    assert "put {o} in/on {r}" not in grammar and grammar.count('"move {o} to {r}"') == 2
    assert "You put the {o.name} in/on the {r.name}." not in grammar
    assert "You move the {o.name} to the {r.name}." in grammar
    assert grammar.endswith(FAKE_HELP)
    assert game["pddl_problem"] == source["pddl_problem"]  # untouched
    assert convert_game(game, FAKE_HELP) == game  # idempotent: a 2.1.2 file is left as it is


def test_game_cache_converts_on_first_use_only(tmp_path):
    cache = GameCache(find_data_dir(FIXTURE), FAKE_HELP, tmp_path)
    path = cache.game_file(ONE_GAME)
    assert path == tmp_path / ONE_GAME / GAME_FILE and (path.parent / "traj_data.json").is_file()
    assert list(tmp_path.rglob(GAME_FILE)) == [path]  # one game converted, not the split
    mtime = path.stat().st_mtime_ns
    assert cache.game_file(ONE_GAME).stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="unknown ALFWorld task id"):
        cache.game_file("valid_seen/../../etc")


def test_fixture_splits_and_task_types():
    splits = SPEC.splits(data_dir=str(FIXTURE))
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "iid": 6, "ood": 6}
    kinds = {"pick", "look", "clean", "heat", "cool", "pick_two"}
    assert all(sorted(task_type(t) for t in ids) == sorted(kinds) for ids in splits.values())  # one game per type
    assert all(t in splits[split] for split, games in PLAYED.items() for t in games)
    assert all(t.startswith("valid_train/") for t in splits["train"])
    assert task_type(PLAYED["ood"][1]) == "pick"
    with pytest.raises(ValueError, match="not an ALFWorld task id"):
        task_type("boil/3")


def test_full_splits_and_task_types():
    try:
        data_dir = find_data_dir()
    except FileNotFoundError:
        pytest.skip("full ALFWorld data not found (alfworld-download, $ALFWORLD_DATA or ../shared): fixture-only run")
    splits = SPEC.splits(data_dir=str(data_dir))
    assert {k: len(v) for k, v in splits.items()} == {"train": 200, "iid": 140, "ood": 134}
    assert all(t.startswith("valid_train/") for t in splits["train"])
    assert not set(splits["iid"]) & set(splits["ood"])
    counts = {kind: sum(task_type(t) == kind for t in splits["iid"]) for kind in ("pick", "look", "clean")}
    assert counts == {"pick": 35, "look": 13, "clean": 27}  # valid_seen per-type counts from the data README


def test_missing_data_gives_a_one_line_error(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"ALFWorld data not found: .* has no json_2.1.1/") as err:
        AlfWorldEnv(data_dir=str(tmp_path))
    assert "\n" not in str(err.value)
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))  # a wrong $ALFWORLD_DATA falls back to ../shared
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/alfworld
    repo, shared = tmp_path / "work" / "repo", tmp_path / "work" / "shared" / "data" / "alfworld"
    repo.mkdir(parents=True)
    shared.mkdir(parents=True)
    (shared / JSON_DIR).symlink_to(FIXTURE / JSON_DIR)
    monkeypatch.setattr(Path, "cwd", lambda: repo)
    monkeypatch.setattr(alfworld_games, "__file__", str(tmp_path / "src/epo/envs/alfworld_games.py"))
    assert find_data_dir() == shared.resolve()
    (shared / JSON_DIR).unlink()
    with pytest.raises(FileNotFoundError, match="ALFWorld data not found .*: run `alfworld-download`") as err:
        SPEC.splits()
    assert "\n" not in str(err.value) and "ALFWORLD_DATA" in str(err.value)
    assert isinstance(err.value, EpoError)  # so `epo train` says it in one line, not a traceback
    assert list_task_ids(tmp_path) == {"train": [], "iid": [], "ood": []}


# ---- the real engine ----
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = AlfWorldEnv(data_dir=str(FIXTURE), cache_dir=str(tmp_path_factory.mktemp("alfworld_cache")))
    yield env
    env.close()


def _check_info(info: dict, step: bool) -> None:
    assert isinstance(info["task"], str) and info["task"]
    assert isinstance(info["task_type"], str)
    assert isinstance(info["won"], bool)
    assert isinstance(info["admissible_actions"], list) and all(isinstance(a, str) for a in info["admissible_actions"])
    assert "help" not in info["admissible_actions"] and "look" in info["admissible_actions"]
    if step:
        assert isinstance(info["valid"], bool)


@pytest.mark.integration
@pytest.mark.parametrize("split", list(PLAYED))
def test_expert_wins_games_of_every_split(env, split):
    for task_id in PLAYED[split]:
        obs, info = env.reset(options={"task_id": task_id})
        _check_info(info, step=False)
        assert "Welcome to TextWorld" not in obs and f"Your task is to: {info['task']}" in obs
        assert info["task_type"] == task_type(task_id)
        for _ in range(20):
            action = env.expert_action()
            assert action in info["admissible_actions"]
            obs, reward, terminated, truncated, info = env.step(action)
            _check_info(info, step=True)
            assert info["valid"] and not truncated and terminated == info["won"]
            assert reward == (1.0 if info["won"] else 0.0)
            if terminated:
                break
        assert info["won"], f"expert did not win {task_id}"
        assert env.expert_action() is None  # nothing left to do


@pytest.mark.integration
def test_invalid_action_and_deterministic_reset(env):
    obs1, info1 = env.reset(options={"task_id": ONE_GAME})
    obs, reward, terminated, truncated, info = env.step("fly to the moon")
    assert obs == "Nothing happens." and not info["valid"] and reward == 0.0 and not terminated and not truncated
    assert info["admissible_actions"] == info1["admissible_actions"]
    _, _, _, _, info = env.step("  Go To  DESK 1 ")  # case and spacing are normalised before matching
    assert info["valid"] and info["admissible_actions"] != info1["admissible_actions"]  # at the desk now
    obs2, info2 = env.reset(options={"task_id": ONE_GAME})  # same game: the engine restarts without reloading
    assert obs2 == obs1 and info2["admissible_actions"] == info1["admissible_actions"]
    env.reset(options={"task_id": PLAYED["iid"][1]})
    obs2, info2 = env.reset(options={"task_id": ONE_GAME})
    assert obs2 == obs1 and info2["admissible_actions"] == info1["admissible_actions"]
    assert info2["task"] == "look at alarmclock under the desklamp."


@pytest.mark.integration
def test_registry_make_with_no_kwargs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("ALFWORLD_DATA", str(FIXTURE))  # alfworld's own convention finds the data
    env = make_env("alfworld")
    obs, info = env.reset(seed=3)  # no task id: a seeded pick from the train split
    assert info["task"] and info["admissible_actions"]
    assert list((tmp_path / "epo" / "alfworld").glob(f"*/valid_train/*/*/{GAME_FILE}"))
    env.close()


def test_without_full_data_epo_envs_says_where_to_get_it(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from epo import cli

    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(Path, "cwd", lambda: tmp_path)
    monkeypatch.setattr(alfworld_games, "__file__", str(tmp_path / "src/epo/envs/alfworld_games.py"))
    monkeypatch.setattr(cli.console, "width", 1000)  # one table row per env, unwrapped
    result = CliRunner().invoke(cli.app, ["envs"])
    assert result.exit_code == 0
    (row,) = [line for line in result.output.splitlines() if "alfworld" in line and "unavailable" in line]
    assert "ALFWorld data not found" in row and "alfworld-download" in row and "data_dir" in row


@pytest.mark.integration
def test_passes_the_public_conformance_check(tmp_path):
    report = check_env(SPEC, {"data_dir": str(FIXTURE), "cache_dir": str(tmp_path)}, task_ids=[ONE_GAME])
    assert report.expert_wins == report.expert_episodes == 1
