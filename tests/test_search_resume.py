"""An interrupted sweep finishes with ``--resume``: ``python tune/search.py`` as a real process, stopped by SIGINT.

The first run is interrupted while a searched trial is in the middle of its training (a trial has finished,
and the next one has reported at least one epoch but not all of them). Ray Tune saves the
experiment on the first SIGINT and returns; the runner closes the parent run and the open trial run as KILLED
and exits with 3. ``--resume`` with the same overrides then ends the sweep (exit 0): exactly ``num_samples``
trials, each with exactly one MLflow run, the interrupted trial continuing its own run from its checkpoint,
and one parent run covering both invocations.

The interrupted trial's run holds each epoch exactly once, although Tune's stop lets the training thread
log the epoch in progress before it exits: the resumed trial skips epochs its run already holds.

Every wait has a deadline, and the processes run in their own process group, killed if anything is left.
"""

from __future__ import annotations

import os
import shlex
import signal
import time
from pathlib import Path

import pytest
from search_process import EVERY_EPOCH, SCRIPT, Search, search_env, until

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 3
EPOCHS = 3
EXPERIMENT = "iakd-digits"


def _overrides(tmp: Path) -> list[str]:
    """The sweep's keys (its teacher is cached under the storage path: trained once per folder)."""
    return [f"num_samples={SAMPLES}", "max_concurrent=1", "scheduler.name=none", f"run.optim.epochs={EPOCHS}",
            *EVERY_EPOCH,
            "run.teacher.epochs=1", "run.data.image_size=8", "run.teacher.arch=resnet20", "baselines.methods=[ce]",
            "run.data.train_size=null", "baselines.seeds=[0]", "confirm.top_k=1", "confirm.seeds=[1]", "analysis=false",
            "run.evaluation.bn_images=128", "space.student.init=null",
            f"storage_path={tmp}/ray", f"tracking_uri=sqlite:///{tmp}/mlflow.db"]


@pytest.fixture
def env():
    with search_env() as values:
        yield values


def _sweep_runs(tmp: Path, search: Search):
    """Once the sweep's parent run is logged (the database then exists, created and migrated under the project's
    lock): its MLflow client, experiment id, and a function listing the runs of a role (none while the writer
    holds the sqlite lock: ask again)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    until(lambda: "MLflow: experiment" in search.stdout(), 180, search, "parent run")
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id

    def runs_of(role: str) -> list:
        try:
            return client.search_runs([experiment_id], f"tags.`iakd.role` = '{role}'")
        except MlflowException:
            return []

    return client, experiment_id, runs_of


def test_an_interrupted_sweep_finishes_with_resume(tmp_path, env):
    from mlflow.tracking import MlflowClient

    overrides = _overrides(tmp_path)
    first = Search(tmp_path, "first", overrides, env)
    try:
        client, experiment_id, runs_of = _sweep_runs(tmp_path, first)

        def search_runs():
            return runs_of("search")

        def mid_training():
            runs = search_runs()
            if not any(r.info.status == "FINISHED" for r in runs):
                return None
            return next((r for r in runs
                         if r.info.status == "RUNNING" and 1 <= r.data.metrics.get("epochs", 0) < EPOCHS), None)

        running = until(mid_training, 240, first, "searched trial in the middle of its training")
        # Into the next epoch, leaving the driver time to take in the checkpoint of the one just reported.
        time.sleep(min(max(1.0, 0.5 * running.data.metrics.get("epoch_seconds", 1.0)), 5.0))
        first.proc.send_signal(signal.SIGINT)
        assert first.wait(120) == 130, first.tail()
    finally:
        if first.proc.poll() is None:
            first.kill()
    assert "interrupted: continue with --resume" in first.stdout()
    assert first.err.read_text().strip().splitlines()[-1].endswith(
        f"continue with: {shlex.join(['python', str(SCRIPT), *overrides, '--resume'])}")

    interrupted_trial = running.data.tags["iakd.trial_id"]
    parents = client.search_runs([experiment_id], "tags.`iakd.role` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert parents[0].data.tags["iakd.interrupted"] == "true"
    before = {r.info.run_id: r for r in search_runs()}
    assert 2 <= len(before) <= SAMPLES
    assert not [r for r in before.values() if r.info.status in ("RUNNING", "SCHEDULED")]  # closed as KILLED
    if before[running.info.run_id].data.tags.get("status") != "finished":  # (not done in the last moment)
        assert before[running.info.run_id].info.status == "KILLED"

    # the resumed invocation also writes the report, as the main command does: it must say the sweep finished
    second = Search(tmp_path, "resumed", [*overrides, "analysis=true", "--resume"], env)
    try:
        assert second.wait(300) == 0, second.tail()
    finally:
        if second.proc.poll() is None:
            second.kill()
    text = second.stdout()
    assert f"parent run {parents[0].info.run_id} (resumed)" in text

    runs = client.search_runs([experiment_id], "tags.`iakd.role` = 'search'")
    trial_ids = [r.data.tags["iakd.trial_id"] for r in runs]
    assert len(runs) == SAMPLES and len(set(trial_ids)) == SAMPLES, trial_ids  # one run per trial, no more
    assert [r.info.status for r in runs] == ["FINISHED"] * SAMPLES
    finished_before = {i for i, r in before.items() if r.data.tags.get("status") == "finished"}
    assert finished_before <= {r.info.run_id for r in runs}  # trials done before the interruption were kept

    # The interrupted trial continued the run it had begun, from its checkpoint: every epoch logged once.
    (resumed,) = [r for r in runs if r.data.tags["iakd.trial_id"] == interrupted_trial]
    assert resumed.info.run_id == running.info.run_id
    assert resumed.data.tags["status"] == "finished"
    steps = sorted(m.step for m in client.get_metric_history(resumed.info.run_id, "val_acc"))
    assert steps == list(range(1, EPOCHS + 1))
    # Its training log, carried in the checkpoint, holds every epoch once across both attempts.
    log = Path(client.download_artifacts(resumed.info.run_id, "train.log", str(tmp_path))).read_text()
    assert "resumed from" in log
    assert [line.split()[1] for line in log.splitlines() if line.startswith("epoch")] == [
        f"{e}/{EPOCHS}" for e in range(1, EPOCHS + 1)]
    for run in runs:
        if run.info.run_id != resumed.info.run_id:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
            assert steps == list(range(1, EPOCHS + 1))
    # Tune's side: the restored searcher sampled only the missing trials.
    assert len(list((tmp_path / "ray" / EXPERIMENT).glob("search_*/params.json"))) == SAMPLES
    # Optuna's side: one study across both invocations, each trial once, every one completed.
    import optuna

    storage = f"sqlite:///{tmp_path}/optuna.db"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    assert sorted(t.user_attrs["tune_trial_id"] for t in study.get_trials()) == sorted(trial_ids)
    assert {t.state for t in study.get_trials()} == {optuna.trial.TrialState.COMPLETE}

    baselines = client.search_runs([experiment_id], "tags.`iakd.role` = 'baseline'")
    assert [r.info.status for r in baselines] == ["FINISHED"]

    # The confirmation stage ran after the resumed search: the best trial and the baseline, once each.
    confirm = client.search_runs([experiment_id], "tags.`iakd.role` = 'confirm'")
    parents = client.search_runs([experiment_id], "tags.`iakd.role` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    tags = parents[0].data.tags
    assert sorted(r.data.tags["iakd.candidate"] for r in confirm) == sorted([tags["best_trial"], "ce"])
    assert [r.info.status for r in confirm] == ["FINISHED"] * 2
    assert not list(Path(env["TMPDIR"]).glob("iakd-trial-*"))  # no trial's folder left behind, killed or not
    assert {r.data.tags["mlflow.parentRunId"] for r in confirm} == {parents[0].info.run_id}
    assert tags["iakd.interrupted"] == "false"
    assert tags["best_trial"] in {r.info.run_name for r in runs}
    assert f"Search {EXPERIMENT!r}: {SAMPLES} trials, 1 baselines" in text
    report = (tmp_path / "analysis_out" / EXPERIMENT / "report.md").read_text()  # what tune/search.py leaves
    assert f"Parent run `{parents[0].info.run_id}`" in report and "Provisional" not in report
    assert f"Best trial {tags['best_trial']} (MLflow run {tags['best_run_id']}):" in text
    best = next(r for r in runs if r.info.run_name == tags["best_trial"])
    assert best.info.run_id == tags["best_run_id"]
    assert parents[0].data.metrics["best_val_acc"] == pytest.approx(max(r.data.metrics["best_val_acc"] for r in runs))

    # With max_concurrent=1 the interrupted and resumed sweep is the sweep an uninterrupted run makes: the same
    # proposals (TPE's state comes back with Tune's), the same scores (each trial resumes exactly).
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    # Its search stage only: the baselines and the confirmation do not touch the search's proposals or scores.
    only_search = [*_overrides(straight_dir), "baselines.methods=[]", "confirm.top_k=0"]
    straight = Search(straight_dir, "straight", only_search, env)
    try:
        assert straight.wait(300) == 0, straight.tail()
    finally:
        if straight.proc.poll() is None:
            straight.kill()
    other = MlflowClient(f"sqlite:///{straight_dir}/mlflow.db")
    other_runs = other.search_runs([other.get_experiment_by_name(EXPERIMENT).experiment_id],
                                   "tags.`iakd.role` = 'search'")

    def proposals(found):  # a family's own keys (schedule.rate...) appear only in the runs of that family
        keys = sorted({k for r in found for k in r.data.params if k.startswith(("schedule.", "method."))})
        return sorted((tuple(r.data.params.get(k) for k in keys), r.data.metrics["best_val_acc"]) for r in found)

    assert proposals(other_runs) == proposals(runs)


def test_sigterm_during_the_baselines_stops_the_sweep_and_counts_no_cut_short_baseline(tmp_path, env):
    """SIGTERM (docker stop, a scheduler) while a baseline trains: the sweep stops within seconds with one line and
    exit 143, the search stage never starts, the parent run is KILLED, and the baseline that was cut short is a
    KILLED run, not a finished one standing beside longer trials; no run is left RUNNING."""
    overrides = [*_overrides(tmp_path), "run.optim.epochs=30", "baselines.seeds=[0, 1]"]
    search = Search(tmp_path, "terminated", overrides, env)
    try:
        client, experiment_id, runs_of = _sweep_runs(tmp_path, search)

        def training_baseline():
            return next((r for r in runs_of("baseline")
                         if r.info.status == "RUNNING" and r.data.metrics.get("epochs", 0) >= 1), None)

        until(training_baseline, 240, search, "a baseline in training")
        search.proc.send_signal(signal.SIGTERM)
        assert search.wait(120) == 143, search.tail()
    finally:
        if search.proc.poll() is None:
            search.kill()
    last = search.err.read_text().strip().splitlines()[-1]
    assert last.startswith("interrupted by SIGTERM: the sweep stopped before its stages ended") and last.endswith(
        f"continue with: {shlex.join(['python', str(SCRIPT), *overrides, '--resume'])}"), last
    runs = client.search_runs([experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("iakd.role") == "sweep"]
    assert parent.info.status == "KILLED" and parent.data.tags["iakd.interrupted"] == "true"
    assert not [r for r in runs if r.data.tags.get("iakd.role") == "search"]  # the search stage never started
    baselines = [r for r in runs if r.data.tags.get("iakd.role") == "baseline"]
    assert not [r for r in baselines if r.info.status in ("RUNNING", "SCHEDULED")]
    cut_short = [r for r in baselines if r.data.metrics.get("epochs", 0) < 30]
    assert cut_short and all(r.info.status == "KILLED" and r.data.tags.get("status") is None for r in cut_short)
    assert not list(Path(env["TMPDIR"]).glob("iakd-trial-*"))  # the stopped trials' folders are gone


def test_a_trial_folder_is_removed_once_its_worker_is_dead_and_only_then(tmp_path):
    """A worker killed before its ``finally`` leaves its trial folder; the next trial on the node (and the driver,
    at the end of a sweep) removes it: only folders of this user whose worker process is gone."""
    import subprocess
    import sys

    from iakd.search.trainable import TRIAL_FOLDER_PREFIX, remove_orphaned_trial_folders

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f"{TRIAL_FOLDER_PREFIX}{dead.pid}-search_0001-x1"
    alive = tmp_path / f"{TRIAL_FOLDER_PREFIX}{os.getpid()}-search_0002-x2"
    for folder in (orphan, alive):
        (folder / "checkpoint_000001").mkdir(parents=True)
        (folder / "checkpoint_000001" / "checkpoint.pt").write_bytes(b"weights")
    other = tmp_path / "iakd-shared"  # not a trial folder
    other.mkdir()
    (tmp_path / f"{TRIAL_FOLDER_PREFIX}{dead.pid}-a-file").write_text("")  # not a folder
    (tmp_path / f"{TRIAL_FOLDER_PREFIX}{dead.pid}-link").symlink_to(alive)  # never followed

    assert remove_orphaned_trial_folders(tmp_path) == [orphan]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, other.name, f"{TRIAL_FOLDER_PREFIX}{dead.pid}-a-file", f"{TRIAL_FOLDER_PREFIX}{dead.pid}-link"])
    assert (alive / "checkpoint_000001" / "checkpoint.pt").read_bytes() == b"weights"


def test_ctrl_c_while_the_teacher_trains_is_one_line_and_resume_continues_it(tmp_path, env):
    """Ctrl-C before any Tune stage (the driver trains the teacher): one line with the command that continues, exit
    130, no traceback; the teacher's checkpoint is there for it."""
    overrides = [*_overrides(tmp_path), "run.teacher.epochs=40"]
    search = Search(tmp_path, "teacher", overrides, env)
    try:
        until(lambda: "epoch   2/40" in search.stdout(), 180, search, "the teacher's second epoch")
        search.proc.send_signal(signal.SIGINT)
        assert search.wait(60) == 130, search.tail()
    finally:
        if search.proc.poll() is None:
            search.kill()
    err = search.err.read_text()
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == ("interrupted before the sweep ended: continue with: "
                                            f"{shlex.join(['python', str(SCRIPT), *overrides, '--resume'])}")
    assert list((tmp_path / "ray" / "teachers").glob("*-run/checkpoint.pt"))  # the teacher continues from here


def test_two_sweeps_started_together_on_a_fresh_store_both_finish_and_a_third_of_a_running_one_is_refused(
        tmp_path, env):
    """Two commands started at one moment in an empty folder (experiments a and b, one MLflow and one Optuna
    database, neither there yet) both finish, each with its own parent run and study; a third command for
    experiment a while a runs is refused in one line, exit 2, and changes nothing of a's."""
    import optuna
    from mlflow.tracking import MlflowClient

    common = [*_overrides(tmp_path), "num_samples=1", "confirm.top_k=0", "run.optim.epochs=2"]
    a = Search(tmp_path, "a", [*common, "experiment=a"], env)
    b = Search(tmp_path, "b", [*common, "experiment=b"], env)
    try:
        until(lambda: "MLflow: experiment 'a'" in a.stdout(), 240, a, "a's parent run")
        third = Search(tmp_path, "third", [*common, "experiment=a"], env)
        assert third.wait(120) == 2, third.tail()
        assert a.wait(400) == 0, a.tail()
        assert b.wait(400) == 0, b.tail()
    finally:
        for search in (a, b):
            if search.proc.poll() is None:
                search.kill()
    err = third.err.read_text()
    assert err.count("\n") == 1 and err.startswith(
        f"error: experiment 'a': another sweep of it is running on {tmp_path / 'ray'}"), err
    assert "MLflow:" not in third.stdout()  # it opened no run
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for name in ("a", "b"):
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        (parent,) = [r for r in runs if r.data.tags["iakd.role"] == "sweep"]
        assert parent.info.status == "FINISHED" and "best_trial" in parent.data.tags
        assert sorted((r.data.tags["iakd.role"], r.info.status) for r in runs) == [
            ("baseline", "FINISHED"), ("search", "FINISHED"), ("sweep", "FINISHED")]
    studies = optuna.get_all_study_names(f"sqlite:///{tmp_path}/optuna.db")
    assert sorted(name.split("-")[0] for name in studies) == ["a", "b"]


def test_ctrl_c_in_a_terminal_stops_a_search_of_100000_trials(tmp_path, env):
    """Ctrl-C in a terminal reaches every process of the foreground group, the driver's and Ray's: a sweep of
    100000 trials stops (it once went on starting trials until it was killed) with one line and exit 130, its parent
    KILLED, no run left RUNNING, and the search stage's trials not counted."""
    overrides = [*_overrides(tmp_path), "num_samples=100000", "confirm.top_k=0", "run.optim.epochs=2",
                 "baselines.methods=[]"]
    search = Search(tmp_path, "huge", overrides, env)
    try:
        client, experiment_id, runs_of = _sweep_runs(tmp_path, search)
        until(lambda: runs_of("search"), 240, search, "a searched trial")
        os.killpg(search.proc.pid, signal.SIGINT)
        assert search.wait(90) == 130, search.tail()
    finally:
        if search.proc.poll() is None:
            search.kill()
    assert search.err.read_text().strip().splitlines()[-1].startswith(
        "interrupted: the sweep stopped before its stages ended (its parent run is KILLED")
    runs = client.search_runs([experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("iakd.role") == "sweep"]
    assert parent.info.status == "KILLED" and parent.data.tags["iakd.interrupted"] == "true"
    assert not [r for r in runs if r.info.status in ("RUNNING", "SCHEDULED")]
    assert "best_trial" not in parent.data.tags
    searched = [r for r in runs if r.data.tags.get("iakd.role") == "search"]
    assert all((r.info.status, r.data.metrics["epochs"]) == ("FINISHED", 2) or r.info.status == "KILLED"
               for r in searched), [(r.info.status, r.data.metrics.get("epochs")) for r in searched]
