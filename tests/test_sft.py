"""Behaviour cloning on oracle episodes (tiny model, quest world): data, loss going down, export, warm start."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_the_oracle_in_rounds_of_max_envs_clones_the_same_samples_with_fewer_envs():
    cfg = load_config(None, TINY)
    _, tokenizer = load_model_and_tokenizer("tiny")
    prompts = PromptBuilder(tokenizer, cfg.agent, list_older_actions=False, env_name="quest")
    tasks = [f"train/{i:05d}" for i in range(3)]
    played = {}
    for max_envs in (None, 2):
        with EnvPool("quest", {"difficulty": "easy"}, num_workers=1, mode="inline") as pool:
            samples, trajs = collect_oracle(pool, prompts, tokenizer, tasks, max_turns=15, max_envs=max_envs)
            envs = len(pool._inline[0].envs)  # env instances the pool created: one per slot ever used
        played[max_envs] = ([(s.prompt_ids, s.response_ids, s.traj_id) for s in samples], [t.traj_id for t in trajs])
        assert envs == (max_envs or 3)
    assert played[2] == played[None] and played[2][1] == [0, 1, 2]


def test_cloned_prompts_are_fitted_as_in_rl_and_their_shortening_counted():
    _, tokenizer = load_model_and_tokenizer("tiny")
    counts = {}
    for limit in (4096, 260):
        cfg = load_config(None, [*TINY, f"agent.max_prompt_tokens={limit}"])
        prompts = PromptBuilder(tokenizer, cfg.agent, list_older_actions=False, env_name="quest")
        with EnvPool("quest", {"difficulty": "easy"}, num_workers=1, mode="inline") as pool:
            samples, trajs = collect_oracle(pool, prompts, tokenizer, ["train/00000"], max_turns=15)
        assert all(len(s.prompt_ids) <= limit for s in samples)
        counts[limit] = sum(t.shortened_prompts for t in trajs)
    assert counts[4096] == 0 and counts[260] > 0, counts


def test_sft_lowers_the_loss_and_exports_a_loadable_model(tmp_path, monkeypatch):
    torch.manual_seed(0)
    cfg = load_config(None, TINY)
    released = []
    real_release = EnvPool.release_envs
    monkeypatch.setattr(EnvPool, "release_envs", lambda pool: released.append(1) or real_release(pool))
    result = run_sft(cfg, tmp_path / "sft", console=Console(quiet=True))
    assert released == [1]  # the envs are closed while cloning (the eval after makes new ones)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "sft" / "sft_metrics.jsonl").read_text().splitlines()]
    assert len(losses) >= 3
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses
    assert result.oracle_win_rate == 1.0 and result.samples > 0
    assert set(result.before) == {"iid"} and set(result.after) == {"iid"}
    summary = json.loads((tmp_path / "sft" / "sft_summary.json").read_text())
    assert summary["samples"] == result.samples
    assert summary["prompt_shortened_rate"] == result.prompt_shortened_rate == 0.0  # tiny quest prompts fit
    if Path("/proc/self/status").is_file():  # Linux: cloning's own peak memory, at least the model's weights
        assert summary["cloning_peak_rss_gb"] > 0.05
    model, _ = load_model_and_tokenizer(str(result.export_dir))
    assert sum(p.numel() for p in model.parameters()) > 0
    # the RL config starts from it
    cfg2 = load_config(None, [*TINY, f"init_from={tmp_path / 'sft'}"])
    from epo.trainer.setup import model_source

    assert model_source(cfg2) == str(result.export_dir)


def test_env_faults_while_the_oracle_plays_are_reported_as_the_oracles(monkeypatch, tmp_path):
    """An exception in the env during oracle play ends that episode and is reported as in RL: a console line,
    OUT/faults.jsonl (a stale one from an earlier run is replaced), the count in the oracle's summary line,
    SFTResult.oracle_faults and sft_summary.json."""
    from epo.envs.quest.env import QuestEnv
    from epo.telemetry.faults import read_faults

    real_step, calls = QuestEnv.step, []

    def step_raising_once(self, action):
        calls.append(action)
        if len(calls) == 1:
            raise KeyError("door 7 has no key")
        return real_step(self, action)

    monkeypatch.setattr(QuestEnv, "step", step_raising_once)
    out = tmp_path / "sft"
    out.mkdir()
    (out / "faults.jsonl").write_text('{"step": 0, "phase": "oracle", "worker": 9, "reason": "stale"}\n')
    cfg = load_config(None, [*TINY, "sft.eval_episodes=0", "sft.epochs=1"])  # no eval: only the oracle steps
    console = Console(record=True, width=300)
    result = run_sft(cfg, out, console=console)
    text = console.export_text()
    assert "env fault: step 0 oracle: worker 0 env_error on task train/" in text and "door 7 has no key" in text
    assert "oracle: 4 episodes, won 3 (75.0% [95% CI " in text and "), 1 ended by env faults, " in text
    faults = read_faults(out)
    assert [(f["step"], f["phase"], f["worker"], f["reason"]) for f in faults] == [(0, "oracle", 0, "env_error")]
    assert faults[0]["task"].startswith("train/") and "KeyError" in faults[0]["message"]
    assert result.oracle_faults == 1 and result.oracle_win_rate == 0.75 and result.samples > 0
    assert json.loads((out / "sft_summary.json").read_text())["oracle_faults"] == 1


def test_a_fault_in_the_expert_call_is_an_env_fault_not_a_stuck_oracle(monkeypatch):
    """expert_actions() answers None both for a stuck oracle and for a slot whose env raised: the pool's fault
    record tells them apart, so the episode counts as ended by an env fault."""
    from epo.envs.quest.env import QuestEnv
    from epo.telemetry.faults import is_fault

    real_reset, real_expert = QuestEnv.reset, QuestEnv.expert_action

    def reset_remembering_the_task(self, **kw):
        self.test_task = kw["options"]["task_id"]
        return real_reset(self, **kw)

    def expert_raising_on_the_second_task(self):
        if self.test_task == "train/00001":
            raise RuntimeError("expert lost its map")
        return real_expert(self)

    monkeypatch.setattr(QuestEnv, "reset", reset_remembering_the_task)
    monkeypatch.setattr(QuestEnv, "expert_action", expert_raising_on_the_second_task)
    cfg = load_config(None, TINY)
    _, tokenizer = load_model_and_tokenizer("tiny")
    prompts = PromptBuilder(tokenizer, cfg.agent, list_older_actions=False, env_name="quest")
    with EnvPool("quest", {"difficulty": "easy"}, num_workers=2, mode="inline") as pool:
        _, trajs = collect_oracle(pool, prompts, tokenizer, ["train/00000", "train/00001"], max_turns=15)
        faults = pool.drain_faults()
    assert trajs[0].won and not is_fault(trajs[0])
    assert not trajs[1].won and (trajs[1].truncated_reason, is_fault(trajs[1])) == ("env_error", True)
    assert [(f.worker, f.reason, f.task) for f in faults] == [(1, "env_error", "train/00001")]


def test_a_cloning_step_with_a_non_finite_gradient_is_skipped_and_said(monkeypatch, tmp_path):
    """_SFTLoop._step returns (loss, skipped); the loop writes the skip to the step's line and its metrics row."""
    from epo.trainer import sft

    calls, real = [], sft.step_if_finite

    def nan_at_step_2(optimizers, grad_norms):
        calls.append(1)
        return real(optimizers, [float("nan")] if len(calls) == 2 else grad_norms)

    monkeypatch.setattr(sft, "step_if_finite", nan_at_step_2)
    cfg = load_config(None, [*TINY, "sft.eval_episodes=0", "sft.epochs=1"])
    console = Console(record=True, width=300)
    run_sft(cfg, tmp_path / "sft", console=console)
    rows = [json.loads(line) for line in (tmp_path / "sft" / "sft_metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 3 and [r["step"] for r in rows if r.get("skipped_nonfinite_grad")] == [2]
    skipped_lines = [ln for ln in console.export_text().splitlines() if "gradient not finite: step skipped" in ln]
    assert len(skipped_lines) == 1 and f"step 2/{len(rows)} " in skipped_lines[0]


def _eval_envs_raise(monkeypatch) -> None:
    """Every step of an episode on an eval task (not train/...) raises inside the env: each eval episode ends by an
    env fault at its first turn, while the oracle (train tasks) plays as usual."""
    from epo.envs.quest.env import QuestEnv

    real_reset, real_step = QuestEnv.reset, QuestEnv.step

    def reset_remembering_the_task(self, **kw):
        self.test_task = kw["options"]["task_id"]
        return real_reset(self, **kw)

    def step_raising_on_eval_tasks(self, action):
        if not self.test_task.startswith("train/"):
            raise KeyError("door 7 has no key")
        return real_step(self, action)

    monkeypatch.setattr(QuestEnv, "reset", reset_remembering_the_task)
    monkeypatch.setattr(QuestEnv, "step", step_raising_on_eval_tasks)


def test_env_faults_of_the_evals_before_and_after_cloning_are_logged_like_the_oracles(monkeypatch, tmp_path):
    """The zero-shot and after-cloning evals report env faults as the oracle and the RL loop do: FaultLog's console
    line ("env fault: step 0 eval iid before SFT: worker 0 ...", not the old "env worker 0 ...") and a record each in
    OUT/faults.jsonl next to the oracle's (they used to be printed only). sft_summary.json is written atomically."""
    from epo.telemetry.faults import read_faults
    from epo.trainer import sft

    _eval_envs_raise(monkeypatch)
    written, real_write = [], sft.atomic_write_text
    monkeypatch.setattr(
        sft, "atomic_write_text", lambda path, text: written.append(path.name) or real_write(path, text)
    )
    out = tmp_path / "sft"
    cfg = load_config(None, [*TINY, "sft.epochs=1"])
    console = Console(record=True, width=300)
    result = run_sft(cfg, out, console=console)
    text = console.export_text()
    assert "env fault: step 0 eval iid before SFT: worker 0 env_error on task iid/" in text
    assert "env fault: step 0 eval iid after SFT: worker 0 env_error on task iid/" in text
    assert "env worker" not in text and "door 7 has no key" in text
    faults = read_faults(out)
    assert [(f["step"], f["phase"], f["reason"]) for f in faults] == [(0, "eval iid before SFT", "env_error")] * 2 + [
        (0, "eval iid after SFT", "env_error")
    ] * 2
    assert all(f["task"].startswith("iid/") and "KeyError" in f["message"] for f in faults)
    assert result.before["iid"].success == 0.0 and result.oracle_faults == 0
    assert "sft_summary.json" in written and json.loads((out / "sft_summary.json").read_text())["samples"] > 0


def test_a_resumed_warm_start_keeps_only_the_faults_of_the_zero_shot_splits_it_does_not_rerun(tmp_path):
    """A resume plays the oracle and the eval after cloning again (and the zero-shot splits not saved): their old
    records are dropped, so no fault is logged twice; those of the zero-shot splits kept stay."""
    from epo.rollout.evaluate import EvalResult
    from epo.telemetry.faults import read_faults

    out = tmp_path / "sft"
    out.mkdir()
    zero_shot = EvalResult("iid", 2, 0.0, 0.0, 0.5, mean_turns=15.0, invalid_rate=0.0, truncated_rate=1.0)
    (out / "sft_before.json").write_text(json.dumps({"iid": zero_shot.__dict__}))
    old = {"step": 0, "worker": 0, "reason": "timeout", "task": "x", "message": "m"}
    phases = ["eval iid before SFT", "eval ood before SFT", "oracle", "eval iid after SFT"]
    (out / "faults.jsonl").write_text(
        "".join(json.dumps({**old, "phase": p}) + "\n" for p in phases) + '{"step": 0, "ph'
    )
    cfg = load_config(None, [*TINY, "sft.epochs=1"])
    result = run_sft(cfg, out, console=Console(quiet=True), eval_after=False, resume=True)
    assert result.before["iid"].success == 0.0 and not result.interrupted  # kept, not evaluated again
    assert [f["phase"] for f in read_faults(out)] == ["eval iid before SFT"]
