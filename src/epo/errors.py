"""The project's own error types: bad input or a bad state on disk that the user can fix.

The CLI prints an `EpoError` as one red line (exit code 2); anything else is a bug or an environment failure
(out of memory, a CUDA error, a failing library) and keeps its traceback. `epo --debug` shows tracebacks for all.

Each class also derives from the builtin(s) it replaced (ValueError and/or RuntimeError), so `except ValueError`
or `except RuntimeError` in user code keeps working.
"""

from __future__ import annotations


class EpoError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class RunDirError(EpoError, ValueError, RuntimeError):
    """A run directory cannot be used: owned by another process, already holds a run, not a run dir..."""


class ResumeConfigError(EpoError, ValueError):
    """A config change that a resumed run cannot honour (it changes what the checkpoint holds)."""


class ModelLoadError(EpoError, ValueError, RuntimeError):
    """A model/tokenizer path or file that cannot be loaded, or model options that do not fit the model."""


class EnvSetupError(EpoError, ValueError, RuntimeError):
    """An environment that cannot be set up: unknown split, bad env kwargs, missing data or package."""


class EnvResetFailed(EnvSetupError):
    """Every reset of a batch raised inside the env (env_error): it cannot start these tasks."""


class TrainingError(EpoError, RuntimeError):
    """A run that cannot go on for a reason the user can act on (e.g. the oracle won no episode)."""


class DataNotFoundError(EpoError, FileNotFoundError):
    """Env data (game files, split lists) not found where the config or the environment says."""
