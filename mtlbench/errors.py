"""Errors that the CLI reports as one line (no traceback) before exiting non-zero."""


class MtlbenchError(Exception):
    """Base class for user-facing errors: the message is printed as-is on one line."""


class ConfigError(MtlbenchError, ValueError):
    """A configuration value is invalid. The message names the key, the value and what is
    accepted."""


class DataError(MtlbenchError):
    """A dataset is missing or corrupt. The message says what was looked for and how to fix it."""


class TrainingDiverged(MtlbenchError):
    """A loss or gradient became non-finite during training."""
