"""One trial's child run: created once, continued after a restart, and what the trial logs to it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

from iakd.tracking.store import connect, mlflow_client
from iakd.tracking.values import as_metrics, as_params, as_tag_dict, as_tags

__all__ = ["TrialRun"]


class TrialRun:
    """One child run per trial: created once, continued after a restart (found again by the trial's tags).

    Metrics: only values that convert to one float are logged (bools as 0/1; strings, dicts and ``None``
    are skipped). NaN and inf are logged as they are: a diverged trial is a result worth seeing. MLflow
    returns NaN as NaN; the SQL store clamps +-inf to +-1.7976931348623157e308 (the largest float).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        *,
        parent_run_id: str | None,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ) -> None:
        if run_id is None:
            experiment_id = connect(tracking_uri, experiment)  # first: it may create the database
            self._client = mlflow_client(tracking_uri)
            run_tags = as_tag_dict(tags)
            if parent_run_id is not None:
                run_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id  # this tag nests the run in the UI
            run = self._client.create_run(experiment_id, tags=run_tags, run_name=run_name)
            self._run_id = run.info.run_id
            self._client.log_batch(self._run_id, params=as_params(params or {}))
        else:
            # Continue the same run: re-logging params could only fail (a changed value is refused).
            self._client = mlflow_client(tracking_uri)
            self._run_id = run_id
            self._client.update_run(run_id, status="RUNNING")
            self.set_tags(tags or {})

    @property
    def run_id(self) -> str:
        """The MLflow run id."""
        return self._run_id

    def log_metrics(self, metrics: Mapping[str, Any], step: int, *, final: Mapping[str, Any] | None = None) -> None:
        """Log the numeric values of ``metrics`` at ``step`` (e.g. the epoch), and ``final`` summary metrics at
        step 0, in one batch call: a worker killed mid-way never leaves one without the other."""
        self.log_steps([(metrics, step)], final=final)

    def log_steps(self, steps: Sequence[tuple[Mapping[str, Any], int]], *,
                  final: Mapping[str, Any] | None = None) -> None:
        """Log several steps' metrics (``(metrics, step)`` pairs, e.g. the epochs since the last call), then
        ``final`` at step 0, in as few batch calls as MLflow takes (each write to a database costs a commit)."""
        batch = [m for metrics, step in steps for m in as_metrics(metrics, step)] + as_metrics(final or {}, step=0)
        for start in range(0, len(batch), MAX_METRICS_PER_BATCH):
            self._client.log_batch(self._run_id, metrics=batch[start:start + MAX_METRICS_PER_BATCH])

    def last_step(self, key: str) -> int:
        """The highest step logged for metric ``key`` in this run, or 0 if none."""
        history = self._client.get_metric_history(self._run_id, key)
        return max((m.step for m in history), default=0)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a local file or folder into the run's artifacts, under ``artifact_path`` if given."""
        self._client.log_artifact(self._run_id, str(path), artifact_path)

    def log_dict(self, obj: Mapping[str, Any], artifact_file: str) -> None:
        """Write ``obj`` as the artifact ``artifact_file`` (YAML for ``.yaml``/``.yml``, JSON otherwise)."""
        self._client.log_dict(self._run_id, dict(obj), artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) tags on the run."""
        self._client.log_batch(self._run_id, tags=as_tags(tags))

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run as ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self._client.set_terminated(self._run_id, status=status)

    def __repr__(self) -> str:
        return f"TrialRun(run_id={self._run_id!r})"
