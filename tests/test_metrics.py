from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
import torch

from epo.telemetry.metrics import MetricsLogger, flatten_scalars, read_metrics, read_warnings, summary_line
from epo.telemetry.monitor import MonitorWarning


def step_metrics(step: int) -> dict:
    return {
        "rollout/success_rate": 0.25 * step,
        "epo/entropy_per_turn": [1.0, 0.5, float("nan")],
        "epo/hbar_per_turn": np.array([float("nan"), 0.7]),
        "epo/P": torch.tensor(0.125),
        "epo/beta": np.float32(1.5),
        "actor/grad_norm": float("inf"),
        "actor/kl_ref": float("-inf"),
        "eval/iid/episodes": 64,
    }


def test_jsonl_is_valid_json_and_round_trips_nan_inf(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, step_metrics(1))
        logger.log(2, step_metrics(2))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    raw = json.loads(lines[0])  # strict JSON: NaN/inf are encoded as null / strings
    assert raw["epo/entropy_per_turn"] == [1.0, 0.5, None]
    assert raw["actor/grad_norm"] == "Infinity" and raw["actor/kl_ref"] == "-Infinity"
    assert "NaN" not in lines[0]

    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    r = records[1]
    assert r["rollout/success_rate"] == 0.5
    assert r["epo/entropy_per_turn"][:2] == [1.0, 0.5] and math.isnan(r["epo/entropy_per_turn"][2])
    assert math.isnan(r["epo/hbar_per_turn"][0]) and r["epo/hbar_per_turn"][1] == pytest.approx(0.7)
    assert r["epo/P"] == 0.125 and r["epo/beta"] == 1.5 and r["eval/iid/episodes"] == 64
    assert r["actor/grad_norm"] == math.inf and r["actor/kl_ref"] == -math.inf


def test_resume_truncates_to_equal_an_uninterrupted_run(tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    with MetricsLogger(straight, tensorboard=False) as logger:
        for step in range(1, 6):
            logger.log(step, step_metrics(step))
            logger.log_warnings([MonitorWarning("late_climb", step, f"w{step}")] if step % 2 else [])
    # Interrupted run: logged up to step 4 (and half of step 5's line) but its last checkpoint is step 2.
    with MetricsLogger(resumed, tensorboard=False) as logger:
        for step in range(1, 5):
            logger.log(step, step_metrics(step))
            logger.log_warnings([MonitorWarning("late_climb", step, f"w{step}")] if step % 2 else [])
    with open(resumed / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "rollout/succ')
    with MetricsLogger(resumed, tensorboard=False, resume_step=2) as logger:
        assert [r["step"] for r in read_metrics(resumed)] == [1, 2]
        assert [w["step"] for w in read_warnings(resumed)] == [1]
        for step in range(3, 6):
            logger.log(step, step_metrics(step))
            logger.log_warnings([MonitorWarning("late_climb", step, f"w{step}")] if step % 2 else [])
    for name in ("metrics.jsonl", "warnings.jsonl"):
        assert (resumed / name).read_text() == (straight / name).read_text()


def test_fresh_logger_refuses_existing_metrics(tmp_path):
    MetricsLogger(tmp_path, tensorboard=False).close()  # empty file is fine
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"a": 1.0})
    with pytest.raises(ValueError, match="already exists"):
        MetricsLogger(tmp_path, tensorboard=False)


def test_bad_values_and_bad_lines_give_clear_errors(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(ValueError, match="metric 'x': dict is not a number"):
            logger.log(1, {"x": {"a": 1}})
        with pytest.raises(ValueError, match="differs from the step argument"):
            logger.log(1, {"step": 2})
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object"):
        read_metrics(tmp_path)


def test_flatten_scalars_splits_per_turn_lists():
    flat = dict(flatten_scalars({"step": 3, "epo/entropy_per_turn": [1.0, math.nan, 0.5], "a": 2.0, "b": math.inf}))
    assert flat == {"epo/entropy_per_turn/t00": 1.0, "epo/entropy_per_turn/t02": 0.5, "a": 2.0}


def test_tensorboard_scalars_are_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, tensorboard=True) as logger:
        logger.log(1, {"epo/entropy_mean": 0.5, "epo/entropy_per_turn": [0.7, 0.3]})
        logger.log(2, {"epo/entropy_mean": 0.25})
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("epo/entropy_mean")] == [(1, 0.5), (2, 0.25)]
    assert acc.Scalars("epo/entropy_per_turn/t01")[0].value == pytest.approx(0.3)


def test_wandb_is_optional_and_lazy(tmp_path, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(
        init=lambda **kw: calls.append(("init", kw)),
        log=lambda data, step: calls.append(("log", data, step)),
        finish=lambda: calls.append(("finish",)),
        util=types.SimpleNamespace(generate_id=lambda: "abc123"),
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with MetricsLogger(tmp_path, tensorboard=False, wandb=True) as logger:
        logger.log(7, {"epo/beta": 1.5, "epo/hbar_per_turn": [math.nan, 0.2]})
    assert calls[0][0] == "init" and calls[0][1]["id"] == "abc123" and calls[0][1]["resume"] == "allow"
    assert calls[1] == ("log", {"epo/beta": 1.5, "epo/hbar_per_turn/t01": 0.2}, 7)
    assert calls[2] == ("finish",)
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(RuntimeError, match="wandb is not installed"):
        MetricsLogger(tmp_path / "other", tensorboard=False, wandb=True)


def test_summary_line_shows_present_metrics_only():
    line = summary_line(
        {
            "step": 12,
            "rollout/success_rate": 0.375,
            "rollout/return_mean": 3.75,
            "epo/entropy_mean": 0.8123,
            "epo/P": 0.0012,
            "epo/beta": 1.61,
            "actor/approx_kl": 0.0031,
            "actor/clip_frac": 0.042,
            "actor/lr": 4.8e-6,
            "eval/ood/success": 0.25,
            "eval/iid/success": 0.5,
            "time/step_s": 12.3,
            "time/rollout_s": 10.1,
            "time/update_s": 2.0,
        }
    )
    assert line == (
        "step   12 | succ 0.375 | ret 3.75 | H 0.812 | P 1.20e-03 | β 1.61 | kl 3.1e-03 | clip 0.042 | lr 4.8e-06 | "
        "eval iid 0.500 ood 0.250 | 12.3s (roll 10.1s upd 2.0s)"
    )
    assert summary_line({"step": 3, "rollout/success_rate": 0.5}) == "step    3 | succ 0.500"
    assert summary_line({"rollout/success_rate": 0.5}, step=7) == "step    7 | succ 0.500"
    assert summary_line({"epo/beta": 1.5}) == "β 1.50"


def test_tensorboard_resume_purges_stale_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, tensorboard=True) as logger:
        for step in range(1, 5):
            logger.log(step, {"x": float(step)})
    with MetricsLogger(tmp_path, tensorboard=True, resume_step=2) as logger:
        for step in range(3, 5):
            logger.log(step, {"x": 10.0 * step})
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("x")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
