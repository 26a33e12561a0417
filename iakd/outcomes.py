"""What became of a run: the one home of the words the engine, the search and the analysis share.

The engine ends a run ``finished``, ``stopped`` (a callback asked it to) or ``diverged``; the search records one of
them in the child run's status tag, or ``stopped_early`` (ASHA stopped the trial) or ``error`` (it raised); the
analysis adds ``killed`` and ``unfinished`` from MLflow's run status.
"""

from __future__ import annotations

__all__ = ["DIVERGED", "ERROR", "FINISHED", "KILLED", "OUTCOMES", "STOPPED", "STOPPED_EARLY", "UNFINISHED", "USABLE"]

FINISHED = "finished"  # trained every epoch
STOPPED = "stopped"  # the engine's word: a callback stopped it (in a search, ASHA through tune.report)
DIVERGED = "diverged"  # a NaN or infinite loss ended it
STOPPED_EARLY = "stopped_early"  # the search's word for a trial ASHA stopped
ERROR = "error"  # the trial raised
KILLED = "killed"  # MLflow's KILLED: the driver was interrupted
UNFINISHED = "unfinished"  # MLflow's RUNNING or SCHEDULED: the run is not over

# What the analysis reports for a run (``stopped`` is read as ``stopped_early``), and which of them it may rank.
OUTCOMES: tuple[str, ...] = (FINISHED, STOPPED_EARLY, DIVERGED, ERROR, KILLED, UNFINISHED)
USABLE: tuple[str, ...] = (FINISHED, STOPPED_EARLY)
