from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from epo.report.summary import converged_count, write_report
from epo.telemetry.metrics import MetricsLogger
from epo.telemetry.monitor import MonitorWarning

EVAL_STEPS = (5, 10, 15, 20)
ALL_FIGURES = {
    "success",
    "return",
    "entropy",
    "entropy_stability",
    "epo_band",
    "beta",
    "kl",
    "clip_frac",
    "lr",
    "losses",
    "entropy_heatmap",
}


def write_run(run_dir, *, iid, ood, train_success, entropy, epo_mode, critic, warnings=()):
    """A 20-step synthetic run; iid/ood: eval success at EVAL_STEPS (ood may be None = not evaluated)."""
    with MetricsLogger(run_dir, tensorboard=False) as logger:
        for step in range(1, 21):
            n_turns = min(3 + step // 4, 8)  # later steps reach more turn indices
            m = {
                "rollout/success_rate": train_success(step),
                "rollout/return_mean": 10 * train_success(step),
                "rollout/episode_len": 12.0 - step / 4,
                "rollout/invalid_rate": 0.3 / step,
                "epo/entropy_mean": entropy(step),
                "epo/entropy_per_turn": [entropy(step) * (1 + 0.05 * t) for t in range(n_turns)],
                "epo/hbar_per_turn": [math.nan] * n_turns,
                "epo/entropy_var_steps": 0.01 / step,
                "epo/entropy_delta": 0.02,
                "epo/frac_below": 0.0,
                "epo/frac_above": 0.01 if epo_mode == "on" else 0.0,
                "epo/P": 1e-3 / step,
                "epo/beta": 1 + math.exp(-step / 10),
                "actor/pg_loss": -0.01,
                "actor/approx_kl": 2e-4 * step,
                "actor/clip_frac": 0.02,
                "actor/lr": 5e-6 * min(1.0, step / 2),
                "time/step_s": 3.0,
            }
            if critic:
                m.update({"critic/vf_loss": 1 / step, "critic/explained_var": 0.5, "actor/kl_ref": 1e-3})
            if step in EVAL_STEPS:
                i = EVAL_STEPS.index(step)
                m.update(
                    {"eval/iid/success": iid[i], "eval/iid/ci_low": iid[i] - 0.1, "eval/iid/ci_high": iid[i] + 0.1}
                )
                if ood is not None:
                    m.update({"eval/ood/success": ood[i]})
            logger.log(step, m)
        logger.log_warnings(warnings)
    (run_dir / "config.yaml").write_text(
        f"algo:\n  name: grpo\nepo:\n  mode: '{epo_mode}'\n  kappa_high: 2.0\ntrain:\n  seed: 0\n  run_name: {run_dir.name}\n"
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    a, b = base / "grpo", base / "grpo_epo"
    write_run(
        a,
        iid=[0.2, 0.6, 0.5, 0.4],
        ood=[0.1, 0.3, 0.35, 0.25],
        train_success=lambda k: k / 40,
        entropy=lambda k: 1 - k / 50,
        epo_mode="off",
        critic=True,
        warnings=[
            MonitorWarning("early_collapse", 4, "e"),
            MonitorWarning("late_climb", 15, "c"),
            MonitorWarning("late_climb", 19, "c"),
        ],
    )
    write_run(
        b,
        iid=[0.3, 0.7, 0.9, 0.8],
        ood=None,
        train_success=lambda k: 0.5,
        entropy=lambda k: 0.6,
        epo_mode="on",
        critic=False,
    )
    return a, b


@pytest.fixture(scope="module")
def report(two_runs, tmp_path_factory):
    """Rendering is the slow part (~1 s per figure on a busy 2-core box): render once for the module."""
    out = tmp_path_factory.mktemp("report")
    return out, write_report(list(two_runs), out)


def table_rows(text: str, section: str) -> list[list[str]]:
    body = text.split(f"## {section}")[1].split("\n## ")[0]
    rows = [line.strip("|").split("|") for line in body.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row] for row in rows if not row[0].startswith("---")]


def test_figures_are_valid_pngs(report):
    out, summary = report
    assert summary == out / "summary.md"
    assert {p.stem for p in out.glob("*.png")} == ALL_FIGURES
    for png in out.glob("*.png"):
        with Image.open(png) as img:
            img.verify()
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width >= 400 and img.height >= 300
            assert len(np.unique(np.asarray(img.convert("L")))) > 10  # not a blank canvas
    text = summary.read_text()
    assert all(f"({name}.png)" in text for name in ALL_FIGURES)


def test_summary_numbers_match_hand_computation(report):
    text = report[1].read_text()
    header, *rows = table_rows(text, "Results")
    assert header == [
        "run",
        "iid Succ.*",
        "iid Succ.",
        "ood Succ.*",
        "ood Succ.",
        "train succ.",
        "mean H",
        "Var(H)",
        "monitor warnings",
    ]
    by_run = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    a, b = by_run["grpo"], by_run["grpo_epo"]
    # 4 evals -> Succ. = mean of the last 3. A iid: max 0.6, mean(.6, .5, .4) = .5; ood: .35, mean(.3, .35, .25) = .3
    assert (a["iid Succ.*"], a["iid Succ."], a["ood Succ.*"], a["ood Succ."]) == ("60.0", "50.0", "35.0", "30.0")
    assert (b["iid Succ.*"], b["iid Succ."], b["ood Succ.*"], b["ood Succ."]) == ("90.0", "80.0", "—", "—")
    # train succ. = mean of steps 16..20 of k/40 = 18/40; mean H = 1 - mean(1..20)/50 = 0.79; Var(H) = 0.01/20
    assert (a["train succ."], a["mean H"], a["Var(H)"]) == ("45.0", "0.790", "5.00e-04")
    assert (b["train succ."], b["mean H"]) == ("50.0", "0.600")
    assert a["monitor warnings"] == "early_collapse@4, late_climb@15 (+1)" and b["monitor warnings"] == "none"
    diff_header, *diffs = table_rows(text, "Config differences")
    assert diff_header == ["key", "grpo", "grpo_epo"]
    assert diffs == [["epo.mode", "off", "on"]]  # run_name differs too but is ignored


def test_runs_with_missing_metrics_still_report(tmp_path):
    run = tmp_path / "tiny"
    with MetricsLogger(run, tensorboard=False) as logger:
        logger.log(1, {"rollout/success_rate": 0.5})
        logger.log(2, {"rollout/success_rate": 0.7, "eval/iid/success": 0.25, "critic/explained_var": 0.3})
    text = write_report([run], tmp_path / "out").read_text()
    # explained variance under its alias name still gets plotted (in the losses figure)
    assert {p.stem for p in (tmp_path / "out").glob("*.png")} == {"success", "losses"}
    header, row = table_rows(text, "Results")
    assert row[:4] == ["tiny", "25.0", "25.0", "60.0"] and row[4] == "—"
    assert "No config.yaml in: tiny" in text and "Not plotted" in text and "entropy_heatmap" in text


def test_converged_count():
    assert [converged_count(n) for n in (0, 1, 2, 3, 5, 15, 16, 30)] == [0, 1, 2, 3, 3, 3, 4, 6]


def test_bad_run_dirs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not a run directory"):
        write_report([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no metrics.jsonl"):
        write_report([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(ValueError, match="no run directories"):
        write_report([], tmp_path / "out")
