"""A sweep's runs by id: its parent run from start to finish, and finding, tagging, closing and deleting runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from iakd.outcomes import OPEN_STATUSES  # the statuses a run can still leave
from iakd.tracking.store import connect, mlflow_client
from iakd.tracking.tags import SUPERSEDED_TAG
from iakd.tracking.values import as_metrics, as_params, as_tag_dict, as_tags

__all__ = ["OPEN_STATUSES", "start_parent_run", "finish_parent_run", "child_runs", "find_run", "find_child",
           "set_tags", "delete_tags", "supersede_run", "close_run", "delete_children"]

# Runs per search_runs page (MLflow's own default); a module constant so tests can page with few runs.
_PAGE_SIZE = 1000


def start_parent_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    dicts: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Create the sweep's parent run, or re-open ``run_id`` when resuming a sweep; return its id.

    A new run gets ``params`` (flattened) and ``tags``. A resumed run only gets ``tags`` and goes back to
    RUNNING: its params are already there, and MLflow refuses to change a logged param's value.
    ``dicts`` maps artifact file names to dicts written with :meth:`MlflowClient.log_dict`
    (``.json``/``.yaml`` chosen by the name), e.g. ``{"search_space.yaml": space}``.
    """
    if run_id is None:
        experiment_id = connect(tracking_uri, experiment)  # first: it may create the database
        client = mlflow_client(tracking_uri)
        run_id = client.create_run(experiment_id, tags=as_tag_dict(tags), run_name=run_name).info.run_id
        client.log_batch(run_id, params=as_params(params or {}))
    else:
        client = mlflow_client(tracking_uri)
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=as_tags(tags or {}))
    for artifact_file, obj in (dicts or {}).items():
        client.log_dict(run_id, dict(obj), artifact_file)
    return run_id


def finish_parent_run(
    tracking_uri: str,
    run_id: str,
    *,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, Any] | None = None,
    status: str = "FINISHED",
) -> None:
    """Log the sweep's final ``metrics`` and ``tags``, close every open child as KILLED, then the parent.

    A trial stopped by the scheduler, or whose worker died, never calls :meth:`TrialRun.finish`; without
    this sweep its run would show RUNNING forever.
    """
    client = mlflow_client(tracking_uri)
    client.log_batch(run_id, metrics=as_metrics(metrics or {}, step=0), tags=as_tags(tags or {}))
    for child in child_runs(tracking_uri, run_id):
        if child.info.status in OPEN_STATUSES:
            client.set_terminated(child.info.run_id, status="KILLED")
    client.set_terminated(run_id, status=status)


def _tag_filter(tags: Mapping[str, str]) -> str:
    """An MLflow search filter that holds runs carrying all ``tags``."""
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())


def child_runs(tracking_uri: str, parent_run_id: str, tags: Mapping[str, str] | None = None) -> list[Run]:
    """Every live run tagged with ``mlflow.parentRunId == parent_run_id`` and carrying all ``tags`` (the store
    filters; all result pages)."""
    client = mlflow_client(tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id  # children live next to the parent
    runs: list[Run] = []
    page_token: str | None = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=_tag_filter({MLFLOW_PARENT_RUN_ID: parent_run_id, **(tags or {})}),
            max_results=_PAGE_SIZE,
            page_token=page_token,
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def find_run(tracking_uri: str, experiment: str, tags: Mapping[str, str]) -> str | None:
    """The id of the newest live run of ``experiment`` carrying all ``tags`` (e.g. a sweep's parent), or None."""
    client = mlflow_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], filter_string=_tag_filter(tags), max_results=1,
                              order_by=["start_time DESC"])
    return runs[0].info.run_id if runs else None


def find_child(tracking_uri: str, parent_run_id: str, tags: Mapping[str, str]) -> str | None:
    """The id of the newest live child of ``parent_run_id`` carrying all ``tags`` (e.g. a trial's id), or None."""
    matching = child_runs(tracking_uri, parent_run_id, tags)
    return max(matching, key=lambda r: r.info.start_time).info.run_id if matching else None


def set_tags(tracking_uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set ``tags`` on a run, open or not."""
    mlflow_client(tracking_uri).log_batch(run_id, tags=as_tags(tags))


def supersede_run(tracking_uri: str, run_id: str, *, by: str) -> None:
    """Mark a sweep's parent run as replaced by a newer one (tag :data:`SUPERSEDED_TAG`); close it if open."""
    client = mlflow_client(tracking_uri)
    client.set_tag(run_id, SUPERSEDED_TAG, by)
    if client.get_run(run_id).info.status in OPEN_STATUSES:
        finish_parent_run(tracking_uri, run_id, status="KILLED")


def close_run(tracking_uri: str, run_id: str, *, status: str = "FINISHED",
              tags: Mapping[str, Any] | None = None) -> bool:
    """Terminate ``run_id`` with ``status`` if it is still open (with ``tags`` first); True if it was open."""
    client = mlflow_client(tracking_uri)
    if client.get_run(run_id).info.status not in OPEN_STATUSES:
        return False
    client.log_batch(run_id, tags=as_tags(tags or {}))
    client.set_terminated(run_id, status=status)
    return True


def delete_children(tracking_uri: str, parent_run_id: str, tags: Mapping[str, str]) -> int:
    """Delete the children of a parent that carry all ``tags``; return how many.

    A trial restarted from scratch (it had no checkpoint yet) replaces the run it had begun, so that one
    trial never has two runs. A run still open (its worker was killed mid-epoch) is finished as KILLED first:
    deleted or not, no run anywhere reads as running.
    """
    client = mlflow_client(tracking_uri)
    stale = child_runs(tracking_uri, parent_run_id, tags)
    for run in stale:
        if run.info.status in OPEN_STATUSES:
            client.set_terminated(run.info.run_id, status="KILLED")
        client.delete_run(run.info.run_id)
    return len(stale)


def delete_tags(tracking_uri: str, run_id: str, keys: list[str]) -> None:
    """Remove the tags ``keys`` from a run, those it has."""
    client = mlflow_client(tracking_uri)
    present = client.get_run(run_id).data.tags
    for key in keys:
        if key in present:
            client.delete_tag(run_id, key)
