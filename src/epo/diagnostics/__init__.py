"""Entropy diagnostics beyond the standard metrics (docs/METRICS.md, "Diagnostics"); all off by default.

action_entropy   the policy's distribution over the env's listed actions (separates "which action" from spelling)
entropy_change   per-turn Cov(log-prob, advantage) next to the realised entropy change of the update
step             StepDiagnostics: the two above, hooked into one RL step (before/after the policy update)
rollouts_io      save/load one step's rollout batch (safetensors + JSON, no pickle) for `epo ablate`
ablate           replay a saved batch from the checkpoint before it under several regularisers
monitor_actions  what the cascade monitor does on a warning (checkpoint, stop, raise the entropy coefficient)
"""

from epo.diagnostics.action_entropy import action_entropy
from epo.diagnostics.entropy_change import per_turn_covariance, per_turn_mean, subset_indices
from epo.diagnostics.monitor_actions import MonitorActions
from epo.diagnostics.rollouts_io import load_rollouts, save_rollouts
from epo.diagnostics.step import StepDiagnostics

__all__ = [
    "MonitorActions",
    "StepDiagnostics",
    "action_entropy",
    "load_rollouts",
    "per_turn_covariance",
    "per_turn_mean",
    "save_rollouts",
    "subset_indices",
]
