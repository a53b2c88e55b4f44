"""Name -> EnvSpec. Built-in envs are imported lazily so that `epo envs` works without Java or alfworld."""

from __future__ import annotations

import importlib
from typing import Any

from epo.envs.base import EnvSpec, TextEnv
from epo.errors import EpoError

# name -> "module:ATTRIBUTE" holding an EnvSpec; imported on first use.
_BUILTIN: dict[str, str] = {
    "quest": "epo.envs.quest:SPEC",
    "alfworld": "epo.envs.alfworld:SPEC",
    "sciworld": "epo.envs.sciworld:SPEC",
}
_REGISTERED: dict[str, EnvSpec] = {}


class UnknownEnvError(EpoError, ValueError):
    pass


def register(spec: EnvSpec) -> EnvSpec:
    """Register a user env (call at import time of your package, or name it as 'module:SPEC' in the config)."""
    _REGISTERED[spec.name] = spec
    return spec


def _load(target: str) -> EnvSpec:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    spec = getattr(module, attr or "SPEC")
    if not isinstance(spec, EnvSpec):
        raise UnknownEnvError(f"{target} is not an epo.envs.EnvSpec")
    return spec


def names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def get_spec(name: str) -> EnvSpec:
    """Look up by registered name or by a dotted 'package.module:SPEC' path."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        return _load(_BUILTIN[name])
    if ":" in name:
        try:
            return _load(name)
        except (ImportError, AttributeError) as e:
            raise UnknownEnvError(f"cannot load env '{name}': {e}") from e
    raise UnknownEnvError(f"unknown env '{name}'; known envs: {', '.join(names())} (or 'package.module:SPEC')")


def make_env(name: str, **env_kwargs: Any) -> TextEnv:
    return get_spec(name).make(**env_kwargs)
