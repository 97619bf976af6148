"""Errors caused by what a user gave us (config, data, checkpoints).

The two entry commands catch ``UserError`` and print its message as one line, with no traceback, and
exit non-zero. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Base class: bad input from the user. Its message is printed as a single line."""


class ConfigError(UserError):
    """A config value is unknown, of the wrong type, or out of range."""


class DataError(UserError):
    """Data files are missing, truncated, or fail their checksum."""


class CheckpointError(UserError):
    """A run directory is missing, incomplete, corrupt, or does not match its config."""


class TrainingError(UserError):
    """Training cannot continue (for example a non-finite loss)."""


class ExactnessError(UserError):
    """A decomposition does not reproduce the model's own outputs within tolerance (claim C1)."""
