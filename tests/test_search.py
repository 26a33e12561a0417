"""The search end to end on a local Ray with 2 CPUs: one parent run, one FINISHED child per trial."""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from iakd.search import storage

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tune" / "configs" / "digits.yaml"
EPOCHS = 2
EVERY = 2  # evaluated after epoch 2 only, as the default evaluates every 10th: epoch 1 reaches MLflow, not Tune


def tiny(tmp):
    return ["num_samples=3", f"run.optim.epochs={EPOCHS}", f"run.evaluation.every={EVERY}", "run.teacher.epochs=1",
            "run.data.image_size=8",
            "run.teacher.arch=resnet20", "run.student.arch=resnet14", "scheduler.grace_period=1",
            "confirm.top_k=0", f"storage_path={tmp}/ray", f"tracking_uri=sqlite:///{tmp}/mlflow.db"]


SWEEP_READS: list[str | None] = []  # the sweeps the module's search read back from MLflow, in order

# The module's sweep confirms its best trial and the baselines on two fresh seeds, then writes its report.
CONFIRM = ["confirm.top_k=1", "confirm.seeds=[1, 2]"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    import ray
    from mlflow.tracking import MlflowClient

    from iakd.search.experiment import load_experiment
    from iakd.search.runner import run_search
    from iakd.search.summary import format_summary

    tmp = tmp_path_factory.mktemp("sweep")
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths must stay < 107 characters
    previous = {key: os.environ.get(key) for key in ("RAY_TMPDIR", "TMPDIR")}
    cwd = os.getcwd()
    # TMPDIR: the workers' node-local copies of files shared through the storage URI go there.
    os.environ.update(RAY_TMPDIR=ray_tmp, TMPDIR=str(tmp / "node"))
    (tmp / "node").mkdir()
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    from iakd.analysis import export

    load_sweep = export.load_sweep

    def counted(*args, **kwargs):
        SWEEP_READS.append(kwargs.get("parent_run_id"))
        return load_sweep(*args, **kwargs)

    export.load_sweep = counted  # how often the search reads its sweep back from MLflow
    try:
        # Storage behind a URI (file:// takes the same pyarrow path as s3://): the teacher is published there.
        overrides = [*tiny(tmp), *CONFIRM, f"storage_path=file://{tmp}/store", f"run.teacher.cache_dir={tmp}/driver"]
        os.chdir(tmp)  # the report goes to ./analysis_out/<experiment>
        summary = run_search(load_experiment(CONFIG, overrides), verbose=0, log=lambda _: None)
    finally:
        export.load_sweep = load_sweep
        os.chdir(cwd)
        ray.shutdown()
        for key, value in previous.items():
            os.environ.pop(key, None) if value is None else os.environ.update({key: value})
        shutil.rmtree(ray_tmp, ignore_errors=True)
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("iakd-digits")
    runs = client.search_runs([experiment.experiment_id])
    return summary, format_summary(summary), client, runs


def test_the_search_reads_its_sweep_back_from_mlflow_once_for_its_answer_and_report(sweep):
    summary, _, _, _ = sweep
    assert summary.answer is not None and summary.answer.confirmed
    assert (Path(summary.tracking_uri.removeprefix("sqlite:///")).parent / "analysis_out" / "iakd-digits"
            / "report.md").is_file()
    assert SWEEP_READS == [summary.parent_run_id]


def test_the_ranking_counts_only_trials_that_finished_or_were_stopped_early_best_score_first():
    from iakd.search.runner import rank
    from iakd.search.summary import TrialSummary

    def trial(name, score, outcome="finished"):
        return TrialSummary(name, {}, score, 80.0, 10, None, outcome)

    trials = [trial("search_b", 90.0), trial("search_a", 90.0), trial("search_c", 95.0, "stopped_early"),
              trial("search_d", 99.0, "diverged"), trial("search_e", 99.0, "error"),
              trial("search_f", 99.0, "unfinished"), trial("search_g", float("nan")), trial("search_h", 50.0)]
    assert [t.name for t in rank(trials)] == ["search_c", "search_a", "search_b", "search_h"]


def test_one_parent_run_per_sweep(sweep):
    summary, _, _, runs = sweep
    parents = [r for r in runs if r.data.tags.get("iakd.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.run_id == summary.parent_run_id
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["best_trial"] == summary.best.name
    assert parents[0].data.metrics["best_val_acc"] == pytest.approx(summary.best.score)
    assert summary.metric == "val_acc"


def test_every_trial_and_baseline_has_exactly_one_finished_child_run(sweep):
    summary, _, _, runs = sweep
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary.parent_run_id]
    roles = sorted(r.data.tags["iakd.role"] for r in children)
    # ce and kd on the baseline seeds 1, 2, 3, from both initialisations the space holds (student.init); the
    # confirmation reuses them and trains the best trial on 1 and 2
    assert roles == ["baseline"] * 12 + ["confirm"] * 2 + ["search"] * 3
    assert all(r.info.status == "FINISHED" for r in children)
    trial_ids = [r.data.tags["iakd.trial_id"] for r in children]
    assert len(set(trial_ids)) == len(trial_ids) == 17
    searched = {r.info.run_name: r.info.run_id for r in children if r.data.tags["iakd.role"] == "search"}
    assert searched == {t.name: t.run_id for t in summary.trials}  # the summary finds each run by its trial id
    assert sorted(r.data.tags["iakd.candidate"] for r in children if r.data.tags["iakd.role"] == "baseline") == [
        "ce"] * 3 + ["ce.teacher-init"] * 3 + ["kd"] * 3 + ["kd.teacher-init"] * 3  # seeds 1, 2, 3


def test_the_best_trial_and_the_baselines_are_confirmed_once_on_each_fresh_seed(sweep):
    summary, text, _, runs = sweep
    confirm = [r for r in runs if r.data.tags.get("iakd.role") == "confirm"]
    best = summary.best  # by validation score: test accuracy plays no part in the choice
    assert summary.best.score == max(t.score for t in summary.trials)
    done = sorted((r.data.tags["iakd.candidate"], r.data.params["seed"]) for r in confirm)
    assert done == [(best.name, "1"), (best.name, "2")]  # the baselines ran on these seeds already: not again
    for run in confirm:  # the searched configuration, trained again on another seed
        params, candidate = run.data.params, run.data.tags["iakd.candidate"]
        assert {k: params[k] for k in best.overrides} == {k: str(v) for k, v in best.overrides.items()}
        assert run.info.run_name == f"confirm_{candidate}_seed{params['seed']}"
    reused = [r for r in runs if r.data.tags.get("iakd.role") == "baseline"]
    for run in reused:  # a baseline, with its own standard weights, named as the candidate it stands for
        params = run.data.params
        label = params["method.name"] + (".teacher-init" if params["student.init"] == "teacher" else "")
        assert run.data.tags["iakd.candidate"] == label and params["method.kd_weight"] == "None"
        assert params["method.mixing"] == "bernoulli" and params["method.hybrid_weight"] == "0.0"  # no lever
        assert params["method.temperature"] == "4.0"  # KD's standard T, whatever the base run sets
    groups = summary.answer.confirmed
    assert [g.name for g in groups] == [best.name, "kd", "ce", "kd.teacher-init", "ce.teacher-init"]
    assert all(g.seeds == (1, 2) for g in groups)  # baseline seed 3 is not a confirmation seed
    assert "Confirmed on seeds 1, 2" in text and "test_acc - kd" in text
    # the winner meets KD trained from its own initialisation
    init = best.overrides["student.init"]
    reference = summary.answer.get("kd" if init == "scratch" else "kd.teacher-init")
    expected = [summary.answer.get(best.name).test[s] - reference.test[s] for s in (1, 2)]
    assert summary.answer.difference(best.name, "kd").mean == pytest.approx(sum(expected) / 2)


def test_the_optuna_study_holds_every_searched_trial_linked_to_its_tune_trial_and_mlflow_run(sweep):
    import optuna

    summary, text, _, runs = sweep
    study = optuna.load_study(study_name=summary.study, storage=summary.optuna_storage)
    assert study.metric_names == ["val_acc"] and study.direction == optuna.study.StudyDirection.MAXIMIZE
    beside = Path(summary.tracking_uri.removeprefix("sqlite:///")).parent / "optuna.db"  # next to mlflow.db
    assert summary.study.startswith("iakd-digits-") and summary.optuna_storage == f"sqlite:///{beside}"
    completed = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    searched = {r.info.run_id: r for r in runs if r.data.tags.get("iakd.role") == "search"}
    assert len(completed) == len(searched) == 3  # every searched trial, once
    for trial in completed:
        run = searched[trial.user_attrs["mlflow_run_id"]]
        assert trial.user_attrs["tune_trial_id"] == run.data.tags["iakd.trial_id"]
        assert trial.params and {k: run.data.params[k] for k in trial.params} == {
            k: str(v) for k, v in trial.params.items()}  # the values the MLflow run trained with
    assert f"Browse the Optuna study {summary.study!r}: optuna-dashboard {summary.optuna_storage}" in text


def test_the_search_experiment_opens_as_model_development_in_the_ui(sweep):
    summary, _, client, _ = sweep
    experiment = client.get_experiment(summary.experiment_id)
    assert experiment.name == "iakd-digits"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_parent_run_holds_the_report_and_its_plots(sweep):
    summary, _, client, _ = sweep
    parent = client.get_run(summary.parent_run_id)
    assert parent.data.tags["iakd.analysis"] == "done"
    logged = {a.path for a in client.list_artifacts(summary.parent_run_id, "analysis")}
    assert {"analysis/report.md", "analysis/runs.parquet", "analysis/epochs.parquet",
            "analysis/confirmation.png"} <= logged


def test_the_report_of_a_finished_sweep_says_it_finished(sweep, tmp_path):
    """The report is written once the parent run is closed, so it describes the sweep as it ended: not
    'Provisional: this sweep has not ended'."""
    summary, _, client, _ = sweep
    assert client.get_run(summary.parent_run_id).info.status == "FINISHED"
    report = Path(client.download_artifacts(summary.parent_run_id, "analysis/report.md", str(tmp_path))).read_text()
    assert report.startswith("# ") and "Provisional" not in report
    assert "Confirmed on seeds" in report or "confirm" in report.lower()


def test_child_runs_hold_params_tags_and_per_epoch_histories(sweep):
    summary, _, client, runs = sweep
    for run in (r for r in runs if r.data.tags.get("iakd.role") == "search"):
        params, tags = run.data.params, run.data.tags
        assert params["student.arch"] == "resnet14" and params["teacher.arch"] == "resnet20"
        assert params["optim.epochs"] == str(EPOCHS) and params["data.name"] == "digits"
        assert params["schedule.family"] == tags["schedule_family"]
        assert {"teacher", "student", "dataset", "method", "schedule_family", "granularity", "iakd.trial_id",
                "node"} <= set(tags)
        # resnet14 has 2 blocks per stage: k = 2 is "block", so the space holds stage and block only
        assert tags["method"] in ("iakd", "iakd+kd") and tags["granularity"] in ("stage", "block")
        epochs = int(run.data.metrics["epochs"])
        for key in ("train_loss", "swap_prob", "lr"):  # every epoch, in one MLflow call with the evaluated one
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, epochs + 1))
        evaluated = [e for e in range(1, epochs + 1) if e % EVERY == 0 or e == EPOCHS]
        for key in ("val_acc", "test_acc"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == evaluated
        val = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_acc")}
        # judged after the handover only: the epochs that began with the schedule ended (a warm-up has p = 0 too)
        handed = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "handed_over")}
        assert sorted(handed) == list(range(1, epochs + 1))
        judged = [val[e] for e in sorted(val) if handed[e] == 1.0] or [val[max(val)]]
        assert run.data.metrics["best_val_acc"] == max(judged)
        assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_trials_read_the_teacher_published_under_the_storage_uri_through_a_node_local_copy(sweep):
    _, _, _, runs = sweep
    roles = ("search", "baseline")
    shared = {r.data.params["teacher.checkpoint"] for r in runs if r.data.tags.get("iakd.role") in roles}
    (uri,) = shared
    assert uri.startswith("file://") and "/store/teachers/digits-resnet20-" in uri and storage.exists(uri)
    tmp = Path(uri.removeprefix("file://")).parents[2]
    (copy,) = (tmp / "node" / "iakd-shared").iterdir()
    assert copy.read_bytes() == Path(uri.removeprefix("file://")).read_bytes()
    assert (tmp / "driver" / uri.rsplit("/", 1)[-1]).is_file()  # the driver's own cache


def test_finished_trials_log_their_student_weights_and_training_log(sweep, tmp_path):
    summary, _, client, runs = sweep
    complete = [r for r in runs if r.data.tags.get("status") == "finished"]
    assert complete  # at least the baselines and the best trial run to the end
    for run in complete:
        assert {"student.pt", "train.log"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    log = Path(client.download_artifacts(complete[0].info.run_id, "train.log", str(tmp_path))).read_text()
    assert [line.split()[1] for line in log.splitlines() if line.startswith("epoch")] == [
        f"{e}/{EPOCHS}" for e in range(1, EPOCHS + 1)]


def test_summary_names_the_best_trial_beside_the_baselines(sweep):
    summary, text, _, _ = sweep
    assert summary.best.score == max(t.score for t in summary.trials)
    assert f"Best trial {summary.best.name}" in text
    assert "ce (seed 1)" in text and "kd (seed 3)" in text
    assert "best val_acc" in text and "last test_acc" in text  # the columns say which metric they hold
    assert f"mlflow ui --backend-store-uri {summary.tracking_uri}" in text
    # the link opens the runs table (MLflow 3's UI would land on its GenAI overview otherwise)
    assert f"/#/experiments/{summary.experiment_id}/runs?workflowType=machine_learning" in text


def _search_main():
    spec = importlib.util.spec_from_file_location("search_script", ROOT / "tune" / "search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize(
    "args, message",
    [
        (["num_samples=0"], "error: num_samples: 0 is not allowed; must be >= 1"),
        (["run.schedule.p0=2"], "error: run.schedule.p0: 2.0 is outside [0, 1]"),
        (["run.optim.lrr=0.1"], "error: run.optim.lrr: unknown key; did you mean 'lr'?"),
        (["run.method.granularity=4"], "error: run.method.granularity: 4 is impossible for resnet20 -> resnet8: "
                                       "stage 0 has 1 student and 3 teacher blocks, fewer than the 4 units asked for"),
        (["run.student.arch=vgg8"], "error: run.student.arch: 'vgg8' has 5 stages and teacher.arch 'resnet20' 3; "
                                    "swapping needs the same number"),
        (["run.method.kd_weight=0.3"], "error: run.method.kd_weight: 0.3 is not allowed; method.name=iakd has no KD "
                                       "term; use method.name=iakd+kd to add one, or leave method.kd_weight unset"),
        (["numsamples"], "error: override 'numsamples': expected key=value, e.g. schedule.p0=0.3"),
        (["metric=test_acc"], "error: metric: 'test_acc' is not allowed; one of val_acc (selecting on the test "
                              "split would report a biased test score)"),
        (["--config", "missing.yaml"], "error: config file missing.yaml not found"),
    ],
)
def test_bad_config_fails_before_ray_starts(args, message, tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.chdir(tmp_path)
    assert _search_main()([*args, f"storage_path={tmp_path}/ray"]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not ray.is_initialized()
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()


def test_command_line_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tune" / "search.py"), "run.schedule.family=sawtooth"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: run.schedule.family: 'sawtooth' is unknown; known: constant, linear, cosine, exponential, step"]
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_whose_every_searched_trial_diverges_fails_with_one_line(tmp_path):
    """Every searched trial diverges at its first epoch (lr 1e12, searched: the teacher trains with the base lr):
    exit 1 and one line saying so, the parent run FAILED with that line, each trial's run FAILED as diverged and
    each Optuna trial FAIL (Optuna refuses a NaN value; told without one)."""
    import optuna
    from mlflow.tracking import MlflowClient
    from search_process import Search, search_env

    args = ["num_samples=2", "run.optim.epochs=2", "run.teacher.epochs=1", "run.data.image_size=8", "confirm.top_k=0",
            "baselines.methods=[]", "space.optim.lr=[1.0e12]", "scheduler.name=none"]
    with search_env() as env:
        search = Search(tmp_path, "diverged", args, env)
        assert search.wait(300) == 1, search.tail()
    message = "error: no searched trial of 2 finished (2 diverged), so nothing is ranked or confirmed"
    assert search.err.read_text().strip().splitlines()[-1] == message
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("iakd-digits").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("iakd.role") == "sweep"]
    assert parent.info.status == "FAILED" and parent.data.tags["iakd.error"] == f"RunError: {message[7:]}"
    trials = [r for r in runs if r.data.tags.get("iakd.role") == "search"]
    assert [(r.info.status, r.data.tags["status"]) for r in trials] == [("FAILED", "diverged")] * 2
    (name,) = optuna.get_all_study_names(f"sqlite:///{tmp_path}/optuna.db")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.FAIL] * 2


_OPEN_STUDY = """
import sys, tempfile, time
from pathlib import Path
import optuna
from iakd.search.study import LinkedOptunaSearch
url, name, go = sys.argv[1:]
optuna.storages.RDBStorage(f"sqlite:///{tempfile.mkdtemp(dir='.')}/warm.db")  # SQLAlchemy's and alembic's first use
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.002)
LinkedOptunaSearch(space=lambda trial: trial.suggest_float("p0", 0.0, 1.0), metric="val_acc", mode="max",
                   storage=url, study_name=name, tracking_uri="sqlite:///unused.db", parent_run_id="p")
"""


def test_sweeps_that_start_together_share_a_fresh_optuna_database(tmp_path):
    """Sweeps of three experiments started at once in one folder open one fresh optuna.db (the default beside
    mlflow.db), each for its own study: the tables are made once, under the folder's lock, and no sweep fails
    ("table studies already exists" or a UNIQUE constraint on alembic_version without it)."""
    import optuna

    url, go = f"sqlite:///{tmp_path / 'store' / 'optuna.db'}", tmp_path / "go"
    names = [f"exp{i}-0123456789ab" for i in range(3)]
    children = [subprocess.Popen([sys.executable, "-c", _OPEN_STUDY, url, name, str(go)], cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={
                                     **os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
                for name in names]
    for child in children:  # each has imported and warmed up Ray and Optuna: they open the store at one moment
        assert child.stdout.readline() == "ready\n", child.communicate()[1]
    go.touch()
    errors = [child.communicate(timeout=120)[1] for child in children]
    assert [child.returncode for child in children] == [0, 0, 0], errors
    assert sorted(optuna.get_all_study_names(url)) == names
    assert {optuna.load_study(study_name=n, storage=url).metric_names[0] for n in names} == {"val_acc"}
