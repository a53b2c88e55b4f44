"""PromptBuilder: layout, history window, older-action listing, caps, action prefix, truncation order and limit."""

from __future__ import annotations

import random

import pytest

from epo.agent import PromptBuilder, parse_action
from epo.config import AgentConfig

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TASK = "put a clean mug in coffeemachine"
OBS = "You arrive at countertop 1. On the countertop 1, you see a mug 1, and a knife 2."
ACTIONS = ["go to cabinet 1", "take mug 1 from countertop 1", "take knife 2 from countertop 1", "look", "inventory"]
HISTORY = [(f"observation number {i} here", f"action number {i}") for i in range(1, 6)]  # steps 1..5


@pytest.fixture(scope="module")
def tokenizer():
    """A small byte-level BPE tokenizer with a ChatML template, trained in code (no downloads, < 1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from epo.agent.prompt import DEFAULT_ROLE, FORMAT_ACTION_ONLY, FORMAT_THINKING

    texts = [TASK, OBS, *ACTIONS, DEFAULT_ROLE, FORMAT_ACTION_ONLY, FORMAT_THINKING, "Your admissible actions are:"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|im_end|>")
    tok.chat_template = CHATML
    return tok


def builder(tokenizer, list_older_actions=False, env_name="", **agent):
    return PromptBuilder(tokenizer, AgentConfig(**agent), list_older_actions=list_older_actions, env_name=env_name)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def user_part(text: str) -> str:
    start = text.index("<|im_start|>user\n") + len("<|im_start|>user\n")
    return text[start : text.index("<|im_end|>", start)]


def test_first_turn_layout_follows_the_chat_template(tokenizer):
    text = builder(tokenizer, env_name="alfworld").build_text(TASK, OBS, ACTIONS, [], 0)
    assert text.startswith("<|im_start|>system\nYou are an expert agent operating in the ALFRED Embodied Environment")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    user = user_part(text)
    assert user.startswith(f"Your task is to: {TASK}\n")
    assert "You are now at step 1." in user and "Prior to this step" not in user
    assert f"Your current observation is:\n{OBS}\n" in user
    assert "Your admissible actions in the current situation are:\n" + "\n".join(ACTIONS) + "\n" in user
    assert "<action> </action>" in user and "<think>" not in user  # thinking is off by default


def test_ids_are_the_tokenized_text(tokenizer):
    pb = builder(tokenizer)
    text = pb.build_text(TASK, OBS, ACTIONS, HISTORY, 5)
    assert pb.build(TASK, OBS, ACTIONS, HISTORY, 5) == tokenizer(text, add_special_tokens=False)["input_ids"]
    user = user_part(text)
    messages = [{"role": "system", "content": pb.system}, {"role": "user", "content": user}]
    assert text == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_history_window_shows_last_pairs_in_full(tokenizer):
    user = user_part(builder(tokenizer, history_window=2).build_text(TASK, OBS, ACTIONS, HISTORY, 5))
    assert "Prior to this step, you have already taken 5 step(s)." in user
    assert "[Step 4] Observation: observation number 4 here\n[Step 4] Action: action number 4" in user
    assert "[Step 5] Observation: observation number 5 here\n[Step 5] Action: action number 5" in user
    for i in (1, 2, 3):
        assert f"number {i}" not in user  # neither observation nor action of older steps
    assert "You are now at step 6." in user


def test_list_older_actions_lists_every_older_action(tokenizer):
    user = user_part(builder(tokenizer, list_older_actions=True).build_text(TASK, OBS, ACTIONS, HISTORY, 5))
    assert "Step 1 action: action number 1\nStep 2 action: action number 2\nStep 3 action: action number 3\n" in user
    assert "observation number 3" not in user and "Step 4 action:" not in user  # step 4 is shown in full instead
    assert "[Step 4] Observation: observation number 4 here" in user


def test_history_window_zero_and_step_numbers_of_a_partial_history(tokenizer):
    user = user_part(builder(tokenizer, history_window=0).build_text(TASK, OBS, ACTIONS, HISTORY, 5))
    assert "number" not in user and "already taken 5 step(s)" in user
    # history shorter than turn_idx (caller kept only the last 2 pairs): numbered as steps 4 and 5 of 5
    user = user_part(builder(tokenizer).build_text(TASK, OBS, ACTIONS, HISTORY[-2:], 5))
    assert "[Step 4] Observation: observation number 4 here" in user and "You are now at step 6." in user


def test_admissible_cap_keeps_order_and_says_how_many_are_hidden(tokenizer):
    user = user_part(builder(tokenizer, max_admissible_actions=2).build_text(TASK, OBS, ACTIONS, [], 0))
    assert "are:\ngo to cabinet 1\ntake mug 1 from countertop 1\n(... and 3 more not shown)\n" in user
    assert "look" not in user
    user = user_part(builder(tokenizer).build_text(TASK, OBS, [], [], 0))
    assert "are:\n(none listed)\n" in user


def test_action_prefix_prompt_and_response_round_trip(tokenizer):
    pb = builder(tokenizer, action_prefix=True, thinking=True)  # thinking is ignored with the prefix
    text = pb.build_text(TASK, OBS, ACTIONS, [], 0)
    assert text.endswith("<|im_start|>assistant\n<action>")
    assert "<think>" not in text
    response = pb.response_text("take mug 1 from countertop 1", thought="ignored")
    assert response == "take mug 1 from countertop 1</action>"
    assert parse_action(response, ACTIONS, action_prefix=True).action == "take mug 1 from countertop 1"


@pytest.mark.parametrize("thinking", [False, True])
def test_response_text_is_what_the_parser_reads(tokenizer, thinking):
    pb = builder(tokenizer, thinking=thinking)
    user = user_part(pb.build_text(TASK, OBS, ACTIONS, [], 0))
    assert ("<think> </think>" in user) == thinking
    expected = "<think>the mug is here</think>\n<action>look</action>" if thinking else "<action>look</action>"
    assert pb.response_text("look", thought=" the mug is here ") == expected
    for action in ACTIONS:
        parsed = parse_action(pb.response_text(action, thought="<action>inventory</action>"), ACTIONS)
        assert parsed.valid and parsed.action == action


def test_limit_too_small_for_the_fixed_part_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="max_prompt_tokens=20 is too small"):
        builder(tokenizer, max_prompt_tokens=20)


def test_no_chat_template_is_a_clear_error(tokenizer):
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    plain.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        builder(plain)


def full_length(tokenizer, **agent) -> int:
    return len(builder(tokenizer, **agent).build(TASK, OBS, ACTIONS, HISTORY, 5))


def test_truncation_drops_the_oldest_full_entry_first(tokenizer):
    limit = full_length(tokenizer, list_older_actions=True) - 1
    pb = builder(tokenizer, list_older_actions=True, max_prompt_tokens=limit)
    ids = pb.build(TASK, OBS, ACTIONS, HISTORY, 5)
    user = user_part(pb.build_text(TASK, OBS, ACTIONS, HISTORY, 5))
    assert len(ids) <= limit
    assert "observation number 4" not in user and "Step 4 action: action number 4" in user  # now listed only
    assert "[Step 5] Observation: observation number 5 here" in user
    assert "Step 1 action: action number 1" in user and OBS in user and "\n".join(ACTIONS) in user


def test_truncation_then_drops_listed_actions_oldest_first(tokenizer):
    pb = builder(tokenizer, list_older_actions=True, history_window=0)
    full = len(pb.build(TASK, OBS, ACTIONS, HISTORY, 5))
    line = n_tokens(tokenizer, "Step 1 action: action number 1\n")
    pb = builder(tokenizer, list_older_actions=True, history_window=0, max_prompt_tokens=full - line - 1)
    user = user_part(pb.build_text(TASK, OBS, ACTIONS, HISTORY, 5))
    assert "action number 1" not in user
    assert "action number 2" not in user  # one more line is needed: 'line' was the size of one, minus 1 token
    assert "Step 3 action: action number 3" in user and "Step 5 action: action number 5" in user
    assert OBS in user and "\n".join(ACTIONS) in user


def test_truncation_cuts_admissible_actions_from_the_end_after_all_history(tokenizer):
    actions = ACTIONS + [f"go to drawer {i}" for i in range(1, 40)]
    no_history = len(builder(tokenizer, list_older_actions=True).build(TASK, OBS, actions, [], 5))
    pb = builder(tokenizer, list_older_actions=True, max_prompt_tokens=no_history - 1)
    user = user_part(pb.build_text(TASK, OBS, actions, HISTORY, 5))
    assert "number" not in user  # every history line went first
    assert OBS in user and TASK in user
    shown = user.split("are:\n")[1].split("\n\n")[0].splitlines()
    kept, marker = shown[:-1], shown[-1]
    assert kept == actions[: len(kept)] and len(actions) - 5 < len(kept) < len(actions)  # only the tail is cut
    assert marker == f"(... and {len(actions) - len(kept)} more not shown)"


def fixed_part_tokens(tokenizer) -> int:
    """The builder's smallest possible prompt, read from the error it raises for a limit of 1."""
    with pytest.raises(ValueError) as err:
        builder(tokenizer, max_prompt_tokens=1)
    return int(str(err.value).split("takes ")[1].split()[0])


def test_tiny_limit_cuts_the_middle_of_the_observation(tokenizer):
    long_obs = "BEGIN " + " ".join(f"word{i}" for i in range(2000)) + " END"
    limit = fixed_part_tokens(tokenizer) + 20
    pb = builder(tokenizer, max_prompt_tokens=limit)
    assert len(pb.build(TASK, long_obs, ACTIONS, HISTORY, 5)) <= limit
    user = user_part(pb.build_text(TASK, long_obs, ACTIONS, HISTORY, 5))
    assert "[... cut ...]" in user and "BEGIN" in user and user.count("END") == 1
    assert "word1000" not in user
    assert TASK in user and "number" not in user and "(... and 5 more not shown)" in user


def test_huge_inputs_still_fit(tokenizer):
    limit = fixed_part_tokens(tokenizer) + 5
    pb = builder(tokenizer, max_prompt_tokens=limit, list_older_actions=True)
    ids = pb.build("t" * 50_000, "o " * 100_000, ACTIONS * 500, HISTORY * 10, 50)
    assert len(ids) <= limit
    assert "[... cut ...]" in user_part(pb.build_text("t" * 50_000, "o", [], [], 50))  # the task is cut last


def test_random_limits_are_never_exceeded_and_phases_keep_their_order(tokenizer):
    rng = random.Random(0)
    history = [(f"obs {i} " + "detail " * rng.randint(0, 30), f"act {i}") for i in range(1, 13)]
    actions = [f"take thing {i} from place {rng.randint(1, 9)}" for i in range(40)]
    lowest = fixed_part_tokens(tokenizer)
    for _ in range(60):
        limit = rng.randint(lowest, 1500)
        pb = builder(tokenizer, list_older_actions=rng.random() < 0.5, max_prompt_tokens=limit, history_window=3)
        obs = "room " * rng.randint(1, 300)
        assert len(pb.build(TASK, obs, actions, history, len(history))) <= limit
        user = user_part(pb.build_text(TASK, obs, actions, history, len(history)))
        assert TASK in user and pb.format_text in user
        if "[... cut ...]" in user:  # the observation is only cut once nothing else is left
            assert "obs " not in user and "act " not in user and "take thing" not in user
        if "more not shown" in user:  # admissible actions are only cut once the history is gone
            assert "obs " not in user and "act " not in user
        lines = user.splitlines()
        listed = [int(line.split()[1]) for line in lines if line.startswith("Step ")]
        full = sorted({int(line[6:].split("]")[0]) for line in lines if line.startswith("[Step ")})
        steps = listed + full  # what is shown of the history is always its most recent part, without gaps
        assert steps == list(range(len(history) - len(steps) + 1, len(history) + 1))
        assert len(full) <= 3


def test_fit_reports_nothing_when_the_prompt_fits_whole(tokenizer):
    pb = builder(tokenizer, list_older_actions=True, max_admissible_actions=2)  # the cap is config, not a cut
    fit = pb.fit(TASK, OBS, ACTIONS, HISTORY, 5)
    assert fit.ids == pb.build(TASK, OBS, ACTIONS, HISTORY, 5)
    assert not fit.shortened and not fit.actions_cut


def test_fit_reports_a_dropped_history_entry_as_shortened_only(tokenizer):
    limit = full_length(tokenizer, list_older_actions=True) - 1
    fit = builder(tokenizer, list_older_actions=True, max_prompt_tokens=limit).fit(TASK, OBS, ACTIONS, HISTORY, 5)
    assert len(fit.ids) <= limit
    assert fit.shortened and not fit.actions_cut


def test_fit_reports_cut_admissible_actions(tokenizer):
    actions = ACTIONS + [f"go to drawer {i}" for i in range(1, 40)]
    no_history = len(builder(tokenizer, list_older_actions=True).build(TASK, OBS, actions, [], 5))
    pb = builder(tokenizer, list_older_actions=True, max_prompt_tokens=no_history - 1)
    fit = pb.fit(TASK, OBS, actions, HISTORY, 5)
    assert "more not shown" in user_part(pb.build_text(TASK, OBS, actions, HISTORY, 5))
    assert fit.shortened and fit.actions_cut


def test_fit_reports_a_cut_observation_as_shortened(tokenizer):
    long_obs = "BEGIN " + " ".join(f"word{i}" for i in range(2000)) + " END"
    pb = builder(tokenizer, max_prompt_tokens=fixed_part_tokens(tokenizer) + 20)
    fit = pb.fit(TASK, long_obs, [], [], 0)  # no history, no actions: only the observation can shrink
    assert "[... cut ...]" in user_part(pb.build_text(TASK, long_obs, [], [], 0))
    assert fit.shortened and not fit.actions_cut


def test_fit_flags_match_what_the_prompt_lost_at_random_limits(tokenizer):
    rng = random.Random(1)
    history = [(f"obs {i} " + "detail " * rng.randint(0, 30), f"act {i}") for i in range(1, 9)]
    actions = [f"take thing {i} from place {rng.randint(1, 9)}" for i in range(30)]
    lowest, seen = fixed_part_tokens(tokenizer), set()
    for _ in range(40):
        older = rng.random() < 0.5
        args = (TASK, "room " * rng.randint(1, 200), actions, history, len(history))
        whole = builder(tokenizer, list_older_actions=older, history_window=3).build_text(*args)
        limit = rng.randint(lowest, n_tokens(tokenizer, whole) + 50)
        pb = builder(tokenizer, list_older_actions=older, history_window=3, max_prompt_tokens=limit)
        fit, text = pb.fit(*args), pb.build_text(*args)
        assert fit.shortened == (text != whole)
        assert fit.actions_cut == ("more not shown" in text)
        seen.add((fit.shortened, fit.actions_cut))
    assert seen == {(False, False), (True, False), (True, True)}  # the limits reach every case


@pytest.mark.integration
def test_embedded_tokenizer_matches_its_chat_template_and_respects_the_limit():
    from epo.models import load_embedded_tokenizer

    tok = load_embedded_tokenizer()
    history = [(OBS * 3, "go to cabinet 1")] * 8
    actions = ACTIONS * 40
    pb = PromptBuilder(tok, AgentConfig(), list_older_actions=True, env_name="sciworld")
    text = pb.build_text(TASK, OBS, actions, history, 8)
    messages = [{"role": "system", "content": pb.system}, {"role": "user", "content": user_part(text)}]
    assert text == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert pb.build(TASK, OBS, actions, history, 8) == tok(text, add_special_tokens=False)["input_ids"]
    for limit in (300, 500, 1000):
        pb = PromptBuilder(tok, AgentConfig(max_prompt_tokens=limit), list_older_actions=True, env_name="sciworld")
        ids = pb.build(TASK, OBS * 30, actions, history, 8)
        assert limit - 40 < len(ids) <= limit  # cut close to the limit, never over it


def test_compact_style_keeps_the_content_in_fewer_tokens(tokenizer):
    history = [("You are in the hall. Exits: north.", "go north"), ("You are in the den.", "take key")]
    args = ("Open the chest.", "You see a chest.", ["open chest", "look"], history, 2)
    full = PromptBuilder(tokenizer, AgentConfig(prompt_style="full"), list_older_actions=False)
    compact = PromptBuilder(tokenizer, AgentConfig(prompt_style="compact"), list_older_actions=False)
    text = compact.build_text(*args)
    for part in ("Open the chest.", "You see a chest.", "open chest", "go north", "take key", "You are in the den."):
        assert part in text
    assert len(compact.build(*args)) < len(full.build(*args))
