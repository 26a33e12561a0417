"""The layout of cluster.yaml simulated on one machine: a head that takes no trials, two GPU workers, an MLflow
server, shared storage.

* ``ray.cluster_utils.Cluster``: the head has no CPU (``resources: {CPU: 0}`` in cluster.yaml), each worker one CPU
  and one fake GPU. Trials ask for ``cpu=1, gpu=1``, so each worker holds one trial and the two trials, started
  together, must take one worker each; none can land on the head.
* a real ``mlflow server`` process on 127.0.0.1 and a free port, SQLite backend and artifacts folder in tmp_path
  (on the cluster: SQLite on the head's disk, artifacts in S3, both behind the server), stopped at the end;
* shared storage behind a ``file://`` URI, which takes the same path through pyarrow as ``s3://``: the driver
  publishes the teacher there and each node fetches it into its own ``$TMPDIR``.

What arrives at the server is read back over its REST API with plain urllib, as any other client would see it.
There is no CUDA here: the fake GPUs exist only in Ray's bookkeeping and every trial falls back to the CPU.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from mlflow_server import MlflowServer

from iakd.engine import judged_epochs

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tune" / "configs" / "digits.yaml"
SAMPLES = 2
EPOCHS = 2


@pytest.fixture
def mlflow_server(tmp_path):
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server")
    try:
        # Healthy before Ray starts: once the server holds its port, none of Ray's processes can take it.
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def gpu_cluster(monkeypatch, tmp_path):
    """Head without trial resources plus two workers with one CPU and one fake GPU each; the driver is not yet
    connected (run_search connects through ``address``).

    RAY_TMPDIR is a short private folder (Ray's socket paths must stay under 107 characters, and it keeps the
    driver away from any other Ray on the machine); TMPDIR holds the nodes' copies of shared files. The nodes
    are started in this process, so they take the environment set here.
    """
    import ray
    from ray.cluster_utils import Cluster

    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "node"))
    (tmp_path / "node").mkdir()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # Ray runs its workers at nice 15: beside any busy process on this 2-core machine the trials would crawl.
    monkeypatch.setenv("RAY_worker_niceness", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes(timeout=60)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_trials_run_on_the_gpu_workers_and_log_to_the_mlflow_server(mlflow_server, gpu_cluster, tmp_path):
    import torch

    from iakd.search.experiment import load_experiment
    from iakd.search.runner import run_search

    url, artifacts = mlflow_server.url, mlflow_server.artifacts
    head = gpu_cluster.head_node.node_id
    workers = {node.node_id for node in gpu_cluster.worker_nodes}
    assert len(workers) == 2 and head not in workers

    experiment = load_experiment(CONFIG, [
        f"num_samples={SAMPLES}", f"max_concurrent={SAMPLES}", "scheduler.name=none", f"run.optim.epochs={EPOCHS}",
        "run.teacher.epochs=1", "run.data.image_size=8", "run.teacher.arch=resnet20", "baselines.methods=[]",
        "confirm.top_k=0", "analysis=false",
        "resources.cpu=1", "resources.gpu=1", f"storage_path=file://{tmp_path}/shared",
        f"run.teacher.cache_dir={tmp_path}/driver", f"tracking_uri={url}",
    ])
    torch.set_num_threads(1)  # the driver's teacher training (conftest's autouse fixture resets it per test)
    summary = run_search(experiment, address=gpu_cluster.address, verbose=0, log=lambda _: None)
    assert not summary.interrupted and len(summary.trials) == SAMPLES
    assert summary.tracking_uri == url

    experiment_id = mlflow_server.get("experiments/get-by-name", experiment_name=experiment.config.experiment)[
        "experiment"]["experiment_id"]
    runs = mlflow_server.post("runs/search", {"experiment_ids": [experiment_id], "max_results": 100})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    parent = next(r for r in runs if r["info"]["run_id"] == summary.parent_run_id)
    assert parent["info"]["status"] == "FINISHED"
    children = [r for r in runs if tags[r["info"]["run_id"]].get("mlflow.parentRunId") == summary.parent_run_id]
    assert len(children) == SAMPLES
    assert {r["info"]["run_name"] for r in children} == {t.name for t in summary.trials}

    used = set()
    for run in children:
        run_id, run_tags = run["info"]["run_id"], tags[run["info"]["run_id"]]
        assert run["info"]["status"] == "FINISHED"
        assert run_tags["iakd.role"] == "search" and run_tags["status"] == "finished"
        assert run_tags["node"] in workers, f"trial ran on {run_tags['node']}, not on a worker (head {head})"
        used.add(run_tags["node"])

        history = mlflow_server.get("metrics/get-history", run_id=run_id, metric_key="val_acc")["metrics"]
        assert sorted(m["step"] for m in history) == list(range(1, EPOCHS + 1))
        assert all(0.0 <= m["value"] <= 100.0 for m in history)
        final = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert final["epochs"] == EPOCHS
        swap = {m["step"]: m["value"] for m in
                mlflow_server.get("metrics/get-history", run_id=run_id, metric_key="swap_prob")["metrics"]}
        epochs = [{"epoch": m["step"], "val_acc": m["value"], "swap_prob": swap[m["step"]]}
                  for m in sorted(history, key=lambda m: m["step"])]
        assert final["best_val_acc"] == max(h["val_acc"] for h in judged_epochs(epochs))  # after the handover

        listed = mlflow_server.get("artifacts/list", run_id=run_id).get("files", [])
        sizes = {f["path"]: int(f.get("file_size", 0)) for f in listed if not f.get("is_dir")}
        assert {"config.yaml", "student.pt", "train.log"} <= set(sizes), sorted(sizes)
        assert all(sizes[name] > 0 for name in ("config.yaml", "student.pt", "train.log"))
    assert used == workers, f"both workers should have taken a trial: {used}"

    # The trials wrote through the server (as on the cluster, where the destination is S3): their files are
    # in the server's artifact destination, not in any folder of the trials' own.
    assert len(list(artifacts.rglob("student.pt"))) == SAMPLES
