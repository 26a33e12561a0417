"""The exceptions whose message a command line prints as one line.

:class:`ConfigError`: bad input, found at the door; exit code 2, before any training or Ray worker starts.
:class:`RunError`: training that ran and gave nothing usable (a diverged teacher, a sweep with nothing to rank);
exit code 1.
"""


class ConfigError(ValueError):
    """A config value, a file or a folder that cannot be used; the message names it and what is allowed."""


class DataError(ConfigError):
    """A dataset folder or file that is missing or malformed; the message says how to get the data."""


class RunError(RuntimeError):
    """Training that ran and gave nothing usable: a teacher that diverged, a sweep whose every searched trial
    failed or diverged; the message says which and why (exit code 1)."""
