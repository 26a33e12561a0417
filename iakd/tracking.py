"""The MLflow edge of the project: one parent run per sweep, one nested child run per trial.

Everything goes through :class:`mlflow.tracking.MlflowClient` with explicit run ids. The fluent API
(``mlflow.start_run`` and friends) keeps a global "active run" per process/thread, which is wrong here:
trials run in Ray worker processes and threads, possibly on other nodes talking to an ``http://`` server,
and a trial restored from a checkpoint must keep writing to the run it started.

Callers pass a tracking URI and ids around (strings survive pickling into Ray workers); clients are cheap
to build because MLflow caches one store (and one SQL engine) per URI in each process.

Two MLflow 3 behaviours this module relies on or works around:

* The file store (``./mlruns``) is gone for tracking: use ``sqlite:///path/mlflow.db`` or ``http://...``.
* With a SQL tracking URI the client's default artifact root is ``./mlruns`` *relative to the current
  directory of whichever process opened the store*. :func:`connect` therefore gives each new experiment an
  explicit artifact location next to the database file.

Relative sqlite paths are resolved against the current directory too, and Ray changes it to the trial
folder in workers: hand workers :func:`absolute_uri` of the URI, not the URI as typed.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_METRICS_PER_BATCH
from sqlalchemy.engine import make_url

from iakd.config import flat_items
from iakd.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

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
    "TRIAL_TAG",
    "TIMEOUT_S",
    "check_server",
    "mlflow_client",
    "set_tags",
    "MAX_PARAM_LENGTH",
    "TrialRun",
    "absolute_uri",
    "child_runs",
    "close_run",
    "connect",
    "delete_children",
    "find_child",
    "find_run",
    "finish_parent_run",
    "flatten",
    "sqlite_file",
    "start_parent_run",
    "supersede_run",
]

# MLflow's limits (mlflow.utils.validation): longer values are rejected, or truncated with a warning,
# depending on MLFLOW_TRUNCATE_LONG_VALUES; truncating here makes the result the same everywhere.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
_ELLIPSIS = "..."

# Statuses a run can still leave; anything else (FINISHED, FAILED, KILLED) is final.
OPEN_STATUSES = frozenset({"RUNNING", "SCHEDULED"})

# The tags that tie a sweep together (one home: the search writes them, the analysis reads them).
SWEEP_TAG = "iakd.sweep"  # on the parent run: the experiment it sweeps
ROLE_TAG = "iakd.role"  # sweep, search, baseline or confirm
TRIAL_TAG = "iakd.trial_id"  # a child run's Tune trial id: the one link between a trial and its run
# The configuration a confirmation (or reused baseline) run stands for: a searched trial's name or a baseline
# label. A confirmation trial's Tune config holds it under this key too; not a run-config key, so
# iakd.search.space.trial_overrides drops it.
CANDIDATE_TAG = "iakd.candidate"
STATUS_TAG = "status"  # a child run's outcome, in the words of iakd.outcomes
FAMILY_TAG = "schedule_family"  # a child run's schedule family ("none" for a method that does not swap)
INTERRUPTED_TAG = "iakd.interrupted"  # on the parent run: "true" when the driver was interrupted
ERROR_TAG = "iakd.error"  # on the parent run: the error that ended the sweep
SUPERSEDED_TAG = "iakd.superseded_by"  # on a parent run that a rerun of the same sweep replaced


def baseline_label(method: str, init: str | None = "scratch") -> str:
    """A baseline's name in a sweep (its candidate tag): the method (``kd``), with ``.teacher-init`` when its
    student starts from the teacher's weights (``student.init: teacher``), so that each initialisation has its
    own baselines and a configuration is compared with the ones that share its start."""
    # a dot, not a plus: the label is part of MLflow metric names (confirm_<label>_test_acc_mean) and folder names
    return method if init in (None, "scratch") else f"{method}.{init}-init"

# The MLflow UI (3.x) opens an experiment without this tag as a GenAI one (a traces page); ours are training runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# Runs per search_runs page (MLflow's own default); a module constant so tests can page with few runs.
_PAGE_SIZE = 1000


# --------------------------------------------------------------------------------------------- values


def _truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when it was cut (so a reader can tell)."""
    return text if len(text) <= limit else text[: limit - len(_ELLIPSIS)] + _ELLIPSIS


def _render(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        # Compact JSON reads better in the UI than Python's repr and round-trips with json.loads;
        # default=str keeps odd members (paths, enums) instead of failing the whole sweep.
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)  # None -> "None", True -> "True", 0.3 -> "0.3"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as flat MLflow params: ``{"a": {"b": 1}} -> {"a.b": "1"}``.

    Lists and tuples become compact JSON (``[1,2]``), ``None`` becomes ``"None"``, an empty mapping
    becomes ``"{}"`` (so the key is still visible), and every value is cut to :data:`MAX_PARAM_LENGTH`.
    """
    return {name: _truncate("{}" if isinstance(value, Mapping) else _render(value), MAX_PARAM_LENGTH)
            for name, value in flat_items(config, prefix).items()}


def _as_float(value: Any) -> float | None:
    """A metric value, or None for things that are not one number (strings, dicts, None, arrays)."""
    if value is None or isinstance(value, (str, bytes)):
        return None  # float("3") would succeed, but a string in a result dict is not a metric
    try:
        return float(value)  # ints, bools (0/1), numpy scalars, 0-d tensors
    except (TypeError, ValueError):
        return None


def _metrics(metrics: Mapping[str, Any], step: int) -> list[Metric]:
    now = int(time.time() * 1000)
    numbers = ((key, _as_float(value)) for key, value in metrics.items())
    return [Metric(key, number, now, step) for key, number in numbers if number is not None]


def _tags(tags: Mapping[str, Any]) -> list[RunTag]:
    return [RunTag(key, _truncate(str(value), MAX_TAG_LENGTH)) for key, value in tags.items()]


def _tag_dict(tags: Mapping[str, Any] | None) -> dict[str, str]:
    return {tag.key: tag.value for tag in _tags(tags or {})}


def _params(params: Mapping[str, Any]) -> list[Param]:
    return [Param(key, value) for key, value in flatten(params).items()]


# ----------------------------------------------------------------------------------------- connection


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:`` URI (relative as written), or None for other stores/in-memory."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    database = make_url(tracking_uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def absolute_uri(tracking_uri: str) -> str:
    """``tracking_uri`` with a relative sqlite path made absolute; any other URI unchanged.

    Ray runs trials with the trial folder as current directory, so ``sqlite:///mlflow.db`` would open a
    different, empty database in every worker. The driver should pass workers this form.
    """
    path = sqlite_file(tracking_uri)
    if path is None or path.is_absolute():
        return tracking_uri
    url = make_url(tracking_uri).set(database=str(path.resolve()))
    return url.render_as_string(hide_password=False)


# How long a server may take to answer before it counts as down.
TIMEOUT_S = 5.0


def check_server(tracking_uri: str, what: str = "tracking URI", timeout: float = TIMEOUT_S) -> None:
    """An ``http(s)://`` MLflow server answers its /health within ``timeout`` seconds, else a one-line
    ConfigError naming ``what``: a server that is down costs seconds, not the client's minutes of retries."""
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status != 200:
                raise ConfigError(f"{what}: {tracking_uri} answered {response.status} at /health")
    except ConfigError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(f"{what}: no MLflow server answers at {tracking_uri} within {timeout:g} s "
                          f"({reason})") from None


def mlflow_client(tracking_uri: str, *, must_exist: bool = False) -> MlflowClient:
    """The MLflow client for ``tracking_uri``. With ``must_exist``, a sqlite URI must name an existing database
    (opening a missing file would create an empty one: a typo'd path must not do that), and an http(s) server
    must answer now (:func:`check_server`)."""
    if must_exist and tracking_uri.startswith(("http://", "https://")):
        check_server(tracking_uri)
    if must_exist and tracking_uri.startswith("sqlite:"):
        database = sqlite_file(tracking_uri)
        if database is not None and not database.is_file():
            raise ConfigError(f"tracking URI {tracking_uri}: no MLflow database at {database}")
    return MlflowClient(tracking_uri=tracking_uri)


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """``file://<db folder>/mlartifacts/<experiment>`` for sqlite; None lets a server choose its own."""
    path = sqlite_file(tracking_uri)
    if path is None:
        return None
    folder = re.sub(r"[\\/:]+", "_", experiment)  # experiment names may hold '/' (e.g. "team/sweep")
    return (path.resolve().parent / "mlartifacts" / folder).as_uri()


@contextmanager
def _sqlite_setup_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive lock on the sqlite file's folder (creating it); a no-op for other URIs.

    Opening a fresh database makes MLflow create its tables and run every migration, and two processes
    doing that at once fail ("table metrics already exists", alembic version mismatches). flock on the
    folder serializes that without leaving a lock file behind.
    """
    path = sqlite_file(tracking_uri)
    if path is None:
        yield
        return
    folder = path.resolve().parent
    folder.mkdir(parents=True, exist_ok=True)  # sqlite creates the file but not its folder
    if fcntl is None:  # Windows: no flock; fine for one process, which is all sqlite is good for there
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def connect(tracking_uri: str, experiment: str) -> str:
    """Get or create the experiment named ``experiment`` and return its id.

    Idempotent, and safe when several processes call it at once: for sqlite the first one creates the
    database while the others wait; against a server, the loser of a creation race gets MLflow's
    RESOURCE_ALREADY_EXISTS and reads the winner's experiment. A deleted experiment of that name is
    restored, since MLflow would refuse to create a new one under the same name anyway.
    """
    with _sqlite_setup_lock(tracking_uri):
        client = mlflow_client(tracking_uri)  # builds the store, hence the tables, under the lock
        found = client.get_experiment_by_name(experiment)
        if found is None:
            try:
                location = _artifact_location(tracking_uri, experiment)
                return client.create_experiment(experiment, artifact_location=location,
                                                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            found = client.get_experiment_by_name(experiment)
            if found is None:  # created and deleted again in between: nothing sensible left to do
                raise MlflowException(f"experiment {experiment!r} vanished while being created")
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return found.experiment_id


# ---------------------------------------------------------------------------------------- parent runs


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
        run_id = client.create_run(experiment_id, tags=_tag_dict(tags), run_name=run_name).info.run_id
        client.log_batch(run_id, params=_params(params or {}))
    else:
        client = mlflow_client(tracking_uri)
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=_tags(tags or {}))
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
    client.log_batch(run_id, metrics=_metrics(metrics or {}, step=0), tags=_tags(tags or {}))
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
    mlflow_client(tracking_uri).log_batch(run_id, tags=_tags(tags))


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
    client.log_batch(run_id, tags=_tags(tags or {}))
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


# ------------------------------------------------------------------------------------------ trial runs


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
            run_tags = _tag_dict(tags)
            if parent_run_id is not None:
                run_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id  # this tag nests the run in the UI
            run = self._client.create_run(experiment_id, tags=run_tags, run_name=run_name)
            self._run_id = run.info.run_id
            self._client.log_batch(self._run_id, params=_params(params or {}))
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
        batch = [m for metrics, step in steps for m in _metrics(metrics, step)] + _metrics(final or {}, step=0)
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
        self._client.log_batch(self._run_id, tags=_tags(tags))

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run as ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self._client.set_terminated(self._run_id, status=status)

    def __repr__(self) -> str:
        return f"TrialRun(run_id={self._run_id!r})"
