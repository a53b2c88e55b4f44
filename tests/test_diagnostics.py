"""Entropy diagnostics (issue 14): action-level entropy, per-turn entropy-change decomposition, rollout files,
`epo ablate`, and cascade-monitor actions. Tiny random model, quest world."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

from epo.config import ConfigError, load_config
from epo.diagnostics import (
    MonitorActions,
    StepDiagnostics,
    action_entropy,
    load_rollouts,
    per_turn_covariance,
    save_rollouts,
    subset_indices,
)
from epo.diagnostics.ablate import replay_gap_note, run_ablation
from epo.diagnostics.action_entropy import score_actions
from epo.diagnostics.rollouts_io import fields_missing, read_batch
from epo.models import load_model_and_tokenizer, reference_response_logprobs, response_logprobs
from epo.rollout.types import TurnSample
from epo.telemetry.metrics import read_metrics, read_warnings
from epo.telemetry.monitor import CascadeMonitor, MonitorWarning
from epo.testing import tiny_run
from epo.trainer.batching import collate
from epo.trainer.checkpoint import CheckpointError, list_checkpoints
from epo.trainer.trainer import Trainer
from epo.trainer.update import StepData

QUIET = Console(quiet=True)
BASE = tiny_run(
    "rollout.group_size=1",
    "algo.name=ppo",
    "model.value_model=shared",
    "algo.gamma=0.5",  # discounted token-level GAE: advantages vary even when every turn is equally invalid
    "epo.mode=off",
    "train.eval_episodes=1",
    "train.keep_last=5",
    "train.mini_batch_size=4",
    "train.micro_batch_tokens=1500",
    "optim.lr=1e-3",
)
DIAG = ["diag.action_entropy_turns=3", "diag.entropy_change_samples=5", "train.save_rollouts=true"]


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().float() for p in model.parameters()])


# ----------------------------------------------------------------------------- action entropy (math)


def test_action_entropy_of_concentrated_and_uniform_distributions():
    h, outside = action_entropy(torch.tensor([0.0, -60.0, -60.0]))  # all mass on one action
    assert h < 1e-20 and outside < 1e-20
    n, mass = 5, 0.3  # uniform over 5 actions, 30% of the mass on the list
    h, outside = action_entropy(torch.full((n,), math.log(mass / n)))
    assert h == pytest.approx(math.log(n)) and outside == pytest.approx(1 - mass)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model_and_tokenizer("tiny")


def _diag_cfg(extra=()):
    return load_config(None, BASE + ["diag.action_entropy_turns=4", *extra])


def test_score_actions_are_sequence_logprobs_of_the_parsed_text(tiny):
    model, tok = tiny
    cfg = _diag_cfg()
    diag = StepDiagnostics(cfg, tok, tok.pad_token_id)
    prompt = tok("You are in a hall. <action>", add_special_tokens=False)["input_ids"]
    sample = TurnSample(prompt, [1], 0, 0, 0, admissible=["go north", "take key"])
    (scores,) = score_actions(model, [sample], [0], diag._encode, tok.pad_token_id, cfg)
    assert diag._encode("go north") == tok("go north</action>", add_special_tokens=False)["input_ids"]
    for action, score in zip(sample.admissible, scores, strict=True):
        ids = torch.tensor([prompt + diag._encode(action)])
        mask = torch.zeros_like(ids)
        mask[0, len(prompt) :] = 1
        ref = reference_response_logprobs(model, ids, torch.ones_like(ids), mask)
        assert float(score) == pytest.approx(float(ref.logprobs.detach().sum()), abs=1e-4)


def test_action_entropy_of_a_policy_trained_onto_one_action_is_near_zero(tiny):
    model, tok = tiny
    model = type(model)(model.config)
    model.load_state_dict(tiny[0].state_dict())
    cfg = _diag_cfg()
    diag = StepDiagnostics(cfg, tok, tok.pad_token_id)
    prompt = tok("You are in a hall. Actions: go north, go south, take key. <action>", add_special_tokens=False)
    sample = TurnSample(prompt["input_ids"], diag._encode("go south"), 0, 0, 0)
    sample.admissible = ["go north", "go south", "take key"]
    data = StepData([sample], None, [torch.ones(len(sample.response_ids))], [torch.zeros(1)])

    def measure():
        diag.before_update(model, data, step=1)
        return diag.after_update(model, data)

    untrained = measure()
    assert untrained["diag/action_mass_outside"] > 0.99  # a random model almost never writes a listed action
    assert untrained["diag/action_entropy"] > 0.3  # ... and has no preference among them
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mb = collate([sample], [0], tok.pad_token_id)
    for _ in range(40):  # behaviour-clone 'go south'
        stats = response_logprobs(model, mb.input_ids, mb.attention_mask, mb.response_mask)
        loss = -(stats.logprobs * mb.response_mask).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = measure()
    assert trained["diag/action_entropy"] < 0.05, trained
    assert trained["diag/action_mass_outside"] < 0.2, trained
    assert trained["diag/action_entropy_per_turn"] == [pytest.approx(trained["diag/action_entropy"])]


# ----------------------------------------------------------------------------- entropy-change decomposition (math)


def test_covariance_sign_per_turn_on_a_constructed_batch():
    # turn 0: likely tokens get positive advantages (PG sharpens: entropy falls, Cov > 0);
    # turn 1: likely tokens get negative advantages (Cov < 0); turn 2: advantages constant (Cov = 0)
    logp = [torch.tensor([-0.1, -0.2]), torch.tensor([-3.0, -2.5]), torch.tensor([-0.1, -3.0]), torch.tensor([-1.0])]
    adv = [torch.tensor([1.0, 1.0]), torch.tensor([-1.0, -1.0]), torch.tensor([-2.0, 2.0]), torch.tensor([0.5])]
    turns = [0, 0, 1, 2]
    cov = per_turn_covariance(logp, adv, turns)
    assert cov[0] > 0.5 and cov[1] < -0.5 and math.isnan(cov[2])  # one token: undefined
    cov = per_turn_covariance([-x for x in logp], adv, turns)
    assert cov[0] < -0.5 and cov[1] > 0.5


def test_subset_indices_are_deterministic_and_bounded():
    assert subset_indices(5, 10) == [0, 1, 2, 3, 4]
    idx = subset_indices(100, 8)
    assert len(idx) == 8 and idx == subset_indices(100, 8) and idx[0] == 0 and idx[-1] < 100


# ----------------------------------------------------------------------------- rollout files


def test_rollouts_round_trip_without_pickle(tmp_path):
    samples = [
        TurnSample([1, 2, 3], [4, 5], 0, 0, 0, reward=9.9, shaping=-0.1, admissible=["a", "b c"]),
        TurnSample(
            [6], [7, 8, 9], 1, 0, 0, reward=-0.1, invalid=True, done=True, sampler_logprobs=[-0.1, -2.5, -1 / 3]
        ),
        TurnSample([6], [], 2, 0, 0, sampler_logprobs=[]),  # an empty response still has (no) log-probs
    ]
    path = save_rollouts(tmp_path, 3, samples)
    loaded = load_rollouts(tmp_path, 3)
    assert loaded == samples  # shaping and the exact sampler log-probs included
    assert [s.shaping for s in loaded] == [-0.1, 0.0, 0.0] and loaded[1].sampler_logprobs[2] == -1 / 3
    assert set(load_file(str(path.with_suffix(".safetensors")))) == {
        "prompt_ids",
        "prompt_lens",
        "response_ids",
        "response_lens",
        "sampler_logprobs",
        "sampler_logprobs_lens",
    }
    assert json.loads(path.read_text())["step"] == 3
    assert fields_missing(read_batch(tmp_path, 3)) == []
    with pytest.raises(FileNotFoundError, match="saved steps: 3"):
        load_rollouts(tmp_path, 4)


def _save_old_format(run_dir, step, samples) -> None:
    """A batch as saved before shaping and the sampler log-probs were kept (same format_version)."""
    path = save_rollouts(run_dir, step, samples)
    meta = json.loads(path.read_text())
    meta["samples"] = [
        {k: v for k, v in m.items() if k not in ("shaping", "has_sampler_logprobs")} for m in meta["samples"]
    ]
    path.write_text(json.dumps(meta))
    tensors = path.with_suffix(".safetensors")
    save_file({k: v for k, v in load_file(str(tensors)).items() if not k.startswith("sampler_")}, str(tensors))


def test_an_old_rollout_file_loads_and_names_the_fields_it_lacks(tmp_path):
    _save_old_format(
        tmp_path, 1, [TurnSample([1], [2, 3], 0, 0, 0, reward=9.9, shaping=-0.1, sampler_logprobs=[-1.0, -2.0])]
    )
    (loaded,) = load_rollouts(tmp_path, 1)
    assert loaded.reward == 9.9 and loaded.shaping == 0.0 and loaded.sampler_logprobs is None
    missing = fields_missing(read_batch(tmp_path, 1))
    assert missing == ["shaping", "sampler_logprobs"]
    note = replay_gap_note(missing)
    assert "lacks shaping, sampler_logprobs" in note and "gae_level=turn" in note and "TIS" in note
    assert replay_gap_note(["shaping"]).count("TIS") == 0 and replay_gap_note([]) == ""


# ----------------------------------------------------------------------------- a real (tiny) run with diagnostics


@pytest.fixture(scope="module")
def diag_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("diag") / "run"
    trainer = Trainer(load_config(None, BASE + DIAG), run_dir, console=QUIET)
    trainer.train()
    yield run_dir
    shutil.rmtree(run_dir.parent, ignore_errors=True)  # checkpoints: CI machines have small disks


def test_run_logs_action_entropy_and_entropy_change(diag_run):
    rows = [r for r in read_metrics(diag_run) if "actor/pg_loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["diag/action_turns_scored"] == 3
        n_actions_max = 30
        assert 0 <= r["diag/action_entropy"] <= math.log(n_actions_max)
        assert 0 <= r["diag/action_mass_outside"] <= 1
        for key in ("diag/cov_logp_adv", "diag/entropy_change", "diag/kl_update", "diag/ratio_outside_clip"):
            assert math.isfinite(r[key]), key
        assert r["diag/kl_update"] > 0  # the update moved the policy
        assert r["diag/cov_logp_adv"] != 0  # discounted advantages vary within a response
        assert any(math.isfinite(v) for v in r["diag/entropy_change_per_turn"])
    assert sorted(p.name for p in (diag_run / "rollouts").iterdir()) == [
        "step_000001.json",
        "step_000001.safetensors",
        "step_000002.json",
        "step_000002.safetensors",
    ]


def test_diagnostics_do_not_change_the_training_run(diag_run, tmp_path):
    plain = Trainer(load_config(None, BASE), tmp_path / "plain", console=QUIET)
    plain.train(stop_after=1)
    saved = load_file(str(diag_run / "checkpoints" / "step_000001" / "model.safetensors"))
    for name, tensor in plain.policy.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_ablate_none_reproduces_the_logged_step(diag_run):
    logged = {r["step"]: r for r in read_metrics(diag_run) if "actor/pg_loss" in r}
    for step in (1, 2):  # step 1 from the initial weights, step 2 from checkpoint step_000001
        out = run_ablation(diag_run, step, ["none", "entropy", "kl"], entropy_coef=0.5, kl_coef=0.5)
        none = out["results"]["none"]
        for key in ("entropy_change", "kl_update", "cov_logp_adv"):
            assert none[key] == pytest.approx(logged[step][f"diag/{key}"], rel=1e-6, abs=1e-12), key
        assert none["entropy_change_per_turn"] == pytest.approx(logged[step]["diag/entropy_change_per_turn"])
        # a large entropy bonus raises entropy relative to no regulariser, from the same weights and data
        assert out["results"]["entropy"]["entropy_change"] > none["entropy_change"]
        assert out["results"]["kl"]["kl_update"] != none["kl_update"]
    assert (diag_run / "ablate" / "step_000002.md").read_text().count("| none |") == 4
    assert "entropy bonus coef 0.5, KL coef 0.5." in (diag_run / "ablate" / "step_000002.md").read_text()
    with pytest.raises(ConfigError, match="kl_coef acts only on the 'kl' regulariser"):
        run_ablation(diag_run, 1, ["none"], kl_coef=0.5)


def test_ablate_command(diag_run):
    from typer.testing import CliRunner

    from epo.cli import app

    ok = CliRunner().invoke(app, ["ablate", str(diag_run), "--step", "2", "--reg", "none", "--reg", "epo"])
    assert ok.exit_code == 0, ok.output
    assert "| none |" in ok.output and "| epo |" in ok.output and "ablation:" in ok.output
    saved = json.loads((diag_run / "ablate" / "step_000002.json").read_text())
    assert saved["entropy_coef"] is None and saved["kl_coef"] is None  # neither regulariser ran: no coefficient
    assert "coef" not in (diag_run / "ablate" / "step_000002.md").read_text().splitlines()[2]
    bad = CliRunner().invoke(app, ["ablate", str(diag_run), "--step", "2", "--reg", "dropout"])
    assert bad.exit_code == 2 and "unknown regulariser 'dropout'" in bad.output


def test_ablate_of_an_old_rollout_file_prints_and_writes_the_replay_note(diag_run, tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    shutil.copy(diag_run / "config.yaml", run / "config.yaml")  # step 1 replays from the initial weights
    _save_old_format(run, 1, load_rollouts(diag_run, 1))
    console = Console(record=True, width=400)
    out = run_ablation(run, 1, ["none"], console=console)
    assert "lacks shaping, sampler_logprobs" in out["note"]
    assert console.export_text().count("ablate note: the saved batch lacks shaping, sampler_logprobs") == 1
    assert json.loads((run / "ablate" / "step_000001.json").read_text())["note"] == out["note"]
    assert f"Note: {out['note']}." in (run / "ablate" / "step_000001.md").read_text()
    assert "note" not in run_ablation(diag_run, 1, ["none"])  # a batch saved with every field replays exactly


def test_ablate_without_the_checkpoint_or_batch_says_what_is_missing(diag_run, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint of step 4"):
        run_ablation(diag_run, 5, ["none"])
    with pytest.raises(FileNotFoundError, match="no saved rollout batch for step 3"):
        run_ablation(diag_run, 3, ["none"])


# ----------------------------------------------------------------------------- monitor actions


def _warning(kind="early_collapse", step=2):
    return MonitorWarning(kind, step, f"{kind} at step {step}")


def test_monitor_actions_raise_entropy_and_filter_kinds():
    cfg = load_config(
        None,
        BASE
        + [
            "epo.mode=on",
            "diag.monitor_action=raise_entropy",
            "diag.monitor_entropy_factor=3",
            "diag.monitor_on=[early_collapse]",
        ],
    )
    actions = MonitorActions(cfg.diag)
    assert actions.effective(cfg) is cfg
    quiet = actions.apply([_warning("late_climb")])
    assert "action" not in quiet.records[0] and actions.entropy_scale == 1
    acted = actions.apply([_warning()])
    assert acted.records[0]["action"].startswith("raise_entropy") and not acted.stop and not acted.save
    assert actions.effective(cfg).epo.entropy_coef == pytest.approx(3 * cfg.epo.entropy_coef)
    assert cfg.epo.entropy_coef == 0.001  # the run's config is not mutated
    again = MonitorActions(cfg.diag)
    again.load_state_dict(actions.state_dict())
    assert again.effective(cfg).epo.entropy_coef == pytest.approx(3 * cfg.epo.entropy_coef)
    stop = MonitorActions(load_config(None, BASE + ["diag.monitor_action=stop"]).diag).apply([_warning()])
    assert stop.stop and stop.save


def test_monitor_action_config_errors():
    with pytest.raises(ConfigError, match="diag.monitor_action: raise_entropy needs"):
        load_config(None, BASE + ["diag.monitor_action=raise_entropy"])
    with pytest.raises(ConfigError, match="diag.monitor_on"):
        load_config(None, BASE + ["diag.monitor_on=[collapse]"])
    with pytest.raises(ConfigError, match="diag.monitor_action"):
        load_config(None, BASE + ["diag.monitor_action=explode"])


def test_monitor_stop_action_checkpoints_and_ends_the_run(tmp_path):
    overrides = ["diag.monitor_action=stop", "train.save_every=10", "train.total_steps=4", "env.max_turns=2"]
    trainer = Trainer(load_config(None, BASE + overrides), tmp_path / "run", console=QUIET)
    # a monitor that warns as soon as it has its 1-step baseline: early collapse at step 2
    trainer.monitor = CascadeMonitor(4, baseline_steps=1, collapse_ratio=1e9, early_fraction=1.0)
    result = trainer.train()
    assert result.steps_done == 2 and result.interrupted and result.stopped_by_monitor
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_000002"]
    (warning,) = read_warnings(tmp_path / "run")
    assert warning["kind"] == "early_collapse" and warning["action"] == "stop" and warning["step"] == 2


def test_a_monitor_stop_exits_3_not_as_a_ctrl_c(tmp_path, capsys):
    import typer

    from epo.cli import _exit_interrupted
    from epo.trainer.trainer import TrainResult

    by_monitor = TrainResult(tmp_path / "run", 2, interrupted=True, stopped_by_monitor=True)
    with pytest.raises(typer.Exit) as exited:
        _exit_interrupted(by_monitor)
    assert exited.value.exit_code == 3
    assert "stopped by its monitor (diag.monitor_action=stop) at step 2" in capsys.readouterr().out
    with pytest.raises(typer.Exit) as exited:  # a Ctrl-C stays 130
        _exit_interrupted(TrainResult(tmp_path / "run", 2, interrupted=True, stop_signal="SIGINT"))
    assert exited.value.exit_code == 130


# ----------------------------------------------------------------------------- report


def test_report_plots_diagnostics_and_marks_monitor_actions(tmp_path):
    from epo.report.data import load_run
    from epo.report.plots import action_steps
    from epo.report.summary import write_report
    from epo.telemetry.metrics import MetricsLogger

    run = tmp_path / "run"
    with MetricsLogger(run, tensorboard=False) as logger:
        for step in range(1, 6):
            logger.log(
                step,
                {
                    "epo/entropy_mean": 1.0 / step,
                    "diag/action_entropy": 0.5,
                    "diag/action_mass_outside": 0.9,
                    "diag/action_token_entropy": 2.0,
                    "diag/action_entropy_per_turn": [0.4, 0.6],
                    "diag/cov_logp_adv": 0.1,
                    "diag/entropy_change": -0.01 * step,
                    "diag/cov_logp_adv_per_turn": [0.2, -0.1],
                    "diag/entropy_change_per_turn": [-0.02, 0.01],
                },
            )
        logger.log_warnings([{**_warning(step=3).to_dict(), "action": "checkpoint"}, _warning("late_climb", 4)])
    summary = write_report([run], tmp_path / "report").read_text()
    for stem in ("action_entropy", "entropy_change", "cov_heatmap", "entropy_change_heatmap", "action_entropy_heatmap"):
        assert (tmp_path / "report" / f"{stem}.png").is_file(), stem
    assert action_steps(load_run(run)) == [3]  # only the warning that triggered an action is marked
    warnings_table = summary.split("## Monitor warnings")[1]
    assert "| action |" in warnings_table and "| checkpoint |" in warnings_table
