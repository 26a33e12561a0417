"""ASHA judges a swap schedule only after it hands over: no trial is stopped, and no rung score recorded, while
its swap probability is above 0 (iakd.search.scheduler.HandoverASHA)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from search_process import EVERY_EPOCH

from iakd.search.scheduler import HandoverASHA

ROOT = Path(__file__).resolve().parents[1]


def _scheduler(cls):
    return cls(time_attr="epoch", metric="val_acc", mode="max", max_t=11, grace_period=1, reduction_factor=2)


def _feed(scheduler, results):
    """(trial id, epoch, val_acc, swap_prob) in order -> the action for each; trials added on first sight."""
    trials, actions = {}, []
    for trial_id, epoch, val, swap in results:
        if trial_id not in trials:
            trials[trial_id] = SimpleNamespace(trial_id=trial_id)
            scheduler.on_trial_add(None, trials[trial_id])
        actions.append(scheduler.on_trial_result(None, trials[trial_id],
                                                 {"epoch": epoch, "val_acc": val, "swap_prob": swap}))
    return actions


# A baseline that trains alone from the start, then a schedule whose pure student sits at chance while it swaps.
RESULTS = [("alone", 1, 80.0, 0.0), ("alone", 2, 85.0, 0.0),
           ("swaps", 1, 10.0, 0.6), ("swaps", 2, 12.0, 0.3), ("swaps", 3, 70.0, 0.0)]


def test_plain_asha_stops_a_schedule_mid_swap():
    assert _feed(_scheduler(AsyncHyperBandScheduler), RESULTS)[2] == TrialScheduler.STOP


def test_a_trial_that_swaps_is_neither_stopped_nor_recorded_at_any_rung():
    scheduler = _scheduler(HandoverASHA)
    actions = _feed(scheduler, RESULTS[:4])
    assert actions == [TrialScheduler.CONTINUE] * 4
    (bracket,) = scheduler._brackets
    assert all("swaps" not in recorded for _, recorded in bracket._rungs)


def test_after_the_handover_a_trial_is_recorded_at_the_highest_rung_passed_and_judged_there():
    scheduler = _scheduler(HandoverASHA)
    actions = _feed(scheduler, RESULTS)
    (bracket,) = scheduler._brackets
    rungs = {milestone: dict(recorded) for milestone, recorded in bracket._rungs}
    assert rungs[2] == {"alone": 85.0, "swaps": 70.0} and "swaps" not in rungs[1]
    assert actions[-1] == TrialScheduler.STOP  # 70 after the handover is below the rung's cutoff (85 and 70)


def test_a_schedule_that_never_hands_over_runs_to_its_end():
    scheduler = _scheduler(HandoverASHA)
    results = [("alone", e, 90.0, 0.0) for e in range(1, 11)] + [("never", e, 10.0, 0.5) for e in range(1, 11)]
    assert set(_feed(scheduler, results)[10:]) == {TrialScheduler.CONTINUE}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sequential sweep (max_concurrent 1: ASHA's decisions come in one order) whose schedules either hand over
    after the first epoch or swap to the end, at learning rates far apart, so that ASHA has trials to stop."""
    import ray
    from mlflow.tracking import MlflowClient

    from iakd.search.experiment import load_experiment
    from iakd.search.runner import run_search

    tmp = tmp_path_factory.mktemp("handover")
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = ray_tmp
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        overrides = [
            "num_samples=8", "max_concurrent=1", "run.optim.epochs=4", *EVERY_EPOCH, "run.teacher.epochs=1",
            "run.teacher.arch=resnet14", "run.data.image_size=8", "run.optim.batch_size=50",
            "scheduler.grace_period=1", "scheduler.reduction_factor=2", "baselines.methods=[]", "confirm.top_k=0",
            "analysis=false", f"storage_path={tmp}/ray", f"tracking_uri=sqlite:///{tmp}/mlflow.db",
            "space.schedule.family=constant", "space.schedule.p0=1.0", "space.schedule.t_end=[0.25, 1.0]",
            "space.schedule.rate=null", "space.schedule.interval=null", "space.schedule.profile=uniform",
            "space.method.name=iakd", "space.method.kd_weight=null", "space.method.teacher_bn=null",
            "space.method.kd_on=null",
            "space.optim.lr=[0.1, 0.0001]",
        ]
        summary = run_search(load_experiment(ROOT / "tune" / "configs" / "digits.yaml", overrides), verbose=0,
                             log=lambda _: None)
    finally:
        ray.shutdown()
        os.environ.pop("RAY_TMPDIR") if previous is None else os.environ.update(RAY_TMPDIR=previous)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    runs = [r for r in client.search_runs([summary.experiment_id]) if r.data.tags.get("iakd.role") == "search"]
    return client, runs


def _swap_probs(client, run):
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, "swap_prob"), key=lambda m: m.step)]


def test_every_trial_that_asha_stopped_had_handed_over(sweep):
    client, runs = sweep
    stopped = [r for r in runs if r.data.tags.get("status") == "stopped_early"]
    assert stopped, "the sweep is built so that ASHA stops some trials"
    for run in stopped:
        assert _swap_probs(client, run)[-1] == 0.0, run.info.run_name


def test_schedules_that_never_hand_over_run_every_epoch(sweep):
    client, runs = sweep
    swapping = [r for r in runs if r.data.params["schedule.t_end"] == "1.0"]
    assert swapping
    for run in swapping:
        assert len(_swap_probs(client, run)) == 4 and run.data.tags.get("status") == "finished"
