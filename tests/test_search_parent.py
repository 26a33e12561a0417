"""The sweep's parent run is closed on every exit path, and a rerun of an experiment never silently adds a
second open parent. The stages themselves are replaced here (no Ray): what is tested is the driver around them."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from iakd.search import runner
from iakd.search.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tune" / "configs" / "digits.yaml"


@pytest.fixture
def experiment(tmp_path):
    return load_experiment(CONFIG, [
        "run.teacher.arch=resnet8", "run.teacher.epochs=1", "run.data.image_size=8", "run.optim.batch_size=64",
        f"storage_path={tmp_path}/ray", f"tracking_uri=sqlite:///{tmp_path}/mlflow.db"])


def _parents(experiment):
    client = MlflowClient(experiment.config.tracking_uri)
    found = client.get_experiment_by_name(experiment.config.experiment)
    runs = client.search_runs([found.experiment_id], "tags.`iakd.role` = 'sweep'", order_by=["start_time ASC"])
    return [(r.info.status, r.data.tags) for r in runs]


@pytest.mark.parametrize("error, status", [(RuntimeError("storage exploded"), "FAILED"),
                                           (KeyboardInterrupt(), "KILLED")])
def test_an_error_after_the_parent_is_opened_closes_it_with_the_right_status(experiment, monkeypatch, error, status):
    def stages(*args, **kwargs):
        raise error

    monkeypatch.setattr(runner, "_run_stages", stages)
    with pytest.raises(type(error)):
        runner.run_search(experiment, log=lambda _: None)
    ((found, tags),) = _parents(experiment)
    assert found == status
    assert tags["iakd.error"].startswith(type(error).__name__)


def test_a_rerun_supersedes_the_earlier_parent_and_resume_continues_the_newest(experiment, monkeypatch):
    seen = []

    def stages(experiment, parent, *args, resume, **kwargs):
        seen.append((parent, resume))
        raise RuntimeError("stop here")

    monkeypatch.setattr(runner, "_run_stages", stages)
    lines = []
    for resume in (False, False, True):
        with pytest.raises(RuntimeError):
            runner.run_search(experiment, resume=resume, log=lines.append)
    parents = _parents(experiment)
    assert len(parents) == 2  # the resumed run reopened the newest parent instead of adding one
    (first_status, first_tags), (_, second_tags) = parents
    assert first_tags["iakd.superseded_by"] == seen[1][0] and "iakd.superseded_by" not in second_tags
    assert seen[2][0] == seen[1][0]
    assert any(f"parent run {seen[0][0]} is superseded by {seen[1][0]}" in line for line in lines)
    # --resume with nothing stored yet starts the sweep instead of refusing
    assert seen[2][1] is False
    assert any("nothing to resume" in line and "starting it" in line for line in lines)


def test_resume_refuses_a_config_that_changes_training_before_touching_anything(experiment, tmp_path, monkeypatch):
    from iakd.errors import ConfigError

    seen = []

    def stages(experiment, parent, *args, resume, **kwargs):
        tags = MlflowClient(experiment.config.tracking_uri).get_run(parent).data.tags
        seen.append((parent, resume, experiment.config.max_concurrent, "iakd.error" in tags))
        raise RuntimeError("stop here")

    monkeypatch.setattr(runner, "_run_stages", stages)
    with pytest.raises(RuntimeError):
        runner.run_search(experiment, log=lambda _: None)
    before = _parents(experiment)
    monkeypatch.setattr(runner.tune.Tuner, "can_restore", staticmethod(lambda path: True))  # Tune's state is there
    monkeypatch.setattr(runner.storage, "check_restorable", lambda path: None)  # and whole
    monkeypatch.setattr(runner, "check_resumable_study", lambda storage, study: None)  # with its Optuna study
    common = ["run.teacher.arch=resnet8", "run.teacher.epochs=1", "run.data.image_size=8", "run.optim.batch_size=64",
              f"storage_path={tmp_path}/ray", f"tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    for change, message in ((["run.optim.epochs=3"], "--resume: run.optim.epochs is 3 here but 150 when the sweep "
                                                     f"started (parent run {seen[0][0]})"),
                            (["space.schedule.p0={low: 0.2, high: 0.4}"], "--resume: space.schedule.p0.high is 0.4 "
                                                                          "here but 1.0 when the sweep started")):
        with pytest.raises(ConfigError) as info:
            runner.run_search(load_experiment(CONFIG, [*common, *change]), resume=True, log=lambda _: None)
        assert str(info.value).startswith(message), str(info.value)
    assert len(seen) == 1 and _parents(experiment) == before  # nothing ran, the parent run untouched
    # keys that only say where things go or how fast they run may change
    with pytest.raises(RuntimeError, match="stop here"):
        runner.run_search(load_experiment(CONFIG, [*common, "max_concurrent=1"]), resume=True, log=lambda _: None)
    # the same parent, resumed; the first attempt's error tag is gone while it runs (it failed again only here)
    assert seen[1] == (seen[0][0], True, 1, False)


def test_a_second_sweep_of_a_running_experiment_is_refused_and_a_killed_ones_lock_is_gone(experiment, monkeypatch):
    import signal
    import subprocess
    import sys

    from iakd.errors import ConfigError
    from iakd.search import storage

    seen = []

    def stages(experiment, parent, *args, **kwargs):
        seen.append(parent)
        raise RuntimeError("stop here")

    monkeypatch.setattr(runner, "_run_stages", stages)
    cfg = experiment.config
    with storage.sweep_lock(cfg.storage_path, cfg.experiment):  # a sweep of it is running
        with pytest.raises(ConfigError, match=r"^experiment 'iakd-digits': another sweep of it is running on "):
            runner.run_search(experiment, log=lambda _: None)
    assert seen == [] and not Path(cfg.tracking_uri.removeprefix("sqlite:///")).exists()  # nothing started
    # a driver killed while it held the lock leaves no lock behind (the kernel drops it with the process)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom iakd.search import storage\n"
                               f"with storage.sweep_lock({cfg.storage_path!r}, {cfg.experiment!r}):\n"
                               "    print('held', flush=True)\n    time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="another sweep of it is running"):
            runner.run_search(experiment, log=lambda _: None)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with pytest.raises(RuntimeError, match="stop here"):
        runner.run_search(experiment, log=lambda _: None)
    assert len(seen) == 1


def test_ctrl_c_during_the_closing_report_stops_the_report_only(monkeypatch):
    """By the report the sweep has ended (its parent FINISHED): Ctrl-C there stops the report, says how to make it,
    and does not re-close the sweep as KILLED."""
    from types import SimpleNamespace

    from iakd.analysis import report

    def interrupted(sweep):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "publish_report", interrupted)
    lines = []
    sweep = SimpleNamespace(parent_run_id="abc", experiment="iakd-digits", tracking_uri="sqlite:////my runs/mlflow.db")
    assert runner._analyse(sweep, lines.append) == "interrupted"
    assert lines == ["analysis interrupted: the sweep is finished (parent run abc); make its report with: python "
                     "analysis/ablations.py --tracking-uri 'sqlite:////my runs/mlflow.db' --parent-run-id abc"]


def test_resume_refuses_a_damaged_tune_state_before_any_stage_or_run(experiment, monkeypatch):
    """A search stage's tuner.pkl cut short: --resume is one line naming it, before the teacher, the parent run or
    any stage (Tune would restore the finished baselines and only then fail to unpickle it)."""
    from iakd.errors import ConfigError

    def stages(*args, **kwargs):
        raise AssertionError("no stage may start")

    monkeypatch.setattr(runner, "_run_stages", stages)
    monkeypatch.setattr(runner, "share_teacher", stages)
    cfg = experiment.config
    search_stage = Path(cfg.storage_path) / cfg.experiment
    search_stage.mkdir(parents=True)
    (search_stage / "tuner.pkl").write_bytes(b"\x80\x05\x95\x10\x00\x00\x00")  # a pickle's first bytes only
    with pytest.raises(ConfigError, match=rf"^--resume: {search_stage / 'tuner.pkl'} is damaged \("):
        runner.run_search(experiment, resume=True, log=lambda _: None)
    assert _parents(experiment) == []


def test_resume_refuses_tune_state_whose_sweep_the_tracking_store_does_not_know(experiment, monkeypatch):
    """Tune's stages are stored but the MLflow store has no parent run of the experiment (another tracking URI, a
    new database): resuming would bring Tune's trials back without their runs, scores or study, and end in 'no
    searched trial finished'. One line instead, before anything is written."""
    from iakd.errors import ConfigError

    def stages(*args, **kwargs):
        raise AssertionError("no stage may start")

    monkeypatch.setattr(runner, "_run_stages", stages)
    monkeypatch.setattr(runner, "share_teacher", stages)
    monkeypatch.setattr(runner.tune.Tuner, "can_restore", staticmethod(lambda path: True))  # Tune's state is there
    monkeypatch.setattr(runner.storage, "check_restorable", lambda path: None)  # and whole
    cfg = experiment.config
    with pytest.raises(ConfigError, match=rf"^--resume: {cfg.storage_path} holds a sweep of 'iakd-digits' that "
                                          rf"sqlite:///\S+/mlflow.db does not know \(no parent run"):
        runner.run_search(experiment, resume=True, log=lambda _: None)
    assert _parents(experiment) == []


def test_resume_refuses_a_search_stage_whose_optuna_study_is_not_in_the_storage(experiment, tmp_path, monkeypatch):
    """The search stage's searcher loads its study by name: with optuna.db gone (or another optuna_storage) Tune
    would fail every restore with Optuna's "Record does not exist". One line instead, and no database made."""
    from iakd.errors import ConfigError

    def stages(*args, **kwargs):
        raise RuntimeError("stop here")

    monkeypatch.setattr(runner, "_run_stages", stages)
    with pytest.raises(RuntimeError):
        runner.run_search(experiment, log=lambda _: None)  # the sweep's parent run
    ((_, tags),) = _parents(experiment)
    monkeypatch.setattr(runner.tune.Tuner, "can_restore", staticmethod(lambda path: True))  # Tune's state is there
    monkeypatch.setattr(runner.storage, "check_restorable", lambda path: None)  # and whole
    optuna_db = tmp_path / "optuna.db"
    assert not optuna_db.exists()  # the stages never ran: no study was made
    with pytest.raises(ConfigError, match=rf"^--resume: the sweep's Optuna study '{tags['optuna.study']}' is not in "
                                          rf"sqlite:///{optuna_db} \(another optuna_storage"):
        runner.run_search(experiment, resume=True, log=lambda _: None)
    assert not optuna_db.exists()
