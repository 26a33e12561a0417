"""The MLflow edge of the project: one parent run per sweep, one nested child run per trial.

Everything goes through :class:`mlflow.tracking.MlflowClient` with explicit run ids. The fluent API
(``mlflow.start_run`` and friends) keeps a global "active run" per process/thread, which is wrong here:
trials run in Ray worker processes and threads, possibly on other nodes talking to an ``http://`` server,
and a trial restored from a checkpoint must keep writing to the run it started.

Callers pass a tracking URI and ids around (strings survive pickling into Ray workers); clients are cheap
to build because MLflow caches one store (and one SQL engine) per URI in each process.

The package's parts, each with one job; callers use the names below (``tracking.connect``, ``tracking.TrialRun``):

- :mod:`~iakd.tracking.tags`: the tags that tie a sweep's runs together.
- :mod:`~iakd.tracking.values`: params, tags and metrics as MLflow takes them.
- :mod:`~iakd.tracking.store`: the tracking URI, its client, the server check, the experiment.
- :mod:`~iakd.tracking.runs`: the parent run's lifecycle and finding, closing and deleting runs.
- :mod:`~iakd.tracking.trial_run`: :class:`TrialRun`, one trial's child run.
"""

from __future__ import annotations

from iakd.tracking.runs import (
    OPEN_STATUSES,
    child_runs,
    close_run,
    delete_children,
    delete_tags,
    find_child,
    find_run,
    finish_parent_run,
    set_tags,
    start_parent_run,
    supersede_run,
)
from iakd.tracking.store import (
    TIMEOUT_S,
    absolute_uri,
    check_experiment_name,
    check_server,
    check_sqlite_store,
    connect,
    mlflow_client,
    sqlite_file,
    sqlite_setup_lock,
)
from iakd.tracking.tags import (
    CANDIDATE_TAG,
    ERROR_TAG,
    FAMILY_TAG,
    INTERRUPTED_TAG,
    ROLE_TAG,
    STATUS_TAG,
    SUPERSEDED_TAG,
    SWEEP_TAG,
    TEACHER_WARNING_TAG,
    TRIAL_TAG,
    baseline_label,
)
from iakd.tracking.trial_run import TrialRun
from iakd.tracking.values import MAX_PARAM_LENGTH, flatten

__all__ = [
    "CANDIDATE_TAG",
    "ERROR_TAG",
    "FAMILY_TAG",
    "INTERRUPTED_TAG",
    "STATUS_TAG",
    "SUPERSEDED_TAG",
    "baseline_label",
    "OPEN_STATUSES",
    "ROLE_TAG",
    "SWEEP_TAG",
    "TEACHER_WARNING_TAG",
    "TRIAL_TAG",
    "TIMEOUT_S",
    "check_experiment_name",
    "check_server",
    "check_sqlite_store",
    "mlflow_client",
    "set_tags",
    "MAX_PARAM_LENGTH",
    "TrialRun",
    "absolute_uri",
    "child_runs",
    "close_run",
    "connect",
    "delete_children",
    "delete_tags",
    "find_child",
    "find_run",
    "finish_parent_run",
    "flatten",
    "sqlite_file",
    "sqlite_setup_lock",
    "start_parent_run",
    "supersede_run",
]
