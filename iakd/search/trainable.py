"""The Ray Tune side of a trial: the engine as a function trainable, and closing runs Tune cut short.

A trial builds its run config from the base config and its sampled overrides, trains with the engine,
reports every epoch's metrics with a checkpoint, and logs them to its own MLflow child run. The one link
between a trial and its run is the run's ``iakd.trial_id`` tag under the sweep's parent run: a trial restored
after a failure or ``--resume`` finds its run by it and continues it, and the driver closes runs by it.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from iakd import outcomes, tracking
from iakd.checkpoint import copy_atomic, load_file
from iakd.config import TrainConfig, from_dict, to_dict
from iakd.engine import train
from iakd.judging import best_judged_epoch, evaluated
from iakd.methods import METHODS
from iakd.resume import compute_changes
from iakd.search import storage
from iakd.search.space import apply_trial, trial_overrides
from iakd.search.study import DIVERGED_KEY

__all__ = ["TrialContext", "EpochLog", "run_trial", "trial_config", "trial_name", "baseline_name", "confirm_name",
           "CloseTrialRuns", "remove_orphaned_trial_folders"]


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares, handed to the trainable with ``tune.with_parameters``."""

    base: dict[str, Any]  # the base run config, as plain nested data
    teacher_path: str | None  # trained once before the sweep: a path, or a storage URI (see iakd.search.storage)
    tracking_uri: str
    experiment: str
    parent_run_id: str
    role: str  # "search", "baseline" or "confirm"
    teacher_warning: str | None = None  # set by the driver when the teacher is near chance accuracy
    # confirmation: candidate label -> its dotted overrides (a searched trial's, or a baseline method's)
    candidates: dict[str, dict[str, Any]] | None = None


def trial_config(context: TrialContext, config: dict[str, Any]) -> TrainConfig:
    """The run config of one trial: the base config with the trial's dotted overrides (for a confirmation
    trial, its candidate's overrides and then its own seed)."""
    overrides = trial_overrides(config)
    if tracking.CANDIDATE_TAG in config:
        overrides = {**context.candidates[config[tracking.CANDIDATE_TAG]], **overrides}
    cfg = from_dict(apply_trial(context.base, overrides))
    if context.teacher_path is not None:
        cfg.teacher.checkpoint = context.teacher_path
    return cfg


def _tags(cfg: TrainConfig, context: TrialContext, trial_id: str, config: dict[str, Any]) -> dict[str, str]:
    swaps = METHODS[cfg.method.name].uses_swap
    tags = {
        "teacher": cfg.teacher.arch, "student": cfg.student.arch, "dataset": cfg.data.name, "method": cfg.method.name,
        tracking.FAMILY_TAG: cfg.schedule.family if swaps else "none",
        "granularity": str(cfg.method.granularity) if swaps else "none",
        tracking.TRIAL_TAG: trial_id, tracking.ROLE_TAG: context.role,
        "node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
    }
    if tracking.CANDIDATE_TAG in config:
        tags[tracking.CANDIDATE_TAG] = str(config[tracking.CANDIDATE_TAG])
    elif context.role == "baseline":  # a confirmation on the same seeds reuses it as its baseline
        tags[tracking.CANDIDATE_TAG] = tracking.baseline_label(cfg.method.name, cfg.student.init)
    if context.teacher_warning:
        tags[tracking.TEACHER_WARNING_TAG] = context.teacher_warning
    return tags


TRIAL_FOLDER_PREFIX = "iakd-trial-"  # then the pid of the worker that made it: iakd-trial-<pid>-<trial id>-<random>


def remove_orphaned_trial_folders(parent: Path | None = None) -> list[Path]:
    """Remove the trial folders (``iakd-trial-<pid>-...`` in the temporary folder) that this user's workers left
    when they were killed before their ``finally`` ran (Tune ends a stopped or interrupted trial's worker without
    waiting); a folder whose worker is alive, or that belongs to another user, is left alone. The removed ones."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    for folder in parent.glob(f"{TRIAL_FOLDER_PREFIX}*"):
        pid = folder.name.removeprefix(TRIAL_FOLDER_PREFIX).split("-", 1)[0]
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid() or not pid.isdigit():
                continue
        except OSError:  # gone meanwhile
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its worker is alive (a pid a new process reuses keeps the folder until that one ends)
        except ProcessLookupError:
            pass
        except PermissionError:  # a live process of another user holds the pid
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune function trainable: one IAKD (or baseline) training, reported and logged per epoch."""
    trial = tune.get_context()
    cfg = trial_config(context, config)
    # The run's files live outside the trial folder: Tune copies that folder to storage as artifacts, which
    # would copy every checkpoint a second time (and race with their atomic writes); the checkpoints reach
    # storage through tune.report. The folder goes once the trial ends; one whose worker was killed, with
    # the next trial on its node.
    remove_orphaned_trial_folders()
    run_dir = Path(tempfile.mkdtemp(prefix=f"{TRIAL_FOLDER_PREFIX}{os.getpid()}-{trial.get_trial_id()}-"))
    cfg.out_dir = str(run_dir)
    cfg.device = "cuda" if torch.cuda.is_available() else "cpu"  # a fake or absent GPU falls back to the CPU
    cpus = int(trial.get_trial_resources().required_resources.get("CPU", 1))
    torch.set_num_threads(max(1, cpus))

    checkpoint = tune.get_checkpoint()
    # as_directory: no copy for local storage, and a downloaded copy is removed when the trial ends
    try:
        with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as restored:
            _train_and_log(cfg, context, trial, restored, config)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _train_and_log(cfg: TrainConfig, context: TrialContext, trial, restored: str | None, config: dict) -> None:
    trial_tag = {tracking.TRIAL_TAG: trial.get_trial_id()}
    resume_from, done, run_id = None, [], None
    changed: dict[str, tuple[Any, Any]] = {}
    if restored is not None:
        resume_from = Path(restored) / "checkpoint.pt"
        saved = load_file(resume_from, required=("history", "config"))
        done, changed = saved["history"], compute_changes(saved["config"], cfg)
        run_id = tracking.find_child(context.tracking_uri, context.parent_run_id, trial_tag)
    if run_id is None:  # starting from scratch: a run begun by an earlier attempt held no progress
        tracking.delete_children(context.tracking_uri, context.parent_run_id, trial_tag)
    run = tracking.TrialRun(context.tracking_uri, context.experiment, parent_run_id=context.parent_run_id,
                            run_name=trial.get_trial_name(), params=to_dict(cfg),
                            tags=_tags(cfg, context, trial.get_trial_id(), config), run_id=run_id)

    if run_id is None:
        run.log_dict(to_dict(cfg), "config.yaml")
    if changed:  # the run's params say what it started with; this tag says what changed on resume, and when
        run.set_tags({"iakd.resumed_compute": ", ".join(f"{k}: {a} -> {b} at epoch {len(done) + 1}"
                                                        for k, (a, b) in changed.items())})
    epochs = EpochLog(run, logged=run.last_step("epoch"))
    for metrics in done:  # the checkpoint's epochs that MLflow lacks (see EpochLog)
        epochs.record(metrics)
    epochs.flush()

    def report(metrics: dict[str, Any], checkpoint_path: Path | None) -> None:
        # Tune hears of an epoch only when it was evaluated (what ASHA and the ranking read) or checkpointed
        epochs.record(metrics)
        if evaluated(metrics) or checkpoint_path is not None:
            epochs.flush()
            saved = tune.Checkpoint.from_directory(str(checkpoint_path.parent)) if checkpoint_path else None
            tune.report({**metrics, "trial_name": trial.get_trial_name(), EPOCHS_KEY: cfg.optim.epochs},
                        checkpoint=saved)

    # The log lives in the folder Tune checkpoints, so each checkpoint carries the log up to its epoch; a
    # restored trial starts from that copy and the finished log holds every epoch once, across attempts.
    log_path = Path(cfg.out_dir) / "train.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if restored is not None and (Path(restored) / "train.log").is_file():
        copy_atomic(Path(restored) / "train.log", log_path)
    log_file = open(log_path, "a" if restored is not None else "w")
    try:
        if cfg.teacher.checkpoint:  # logged as the shared location; read from a node-local copy behind a URI
            cfg.teacher.checkpoint = str(storage.fetch(cfg.teacher.checkpoint))
        result = train(cfg, [report], resume_from=resume_from, log=lambda line: print(line, file=log_file, flush=True))
    except Exception:
        # A real error. Tune stops a trial with SystemExit inside tune.report: CloseTrialRuns handles that.
        run.finish("FAILED")
        raise
    finally:
        log_file.close()
    epochs.flush()  # epochs after the last evaluated one, before a divergence ended the run
    if result["status"] == outcomes.DIVERGED:
        # Tune hears how it ended: a trial that diverged before its first report would otherwise hand Tune a final
        # result without the metric, and Tune ends the whole sweep on that. A NaN score fails the trial in Optuna's
        # study; handed_over 0 keeps it off ASHA's rungs; the ranking leaves it out by its run's status.
        last = epochs.seen[-1]["epoch"] if epochs.seen else 0
        tune.report({"epoch": last + 1, "val_acc": math.nan, "handed_over": 0, DIVERGED_KEY: 1,
                     "trial_name": trial.get_trial_name(), EPOCHS_KEY: cfg.optim.epochs})
    run.set_tags({tracking.STATUS_TAG: result["status"]})
    run.log_artifact(Path(cfg.out_dir) / "student.pt")
    run.log_artifact(log_path)
    run.finish("FAILED" if result["status"] == outcomes.DIVERGED else "FINISHED")


class EpochLog:
    """A trial's epochs on their way to its MLflow run: recorded every epoch, written in one batch per flush.

    MLflow holds each epoch once. The trainable flushes before ``tune.report`` hands an epoch to Tune, because
    Tune stops a trial by raising SystemExit inside ``tune.report`` and then kills the worker without waiting.
    So MLflow can be ahead of the checkpoint Tune kept: on resume, epochs MLflow already has (up to ``logged``)
    are skipped (an exact resume trains them again identically) and any it lacks are filled in from the
    checkpoint. Epochs between two flushes reach MLflow in one call: one database commit, not one per epoch.
    """

    def __init__(self, run: tracking.TrialRun, logged: int = 0) -> None:
        self.run = run
        self.logged = logged  # the last epoch MLflow already holds
        self.seen: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []  # epochs not yet in MLflow

    def record(self, metrics: dict[str, Any]) -> None:
        self.seen.append(metrics)
        if metrics["epoch"] > self.logged:
            self.pending.append(metrics)

    def flush(self) -> None:
        """Write the pending epochs, with the run's final figures as of now: a trial that ASHA stops never
        reaches the end of train(). best_val_acc by the engine's rule (over the evaluated epochs after the
        handover, else the latest evaluated one)."""
        if not self.pending:
            return
        best, last = best_judged_epoch(self.seen), next((h for h in reversed(self.seen) if evaluated(h)), None)
        final: dict[str, Any] = {"epochs": self.seen[-1]["epoch"]}
        if last is not None:
            final.update(best_val_acc=best["val_acc"] if best is not None else last["val_acc"],
                         last_val_acc=last["val_acc"], last_test_acc=last["test_acc"])
        self.run.log_steps([(m, m["epoch"]) for m in self.pending], final=final)
        self.pending.clear()


# Every result a trial reports carries its number of epochs, so that the driver can tell a trial that ended from
# one an interruption cut short (Tune hands both back as TERMINATED).
EPOCHS_KEY = "epochs_total"


def ended(last_result: dict[str, Any]) -> bool:
    """Whether a trial's training ended by itself, judged from the last result it reported: it ran its last epoch,
    ASHA stopped it (Tune marks that result done) or it diverged. Not one that Ctrl-C or SIGTERM cut short."""
    return bool(last_result.get("done") or last_result.get(DIVERGED_KEY)
                or (EPOCHS_KEY in last_result and last_result.get("epoch") == last_result[EPOCHS_KEY]))


def trial_name(trial) -> str:
    """Short trial names (the default folds the whole config into the name): search_<id>."""
    return f"search_{trial.trial_id}"


def baseline_name(trial) -> str:
    return f"baseline_{trial.trial_id}"


def confirm_name(trial) -> str:
    """confirm_<candidate>_seed<seed>: what is re-trained, on which seed."""
    return f"confirm_{trial.config[tracking.CANDIDATE_TAG]}_seed{trial.config['seed']}"


class CloseTrialRuns(tune.Callback):
    """Driver side: a trial that ASHA stopped never returns from training, and one that errored may not
    have closed its run; close both here (found by the trial's tag) so that no trial's run stays RUNNING."""

    def __init__(self, tracking_uri: str, parent_run_id: str):
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id

    def _close(self, trial, status: str, tags: dict[str, str]) -> None:
        run_id = tracking.find_child(self.tracking_uri, self.parent_run_id, {tracking.TRIAL_TAG: trial.trial_id})
        if run_id:
            tracking.close_run(self.tracking_uri, run_id, status=status, tags=tags)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        last = trial.last_result or {}
        if ended(last):  # still open after its training ended: ASHA stopped it
            self._close(trial, "FINISHED", {tracking.STATUS_TAG: outcomes.STOPPED_EARLY,
                                            "stopped_at_epoch": str(last.get("epoch"))})
        else:  # cut short by an interruption: not done, and --resume continues this run
            self._close(trial, "KILLED", {})

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._close(trial, "FAILED", {tracking.STATUS_TAG: outcomes.ERROR})
