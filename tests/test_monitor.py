from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from epo.telemetry.monitor import CascadeMonitor, MonitorConfig

TOTAL = 100  # RL steps; auto window = max(6, 100 // 10) = 10


def healthy_trace(noise: float = 0.02, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Entropy decays slowly 1.0 -> 0.6 while success rises 0.1 -> 0.9; multiplicative measurement noise."""
    rng = np.random.default_rng(seed)
    k = np.arange(1, TOTAL + 1)
    entropy = (1.0 - 0.4 * k / TOTAL) * (1 + noise * rng.standard_normal(TOTAL))
    success = np.clip(0.1 + 0.8 * k / TOTAL + 0.03 * rng.standard_normal(TOTAL), 0, 1)
    return entropy, success


def run(monitor: CascadeMonitor, entropy, success, steps=None):
    steps = range(1, len(entropy) + 1) if steps is None else steps
    out = []
    for step, h, s in zip(steps, entropy, success, strict=True):
        out += monitor.update(step, {"epo/entropy_mean": h, "rollout/success_rate": s})
    return out


@pytest.mark.parametrize("noise,seed", [(0.02, 0), (0.05, 1), (0.05, 2)])
def test_healthy_run_has_no_warnings(noise, seed):
    assert run(CascadeMonitor(TOTAL), *healthy_trace(noise, seed)) == []


def test_early_collapse_fires_once_at_the_crossing_step():
    entropy, _ = healthy_trace()
    entropy[5:] = np.maximum(0.15, np.exp(-np.arange(TOTAL - 5) / 6))  # from step 6 on: 1, .85, .72, .61, .51, .43
    success = np.full(TOTAL, 0.05)
    initial = entropy[:3].mean()  # baseline = first 3 steps
    first_below = 1 + int(np.argmax(entropy < 0.5 * initial))
    warnings = run(CascadeMonitor(TOTAL), entropy, success)
    assert [(w.kind, w.step) for w in warnings] == [("early_collapse", first_below)]
    assert first_below == 11
    assert "50%" in warnings[0].message and "0.05" in warnings[0].message


def test_fast_entropy_drop_with_high_success_is_not_a_collapse():
    entropy, _ = healthy_trace()
    entropy[5:] = np.maximum(0.15, np.exp(-np.arange(TOTAL - 5) / 6))
    assert [w.kind for w in run(CascadeMonitor(TOTAL), entropy, np.full(TOTAL, 0.6))] == []


def test_collapse_after_the_early_phase_is_not_early():
    entropy, _ = healthy_trace()
    entropy[40:] *= 0.3  # step 41 > 0.3 * 100; flat afterwards, so no late warning either
    assert run(CascadeMonitor(TOTAL), entropy, np.full(TOTAL, 0.05)) == []


def test_late_oscillation_fires_once():
    entropy, success = healthy_trace()
    k = np.arange(60, TOTAL)
    entropy[60:] = 0.75 + 0.15 * (-1.0) ** k  # zig-zag ±0.15 around 0.75 from step 61 on, until the end
    warnings = run(CascadeMonitor(TOTAL), entropy, success)
    assert [w.kind for w in warnings] == ["late_oscillation"]
    assert 61 < warnings[0].step <= 70


def test_late_climb_fires_once():
    entropy, success = healthy_trace(noise=0.01)
    entropy[70:] = np.linspace(0.72, 1.4, TOTAL - 70)  # steady climb over the last 30 steps
    warnings = run(CascadeMonitor(TOTAL), entropy, success)
    assert [w.kind for w in warnings] == ["late_climb"]
    assert 72 < warnings[0].step <= 80


def test_climb_in_first_half_is_ignored():
    entropy, success = healthy_trace(noise=0.01)
    entropy[20:40] = np.linspace(0.9, 1.6, 20)
    entropy[40:] = 1.6 - 0.4 * np.arange(TOTAL - 40) / TOTAL
    assert run(CascadeMonitor(TOTAL), entropy, success) == []


def test_rearm_after_quiet_steps():
    # window 4, late checks from the start. Hand-computed least-squares rise over each window:
    # step 4 [1, 1, 1, 1.2] -> 19% (no), step 5 [1, 1, 1.2, 1.4] -> 45% (fire), steps 5-8 true, steps 9-14 false
    # (6 quiet steps), step 15 [1.8, 1.8, 2.0, 2.2] -> 24% (true again).
    trace = [1.0] * 3 + [1.2, 1.4, 1.6, 1.8] + [1.8] * 6 + [2.0, 2.2, 2.4, 2.6]
    fired = {}
    for rearm in (2, 6, 7):
        monitor = CascadeMonitor(TOTAL, late_fraction=0.0, window=4, rearm_steps=rearm, late_needs_reference=False)
        fired[rearm] = [(w.kind, w.step) for w in run(monitor, trace, [0.5] * len(trace))]
    assert fired[2] == fired[6] == [("late_climb", 5), ("late_climb", 15)]
    assert fired[7] == [("late_climb", 5)]


def test_short_run_has_no_late_entropy_checks_and_says_so():
    # 12 steps, window 6: the late phase (steps 7-12) has no pre-late steps after the first window to compare with.
    # A zig-zag of +-25% fired late_oscillation in such runs (all 6 runs of Experiment 12); the guard keeps it quiet.
    zigzag = list(0.1 + 0.025 * (-1.0) ** np.arange(12))
    guarded, unguarded = CascadeMonitor(12), CascadeMonitor(12, late_needs_reference=False)
    assert run(guarded, zigzag, [0.5] * 12) == []
    assert [w.kind for w in run(unguarded, zigzag, [0.5] * 12)] == ["late_oscillation"]
    assert guarded.min_steps_for_late_checks() == 22  # floor(0.5 T) - 6 >= 5
    assert "12-step run" in guarded.late_checks_note and ">= 22 steps" in guarded.late_checks_note
    assert unguarded.late_checks_note is None
    assert CascadeMonitor(22).late_checks_note is None  # long enough: checks on (test_late_oscillation_fires_once)
    assert CascadeMonitor(2).late_checks_note is None  # shorter than one window: nothing to say (the CPU demo)
    assert "late_fraction 0" in CascadeMonitor(100, late_fraction=0.0).late_checks_note


def test_state_dict_resume_gives_same_warnings():
    entropy, success = healthy_trace()
    entropy[60:] = 0.75 + 0.15 * (-1.0) ** np.arange(60, TOTAL)
    straight = run(CascadeMonitor(TOTAL), entropy, success)
    first = CascadeMonitor(TOTAL)
    before = run(first, entropy[:63], success[:63])
    resumed = CascadeMonitor(TOTAL)
    resumed.load_state_dict(first.state_dict())
    after = run(resumed, entropy[63:], success[63:], steps=range(64, TOTAL + 1))
    assert before + after == straight and len(straight) == 1


def test_missing_or_nan_metrics_are_ignored():
    monitor = CascadeMonitor(10)
    assert monitor.update(1, {}) == []
    assert monitor.update(2, {"epo/entropy_mean": float("nan")}) == []
    assert monitor.entropy == []


def test_config_validation_and_overrides():
    assert CascadeMonitor(100, collapse_ratio=0.4).cfg.collapse_ratio == 0.4
    assert CascadeMonitor(100, MonitorConfig(window=20)).window == 20
    assert CascadeMonitor(30).window == 6
    with pytest.raises(ValueError, match="unknown threshold"):
        CascadeMonitor(100, colapse_ratio=0.4)
    with pytest.raises(ValueError, match="monitor.window"):
        MonitorConfig(window=2)
    with pytest.raises(ValueError, match="total_steps"):
        CascadeMonitor(0)


def test_shaping_signal_fires_when_most_advantage_comes_from_one_outcome_groups():
    monitor = CascadeMonitor(30)  # window 6
    shares = [0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]  # mean of 6: 0.5 at step 6, 0.63 at step 7
    fired = []
    for step, share in enumerate(shares, start=1):
        fired += monitor.update(step, {"epo/entropy_mean": 0.2, "actor/adv_shaping_share": share})
    assert [(w.kind, w.step) for w in fired] == [("shaping_signal", 7)]  # then quiet
    assert "invalid_penalty" in fired[0].message
    assert CascadeMonitor(30).update(1, {"epo/entropy_mean": 0.2}) == []  # PPO logs no share: never fires
    resumed = CascadeMonitor(30)
    resumed.load_state_dict({k: v for k, v in monitor.state_dict().items() if k != "shaping"})  # older checkpoint
    assert resumed.shaping == []


def test_invalid_collapse_fires_when_nearly_every_action_is_invalid_and_nothing_wins():
    monitor = CascadeMonitor(30)  # window 6
    rates = [0.3, 0.4, 0.95, 0.96, 0.97, 0.99, 1.0, 0.98, 0.99, 1.0]  # mean of the last 6 > 0.9 from step 8
    wins = [0.5, 0.25, 0, 0, 0, 0, 0, 0, 0, 0]
    fired = []
    for step, (rate, win) in enumerate(zip(rates, wins, strict=True), start=1):
        fired += monitor.update(step, {"rollout/invalid_rate": rate, "rollout/success_rate": win})
    assert [(w.kind, w.step) for w in fired] == [("invalid_collapse", 8)]
    assert "no episode won" in fired[0].message
    winning = CascadeMonitor(30)  # the same invalid rates with a win inside the window: the reward still teaches
    for step, rate in enumerate(rates, start=1):
        assert winning.update(step, {"rollout/invalid_rate": rate, "rollout/success_rate": 0.125}) == []


def test_value_not_learning_fires_after_the_early_phase_on_the_median_explained_variance():
    monitor = CascadeMonitor(30)  # window 6; checked after step 0.3 * 30 = 9
    evs = [-1e-4, 2e-5, -7e7, -3e-4, 1e-5, -2e-4] * 3  # PPO on Experiment 10's set 100: never above ~0
    fired = []
    for step, ev in enumerate(evs, start=1):
        fired += monitor.update(step, {"critic/explained_var": ev})
    assert [(w.kind, w.step) for w in fired] == [("value_not_learning", 10)]
    assert "optim.value_lr" in fired[0].message
    learning = CascadeMonitor(30)
    assert not any(learning.update(s, {"critic/explained_var": 0.4}) for s in range(1, 31))
    resumed = CascadeMonitor(30)  # an older checkpoint without these two trails
    resumed.load_state_dict({k: v for k, v in monitor.state_dict().items() if k not in ("invalid", "explained_var")})
    assert resumed.invalid == [] and resumed.explained_var == []


def test_experiment_10_ppo_collapse_is_named_and_its_grpo_run_is_not():
    """Replays the committed metrics of docs/RESULTS.md Experiment 10, set 100, through the monitor."""
    sweep = Path(__file__).parents[1] / "docs" / "results" / "fast_tier_long_methods" / "sweep"

    def kinds(run: str) -> set[str]:
        rows = [json.loads(line) for line in (sweep / run / "metrics.jsonl").read_text().splitlines()]
        monitor = CascadeMonitor(60)
        return {w.kind for r in rows if "actor/entropy" in r for w in monitor.update(r["step"], r)}

    # the collapse: entropy climbed from ~0.2 to 0.7-1.0 nats after step 30, then nearly every action was invalid
    assert {"invalid_collapse", "value_not_learning", "late_climb"} <= kinds("ppo/seed100")
    # GRPO's entropy zig-zags from step to step as much late as before (8 episodes a step): no late warning
    assert not {"invalid_collapse", "value_not_learning", "late_oscillation", "late_climb"} & kinds("grpo/seed100")


def small_batch_trace(late_noise: float, seed: int = 0) -> np.ndarray:
    """Entropy ~0.15 nats measured on a few episodes a step: 30% multiplicative noise, late_noise from step 61 on."""
    rng = np.random.default_rng(seed)
    noise = np.where(np.arange(1, TOTAL + 1) > 60, late_noise, 0.3)
    return 0.15 * (1 + noise * rng.standard_normal(TOTAL)).clip(0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_batch_noise_is_not_thrashing_but_three_times_more_of_it_late_is(seed):
    success = np.full(TOTAL, 0.5)
    same = run(CascadeMonitor(TOTAL), small_batch_trace(0.3, seed), success)
    assert [w.kind for w in same] == []  # 30% noise alone fired late_oscillation (and late_climb) in every run
    more = run(CascadeMonitor(TOTAL), small_batch_trace(0.9, seed), success)
    assert "late_oscillation" in [w.kind for w in more]
    assert "before the late phase" in next(w.message for w in more if w.kind == "late_oscillation")


def test_monitor_state_from_a_checkpoint_without_the_pre_late_reference_still_loads():
    monitor = CascadeMonitor(TOTAL)
    run(monitor, *healthy_trace())
    old = {k: v for k, v in monitor.state_dict().items() if k not in ("entropy_steps", "pre_late")}
    fresh = CascadeMonitor(TOTAL)
    fresh.load_state_dict(old)
    assert fresh.pre_late == [0, 0.0, 0.0, 0.0] and fresh._pre_late_ratio() is None  # the absolute checks decide


def test_a_shared_value_head_is_noted_at_the_start_of_a_ppo_run():
    from epo.config import Config
    from epo.trainer.setup import shared_critic_note

    cfg = Config()
    cfg.algo.name, cfg.model.value_model, cfg.optim.lr, cfg.optim.value_lr = "ppo", "shared", 3e-4, 1e-5
    assert "optim.value_lr=1e-05" in shared_critic_note(cfg)  # Experiment 10's PPO runs
    cfg.optim.value_lr = 3e-4
    assert "within 15 steps" in shared_critic_note(cfg)  # Experiment 11's ppo_head_lr: no faster head is safe either
    cfg.model.value_model = "separate"
    assert shared_critic_note(cfg) is None  # a separate critic has its own backbone
    cfg.model.value_model, cfg.algo.name = "shared", "grpo"
    assert shared_critic_note(cfg) is None  # no critic at all
