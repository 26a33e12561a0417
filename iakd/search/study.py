"""The search's Optuna study, where Optuna users look for it: in an RDB storage (``optuna-dashboard <storage>``,
``optuna.load_study``), one study per sweep, each trial linked to its Tune trial and its MLflow run.

Ray's ``OptunaSearch`` keeps its study in memory and in Tune's experiment checkpoint; given a ``storage`` URL it
creates the study there instead (``load_if_exists``), so ``--resume`` (which restores the searcher from Tune's
checkpoint) continues the same study. The study is named after the experiment and the sweep's parent run, so a
rerun without ``--resume`` (a new parent run) starts a new study instead of mixing its trials into the old one.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from iakd import tracking
from iakd.errors import ConfigError
from iakd.search.storage import is_uri

__all__ = ["LinkedOptunaSearch", "study_name", "check_resumable_study", "default_storage", "TUNE_TRIAL_ATTR",
           "MLFLOW_RUN_ATTR", "DIVERGED_KEY"]

TUNE_TRIAL_ATTR = "tune_trial_id"
MLFLOW_RUN_ATTR = "mlflow_run_id"


def study_name(experiment: str, parent_run_id: str) -> str:
    """One study per sweep: the experiment's name and its parent run (which ``--resume`` reopens)."""
    return f"{experiment}-{parent_run_id[:12]}"


def check_resumable_study(storage: str, study: str) -> None:
    """Before ``--resume`` restores a search stage, whose searcher loads its study by name from ``storage``: the
    study must be there, or Tune fails every restore with Optuna's "Record does not exist". A missing sqlite file
    is not created."""
    database = tracking.sqlite_file(storage)
    names = [] if database is not None and not database.is_file() else optuna.get_all_study_names(storage)
    if study not in names:
        raise ConfigError(f"--resume: the sweep's Optuna study {study!r} is not in {storage} (another optuna_storage, "
                          "or a new database?); resume it with the storage it ran with, or run it again without "
                          "--resume")


def default_storage(tracking_uri: str, storage_path: str) -> str:
    """Beside the MLflow store: ``optuna.db`` next to a sqlite ``mlflow.db``; for an MLflow server, in the Tune
    storage path when it is a folder, else in the driver's working directory (the head node's disk on a
    cluster, where MLflow's own database lives)."""
    database = tracking.sqlite_file(tracking_uri)
    if database is not None:
        folder = database.parent
    else:
        folder = Path(".") if is_uri(storage_path) else Path(storage_path)
    return f"sqlite:///{(folder / 'optuna.db').absolute()}"


# The key of the last result a trial reports when its training diverged (iakd.search.trainable), val_acc NaN.
DIVERGED_KEY = "diverged"


class LinkedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose study trials carry the Tune trial id and, once the trial ends, its MLflow run id
    (user attributes ``tune_trial_id`` and ``mlflow_run_id``): from a point in the dashboard to its run."""

    def __init__(self, *args: Any, tracking_uri: str, parent_run_id: str, **kwargs: Any):
        storage = kwargs.get("storage")
        metric, study = kwargs.get("metric"), kwargs.get("study_name")
        # Two sweeps that start together share a fresh optuna.db (of other experiments, in one folder): its tables
        # are made under the folder's lock (sqlite makes the file, not its folder: that too).
        with tracking.sqlite_setup_lock(storage if isinstance(storage, str) else ""):
            if isinstance(storage, str):  # a URL; OptunaSearch takes a storage object (it pickles the URL)
                kwargs["storage"] = optuna.storages.RDBStorage(storage)
            if kwargs.get("storage") is not None and study and metric:
                # The objective's name, which optuna-dashboard shows instead of "Objective 0". OptunaSearch takes
                # no such argument: the study is made here first, and OptunaSearch loads it (load_if_exists).
                made = optuna.create_study(study_name=study, storage=kwargs["storage"], load_if_exists=True,
                                           direction="maximize" if kwargs.get("mode") == "max" else "minimize")
                with warnings.catch_warnings():  # "experimental since 3.2": tested here with Optuna 5 (pyproject)
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    made.set_metric_names([metric])
        super().__init__(*args, **kwargs)
        self._tracking_uri, self._parent_run_id = tracking_uri, parent_run_id
        # The links go through the storage's public API: OptunaSearch's map from Tune trial ids to Optuna trials
        # is private (ray.tune.search.optuna.OptunaSearch has no accessor for it), so the trial it just asked for
        # is found in the study instead. Without an RDB storage there is no study to browse, and nothing to link.
        self._link_storage = kwargs.get("storage") if study else None
        self._link_study = study

    def _running(self) -> tuple[int, list[optuna.trial.FrozenTrial]]:
        storage = self._link_storage
        study_id = storage.get_study_id_from_name(self._link_study)
        return study_id, storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))

    def _set_attr(self, study_id: int, trial: optuna.trial.FrozenTrial, key: str, value: str) -> None:
        storage = self._link_storage
        storage.set_trial_user_attr(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number), key, value)

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is not None and self._link_storage is not None:
            # suggest runs in the driver, one trial at a time: the newest running trial without a Tune id is the
            # one OptunaSearch has just asked the study for
            study_id, running = self._running()
            unlinked = [t for t in running if TUNE_TRIAL_ATTR not in t.user_attrs]
            if unlinked:
                self._set_attr(study_id, max(unlinked, key=lambda t: t.number), TUNE_TRIAL_ATTR, trial_id)
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._link_storage is not None:
            study_id, running = self._running()  # a trial already told is no longer running: left alone
            trial = next((t for t in running if t.user_attrs.get(TUNE_TRIAL_ATTR) == trial_id), None)
            if trial is not None:
                run_id = tracking.find_child(self._tracking_uri, self._parent_run_id, {tracking.TRIAL_TAG: trial_id})
                if run_id is not None:  # set before tell(): a finished trial's attributes are read-only
                    self._set_attr(study_id, trial, MLFLOW_RUN_ATTR, run_id)
        if result and result.get(DIVERGED_KEY):
            # Optuna refuses NaN as a value (tell raises, OptunaSearch only logs it, the trial stays RUNNING):
            # a diverged trial is told as FAIL, without a value
            result, error = {k: v for k, v in result.items() if k != self.metric}, True
        super().on_trial_complete(trial_id, result, error)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not result.get(DIVERGED_KEY):  # its NaN is no intermediate value
            super().on_trial_result(trial_id, result)
