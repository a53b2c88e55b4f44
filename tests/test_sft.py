"""Behaviour cloning on oracle episodes (tiny model, quest world): data, loss going down, export, warm start."""

from __future__ import annotations

import json

import torch
from rich.console import Console

from epo.agent import PromptBuilder, parse_action
from epo.config import load_config
from epo.envs.pool import EnvPool
from epo.models import load_model_and_tokenizer
from epo.rollout.oracle import collect_oracle
from epo.testing import tiny_run
from epo.trainer.sft import run_sft

TINY = tiny_run(
    "env.max_turns=15",
    "rollout.max_new_tokens=6",
    "train.micro_batch_tokens=2048",
    "sft.episodes=4",
    "sft.epochs=3",
    "sft.lr=3e-3",
    "sft.batch_size=8",
    "sft.eval_episodes=2",
)


def test_oracle_samples_are_in_the_rl_format():
    cfg = load_config(None, TINY)
    _, tokenizer = load_model_and_tokenizer("tiny")
    prompts = PromptBuilder(tokenizer, cfg.agent, list_older_actions=False, env_name="quest")
    with EnvPool("quest", {"difficulty": "easy"}, num_workers=1, mode="inline") as pool:
        samples, trajs = collect_oracle(pool, prompts, tokenizer, ["train/00000", "train/00001"], max_turns=15)
    assert all(t.won for t in trajs)
    assert len(samples) == sum(t.length for t in trajs)
    for s in samples:
        text = tokenizer.decode(s.response_ids)
        # the target parses back to an action the parser accepts, given the '<action>' prompt prefix
        assert text.endswith("</action>")
        assert tokenizer.decode(s.prompt_ids).endswith("<action>")
    first = tokenizer.decode(samples[0].response_ids)
    assert parse_action(first, [first.removesuffix("</action>")], action_prefix=True).valid


def test_sft_lowers_the_loss_and_exports_a_loadable_model(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(None, TINY)
    result = run_sft(cfg, tmp_path / "sft", console=Console(quiet=True))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "sft" / "sft_metrics.jsonl").read_text().splitlines()]
    assert len(losses) >= 3
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses
    assert result.oracle_win_rate == 1.0 and result.samples > 0
    assert set(result.before) == {"iid"} and set(result.after) == {"iid"}
    summary = json.loads((tmp_path / "sft" / "sft_summary.json").read_text())
    assert summary["samples"] == result.samples
    model, _ = load_model_and_tokenizer(str(result.export_dir))
    assert sum(p.numel() for p in model.parameters()) > 0
    # the RL config starts from it
    cfg2 = load_config(None, [*TINY, f"init_from={tmp_path / 'sft'}"])
    from epo.trainer.setup import model_source

    assert model_source(cfg2) == str(result.export_dir)
