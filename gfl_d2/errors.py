"""
The errors the library raises for what a user asked of it (a config, its
overrides, weights, data, an export), with messages that name the problem and
what to do. The library raises them; only the entry points (``tools/*.py``,
``projects/GFL/train_net.py``) turn them into ``error: ...`` and an exit code.
"""

__all__ = ["UsageError", "ConfigError", "WeightsError", "ExportMismatchError"]


class UsageError(Exception):
    """An error in what was asked, not in gfl-d2: the message says what to change."""


class ConfigError(UsageError, ValueError):
    """A config that cannot run: a missing file, an unknown key, a mandatory value unset."""


class WeightsError(UsageError, RuntimeError):
    """Weights that do not fit what they are loaded for (e.g. an untrained head to evaluate)."""


class ExportMismatchError(UsageError, RuntimeError):
    """An exported model whose detections differ from the eager model's."""
