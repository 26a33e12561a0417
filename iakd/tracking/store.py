"""Where runs are kept: the tracking URI (made absolute for workers), its client, and the experiment in it.

Two MLflow 3 behaviours this module relies on or works around:

* The file store (``./mlruns``) is gone for tracking: use ``sqlite:///path/mlflow.db`` or ``http://...``.
* With a SQL tracking URI the client's default artifact root is ``./mlruns`` *relative to the current
  directory of whichever process opened the store*. :func:`connect` therefore gives each new experiment an
  explicit artifact location next to the database file.

Relative sqlite paths are resolved against the current directory too, and Ray changes it to the trial
folder in workers: hand workers :func:`absolute_uri` of the URI, not the URI as typed.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from iakd.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["TIMEOUT_S", "sqlite_file", "absolute_uri", "check_server", "mlflow_client", "connect",
           "check_experiment_name", "check_sqlite_store"]

# An experiment's name is an MLflow experiment, a value in MLflow filter strings, the name of the Tune folders
# under the storage path and of analysis_out/<name>: letters (any script), digits, '_', '.' and '-', starting with
# a letter or digit, so that it is the same name in all four and never a path ('..', '/', '~') or a quote.
_EXPERIMENT_NAME = re.compile(r"[^\W_][\w.-]{0,99}")

# The MLflow UI (3.x) opens an experiment without this tag as a GenAI one (a traces page); ours are training runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# How long a server may take to answer before it counts as down.
TIMEOUT_S = 5.0


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


def check_sqlite_store(database: Path, what: str, table: str, owner: str) -> None:
    """An existing SQLite file that a command is about to use as ``owner``'s store (MLflow's, Optuna's): opened
    read-only and checked whole (``PRAGMA quick_check``), it must be SQLite, intact, and either empty or hold
    ``table``. A ConfigError names ``what`` and the file otherwise; nothing is written. A missing or empty file
    passes (the command creates the store)."""
    import sqlite3
    from contextlib import closing

    if not database.is_file() or database.stat().st_size == 0:
        return
    try:
        with closing(sqlite3.connect(f"{database.absolute().as_uri()}?mode=ro", uri=True)) as db:
            verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as error:
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            return  # another command is writing it (creating its tables, say): it is in use
        raise ConfigError(f"{what}: {database} is not an SQLite database ({error}); corrupt, or another kind of "
                          "file") from None
    if verdict != "ok":
        raise ConfigError(f"{what}: {database} is a damaged SQLite database ({verdict})")
    if tables and table not in tables:
        raise ConfigError(f"{what}: {database} is an SQLite database but not {owner}'s (it has no {table} table)")


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
        if database is not None and database.stat().st_size == 0:  # MLflow would write its tables into it
            raise ConfigError(f"tracking URI {tracking_uri}: {database} is empty, not an MLflow database")
        if database is not None:
            check_sqlite_store(database, f"tracking URI {tracking_uri}", "experiments", "MLflow")
    return MlflowClient(tracking_uri=tracking_uri)


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """``file://<db folder>/mlartifacts/<experiment>`` for sqlite; None lets a server choose its own."""
    path = sqlite_file(tracking_uri)
    if path is None:
        return None
    folder = re.sub(r"[\\/:]+", "_", experiment)  # a library caller's name may hold '/' (the commands' are checked)
    return (path.resolve().parent / "mlartifacts" / folder).as_uri()


@contextmanager
def sqlite_setup_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock on the folder of a ``sqlite:///`` store (creating the folder); a no-op for other
    URLs. For MLflow's tracking URI and Optuna's storage URL alike.

    Opening a fresh database makes MLflow (or Optuna) create its tables and run every migration, and two
    processes doing that at once fail ("table metrics already exists", "table studies already exists", alembic
    version mismatches). flock on the folder serializes that without leaving a lock file behind.
    """
    path = sqlite_file(url)
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
    with sqlite_setup_lock(tracking_uri):
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


def check_experiment_name(name: str, key: str = "experiment") -> None:
    """Refuse, naming ``key``, an experiment name that MLflow filters, Tune folders and file systems cannot all
    hold as it is (see ``_EXPERIMENT_NAME``)."""
    if not isinstance(name, str) or not _EXPERIMENT_NAME.fullmatch(name):
        raise ConfigError(f"{key}: {name!r} is not allowed; a name of letters, digits, '_', '.' and '-' (at most "
                          "100, the first a letter or digit): it names the MLflow experiment, the Tune folders "
                          "and analysis_out/<name>")
