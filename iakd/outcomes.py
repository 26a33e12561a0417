"""What became of a run: the one home of the words the engine, the search and the analysis share.

The engine ends a run ``finished``, ``stopped`` (a callback asked it to) or ``diverged``; the search records one of
them in the child run's status tag, or ``stopped_early`` (ASHA stopped the trial) or ``error`` (it raised); the
analysis adds ``killed`` and ``unfinished`` from MLflow's run status.
"""

from __future__ import annotations

__all__ = ["DIVERGED", "ERROR", "FINISHED", "KILLED", "OPEN_STATUSES", "OUTCOMES", "STOPPED", "STOPPED_EARLY",
           "UNFINISHED", "USABLE", "of_run"]

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

# MLflow's run statuses a run can still leave; anything else (FINISHED, FAILED, KILLED) is final.
OPEN_STATUSES = frozenset({"RUNNING", "SCHEDULED"})


def of_run(status: str, status_tag: str | None) -> str:
    """A child run's outcome from MLflow's ``status`` and the search's status tag (the tag wins, once it is over)."""
    if status in OPEN_STATUSES:
        return UNFINISHED  # a tag may be there from an earlier attempt; the run is not over
    if status_tag == STOPPED:  # the engine's word for "a callback stopped it"
        return STOPPED_EARLY
    if status_tag:
        return status_tag
    return {"FINISHED": FINISHED, "FAILED": ERROR, "KILLED": KILLED}.get(status, status.lower())
