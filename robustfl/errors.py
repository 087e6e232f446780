"""Errors that are the user's to fix: the CLI prints them without a traceback."""


class ConfigError(ValueError):
    """An invalid configuration value. The message names the key and what is allowed."""


class DataError(FileNotFoundError):
    """A data set's files are missing or malformed. The message names the path and the fix."""
