"""What the cascade monitor does when it warns (`diag.monitor_action`, off by default).

    none           log the warning (the default)
    checkpoint     also write a checkpoint at that step (a restart point just before the collapse)
    stop           checkpoint, then end the run: the report is written, final/ is not, and `epo train` exits 3
                   (resume to continue past it)
    raise_entropy  multiply the active entropy coefficient (epo.entropy_coef with EPO on, else algo.entropy_coef)
                   by diag.monitor_entropy_factor, once per step with a triggering warning; cumulative

Only warning kinds in `diag.monitor_on` trigger. Each warning record gets an "action" field when it triggered one
(warnings.jsonl), which the report shows in its table and as dotted lines on the figures. The scale is saved in
checkpoints, so a resumed run continues with the raised coefficient.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from epo.config import Config, DiagConfig


@dataclass
class Decision:
    records: list[dict] = field(default_factory=list)
    """The step's warnings as dicts (kind, step, message[, action]) for MetricsLogger.log_warnings."""
    save: bool = False
    stop: bool = False


class MonitorActions:
    def __init__(self, diag: DiagConfig):
        self.diag = diag
        self.entropy_scale = 1.0

    def apply(self, warnings) -> Decision:
        decision = Decision()
        acted = False
        for w in warnings:
            rec = w.to_dict() if hasattr(w, "to_dict") else dict(w)
            if self.diag.monitor_action != "none" and rec["kind"] in self.diag.monitor_on:
                rec["action"] = self._describe()
                acted = True
            decision.records.append(rec)
        if acted:
            action = self.diag.monitor_action
            decision.save = action in ("checkpoint", "stop")
            decision.stop = action == "stop"
            if action == "raise_entropy":
                self.entropy_scale *= self.diag.monitor_entropy_factor
        return decision

    def _describe(self) -> str:
        if self.diag.monitor_action == "raise_entropy":
            new = self.entropy_scale * self.diag.monitor_entropy_factor
            return f"raise_entropy: entropy coefficient x{new:g} of its configured value"
        return self.diag.monitor_action

    def effective(self, cfg: Config) -> Config:
        """The config this step trains with: `cfg` itself, or a copy with the raised entropy coefficient."""
        if self.entropy_scale == 1.0:
            return cfg
        out = copy.deepcopy(cfg)
        if out.epo.mode != "off":
            out.epo.entropy_coef *= self.entropy_scale
        else:
            out.algo.entropy_coef *= self.entropy_scale
        return out

    def metrics(self) -> dict[str, float]:
        return {"diag/entropy_coef_scale": self.entropy_scale} if self.diag.monitor_action == "raise_entropy" else {}

    def state_dict(self) -> dict:
        return {"entropy_scale": self.entropy_scale}

    def load_state_dict(self, state: dict) -> None:
        self.entropy_scale = float(state["entropy_scale"])
