"""iakd.tracking against a real MLflow sqlite store in tmp_path (MLflow 3 has no file store for tracking)."""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from iakd import tracking
from iakd.errors import ConfigError
from iakd.tracking import TrialRun

EXPERIMENT = "iakd-test"


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated MLflow database: creating one takes seconds, copying it milliseconds."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}")  # building the store creates the tables
    return path


@pytest.fixture
def uri(tmp_path: Path, migrated_db: Path) -> str:
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(migrated_db, store / "mlflow.db")
    return f"sqlite:///{store / 'mlflow.db'}"


@pytest.fixture
def client(uri: str) -> MlflowClient:
    tracking.connect(uri, EXPERIMENT)
    return MlflowClient(tracking_uri=uri)


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _trial(uri: str, parent: str, name: str, **kwargs) -> TrialRun:
    return TrialRun(uri, EXPERIMENT, parent_run_id=parent, run_name=name, **kwargs)


def test_three_trials_nest_under_the_parent_with_flat_params_and_metric_history(uri, client):
    parent = tracking.start_parent_run(uri, EXPERIMENT, "sweep", params={"budget": 3}, tags={"stage": "test"})
    trials = []
    for index in range(3):
        trial = _trial(uri, parent, f"trial_{index}", params={"schedule": {"family": "linear", "p0": 0.3}})
        for epoch in range(3):
            trial.log_metrics({"val_acc": index + epoch / 10, "note": "text is skipped"}, step=epoch)
        trial.finish()
        trials.append(trial)

    children = {run.info.run_id: run for run in tracking.child_runs(uri, parent)}
    assert set(children) == {trial.run_id for trial in trials}
    for index, trial in enumerate(trials):
        run = children[trial.run_id]
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.info.run_name == f"trial_{index}"
        assert run.data.params == {"schedule.family": "linear", "schedule.p0": "0.3"}
        assert run.info.status == "FINISHED"
        assert "note" not in run.data.metrics
        assert _history(client, trial.run_id, "val_acc") == [(e, index + e / 10) for e in range(3)]
    assert client.get_run(parent).data.params == {"budget": "3"}


def test_continuing_a_trial_run_by_id_appends_to_the_same_run(uri, client):
    parent = tracking.start_parent_run(uri, EXPERIMENT, "sweep")
    first = _trial(uri, parent, "trial_0", params={"lr": 0.1})
    first.log_metrics({"val_acc": 0.5}, step=0)
    first.log_metrics({"val_acc": 0.6}, step=1)
    # The worker dies here; the restored trial continues from its checkpoint, with a changed param
    # value that MLflow would refuse if it were logged again.
    resumed = _trial(uri, parent, "trial_0", params={"lr": 0.2}, run_id=first.run_id)
    assert client.get_run(first.run_id).info.status == "RUNNING"
    resumed.log_metrics({"val_acc": 0.7}, step=2)
    resumed.finish()

    assert resumed.run_id == first.run_id
    assert [run.info.run_id for run in tracking.child_runs(uri, parent)] == [first.run_id]
    assert _history(client, first.run_id, "val_acc") == [(0, 0.5), (1, 0.6), (2, 0.7)]
    assert client.get_run(first.run_id).data.params == {"lr": "0.1"}


def test_finish_parent_run_kills_open_children_and_keeps_finished_ones(uri, client):
    parent = tracking.start_parent_run(uri, EXPERIMENT, "sweep")
    done = _trial(uri, parent, "done")
    done.finish()
    failed = _trial(uri, parent, "failed")
    failed.finish("FAILED")
    stopped = _trial(uri, parent, "stopped_by_scheduler")  # never finished by its trainable

    tracking.finish_parent_run(uri, parent, metrics={"best_val_acc": 0.9}, tags={"best_trial": "done"})

    statuses = {run.info.run_name: run.info.status for run in tracking.child_runs(uri, parent)}
    assert statuses == {"done": "FINISHED", "failed": "FAILED", "stopped_by_scheduler": "KILLED"}
    assert client.get_run(stopped.run_id).info.end_time is not None
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.metrics == {"best_val_acc": 0.9}
    assert parent_run.data.tags["best_trial"] == "done"


def test_start_parent_run_with_run_id_reopens_the_same_parent(uri, client):
    parent = tracking.start_parent_run(uri, EXPERIMENT, "sweep", params={"seed": 0})
    tracking.finish_parent_run(uri, parent, status="KILLED")  # the driver was interrupted

    reopened = tracking.start_parent_run(
        uri, EXPERIMENT, "sweep", params={"seed": 1}, tags={"resumed": "yes"}, run_id=parent
    )

    assert reopened == parent
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert [run.info.run_id for run in client.search_runs([experiment_id])] == [parent]
    run = client.get_run(parent)
    assert run.info.status == "RUNNING"
    assert run.data.params == {"seed": "0"}
    assert run.data.tags["resumed"] == "yes"


def test_artifacts_land_next_to_the_database_and_nothing_in_the_current_directory(uri, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    weights = tmp_path / "weights.txt"
    weights.write_text("not really weights")

    space = {"p0": [0.1, 0.5]}
    parent = tracking.start_parent_run(uri, EXPERIMENT, "sweep", dicts={"search_space.json": space})
    trial = _trial(uri, parent, "trial_0")
    trial.log_dict({"model": "resnet20", "epochs": 2}, "config.yaml")
    trial.log_artifact(weights, artifact_path="checkpoints")
    trial.finish()

    client = MlflowClient(tracking_uri=uri)
    assert [f.path for f in client.list_artifacts(parent)] == ["search_space.json"]
    assert {f.path for f in client.list_artifacts(trial.run_id)} == {"config.yaml", "checkpoints"}
    assert [f.path for f in client.list_artifacts(trial.run_id, "checkpoints")] == ["checkpoints/weights.txt"]
    experiment_root = tmp_path / "store" / "mlartifacts" / EXPERIMENT
    artifacts = experiment_root / trial.run_id / "artifacts"
    assert (artifacts / "checkpoints" / "weights.txt").read_text() == "not really weights"
    assert "model: resnet20" in (artifacts / "config.yaml").read_text()
    assert json.loads((experiment_root / parent / "artifacts" / "search_space.json").read_text()) == space
    assert list(elsewhere.iterdir()) == []


def test_connect_is_idempotent(uri):
    first = tracking.connect(uri, EXPERIMENT)
    assert tracking.connect(uri, EXPERIMENT) == first
    assert tracking.connect(uri, "another") != first


def test_experiments_open_as_model_development_in_the_mlflow_ui(uri, client):
    """MLflow 3's UI shows an experiment without this tag as a GenAI one (a traces page saying "No data")."""
    experiment_id = tracking.connect(uri, EXPERIMENT)
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("made-elsewhere")  # e.g. by an earlier version of this project
    assert "mlflow.experimentKind" not in client.get_experiment(older).tags
    tracking.connect(uri, "made-elsewhere")
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"


def test_find_child_finds_a_trial_run_by_its_tags_under_its_parent_only(uri, client):
    parent = tracking.start_parent_run(uri, EXPERIMENT, "sweep")
    other_parent = tracking.start_parent_run(uri, EXPERIMENT, "other sweep")
    run = _trial(uri, parent, "trial_a", tags={"iakd.trial_id": "a"})
    _trial(uri, parent, "trial_b", tags={"iakd.trial_id": "b"})
    _trial(uri, other_parent, "trial_a", tags={"iakd.trial_id": "a"})
    assert tracking.find_child(uri, parent, {"iakd.trial_id": "a"}) == run.run_id
    assert tracking.find_child(uri, parent, {"iakd.trial_id": "c"}) is None


def test_connect_reads_the_experiment_another_process_created_first(uri, client, monkeypatch):
    # Against a server two workers can both see "no such experiment"; the loser's create fails with
    # RESOURCE_ALREADY_EXISTS. Replay that: the first look-up misses an experiment that already exists.
    existing = client.get_experiment_by_name(EXPERIMENT).experiment_id
    real_lookup = MlflowClient.get_experiment_by_name
    lookups: list[str] = []

    def lookup_missing_once(self, name):
        lookups.append(name)
        return None if len(lookups) == 1 else real_lookup(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", lookup_missing_once)
    assert tracking.connect(uri, EXPERIMENT) == existing
    assert lookups == [EXPERIMENT, EXPERIMENT]  # missed, create refused, looked up again


def test_connect_from_several_processes_on_a_fresh_database(tmp_path):
    # Without the folder lock, concurrent table creation/migration on a new sqlite file fails
    # ("table metrics already exists"). The folder does not exist yet either: connect creates it.
    # spawn, not fork: by now this pytest process has run Ray and MLflow threads, and a forked child can
    # inherit a lock one of them held and wait on it forever (it did, once, on CI).
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        ids = pool.starmap_async(tracking.connect, [(uri, EXPERIMENT)] * 3).get(timeout=240)
    assert ids == [tracking.connect(uri, EXPERIMENT)] * 3


def test_child_runs_reads_every_page(uri, client, monkeypatch):
    monkeypatch.setattr(tracking.runs, "_PAGE_SIZE", 2)
    parent = tracking.start_parent_run(uri, EXPERIMENT, "sweep")
    ids = {_trial(uri, parent, f"trial_{index}").run_id for index in range(5)}
    _trial(uri, None, "unrelated")
    assert {run.info.run_id for run in tracking.child_runs(uri, parent)} == ids


def test_log_metrics_keeps_numbers_bools_and_nan_and_skips_the_rest(uri, client):
    trial = _trial(uri, None, "trial_0")
    result = {"loss": float("nan"), "acc": 1, "stopped": True, "host": "node-1", "cfg": {}, "x": None}
    trial.log_metrics(result, step=4, final={"best_acc": 0.75})

    metrics = client.get_run(trial.run_id).data.metrics
    assert set(metrics) == {"loss", "acc", "stopped", "best_acc"}
    assert math.isnan(metrics["loss"])
    assert (metrics["acc"], metrics["stopped"], metrics["best_acc"]) == (1.0, 1.0, 0.75)
    assert _history(client, trial.run_id, "acc") == [(4, 1.0)]
    assert _history(client, trial.run_id, "best_acc") == [(0, 0.75)]


def test_flatten_renders_nested_config_as_flat_strings():
    config = {"schedule": {"p0": 0.3, "steps": [0.5, 0.8], "extra": None}, "kd": {}, "seed": 0, "fast": True}
    assert tracking.flatten(config) == {
        "schedule.p0": "0.3",
        "schedule.steps": "[0.5,0.8]",
        "schedule.extra": "None",
        "kd": "{}",
        "seed": "0",
        "fast": "True",
    }
    assert tracking.flatten({"b": 1}, prefix="a.") == {"a.b": "1"}


def test_flatten_truncates_long_values_to_the_param_limit():
    value = tracking.flatten({"long": "x" * 10_000})["long"]
    assert len(value) == tracking.MAX_PARAM_LENGTH
    assert value.endswith("...")


def test_absolute_uri_resolves_relative_sqlite_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.absolute_uri("sqlite:///runs/mlflow.db") == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert tracking.absolute_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert tracking.absolute_uri("http://tracking:5000") == "http://tracking:5000"


def test_a_trial_run_replaced_from_scratch_is_finished_as_killed_before_it_is_deleted(uri, client):
    parent = tracking.start_parent_run(uri, EXPERIMENT, "sweep")
    stale = _trial(uri, parent, "trial_a", tags={"iakd.trial_id": "a"})  # its worker died mid-epoch: still open
    kept = _trial(uri, parent, "trial_b", tags={"iakd.trial_id": "b"})
    assert tracking.delete_children(uri, parent, {"iakd.trial_id": "a"}) == 1
    gone = client.get_run(stale.run_id)
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "KILLED"
    assert client.get_run(kept.run_id).info.status == "RUNNING"  # another trial's run is not touched


def test_a_server_that_does_not_answer_is_one_line_within_seconds():
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"^tracking URI: no MLflow server answers at "
                                         rf"http://127.0.0.1:{port} within 5 s"):
        tracking.mlflow_client(f"http://127.0.0.1:{port}", must_exist=True)
    assert time.monotonic() - started < tracking.TIMEOUT_S + 5


def test_log_steps_writes_many_steps_in_as_few_calls_as_mlflow_takes(uri, client, monkeypatch):
    trial = _trial(uri, None, "trial_0")
    calls = []
    log_batch = trial._client.log_batch
    monkeypatch.setattr(trial._client, "log_batch",
                        lambda *a, **k: calls.append(len(k["metrics"])) or log_batch(*a, **k))
    steps = [({f"m{i}": step + i / 10 for i in range(8)}, step) for step in range(1, 151)]  # 1,200 values
    trial.log_steps(steps, final={"best": 1.0})
    assert calls == [1000, 201]  # MLflow's limit per batch is 1,000 metrics
    assert _history(client, trial.run_id, "m3") == [(s, s + 0.3) for s in range(1, 151)]
    assert _history(client, trial.run_id, "best") == [(0, 1.0)]


def test_epoch_log_writes_the_epochs_since_the_last_flush_with_the_runs_final_figures(uri, client, monkeypatch):
    from iakd.search.trainable import EpochLog

    trial = _trial(uri, None, "trial_0")
    calls = []
    log_batch = trial._client.log_batch
    monkeypatch.setattr(trial._client, "log_batch", lambda *a, **k: calls.append(1) or log_batch(*a, **k))
    # evaluated every 2 epochs; the schedule hands over (p = 0) from epoch 3
    epochs = [{"epoch": e, "train_loss": 1.0 / e, "swap_prob": 0.5 if e < 3 else 0.0,
               **({"val_acc": 50.0 + e, "test_acc": 40.0 + e} if e % 2 == 0 else {})} for e in range(1, 7)]
    log = EpochLog(trial)
    for metrics in epochs[:4]:
        log.record(metrics)
    log.flush()
    assert len(calls) == 1 and _history(client, trial.run_id, "train_loss") == [(e, 1.0 / e) for e in range(1, 5)]
    final = client.get_run(trial.run_id).data.metrics
    assert (final["epochs"], final["best_val_acc"], final["last_test_acc"]) == (4, 54.0, 44.0)
    # A resumed trial: MLflow already holds epochs 1-4; the checkpoint's history is recorded again, only 5-6 written
    resumed = EpochLog(trial, logged=4)
    for metrics in epochs:
        resumed.record(metrics)
    resumed.flush()
    assert _history(client, trial.run_id, "train_loss") == [(e, 1.0 / e) for e in range(1, 7)]
    final = client.get_run(trial.run_id).data.metrics
    assert (final["epochs"], final["best_val_acc"], final["last_val_acc"]) == (6, 56.0, 56.0)
