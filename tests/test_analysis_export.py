"""iakd.analysis.export: a sweep built through the MLflow API on sqlite comes out as two Parquet tables.

The sweep (``build_sweep``, also used by the report tests) holds search trials of every outcome (finished,
stopped early by ASHA or by a callback, failed, diverged, killed, still running), runs logged before
``images_seen``/``train_seconds`` existed, CE and KD baselines on two seeds, and a confirmation stage (two
candidates, KD and CE on three seeds), under the newest of two parent runs.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from iakd import tracking
from iakd.analysis import export
from iakd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "iakd-analysis-test"
EMPTY_EXPERIMENT = "iakd-analysis-empty"  # a sweep whose only trial failed
T0 = 1_700_000_000_000  # ms; runs start one second apart, in the order they are listed
IMAGES_PER_SECOND = 500.0
CONFIRM_SEEDS = (100, 101, 102)
CONFIRM_TEST = {"search_s3": [92.0, 93.0, 94.0], "search_s2": [91.0, 91.5, 93.5], "kd": [90.0, 91.0, 92.5],
                "ce": [85.0, 86.5, 86.0]}


@dataclass
class RunSpec:
    """One child run to log, and what its row of ``runs.parquet`` must say."""

    name: str
    role: str
    method: str
    val: list[float]
    status: str = "FINISHED"  # MLflow status
    status_tag: str | None = "finished"
    schedule: dict[str, Any] = field(default_factory=lambda: {"family": "linear", "p0": 0.5, "t_end": 0.8})
    granularity: str = "stage"
    kd_weight: str = "None"  # as the search logs it
    seed: int = 0
    candidate: str | None = None
    new_style: bool = True  # logs images_seen / train_seconds itself
    test: list[float] | None = None
    init: str | None = None  # student.init, logged where given (runs from before the key have none)
    expected: dict[str, Any] = field(default_factory=dict)

    def tests(self) -> list[float]:
        return self.test if self.test is not None else [v - 1.0 if not math.isnan(v) else v for v in self.val]

    def epoch_seconds(self, epoch: int) -> float:
        return 2.0 + 0.25 * epoch


def _search() -> list[RunSpec]:
    sched = lambda family, p0, t_end, **extra: {"family": family, "p0": p0, "t_end": t_end, **extra}  # noqa: E731
    return [
        RunSpec("search_s1", "search", "iakd", [70, 80, 88, 90], schedule=sched("linear", 0.5, 0.8),
                expected=dict(outcome="finished", kd_weight=0.0, profile="uniform")),
        RunSpec("search_s2", "search", "iakd+kd", [72, 84, 91, 92.5], new_style=False, granularity="block",
                schedule=sched("cosine", 0.7, 0.6, profile="shallow-first"),
                expected=dict(outcome="finished", kd_weight=0.9, profile="shallow-first")),
        RunSpec("search_s3", "search", "iakd+kd", [75, 85, 90, 93], granularity="2", kd_weight="0.3",
                schedule=sched("exponential", 0.9, 0.5, rate=2.0, profile="deep-first"),
                expected=dict(outcome="finished", kd_weight=0.3, rate=2.0, profile="deep-first")),
        RunSpec("search_s4", "search", "iakd", [60, 70], status_tag="stopped_early",
                schedule=sched("step", 0.6, 1.0, interval=0.2),
                expected=dict(outcome="stopped_early", stopped_early=True, kd_weight=0.0, interval=0.2)),
        RunSpec("search_s5", "search", "iakd", [65, 78, 85, 86], new_style=False, granularity="block",
                schedule=sched("constant", 0.3, 0.7), expected=dict(outcome="finished", kd_weight=0.0)),
        RunSpec("search_s6", "search", "iakd+kd", [50], status="FAILED", status_tag="error", kd_weight="0.5",
                granularity="block", schedule=sched("linear", 0.8, 0.4, profile="deep-first"),
                expected=dict(outcome="error", kd_weight=0.5, profile="deep-first")),
        RunSpec("search_s7", "search", "iakd", [55], status="RUNNING", status_tag=None,
                schedule=sched("cosine", 0.4, 0.9), expected=dict(outcome="unfinished", kd_weight=0.0)),
        RunSpec("search_s8", "search", "iakd", [math.nan, math.nan], status="FAILED", status_tag="diverged",
                granularity="block", schedule=sched("exponential", 1.0, 0.3),  # no rate: the family's default
                expected=dict(outcome="diverged", kd_weight=0.0, rate=5.0, best_val_acc=-math.inf)),
        RunSpec("search_s9", "search", "iakd", [62, 75], status="KILLED", status_tag=None, granularity="2",
                schedule=sched("linear", 0.2, 1.0, profile="shallow-first"),
                expected=dict(outcome="killed", kd_weight=0.0, profile="shallow-first")),
        RunSpec("search_s10", "search", "iakd", [68, 74], status_tag="stopped",  # the engine's own word
                schedule=sched("cosine", 0.55, 0.75, profile="deep-first"),
                expected=dict(outcome="stopped_early", stopped_early=True, kd_weight=0.0, profile="deep-first")),
        RunSpec("search_s11", "search", "iakd", [71, 83, 89, 91], granularity="block",
                schedule=sched("linear", 0.65, 0.85), expected=dict(outcome="finished", kd_weight=0.0)),
    ]


def _baselines() -> list[RunSpec]:
    curves = {("ce", 0): [60, 75, 84, 86], ("ce", 1): [61, 74, 85, 87.5],
              ("kd", 0): [66, 80, 88, 90.5], ("kd", 1): [65, 81, 87, 89.5]}
    return [RunSpec(f"baseline_{method}_{seed}", "baseline", method, val, seed=seed,
                    expected=dict(outcome="finished", kd_weight=0.9 if method == "kd" else None))
            for (method, seed), val in curves.items()]


def _confirm(search: list[RunSpec]) -> list[RunSpec]:
    by_name = {spec.name: spec for spec in search}
    runs = []
    for candidate, tests in CONFIRM_TEST.items():
        for seed, test in zip(CONFIRM_SEEDS, tests):
            source = by_name.get(candidate)
            method = source.method if source else candidate
            spec = RunSpec(f"confirm_{candidate}_{seed}", "confirm", method, [test - 4.5, test + 0.5], seed=seed,
                           test=[test - 5.0, test], candidate=candidate,
                           schedule=source.schedule if source else {"family": "linear", "p0": 0.5, "t_end": 0.8},
                           granularity=source.granularity if source else "stage",
                           kd_weight=source.kd_weight if source else "None",
                           expected=dict(outcome="finished"))
            spec.expected["kd_weight"] = source.expected["kd_weight"] if source else (0.9 if method == "kd" else None)
            runs.append(spec)
    return runs


@dataclass
class Built:
    uri: str
    parent: str  # the newest sweep parent: the one read by experiment name
    old_parent: str  # an earlier sweep of the same experiment: one finished search trial, no confirmation
    empty_parent: str  # EMPTY_EXPERIMENT's parent: its only trial failed
    specs: list[RunSpec]
    old_specs: list[RunSpec]
    run_ids: dict[str, str]  # run name -> id


def _log(client: MlflowClient, experiment_id: str, parent: str, spec: RunSpec, start: int) -> str:
    swaps = spec.method.startswith("iakd")
    tags = {"mlflow.parentRunId": parent, "iakd.role": spec.role, "method": spec.method, "teacher": "resnet32",
            "student": "resnet14", "dataset": "digits", "iakd.trial_id": spec.name,
            "schedule_family": spec.schedule["family"] if swaps else "none",
            "granularity": spec.granularity if swaps else "none"}
    if spec.candidate is not None:
        tags["iakd.candidate"] = spec.candidate
    if spec.status_tag is not None:
        tags["status"] = spec.status_tag
    run_id = client.create_run(experiment_id, start_time=start, tags=tags, run_name=spec.name).info.run_id
    params = {"method.name": spec.method, "method.granularity": spec.granularity, "method.kd_weight": spec.kd_weight,
              "seed": str(spec.seed), "optim.epochs": "4", "teacher.arch": "resnet32", "student.arch": "resnet14",
              "data.name": "digits", **{f"schedule.{k}": str(v) for k, v in spec.schedule.items()}}
    if spec.init is not None:
        params["student.init"] = spec.init
    metrics: list[Metric] = []
    seconds = images = 0.0
    best = -math.inf
    for epoch, (val, test) in enumerate(zip(spec.val, spec.tests()), start=1):
        seconds += spec.epoch_seconds(epoch)
        images += round(spec.epoch_seconds(epoch) * IMAGES_PER_SECOND)
        best = best if math.isnan(val) else max(best, val)
        values = {"epoch": epoch, "train_loss": 1.0 / epoch, "loss_ce": 0.5 / epoch, "train_acc": val - 2.0,
                  "val_acc": val, "test_acc": test, "lr": 0.05, "swap_prob": 0.5 if swaps else 0.0,
                  "swap_rate": 0.25 if swaps else 0.0, "epoch_seconds": spec.epoch_seconds(epoch),
                  "images_per_second": IMAGES_PER_SECOND}
        if spec.method in ("kd", "iakd+kd"):
            values["loss_kd"] = 0.25 / epoch
        if spec.new_style:
            values.update(images_seen=1000.0 * epoch, train_seconds=3.0 * epoch)
        metrics += [Metric(k, float(v), start + epoch, epoch) for k, v in values.items()]
    metrics += [Metric(k, float(v), start + 99, 0) for k, v in {
        "best_val_acc": best, "last_val_acc": spec.val[-1], "last_test_acc": spec.tests()[-1],
        "epochs": len(spec.val)}.items()]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    if spec.status != "RUNNING":
        client.set_terminated(run_id, status=spec.status, end_time=start + 500)
    return run_id


def build_sweep(folder: Path) -> Built:
    """Log the test sweep into ``folder/mlflow.db`` through the MLflow API and return what was logged."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    experiment_id = tracking.connect(uri, EXPERIMENT)  # also gives the experiment an artifact folder
    client = MlflowClient(tracking_uri=uri)
    sweep_tags = {"iakd.role": "sweep", "iakd.sweep": EXPERIMENT}
    old_parent = client.create_run(experiment_id, start_time=T0 - 10_000_000, tags=sweep_tags,
                                   run_name=f"sweep-{EXPERIMENT}").info.run_id
    old_specs = [RunSpec("old_trial", "search", "iakd", [50, 60], expected=dict(outcome="finished"))]
    run_ids = {"old_trial": _log(client, experiment_id, old_parent, old_specs[0], T0 - 9_000_000)}
    client.set_terminated(old_parent, "FINISHED")
    parent = client.create_run(experiment_id, start_time=T0, tags=sweep_tags,
                               run_name=f"sweep-{EXPERIMENT}").info.run_id
    search = _search()
    specs = _baselines() + search + _confirm(search)
    for index, spec in enumerate(specs, start=1):
        run_ids[spec.name] = _log(client, experiment_id, parent, spec, T0 + 1000 * index)
    client.set_terminated(parent, "FINISHED")

    empty_id = tracking.connect(uri, EMPTY_EXPERIMENT)
    empty_parent = client.create_run(empty_id, start_time=T0, run_name="sweep-empty",
                                     tags={"iakd.role": "sweep", "iakd.sweep": EMPTY_EXPERIMENT}).info.run_id
    _log(client, empty_id, empty_parent, RunSpec("failed", "search", "iakd", [10], status="FAILED", status_tag="error"),
         T0 + 1000)
    client.log_batch(empty_parent, tags=[RunTag("note", "only a failed trial")])
    return Built(uri, parent, old_parent, empty_parent, specs, old_specs, run_ids)


def expected_row(spec: RunSpec, run_id: str, parent: str) -> dict[str, Any]:
    """The row of ``runs.parquet`` that ``spec`` must produce."""
    swaps = spec.method.startswith("iakd")
    family = spec.schedule["family"]
    images = (1000 * len(spec.val) if spec.new_style
              else sum(round(spec.epoch_seconds(e) * IMAGES_PER_SECOND) for e in range(1, len(spec.val) + 1)))
    seconds = (3.0 * len(spec.val) if spec.new_style
               else sum(spec.epoch_seconds(e) for e in range(1, len(spec.val) + 1)))
    finite = [v for v in spec.val if not math.isnan(v)]
    row = {
        "run_id": run_id, "parent_run_id": parent, "run_name": spec.name, "status": spec.status,
        "stopped_early": False, "role": spec.role, "candidate": spec.candidate, "method": spec.method,
        "teacher": "resnet32", "student": "resnet14", "dataset": "digits",
        "schedule_family": family if swaps else None,
        "p0": spec.schedule["p0"] if swaps else None, "t_end": spec.schedule["t_end"] if swaps else None,
        "rate": spec.schedule.get("rate", 5.0) if swaps and family == "exponential" else None,
        "interval": spec.schedule.get("interval", 0.25) if swaps and family == "step" else None,
        "profile": spec.schedule.get("profile", "uniform") if swaps else None,
        "granularity": spec.granularity if swaps else None,
        "teacher_bn": "frozen" if swaps else None,  # not logged by these runs: the default
        # the levers, not logged by these runs either: today's IAKD
        "init": "scratch", "t_start": 0.0 if swaps else None, "mixing": "bernoulli" if swaps else None,
        "hybrid_weight": 0.0 if swaps else None, "kd_on": "hybrid" if spec.method == "iakd+kd" else None,
        # the swapping runs log p = 0.5 at every epoch (never handed over); the others are judged from epoch 1
        "judged_from_epoch": None if swaps or not spec.val else 1,
        "seed": spec.seed, "best_val_acc": max(finite) if finite else -math.inf, "last_val_acc": spec.val[-1],
        "last_test_acc": spec.tests()[-1], "epochs": len(spec.val), "train_seconds": seconds, "images_seen": images,
    }
    row.update(spec.expected)
    return row


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_sweep(tmp_path_factory.mktemp("analysis_store"))


@pytest.fixture(scope="module")
def written(built: Built, tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, pa.Table]:
    out = tmp_path_factory.mktemp("analysis_export")
    export.export(built.uri, EXPERIMENT, out_dir=out)
    return pq.read_table(out / "runs.parquet"), pq.read_table(out / "epochs.parquet")


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, float) and isinstance(actual, float):
        return (math.isnan(expected) and math.isnan(actual)) or actual == pytest.approx(expected, rel=1e-12)
    return actual == expected


# ----------------------------------------------------------------------------------------------- runs


def test_runs_parquet_has_the_declared_schema(written):
    runs, _ = written
    assert runs.schema.equals(export.RUNS_SCHEMA)
    assert runs.column_names == [
        "run_id", "parent_run_id", "run_name", "status", "outcome", "stopped_early", "role", "candidate", "method",
        "teacher", "student", "dataset", "schedule_family", "p0", "t_end", "rate", "interval", "profile",
        "granularity", "kd_weight", "seed", "teacher_bn", "init", "t_start", "mixing", "hybrid_weight", "kd_on",
        "best_val_acc", "judged_from_epoch", "last_val_acc", "last_test_acc", "epochs", "train_seconds",
        "images_seen"]
    types = {f.name: f.type for f in runs.schema}
    assert types["stopped_early"] == pa.bool_() and types["seed"] == pa.int64() and types["epochs"] == pa.int64()
    assert types["images_seen"] == pa.int64() and types["p0"] == pa.float64() and types["granularity"] == pa.string()
    # runs logged before the levers existed (no student.init, method.mixing... params) read as today's IAKD
    rows = runs.to_pylist()
    assert {r["init"] for r in rows} == {"scratch"}
    swapping = [r for r in rows if r["method"] in ("iakd", "iakd+kd")]
    assert swapping and all(r["mixing"] == "bernoulli" and r["hybrid_weight"] == 0.0 and r["t_start"] == 0.0
                            for r in swapping)
    assert all(r["mixing"] is None and r["kd_on"] is None for r in rows if r["method"] in ("ce", "kd"))
    assert all(r["kd_on"] == "hybrid" for r in rows if r["method"] == "iakd+kd")


def test_runs_parquet_has_one_row_per_child_of_the_newest_parent_in_start_order(built, written):
    runs, _ = written
    assert runs.column("run_name").to_pylist() == [spec.name for spec in built.specs]
    assert set(runs.column("parent_run_id").to_pylist()) == {built.parent}


def test_every_runs_row_holds_the_logged_values(built, written):
    runs, _ = written
    rows = {row["run_name"]: row for row in runs.to_pylist()}
    for spec in built.specs:
        expected = expected_row(spec, built.run_ids[spec.name], built.parent)
        actual = rows[spec.name]
        assert actual.keys() == expected.keys()
        wrong = {k: (actual[k], expected[k]) for k in expected if not _same(actual[k], expected[k])}
        assert not wrong, f"{spec.name}: {wrong}"


def test_failed_diverged_killed_and_running_runs_are_kept_and_marked(written):
    runs, _ = written
    outcome = dict(zip(runs.column("run_name").to_pylist(), runs.column("outcome").to_pylist()))
    status = dict(zip(runs.column("run_name").to_pylist(), runs.column("status").to_pylist()))
    assert (outcome["search_s6"], status["search_s6"]) == ("error", "FAILED")
    assert (outcome["search_s7"], status["search_s7"]) == ("unfinished", "RUNNING")
    assert (outcome["search_s8"], status["search_s8"]) == ("diverged", "FAILED")
    assert (outcome["search_s9"], status["search_s9"]) == ("killed", "KILLED")
    assert (outcome["search_s4"], outcome["search_s10"]) == ("stopped_early", "stopped_early")


def test_usable_keeps_finished_and_stopped_runs_with_finite_scores_and_counts_the_rest(written):
    runs, _ = written
    kept = export.usable(runs)
    assert "search_s8" not in set(kept["run_name"]) and "search_s4" in set(kept["run_name"])
    assert len(kept) == runs.num_rows - 4
    assert export.exclusions(runs) == {"error": 1, "unfinished": 1, "diverged": 1, "killed": 1}


def test_confirm_runs_carry_their_candidate(written):
    runs, _ = written
    confirm = [r for r in runs.to_pylist() if r["role"] == "confirm"]
    assert len(confirm) == 12
    assert {r["candidate"] for r in confirm} == {"search_s3", "search_s2", "kd", "ce"}
    by = {(r["candidate"], r["seed"]): r["last_test_acc"] for r in confirm}
    assert by[("search_s3", 101)] == 93.0 and by[("ce", 102)] == 86.0


# --------------------------------------------------------------------------------------------- epochs


def test_epochs_parquet_has_the_declared_schema_with_float_metrics(written):
    _, epochs = written
    assert epochs.schema.equals(export.EPOCHS_SCHEMA)
    assert epochs.column_names == ["run_id", "epoch", *export.EPOCH_METRICS]
    assert epochs.schema.field("epoch").type == pa.int64()
    assert all(epochs.schema.field(name).type == pa.float64() for name in export.EPOCH_METRICS)


def test_epochs_parquet_has_one_row_per_run_and_logged_epoch(built, written):
    _, epochs = written
    expected = [(built.run_ids[spec.name], epoch) for spec in built.specs for epoch in range(1, len(spec.val) + 1)]
    assert list(zip(epochs.column("run_id").to_pylist(), epochs.column("epoch").to_pylist())) == expected


def test_epochs_of_an_old_run_get_cumulative_seconds_and_images_from_per_epoch_figures(built, written):
    _, epochs = written
    rows = [r for r in epochs.to_pylist() if r["run_id"] == built.run_ids["search_s2"]]
    seconds = [2.25, 2.5, 2.75, 3.0]
    assert [r["epoch_seconds"] for r in rows] == seconds
    assert [r["train_seconds"] for r in rows] == pytest.approx([2.25, 4.75, 7.5, 10.5])
    assert [r["images_seen"] for r in rows] == [1125.0, 2375.0, 3750.0, 5250.0]
    assert [r["val_acc"] for r in rows] == [72, 84, 91, 92.5]
    assert [r["loss_kd"] for r in rows] == pytest.approx([0.25, 0.125, 0.25 / 3, 0.0625])


def test_epochs_of_a_new_run_keep_the_logged_cumulative_figures_and_null_for_absent_metrics(built, written):
    _, epochs = written
    rows = [r for r in epochs.to_pylist() if r["run_id"] == built.run_ids["search_s1"]]
    assert [r["images_seen"] for r in rows] == [1000.0, 2000.0, 3000.0, 4000.0]
    assert [r["train_seconds"] for r in rows] == [3.0, 6.0, 9.0, 12.0]
    assert [r["loss_kd"] for r in rows] == [None] * 4  # iakd without a KD term never logs it


def test_a_diverged_run_keeps_its_nan_epochs(built, written):
    _, epochs = written
    rows = [r for r in epochs.to_pylist() if r["run_id"] == built.run_ids["search_s8"]]
    assert len(rows) == 2 and all(math.isnan(r["val_acc"]) for r in rows)


# ---------------------------------------------------------------------------------------- selecting


def test_a_parent_run_id_selects_an_older_sweep(built):
    sweep = export.load_sweep(built.uri, parent_run_id=built.old_parent)
    assert sweep.experiment == EXPERIMENT and sweep.parent_run_id == built.old_parent
    assert sweep.runs.column("run_name").to_pylist() == ["old_trial"]
    assert sweep.epochs.num_rows == 2


def test_a_parent_run_of_another_experiment_is_refused(built):
    with pytest.raises(ConfigError, match=f"belongs to experiment '{EXPERIMENT}', not 'other'"):
        export.load_sweep(built.uri, "other", parent_run_id=built.parent)


def test_every_result_page_is_read(built, monkeypatch):
    monkeypatch.setattr(tracking.runs, "_PAGE_SIZE", 4)
    sweep = export.load_sweep(built.uri, EXPERIMENT)
    assert sweep.runs.num_rows == len(built.specs)


def test_a_missing_experiment_is_a_config_error(built):
    with pytest.raises(ConfigError, match="experiment 'nope' not found"):
        export.load_sweep(built.uri, "nope")


def test_a_missing_parent_run_is_a_config_error(built):
    with pytest.raises(ConfigError, match="parent run 'f00' not found"):
        export.load_sweep(built.uri, parent_run_id="f00")


def test_a_missing_database_is_an_error_and_is_not_created(tmp_path):
    with pytest.raises(ConfigError, match="no MLflow database"):
        export.load_sweep(f"sqlite:///{tmp_path / 'absent.db'}", EXPERIMENT)
    assert not (tmp_path / "absent.db").exists()


def test_export_cli_writes_both_tables(built, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "analysis" / "export.py"), "--tracking-uri", built.uri,
                             "--experiment", EXPERIMENT, "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert pq.read_table(tmp_path / "runs.parquet").num_rows == len(built.specs)
    assert pq.read_table(tmp_path / "epochs.parquet").num_rows == sum(len(s.val) for s in built.specs)


def test_export_cli_on_a_missing_experiment_exits_2_with_one_line(built, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "analysis" / "export.py"), "--tracking-uri", built.uri,
                             "--experiment", "nope", "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: experiment 'nope' not found at {built.uri}"]
