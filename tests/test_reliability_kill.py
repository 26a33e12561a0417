"""A trial whose worker is SIGKILLed mid-training (as on a preempted node) is retried from its last checkpoint and
ends exactly where an uninterrupted run of its config ends, in the same MLflow run, each epoch logged once.

``python tune/search.py`` runs one searched trial as a real process. Once the trial's run holds its second epoch,
the test finds the trial's Ray worker (``ray::ImplicitFunc...``, in this test's own Ray session only: the worker's
environment carries the test's private ``RAY_TMPDIR``) and sends it SIGKILL. Tune sees the actor die and, with
``max_failures`` (default 2), starts the trial again from the checkpoint it last reported.

The reference is ``iakd.engine.train`` on the trial's own resolved config (its ``config.yaml`` artifact) in this
process, on one thread like the trial: a trial's first attempt is that same call, so an uninterrupted trial ends
with exactly these figures. Timing metrics (epoch_seconds, images_per_second, train_seconds) aside, every
per-epoch metric and every student weight must be equal, not close: the resume is exact by design.

Every wait has a deadline; the search runs in its own process group, and every process of the test's Ray
session is killed at the end whatever happened.
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from search_process import Search, search_env, session_processes, until

from iakd.engine import judged_epochs

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 6
KILL_AFTER_EPOCH = 2
EXPERIMENT = "iakd-digits"
TIMING = {"epoch_seconds", "images_per_second", "train_seconds"}


def _overrides(tmp: Path) -> list[str]:
    # One searched trial, no baselines or confirmation, a fixed IAKD+KD configuration apart from the ranges that
    # TPE draws with its fixed seed (the reference reads the drawn values back from the trial's config).
    return ["num_samples=1", "max_concurrent=1", "scheduler.name=none", f"run.optim.epochs={EPOCHS}",
            "run.teacher.epochs=1", "run.data.image_size=8", "run.teacher.arch=resnet20", "run.data.train_size=null",
            "baselines.methods=[]", "confirm.top_k=0", "analysis=false", "max_failures=2",
            "space.schedule.family=[linear]", "space.method.name=[iakd+kd]", "space.method.granularity=[stage]",
            "space.schedule.profile=[uniform]", "space.schedule.rate=null",
            "space.schedule.interval=null", f"storage_path={tmp}/ray", f"tracking_uri=sqlite:///{tmp}/mlflow.db"]


@pytest.fixture
def env():
    with search_env() as values:
        yield values


def _trial_worker(ray_tmp: str) -> int | None:
    """The pid of the one Ray worker running a trial (its title is ``ray::ImplicitFunc[.method]``), else None."""
    workers = [pid for pid, cmd in session_processes(ray_tmp).items() if cmd.startswith("ray::ImplicitFunc")]
    return workers[0] if len(workers) == 1 else None


def _reference(config: dict, out_dir: Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """An uninterrupted run of ``config``: engine.train here, on one thread as the trial's worker."""
    from iakd.config import from_dict
    from iakd.engine import train

    cfg = from_dict(config)
    cfg.out_dir, cfg.device = str(out_dir), "cpu"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(cfg, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    assert result["status"] == "finished"
    return result["history"], torch.load(out_dir / "student.pt", weights_only=True)["model"]


def test_a_trial_whose_worker_is_killed_resumes_exactly_in_its_own_run(tmp_path, env):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    started = time.monotonic()
    search = Search(tmp_path, "search", _overrides(tmp_path), env)
    try:
        until(lambda: "MLflow: experiment" in search.stdout(), 180, search, "parent run")
        client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id

        def trial_run_past_the_kill_epoch():
            try:
                runs = client.search_runs([experiment_id], "tags.`iakd.role` = 'search'")
            except MlflowException:  # the writer holds the sqlite lock: ask again
                return None
            return next((r for r in runs if r.data.metrics.get("epochs", 0) >= KILL_AFTER_EPOCH), None)

        before = until(trial_run_past_the_kill_epoch, 240, search, f"trial run with epoch {KILL_AFTER_EPOCH} logged")
        worker = until(lambda: _trial_worker(env["RAY_TMPDIR"]), 30, search, "single trial worker process")
        os.kill(worker, signal.SIGKILL)
        # what the killed worker had logged (its successor needs seconds to start, then trains before it logs)
        epochs_at_kill = int(client.get_run(before.info.run_id).data.metrics["epochs"])
        assert epochs_at_kill < EPOCHS, "the trial ended before the kill: make its epochs longer"

        assert search.wait(300) == 0, search.tail()
    finally:
        if search.proc.poll() is None:
            search.kill()
    sweep_seconds = time.monotonic() - started

    # One run for the trial, the one it began before the kill, closed as a finished training.
    runs = client.search_runs([experiment_id], "tags.`iakd.role` = 'search'")
    trial_id = before.data.tags["iakd.trial_id"]
    assert [r.data.tags["iakd.trial_id"] for r in runs] == [trial_id]
    (run,) = runs
    assert run.info.run_id == before.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
    assert run.data.metrics["epochs"] == EPOCHS
    assert not client.search_runs([experiment_id], "attributes.status = 'RUNNING'")

    # It really was retried from a checkpoint (not from scratch), after the kill: its log says so, once.
    log = Path(client.download_artifacts(run.info.run_id, "train.log", str(tmp_path))).read_text()
    resumed = [line for line in log.splitlines() if line.startswith("resumed from")]
    assert len(resumed) == 1, log
    resumed_at = int(resumed[0].rsplit(" ", 1)[-1])
    assert KILL_AFTER_EPOCH - 1 <= resumed_at <= epochs_at_kill < EPOCHS, log
    assert [line.split()[1] for line in log.splitlines() if line.startswith("epoch")] == [
        f"{e}/{EPOCHS}" for e in range(1, EPOCHS + 1)]
    assert worker not in session_processes(env["RAY_TMPDIR"])

    # Exactly the uninterrupted figures and weights.
    config = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path)))
                            .read_text())
    history, weights = _reference(config, tmp_path / "reference")
    keys = sorted(set(history[0]) - TIMING - {"epoch"})
    assert {"val_acc", "test_acc", "train_loss", "loss_kd", "swap_rate", "lr"} <= set(keys)
    for key in keys:
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert [step for step, _ in logged] == list(range(1, EPOCHS + 1)), key  # every epoch, exactly once
        expected = [h[key] for h in history]
        assert all(v == e or (math.isnan(v) and math.isnan(e)) for (_, v), e in zip(logged, expected)), (
            key, [v for _, v in logged], expected)
    assert run.data.metrics["best_val_acc"] == max(h["val_acc"] for h in judged_epochs(history))
    assert run.data.metrics["last_test_acc"] == history[-1]["test_acc"]

    student = torch.load(client.download_artifacts(run.info.run_id, "student.pt", str(tmp_path)),
                         weights_only=True)["model"]
    assert student.keys() == weights.keys()
    differing = [name for name in weights if not torch.equal(student[name], weights[name])]
    assert differing == []
    print(f"sweep {sweep_seconds:.0f}s; worker killed after epoch {epochs_at_kill}, trial resumed at epoch "
          f"{resumed_at}")
