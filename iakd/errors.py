"""The one exception type that bad user input raises.

Command lines catch :class:`ConfigError`, print its message on one line and exit with code 2, before any
training or Ray worker starts.
"""


class ConfigError(ValueError):
    """A config value, a file or a folder that cannot be used; the message names it and what is allowed."""


class DataError(ConfigError):
    """A dataset folder or file that is missing or malformed; the message says how to get the data."""
