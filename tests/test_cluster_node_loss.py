"""A worker node lost mid-trial (a spot instance reclaimed, a node that crashes) costs the sweep nothing.

A simulated cluster in cluster.yaml's layout (``ray.cluster_utils.Cluster``: a head without CPUs, two workers of
one CPU and one fake GPU each, shared storage behind a ``file://`` URI as on S3). The sweep is deterministic:
``max_concurrent=1``, no ASHA, fixed seeds. First it runs undisturbed; then the same sweep runs again and, while its
first trial trains, the worker node that trial runs on is killed (all its processes, no graceful shutdown) once
the trial has a checkpoint in shared storage. The trial must continue on the other node from that checkpoint
(``max_failures``), its MLflow run must stay one run holding each epoch once, and the sweep must equal the
undisturbed one exactly: its answer (every trial's configuration and score, the winner), and trial by trial every
per-epoch metric (timings aside) and every weight of the student: the resume is exact by design.

The GCS is told to notice a dead node within seconds (health checks every 500 ms, 3 misses) instead of Ray's
default of about 15 s: the behaviour is the same, the wait shorter.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import time
import traceback
from pathlib import Path

import pytest
from search_process import EVERY_EPOCH

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tune" / "configs" / "digits.yaml"
SAMPLES = 2
EPOCHS = 6
KILL_DEADLINE_S = 300
TIMING = {"epoch_seconds", "images_per_second", "train_seconds"}

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(monkeypatch, tmp_path):
    """Head without trial resources plus two workers with one CPU and one fake GPU each; the driver connects later
    (run_search connects through ``address``). RAY_TMPDIR is short (Ray's socket paths must stay under 107
    characters) and private; TMPDIR holds each node's copies of shared files."""
    import ray
    from ray.cluster_utils import Cluster

    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "node"))
    (tmp_path / "node").mkdir()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_worker_niceness", "0")
    system = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "_system_config": system})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes(timeout=60)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _experiment(tmp: Path, cache: Path):
    from iakd.search.experiment import load_experiment

    return load_experiment(CONFIG, [
        f"num_samples={SAMPLES}", "max_concurrent=1", "scheduler.name=none", f"run.optim.epochs={EPOCHS}",
        *EVERY_EPOCH,
        "run.teacher.epochs=1", "run.data.image_size=8", "run.teacher.arch=resnet20", "run.data.train_size=null",
        "run.evaluation.bn_images=64", "baselines.methods=[]", "confirm.top_k=0", "analysis=false", "max_failures=2",
        "resources.cpu=1", "resources.gpu=1", f"storage_path=file://{tmp}/shared", f"run.teacher.cache_dir={cache}",
        f"tracking_uri=sqlite:///{tmp}/mlflow.db",
    ])


class NodeKiller(threading.Thread):
    """Kills the worker node of the first searched trial once that trial is between epochs with a checkpoint in
    shared storage and epochs still to go."""

    def __init__(self, cluster, tmp: Path, experiment: str):
        super().__init__(daemon=True)
        self.cluster, self.tmp, self.experiment = cluster, tmp, experiment
        self.killed: tuple[str, str, int] | None = None  # (node id, trial id, epochs logged when killed)
        self.error: str | None = None

    def _find(self):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{self.tmp}/mlflow.db")
        try:
            experiment = client.get_experiment_by_name(self.experiment)
            runs = client.search_runs([experiment.experiment_id], "tags.`iakd.role` = 'search'") if experiment else []
        except MlflowException:  # the driver holds the sqlite lock, or the tables are not there yet
            return None
        for run in runs:
            epochs = run.data.metrics.get("epochs", 0)
            trial = run.data.tags["iakd.trial_id"]
            checkpoints = list((self.tmp / "shared" / self.experiment).glob(f"search_{trial}/checkpoint_*"))
            if run.info.status == "RUNNING" and checkpoints and 1 <= epochs <= EPOCHS - 3:
                return run.data.tags["node"], trial, int(epochs)
        return None

    def run(self):
        try:
            deadline = time.monotonic() + KILL_DEADLINE_S
            while self.killed is None and time.monotonic() < deadline:
                found = self._find()
                if found is None:
                    time.sleep(0.1)
                    continue
                (node,) = [n for n in self.cluster.worker_nodes if n.node_id == found[0]]
                self.cluster.remove_node(node, allow_graceful=False)
                self.killed = found
        except BaseException:  # reported by the test
            self.error = traceback.format_exc()


def _answer(summary, tracking_uri: str) -> list[tuple]:
    """Every searched trial's configuration and score, in the ranking's order (first: the winner)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    answer = []
    for trial in summary.answer.ranking.itertuples():
        run = client.get_run(trial.run_id)
        params = tuple(sorted((k, v) for k, v in run.data.params.items() if k.startswith(("schedule", "method."))))
        answer.append((params, run.data.metrics["best_val_acc"], run.data.metrics["last_test_acc"]))
    return answer


def _trials(summary, tmp: Path) -> list[tuple[dict[str, list[float]], dict]]:
    """Each searched trial in the order it ran: its per-epoch metrics (timings aside) and its student's weights."""
    import torch
    from mlflow.tracking import MlflowClient

    from iakd import tracking

    client = MlflowClient(summary.tracking_uri)
    found = []
    runs = tracking.child_runs(summary.tracking_uri, summary.parent_run_id)
    for run in sorted(runs, key=lambda r: r.info.start_time):
        history = {key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
                   for key in sorted(set(run.data.metrics) - TIMING)}
        folder = tmp / run.info.run_id
        folder.mkdir(parents=True)
        weights = torch.load(client.download_artifacts(run.info.run_id, "student.pt", str(folder)), weights_only=True)
        found.append((history, weights["model"]))
    return found


def test_a_trial_whose_node_is_lost_continues_on_another_node_from_its_checkpoint(cluster, tmp_path):
    import ray
    import torch
    from mlflow.tracking import MlflowClient

    from iakd import tracking
    from iakd.search.runner import run_search

    workers = {node.node_id for node in cluster.worker_nodes}
    cache = tmp_path / "teacher"
    torch.set_num_threads(1)  # the driver's teacher training (conftest's autouse fixture resets it per test)
    (tmp_path / "straight").mkdir()
    straight = run_search(_experiment(tmp_path / "straight", cache), address=cluster.address, verbose=0,
                          log=lambda _: None)
    assert not straight.interrupted and len(straight.trials) == SAMPLES

    disturbed_dir = tmp_path / "disturbed"
    disturbed_dir.mkdir()
    experiment = _experiment(disturbed_dir, cache)
    killer = NodeKiller(cluster, disturbed_dir, experiment.config.experiment)
    killer.start()
    summary = run_search(experiment, address=cluster.address, verbose=0, log=lambda _: None)
    killer.join(timeout=5)
    assert killer.error is None, killer.error
    assert killer.killed is not None, "the first trial ended before its node could be killed"
    lost_node, trial_id, epochs_then = killer.killed
    assert lost_node not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    assert not summary.interrupted and len(summary.trials) == SAMPLES
    # no trial folder is left on the nodes, the lost one's included
    assert not list((tmp_path / "node").glob("iakd-trial-*"))
    client = MlflowClient(summary.tracking_uri)
    children = tracking.child_runs(summary.tracking_uri, summary.parent_run_id)
    trial_ids = sorted(t.name.removeprefix("search_") for t in summary.trials)
    assert sorted(r.data.tags["iakd.trial_id"] for r in children) == trial_ids
    (resumed,) = [r for r in children if r.data.tags["iakd.trial_id"] == trial_id]  # still one run
    assert resumed.info.status == "FINISHED" and resumed.data.tags["status"] == "finished"
    assert resumed.data.tags["node"] in workers - {lost_node}  # where it ended
    for run in children:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
        assert steps == list(range(1, EPOCHS + 1)), (run.info.run_name, steps)  # each epoch once
    # It continued from a checkpoint, not from scratch: its log says from which epoch, and holds each epoch once.
    log = Path(client.download_artifacts(resumed.info.run_id, "train.log", str(tmp_path))).read_text()
    (line,) = [line for line in log.splitlines() if "resumed from" in line]
    assert any(line.endswith(f"at epoch {e}") for e in range(1, epochs_then + 1)), line
    assert [line.split()[1] for line in log.splitlines() if line.startswith("epoch")] == [
        f"{e}/{EPOCHS}" for e in range(1, EPOCHS + 1)]

    # The undisturbed sweep's answer: the same trials with the same scores, the same winner; and trial by trial
    # the same figures every epoch and the same weights, equal, not close.
    assert _answer(summary, summary.tracking_uri) == _answer(straight, straight.tracking_uri)
    for (history, weights), (expected, expected_weights) in zip(_trials(summary, tmp_path / "d"),
                                                               _trials(straight, tmp_path / "s"), strict=True):
        assert {"val_acc", "test_acc", "train_loss", "swap_rate", "lr"} <= set(history)
        assert history.keys() == expected.keys()
        for key, values in history.items():
            assert len(values) in (1, EPOCHS) and all(
                v == e or (math.isnan(v) and math.isnan(e)) for v, e in zip(values, expected[key], strict=True)), (
                key, values, expected[key])
        assert weights.keys() == expected_weights.keys()
        assert [name for name in weights if not torch.equal(weights[name], expected_weights[name])] == []
