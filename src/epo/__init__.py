"""epo: Entropy-regularized Policy Optimization for multi-turn LLM agents.

The stable Python API (imported lazily, so `import epo` stays fast and loads no torch):

    Config, load_config, ConfigError        typed config: presets, dot-list overrides, validation
    train, sft, evaluate, report            what the `epo` commands run (epo.api)
    Trainer, TrainResult                    the RL loop alone
    register_env, EnvSpec, TextEnv          plug-in environments (docs/ENVIRONMENTS.md)
    check_env                               the conformance check the built-in envs pass
    Episode, TurnRecord, Rewards            plug-in rewards: agent.reward=module:function
    load_model_and_tokenizer                'embedded', 'tiny', a local dir, a .gguf file or a hub id

See examples/ for each in use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "epo.config",
    "ConfigError": "epo.config",
    "load_config": "epo.config",
    "train": "epo.api",
    "sft": "epo.api",
    "evaluate": "epo.api",
    "report": "epo.api",
    "as_config": "epo.api",
    "Trainer": "epo.trainer.trainer",
    "TrainResult": "epo.trainer.trainer",
    "EnvSpec": "epo.envs.base",
    "TextEnv": "epo.envs.base",
    "register_env": "epo.envs.registry:register",
    "check_env": "epo.envs.testing",
    "Episode": "epo.rollout.rewards",
    "TurnRecord": "epo.rollout.rewards",
    "Rewards": "epo.rollout.rewards",
    "load_model_and_tokenizer": "epo.models.loading",
}
__all__ = [  # the same names as _EXPORTS, spelled out for type checkers and linters
    "__version__",
    "Config",
    "ConfigError",
    "load_config",
    "train",
    "sft",
    "evaluate",
    "report",
    "as_config",
    "Trainer",
    "TrainResult",
    "EnvSpec",
    "TextEnv",
    "register_env",
    "check_env",
    "Episode",
    "TurnRecord",
    "Rewards",
    "load_model_and_tokenizer",
]

if TYPE_CHECKING:
    from epo.api import as_config, evaluate, report, sft, train
    from epo.config import Config, ConfigError, load_config
    from epo.envs.base import EnvSpec, TextEnv
    from epo.envs.registry import register as register_env
    from epo.envs.testing import check_env
    from epo.models.loading import load_model_and_tokenizer
    from epo.rollout.rewards import Episode, Rewards, TurnRecord
    from epo.trainer.trainer import Trainer, TrainResult


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'epo' has no attribute '{name}'")
    module_name, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module_name), attr or name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
