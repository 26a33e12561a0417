"""One sweep out of MLflow into two Parquet tables with explicit schemas: ``runs`` and ``epochs``.

A sweep is the parent run that ``tune/search.py`` opens (tags ``iakd.role=sweep``, ``iakd.sweep=<experiment>``)
and every run nested under it (tag ``mlflow.parentRunId``): search trials, baselines and confirmation runs
(tag ``iakd.role``). It is read from any tracking URI (a sqlite file or an ``http://`` server) through
:class:`~mlflow.tracking.MlflowClient` with the URI given explicitly, as :mod:`iakd.tracking` does.

``runs`` has one row per child run (:data:`RUNS_SCHEMA`), ``epochs`` one row per run and epoch
(:data:`EPOCHS_SCHEMA`). No run is dropped: a failed, diverged, killed or still-running run keeps its row,
with its ``outcome`` saying so. Aggregates must use :func:`usable` (outcome finished or stopped early, and a
finite validation score), and say what :func:`exclusions` left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from iakd import outcomes, tracking
from iakd.checkpoint import atomic_path
from iakd.config import build_dataclass, read_yaml
from iakd.errors import ConfigError
from iakd.judging import best_judged_epoch, handed_over, judged_epochs
from iakd.schedules import FAMILIES
from iakd.search.experiment import DEFAULT_CONFIG, ExperimentConfig

__all__ = [
    "EPOCHS_SCHEMA",
    "EPOCH_METRICS",
    "OUTCOMES",
    "RUNS_SCHEMA",
    "USABLE_OUTCOMES",
    "Sweep",
    "default_out_dir",
    "exclusions",
    "export",
    "load_sweep",
    "search_defaults",
    "usable",
    "write_tables",
]

SWEEP_TAG, ROLE_TAG, CANDIDATE_TAG = tracking.SWEEP_TAG, tracking.ROLE_TAG, tracking.CANDIDATE_TAG

RUNS_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("parent_run_id", pa.string(), nullable=False),
    pa.field("run_name", pa.string()),
    pa.field("status", pa.string(), nullable=False),  # MLflow's: FINISHED, FAILED, KILLED, RUNNING, SCHEDULED
    pa.field("outcome", pa.string(), nullable=False),  # one of OUTCOMES (or an unknown status tag, as it is)
    pa.field("stopped_early", pa.bool_(), nullable=False),
    pa.field("role", pa.string()),  # search, baseline, confirm
    pa.field("candidate", pa.string()),  # the configuration confirmed (baselines: tracking.baseline_label)
    pa.field("method", pa.string()),
    pa.field("teacher", pa.string()),
    pa.field("student", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("schedule_family", pa.string()),  # null unless the method swaps (iakd, iakd+kd)
    pa.field("p0", pa.float64()),
    pa.field("t_end", pa.float64()),
    pa.field("rate", pa.float64()),  # exponential family only
    pa.field("interval", pa.float64()),  # step family only
    pa.field("profile", pa.string()),
    pa.field("granularity", pa.string()),
    pa.field("kd_weight", pa.float64()),  # effective weight: a logged "None" is the method's default
    pa.field("seed", pa.int64()),
    pa.field("teacher_bn", pa.string()),  # how swapped-in teacher units normalise; null unless the method swaps
    pa.field("init", pa.string()),  # the student's initialisation: scratch or teacher (student.init)
    pa.field("t_start", pa.float64()),  # progress at which swapping starts (0: no warm-up); null unless it swaps
    pa.field("mixing", pa.string()),  # bernoulli or blend; null unless the method swaps
    pa.field("hybrid_weight", pa.float64()),  # the auxiliary hybrid path's weight (0: none); null unless it swaps
    pa.field("kd_on", pa.string()),  # the logits the KD term acts on (hybrid, student); null without one
    pa.field("best_val_acc", pa.float64()),  # %, best of the judged epochs (iakd.judging.best_judged_epoch)
    pa.field("judged_from_epoch", pa.int64()),  # first judged epoch (evaluated, p = 0); null: never handed over
    pa.field("last_val_acc", pa.float64()),  # %, last epoch run
    pa.field("last_test_acc", pa.float64()),  # %, last epoch run
    pa.field("epochs", pa.int64()),  # epochs run
    pa.field("train_seconds", pa.float64()),  # summed epoch_seconds
    pa.field("images_seen", pa.int64()),  # training images processed
])

# The per-epoch metrics the engine logs with step = epoch; each becomes a float64 column of ``epochs``.
EPOCH_METRICS: tuple[str, ...] = (
    "train_loss", "loss_ce", "loss_kd", "train_acc", "val_acc", "val_acc_running_bn", "test_acc", "lr", "swap_prob",
    "swap_rate", "handed_over", "loss_hybrid",
    "epoch_seconds", "images_per_second", "images_seen", "train_seconds",
)
EPOCHS_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("epoch", pa.int64(), nullable=False),
    *(pa.field(name, pa.float64()) for name in EPOCH_METRICS),
])

# Runs logged before method.teacher_bn existed (commit 62ac6ce) swapped in teacher units on their running statistics.
LEGACY_TEACHER_BN = "frozen"
OUTCOMES, USABLE_OUTCOMES = outcomes.OUTCOMES, outcomes.USABLE  # the one home: iakd.outcomes

# The SQL store clamps +-inf to +-max float (see iakd.tracking.TrialRun); read them back as infinities.
_CLAMPED = 1.7976931348623157e308
_HTTP_THREADS = 8  # metric histories are one request per run and key: overlap them against a server


@dataclass(frozen=True)
class Sweep:
    """One sweep read from MLflow: where it lives, and its two tables."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    runs: pa.Table
    epochs: pa.Table
    # Whether the sweep ended: its parent's status (FINISHED once every stage ran; RUNNING while the driver
    # runs or after it was killed; KILLED when interrupted) and the searched trials it asked for.
    parent_status: str = "FINISHED"
    interrupted: bool = False
    num_samples: int | None = None

    @property
    def complete(self) -> bool:
        return self.parent_status == "FINISHED" and not self.interrupted


# ------------------------------------------------------------------------------------------- values


def _number(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if abs(value) == _CLAMPED:
        return math.copysign(math.inf, value)
    return value


def _param_float(params: Mapping[str, str], key: str) -> float | None:
    text = params.get(key)
    if text is None or text == "None":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _param_int(params: Mapping[str, str], key: str) -> int | None:
    number = _param_float(params, key)
    return None if number is None or not math.isfinite(number) else int(number)


# ------------------------------------------------------------------------------------------- reading


def _find_parent(client: MlflowClient, tracking_uri: str, experiment: str | None,
                 parent_run_id: str | None) -> tuple[str, str, str]:
    """(experiment name, experiment id, parent run id) of the sweep asked for."""
    if parent_run_id is not None:
        try:
            parent = client.get_run(parent_run_id)
        except MlflowException as error:
            raise ConfigError(f"parent run {parent_run_id!r} not found at {tracking_uri}") from error
        name = client.get_experiment(parent.info.experiment_id).name
        if experiment is not None and experiment != name:
            raise ConfigError(f"parent run {parent_run_id!r} belongs to experiment {name!r}, not {experiment!r}")
        return name, parent.info.experiment_id, parent_run_id
    if experiment is None:
        raise ConfigError("give an experiment name or a parent run id")
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        raise ConfigError(f"experiment {experiment!r} not found at {tracking_uri}")
    run_id = tracking.find_run(tracking_uri, experiment, {SWEEP_TAG: experiment, ROLE_TAG: "sweep"})  # the newest
    if run_id is None:
        raise ConfigError(f"experiment {experiment!r} has no sweep run (tag {ROLE_TAG}=sweep) at {tracking_uri}")
    return experiment, found.experiment_id, run_id


def _histories(client: MlflowClient, run: Run) -> dict[str, dict[int, float]]:
    """metric -> {step: value} for the per-epoch metrics the run has; the latest value wins a repeated step."""
    histories: dict[str, dict[int, float]] = {}
    for key in EPOCH_METRICS:
        if key not in run.data.metrics:
            continue
        points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        histories[key] = {int(m.step): _number(m.value) for m in points}
    return histories


def _epoch_rows(run_id: str, histories: Mapping[str, Mapping[int, float]]) -> list[dict[str, Any]]:
    """One row per epoch; ``images_seen``/``train_seconds`` filled in from the per-epoch figures where a run
    predates their logging (cumulative seconds, and cumulative rounded seconds x images per second)."""
    steps = sorted({step for history in histories.values() for step in history})
    rows: list[dict[str, Any]] = []
    seconds_total: float | None = 0.0
    images_total: float | None = 0.0
    for step in steps:
        row: dict[str, Any] = {"run_id": run_id, "epoch": step}
        row.update({key: histories.get(key, {}).get(step) for key in EPOCH_METRICS})
        seconds, rate = row["epoch_seconds"], row["images_per_second"]
        seconds_total = None if seconds_total is None or seconds is None else seconds_total + seconds
        images_total = (None if images_total is None or seconds is None or rate is None
                        else images_total + round(seconds * rate))
        if row["train_seconds"] is None:
            row["train_seconds"] = seconds_total
        if row["images_seen"] is None:
            row["images_seen"] = images_total
        rows.append(row)
    return rows


def _run_row(run: Run, parent_run_id: str, epoch_rows: list[dict[str, Any]]) -> dict[str, Any]:
    from iakd.methods import METHODS  # here, not at the top: it imports torch (seconds), needed only once runs exist

    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    method = tags.get("method") or params.get("method.name")
    registered = METHODS.get(method or "")
    swaps = registered is not None and registered.uses_swap
    family = (params.get("schedule.family") or tags.get(tracking.FAMILY_TAG)) if swaps else None
    kd_weight = _param_float(params, "method.kd_weight")
    if kd_weight is None and registered is not None and registered.uses_teacher:
        kd_weight = registered.default_kd_weight  # a logged "None" is the method's default; ce has no teacher
    last = epoch_rows[-1] if epoch_rows else {}
    hybrid_weight = (_param_float(params, "method.hybrid_weight") or 0.0) if swaps else None
    kd_on = params.get("method.kd_on")

    def extra(key: str) -> float | None:  # a family's own key: logged, or the family's default
        if not swaps or key not in FAMILIES.get(family or "", {}):
            return None
        value = _param_float(params, f"schedule.{key}")
        return FAMILIES[family][key] if value is None else value

    def final(key: str, fallback: float | None) -> float | None:
        return _number(metrics[key]) if key in metrics else fallback

    # the engine's rule, on the epochs as logged (an epoch that was not evaluated has no val_acc)
    logged = [{k: v for k, v in r.items() if v is not None} for r in epoch_rows]
    judged, best = judged_epochs(logged), best_judged_epoch(logged)
    epochs = final("epochs", float(last["epoch"]) if epoch_rows else None)
    images = last.get("images_seen")
    outcome = outcomes.of_run(run.info.status, tags.get(tracking.STATUS_TAG))
    return {
        "run_id": run.info.run_id,
        "parent_run_id": parent_run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "outcome": outcome,
        "stopped_early": outcome == outcomes.STOPPED_EARLY,
        "role": tags.get(ROLE_TAG),
        "candidate": tags.get(CANDIDATE_TAG),
        "method": method,
        "teacher": tags.get("teacher") or params.get("teacher.arch"),
        "student": tags.get("student") or params.get("student.arch"),
        "dataset": tags.get("dataset") or params.get("data.name"),
        "schedule_family": family,
        "p0": _param_float(params, "schedule.p0") if swaps else None,
        "t_end": _param_float(params, "schedule.t_end") if swaps else None,
        "rate": extra("rate"),
        "interval": extra("interval"),
        "profile": params.get("schedule.profile", "uniform") if swaps else None,
        "granularity": (params.get("method.granularity") or tags.get("granularity")) if swaps else None,
        "kd_weight": kd_weight,
        "seed": _param_int(params, "seed"),
        "teacher_bn": params.get("method.teacher_bn", LEGACY_TEACHER_BN) if swaps else None,
        "init": params.get("student.init", "scratch"),
        "t_start": (_param_float(params, "schedule.t_start") or 0.0) if swaps else None,
        "mixing": params.get("method.mixing", "bernoulli") if swaps else None,
        "hybrid_weight": hybrid_weight,
        "kd_on": (kd_on if kd_on in ("hybrid", "student") else "student" if hybrid_weight else "hybrid")
        if swaps and registered.has_kd_term else None,
        "best_val_acc": final("best_val_acc", best["val_acc"] if best is not None else None),
        "judged_from_epoch": judged[0]["epoch"] if judged and handed_over(judged[0]) else None,
        "last_val_acc": final("last_val_acc", last.get("val_acc")),
        "last_test_acc": final("last_test_acc", last.get("test_acc")),
        "epochs": None if epochs is None or not math.isfinite(epochs) else int(epochs),
        "train_seconds": last.get("train_seconds"),
        "images_seen": None if images is None or not math.isfinite(images) else int(round(images)),
    }


def load_sweep(tracking_uri: str, experiment: str | None = None, parent_run_id: str | None = None) -> Sweep:
    """Read one sweep: the newest parent run of ``experiment``, or the parent run ``parent_run_id``.

    Every live run nested under the parent becomes a row of ``runs`` (sorted by start time), and each of its
    logged epochs a row of ``epochs``. Raises :class:`~iakd.errors.ConfigError` (one line) when the store,
    the experiment, its sweep run or the given run does not exist.
    """
    if experiment is not None:
        tracking.check_experiment_name(experiment)
    client = tracking.mlflow_client(tracking_uri, must_exist=True)
    name, experiment_id, parent = _find_parent(client, tracking_uri, experiment, parent_run_id)
    children = sorted(tracking.child_runs(tracking_uri, parent), key=lambda r: (r.info.start_time or 0, r.info.run_id))
    threads = _HTTP_THREADS if tracking_uri.startswith(("http:", "https:")) else 1  # sqlite: one connection is best
    with ThreadPoolExecutor(max_workers=threads) as pool:
        histories = list(pool.map(lambda run: _histories(client, run), children))
    run_rows, epoch_rows = [], []
    for run, history in zip(children, histories):
        rows = _epoch_rows(run.info.run_id, history)
        epoch_rows.extend(rows)
        run_rows.append(_run_row(run, parent, rows))
    runs = pa.Table.from_pylist(run_rows, schema=RUNS_SCHEMA)
    epochs = pa.Table.from_pylist(epoch_rows, schema=EPOCHS_SCHEMA)
    info = client.get_run(parent)
    return Sweep(tracking_uri, name, experiment_id, parent, runs, epochs, info.info.status,
                 info.data.tags.get(tracking.INTERRUPTED_TAG) == "true",
                 _param_int(info.data.params, "experiment.num_samples"))


def write_tables(sweep: Sweep, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``runs.parquet`` and ``epochs.parquet`` into ``out_dir`` (created); return both paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    runs_path, epochs_path = folder / "runs.parquet", folder / "epochs.parquet"
    for table, path in ((sweep.runs, runs_path), (sweep.epochs, epochs_path)):
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    return runs_path, epochs_path


def default_out_dir(experiment: str) -> Path:
    """``analysis_out/<experiment>``; a name that is not one folder (``..``, a path) is refused, naming ``--out``."""
    try:
        tracking.check_experiment_name(experiment)
    except ConfigError as error:
        raise ConfigError(f"{error} (give the report's folder with --out)") from None
    return Path("analysis_out") / experiment


def search_defaults() -> tuple[str, str]:
    """The tracking URI and the experiment name of the search's default experiment (what ``python tune/search.py``
    runs, :data:`iakd.search.experiment.DEFAULT_CONFIG`), read from its config: the analysis scripts' defaults."""
    cfg = build_dataclass(ExperimentConfig, read_yaml(DEFAULT_CONFIG))
    return cfg.tracking_uri, cfg.experiment


def export(tracking_uri: str, experiment: str | None = None, parent_run_id: str | None = None,
           out_dir: str | Path | None = None) -> Sweep:
    """:func:`load_sweep` then :func:`write_tables` into ``out_dir`` (default :func:`default_out_dir`)."""
    sweep = load_sweep(tracking_uri, experiment, parent_run_id)
    write_tables(sweep, default_out_dir(sweep.experiment) if out_dir is None else out_dir)
    return sweep


# ------------------------------------------------------------------------------------ which runs count


def _frame(runs: pa.Table | pd.DataFrame) -> pd.DataFrame:
    return runs.to_pandas() if isinstance(runs, pa.Table) else runs


def _finite(values: Iterable[Any]) -> list[bool]:
    return [value is not None and isinstance(value, float) and math.isfinite(value) for value in values]


def usable(runs: pa.Table | pd.DataFrame) -> pd.DataFrame:
    """The runs that aggregates may use: outcome finished or stopped early, with a finite ``best_val_acc``."""
    frame = _frame(runs)
    keep = frame["outcome"].isin(USABLE_OUTCOMES) & pd.Series(_finite(frame["best_val_acc"]), index=frame.index)
    return frame[keep]


def exclusions(runs: pa.Table | pd.DataFrame) -> dict[str, int]:
    """Why the runs :func:`usable` leaves out were left out: reason -> count (e.g. ``{"error": 1}``)."""
    frame = _frame(runs)
    counts: dict[str, int] = {}
    finite = _finite(frame["best_val_acc"])
    for outcome, is_finite in zip(frame["outcome"], finite):
        if outcome not in USABLE_OUTCOMES:
            reason = outcome
        elif not is_finite:
            reason = f"{outcome} without a finite validation accuracy"
        else:
            continue
        counts[reason] = counts.get(reason, 0) + 1
    return counts
