"""User-facing errors: each becomes one line on stderr and exit code 2 at the entry points."""


class TavaalError(Exception):
    """An error caused by the user's input (config, data, checkpoint); the message names the fix."""

    exit_code = 2


class ConfigError(TavaalError):
    """A config field, preset or override that is unknown or out of range."""


class DataError(TavaalError):
    """A data directory or file that is missing or unreadable."""


class CheckpointError(TavaalError):
    """A checkpoint that is missing, truncated or does not match the run."""


class TrackingError(TavaalError):
    """An MLflow tracking server or store that cannot be reached or written; the message names the URI."""
