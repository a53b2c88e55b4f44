"""Cascade-failure monitor: warns live when entropy dynamics look like the failures EPO is meant to prevent.

The EPO paper describes two phases of failure in multi-turn sparse-reward RL:
  * early: entropy drops fast and the policy locks onto a bad low-entropy strategy (success stays low);
  * late: entropy thrashes (oscillates step to step) or climbs, and training collapses.

`CascadeMonitor.update(step, metrics)` reads "epo/entropy_mean" and "rollout/success_rate" of each RL step
(the signed step-to-step change ΔH is computed from the entropy series; "epo/entropy_delta" is its absolute value)
and returns new warnings of three kinds: "early_collapse", "late_oscillation", "late_climb". A fourth,
"shaping_signal", reads GRPO's "actor/adv_shaping_share": most of the advantage comes from groups whose episodes all
had the same outcome, so the policy is trained on the per-turn shaping, not on winning. Two more name faults that
end a run without an entropy pattern (docs/RESULTS.md, Experiment 10): "invalid_collapse" (almost every action parses
to no valid action and nothing is won) and "value_not_learning" (PPO's value head explains none of the returns'
variance, so its advantages are the raw returns). Each kind fires on the
step its condition becomes true and stays quiet until the condition has been false for `rearm_steps` steps.
Thresholds: `MonitorConfig` (documented again in docs/METRICS.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

KINDS = ("early_collapse", "late_oscillation", "late_climb", "shaping_signal", "invalid_collapse", "value_not_learning")


@dataclass
class MonitorConfig:
    baseline_steps: int = 3
    """Initial entropy = mean of the first baseline_steps steps' entropy; success is also averaged over this many
    trailing steps."""
    collapse_ratio: float = 0.5
    """Early collapse: entropy falls below collapse_ratio × initial entropy ..."""
    early_fraction: float = 0.3
    """... at a step <= early_fraction × total_steps ..."""
    collapse_success_below: float = 0.2
    """... while the trailing success rate is below this (no success metric: entropy alone decides)."""
    late_fraction: float = 0.5
    """The late checks run only at steps > late_fraction × total_steps."""
    window: int = 0
    """Trailing window (RL steps) of the late checks; 0 = auto: max(6, total_steps // 10)."""
    oscillation_ratio: float = 0.15
    """Late oscillation: std of ΔH over the window > oscillation_ratio × mean entropy of the window ..."""
    oscillation_sign_changes: float = 0.5
    """... and ΔH flips sign in at least this fraction of consecutive pairs (a zig-zag, not one jump) ..."""
    oscillation_growth: float = 2.5
    """... and the window's ratio (std of ΔH / mean entropy) exceeds oscillation_growth × the same ratio over the
    run's own pre-late steps (those after its first window): a small batch's entropy estimate zig-zags from step to
    step anyway, and thrashing is more of it than the run showed before. With the first two conditions alone the
    warning fired at the first late step of all 88 runs kept in docs/results. A run with fewer than window - 1
    pre-late changes has no reference: see late_needs_reference."""
    climb_ratio: float = 0.2
    """Late climb: the least-squares line through the window's entropy rises by > climb_ratio × its start value ...
    (checked only while no oscillation is detected)"""
    climb_noise: float = 4.0
    """... and by > climb_noise standard deviations of the rise that the run's pre-late step-to-step noise alone
    would give such a line (noise sd = std of pre-late ΔH / √2). Without it a 6-step line through a small batch's
    entropy rose by 20% at some late step in 86 of the 88 runs kept in docs/results; with it, 7, among them both
    runs whose entropy climbed from 0.2 to 0.7-1.0 nats before collapsing (Experiment 10). No pre-late reference:
    see late_needs_reference."""
    late_needs_reference: bool = True
    """The late entropy checks (oscillation, climb) run only once the run has its pre-late reference (window - 1
    step-to-step changes after its first window, before the late phase): without one, a few episodes' entropy zig-zags
    enough to fire them in almost any short run (late_oscillation in all 6 runs of Experiment 12, 12 steps each).
    Runs too short to get one are told so once (`late_checks_note`). False: the first two conditions decide."""
    shaping_share_above: float = 0.5
    """Shaping signal (GRPO): the mean of actor/adv_shaping_share over the trailing window exceeds this."""
    invalid_rate_above: float = 0.9
    """Invalid collapse: the mean of rollout/invalid_rate over the trailing window exceeds this while no episode of
    the window won (rollout/success_rate 0)."""
    value_ev_at_most: float = 0.0
    """Value not learning (PPO): the median of critic/explained_var over the trailing window is at most this (0: the
    values explain none of the returns' variance; the median, because the ratio explodes when the returns barely
    vary), checked after early_fraction × total_steps so a fresh value head has time to fit."""
    rearm_steps: int = 5
    """After firing, a kind fires again only once its condition was false for this many consecutive steps."""

    def __post_init__(self) -> None:
        for name in ("baseline_steps", "rearm_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"monitor.{name}: must be >= 1, got {getattr(self, name)}")
        if self.window < 0 or self.window == 1 or self.window == 2:
            raise ValueError(f"monitor.window: must be 0 (auto) or >= 3, got {self.window}")
        for name in ("early_fraction", "late_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"monitor.{name}: must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class MonitorWarning:
    kind: str
    """One of KINDS."""
    step: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CascadeMonitor:
    def __init__(self, total_steps: int, config: MonitorConfig | None = None, **thresholds: Any) -> None:
        """`thresholds` override single MonitorConfig fields, e.g. CascadeMonitor(150, collapse_ratio=0.4)."""
        if total_steps < 1:
            raise ValueError(f"total_steps: must be >= 1, got {total_steps}")
        base = asdict(config or MonitorConfig())
        unknown = set(thresholds) - set(base)
        if unknown:
            raise ValueError(f"monitor: unknown threshold(s) {', '.join(sorted(unknown))}")
        self.cfg = MonitorConfig(**{**base, **thresholds})
        self.total_steps = total_steps
        self.window = self.cfg.window or max(6, total_steps // 10)
        self.initial_entropy: float | None = None
        self.entropy: list[float] = []  # trailing, at most max(window, baseline_steps) values
        self.success: list[float] = []  # trailing, at most baseline_steps values
        self.shaping: list[float] = []  # trailing, at most window values of actor/adv_shaping_share
        self.invalid: list[tuple[float, float]] = []  # trailing (invalid_rate, success_rate), at most window
        self.explained_var: list[float] = []  # trailing, at most window values of critic/explained_var
        self.entropy_steps = 0  # entropy values seen so far
        self.pre_late = [0, 0.0, 0.0, 0.0]  # pre-late steps after the first window: n, sum ΔH, sum ΔH², sum H
        self.quiet_steps = {k: self.cfg.rearm_steps for k in KINDS}  # consecutive steps with the condition false

    # ------------------------------------------------------------------ update

    def update(self, step: int, metrics: dict[str, Any]) -> list[MonitorWarning]:
        """Feed one RL step's metrics; returns the warnings that fire now (usually none)."""
        h = _finite(metrics.get("epo/entropy_mean"))
        s = _finite(metrics.get("rollout/success_rate"))
        if s is not None:
            self.success = (self.success + [s])[-self.cfg.baseline_steps :]
        a = _finite(metrics.get("actor/adv_shaping_share"))
        if a is not None:
            self.shaping = (self.shaping + [a])[-self.window :]
        invalid = _finite(metrics.get("rollout/invalid_rate"))
        if invalid is not None and s is not None:
            self.invalid = (self.invalid + [(invalid, s)])[-self.window :]
        ev = _finite(metrics.get("critic/explained_var"))
        if ev is not None:
            self.explained_var = (self.explained_var + [ev])[-self.window :]
        checks = {
            "shaping_signal": self._shaping_signal(step),
            "invalid_collapse": self._invalid_collapse(step),
            "value_not_learning": self._value_not_learning(step),
        }
        fired = [w for kind, msg in checks.items() if (w := self._debounce(kind, step, msg)) is not None]
        return self._entropy_warnings(step, h) + fired

    def _entropy_warnings(self, step: int, h: float | None) -> list[MonitorWarning]:
        """The three cascade kinds, from this step's entropy h (None: not logged)."""
        if h is None:
            return []
        self.entropy = (self.entropy + [h])[-max(self.window, self.cfg.baseline_steps) :]
        self.entropy_steps += 1
        if self.entropy_steps > self.window and step <= self.cfg.late_fraction * self.total_steps:
            dh = h - self.entropy[-2]
            self.pre_late = [
                self.pre_late[0] + 1,
                self.pre_late[1] + dh,
                self.pre_late[2] + dh * dh,
                self.pre_late[3] + h,
            ]
        if self.initial_entropy is None and len(self.entropy) == self.cfg.baseline_steps:
            self.initial_entropy = float(np.mean(self.entropy))
            return []
        oscillation = self._late_oscillation(step)
        found = {
            "early_collapse": self._early_collapse(step, h),
            "late_oscillation": oscillation,
            # A zig-zag can fake a trend in a short window: while thrashing, only the oscillation is reported.
            "late_climb": None if oscillation else self._late_climb(step),
        }
        return [w for kind, msg in found.items() if (w := self._debounce(kind, step, msg)) is not None]

    def _debounce(self, kind: str, step: int, message: str | None) -> MonitorWarning | None:
        if message is None:
            self.quiet_steps[kind] += 1
            return None
        fire = self.quiet_steps[kind] >= self.cfg.rearm_steps
        self.quiet_steps[kind] = 0
        return MonitorWarning(kind, step, message) if fire else None

    # ------------------------------------------------------------------ the three checks (message or None)

    def _early_collapse(self, step: int, h: float) -> str | None:
        cfg, h0 = self.cfg, self.initial_entropy
        if h0 is None or h0 <= 0 or step > cfg.early_fraction * self.total_steps:
            return None
        success = float(np.mean(self.success)) if self.success else None
        if h >= cfg.collapse_ratio * h0 or (success is not None and success >= cfg.collapse_success_below):
            return None
        succ_txt = "unknown" if success is None else f"{success:.2f} (< {cfg.collapse_success_below:g})"
        return (
            f"early entropy collapse at step {step}: entropy {h:.3g} is {h / h0:.0%} of its initial {h0:.3g} "
            f"(threshold {cfg.collapse_ratio:.0%}) while success is {succ_txt}; the policy may be locking onto a bad "
            "low-entropy strategy (try epo.mode=on, a larger epo.entropy_coef or a lower lr)"
        )

    @property
    def late_checks_note(self) -> str | None:
        """One line for the start of a run too short for the late entropy checks (see late_needs_reference)."""
        need = self.min_steps_for_late_checks()
        if not self.cfg.late_needs_reference or 0 < need <= self.total_steps or self.total_steps < self.window:
            return None  # checks on, or a run shorter than one window, which never had them
        off = "monitor: late_oscillation and late_climb are off"
        if need == 0:
            return f"{off}: they compare the late steps with the entropy noise of the steps before them, and late_fraction 0 leaves none"
        return (
            f"{off} for this {self.total_steps}-step run: they compare the late steps with the run's own entropy "
            f"noise in the steps between its first window ({self.window}) and its late phase, too few here to measure "
            f"it (runs of >= {need} steps have enough)"
        )

    def min_steps_for_late_checks(self) -> int:
        """Fewest total steps whose pre-late phase holds a reference (0: none does, e.g. late_fraction 0), assuming
        entropy is logged every step: floor(late_fraction·T) - window >= window - 1."""
        for total in range(1, 100_000):
            window = self.cfg.window or max(6, total // 10)
            if math.floor(self.cfg.late_fraction * total) - window >= window - 1:
                return total
        return 0

    def _late_window(self, step: int) -> np.ndarray | None:
        if step <= self.cfg.late_fraction * self.total_steps or len(self.entropy) < self.window:
            return None
        if self.cfg.late_needs_reference and self._pre_late_std() is None:
            return None
        return np.asarray(self.entropy[-self.window :])  # (window,)

    def _late_oscillation(self, step: int) -> str | None:
        h = self._late_window(step)
        if h is None:
            return None
        dh = np.diff(h)  # (window-1,)
        flips = float(np.mean(np.sign(dh[1:]) * np.sign(dh[:-1]) < 0))
        ratio = float(np.std(dh)) / max(float(np.mean(h)), 1e-8)
        before = self._pre_late_ratio()
        if ratio <= self.cfg.oscillation_ratio or flips < self.cfg.oscillation_sign_changes:
            return None
        if before is not None and ratio <= self.cfg.oscillation_growth * before:
            return None
        than = "" if before is None else f", {ratio / max(before, 1e-8):.1f}x its ratio before the late phase"
        return (
            f"late entropy oscillation at step {step}: std of step-to-step entropy change is {ratio:.0%} of the mean "
            f"entropy over the last {self.window} steps (threshold {self.cfg.oscillation_ratio:.0%}{than}), sign "
            f"flips {flips:.0%}; training is thrashing. Check the lr and the episodes per step first: EPO's smoothing "
            "(epo.mode=on) is aimed at this, but did not change a thrashing run's outcome in docs/RESULTS.md "
            "Experiment 2, where the failure was not an entropy problem"
        )

    def _pre_late_std(self) -> tuple[float, float] | None:
        """(std of ΔH, mean entropy) over the pre-late steps after the first window; None with too few of them."""
        n, sum_dh, sum_dh2, sum_h = self.pre_late
        if n < self.window - 1 or sum_h <= 0:
            return None
        return math.sqrt(max(sum_dh2 / n - (sum_dh / n) ** 2, 0.0)), sum_h / n

    def _pre_late_ratio(self) -> float | None:
        """std of ΔH / mean entropy over the pre-late steps (see _pre_late_std)."""
        ref = self._pre_late_std()
        return None if ref is None else ref[0] / ref[1]

    def _late_climb(self, step: int) -> str | None:
        h = self._late_window(step)
        if h is None:
            return None
        i = np.arange(len(h))
        slope, start = np.polyfit(i, h, deg=1)  # fitted line: start + slope·i
        rise = slope * (len(h) - 1) / max(float(start), 1e-8)
        if start <= 0 or rise <= self.cfg.climb_ratio:
            return None
        ref, sds = self._pre_late_std(), ""
        if ref is not None:
            # sd of the fitted rise slope·(w-1) under iid noise of sd sigma: sigma·(w-1)/sqrt(sum (i - mean i)^2)
            rise_sd = ref[0] / math.sqrt(2) * (len(h) - 1) / math.sqrt(float(((i - i.mean()) ** 2).sum()))
            sds = slope * (len(h) - 1) / max(rise_sd, 1e-12)
            if sds <= self.cfg.climb_noise:
                return None
            sds = f", {sds:.1f} sd of the run's pre-late noise"
        return (
            f"late entropy climb at step {step}: entropy rose {rise:.0%} over the last {self.window} steps "
            f"(threshold {self.cfg.climb_ratio:.0%}{sds}), a sign of late-phase instability (check lr, KL, clip "
            "fraction)"
        )

    def _shaping_signal(self, step: int) -> str | None:
        if len(self.shaping) < self.window:
            return None
        share = float(np.mean(self.shaping))
        if share <= self.cfg.shaping_share_above:
            return None
        return (
            f"shaping-driven updates at step {step}: {share:.0%} of GRPO's advantage over the last {self.window} steps "
            f"came from groups whose episodes all had the same outcome (threshold {self.cfg.shaping_share_above:.0%}). "
            "There only the per-turn shaping (invalid penalty, format bonus) differs, and dividing by the group's "
            "small std makes it as large as a win's signal: the policy is trained to avoid invalid actions, not to win "
            "(see rollout/groups_all_lost; options: agent.invalid_penalty=0, algo.grpo_norm_std=false, larger "
            "rollout.group_size; docs/RESULTS.md Experiment 3)"
        )

    def _invalid_collapse(self, step: int) -> str | None:
        if len(self.invalid) < self.window:
            return None
        rate = float(np.mean([i for i, _ in self.invalid]))
        if rate <= self.cfg.invalid_rate_above or any(s > 0 for _, s in self.invalid):
            return None
        return (
            f"invalid-action collapse at step {step}: {rate:.0%} of the actions over the last {self.window} steps "
            f"parsed to no valid action (threshold {self.cfg.invalid_rate_above:.0%}) and no episode won, so the "
            "outcome reward gives no signal to recover. Roll back to an earlier checkpoint and lower the lr; with PPO "
            "and model.value_model=shared see value_not_learning (docs/RESULTS.md Experiment 10)"
        )

    def _value_not_learning(self, step: int) -> str | None:
        if step <= self.cfg.early_fraction * self.total_steps or len(self.explained_var) < self.window:
            return None
        median = float(np.median(self.explained_var))
        if median > self.cfg.value_ev_at_most:
            return None
        return (
            f"value head not learning at step {step}: median explained variance {median:.3g} over the last "
            f"{self.window} steps (threshold <= {self.cfg.value_ev_at_most:g}), so PPO's advantages are close to the "
            "raw returns. With model.value_model=shared the head alone trains at optim.value_lr while the value loss's "
            "gradient (algo.value_coef) reaches the policy's trunk at optim.lr: check that optim.value_lr is not far "
            "below optim.lr, or use model.value_model=separate (docs/RESULTS.md Experiment 10)"
        )

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        return {
            "initial_entropy": self.initial_entropy,
            "entropy": list(self.entropy),
            "success": list(self.success),
            "shaping": list(self.shaping),
            "invalid": [list(x) for x in self.invalid],
            "explained_var": list(self.explained_var),
            "entropy_steps": self.entropy_steps,
            "pre_late": list(self.pre_late),
            "quiet_steps": dict(self.quiet_steps),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial_entropy = state["initial_entropy"]
        self.entropy = [float(x) for x in state["entropy"]]
        self.success = [float(x) for x in state["success"]]
        self.shaping = [float(x) for x in state.get("shaping", [])]  # absent in checkpoints before this warning
        self.invalid = [(float(i), float(s)) for i, s in state.get("invalid", [])]  # the same for these two
        self.explained_var = [float(x) for x in state.get("explained_var", [])]
        # checkpoints before oscillation_growth: no pre-late reference (late_needs_reference then decides)
        self.entropy_steps = int(state.get("entropy_steps", 0))
        n, *sums = state.get("pre_late", [0, 0.0, 0.0, 0.0])
        self.pre_late = [int(n), *(float(x) for x in sums)]
        self.quiet_steps = {k: int(state["quiet_steps"].get(k, self.cfg.rearm_steps)) for k in KINDS}


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
