"""cluster.yaml simulated on one machine: the autoscaler, given the file's own node types, brings GPU workers up
from zero for a search, the trials log to an MLflow server, and the workers go when the search ends.

* The cluster is Ray's fake multi-node provider built from cluster.yaml (tests/fake_cluster.py): the head node
  type with its ``resources: {CPU: 0}``, the two GPU worker types with their CPU and GPU counts, ``min_workers:
  0``, and the idle timeout shortened to a few seconds. A search of four trials asking for ``resources.gpu=0.25``
  and ``resources.cpu=1`` all at once must make the autoscaler add the node type the file intends for such trials
  (its comment: a g5.xlarge, 1 GPU and 4 vCPUs, holds four of them), exactly as many nodes as the trials fill,
  run every trial on a worker (the head has no CPU for them), and remove the workers once they have been idle
  for the timeout. The GPUs exist only in Ray's bookkeeping: every trial falls back to the CPU.
* As on the cluster, the trials log to a real ``mlflow server`` (here on 127.0.0.1 and a free port, SQLite and an
  artifacts folder in tmp_path; there SQLite on the head's disk and artifacts in S3, both behind the server), and
  Tune's results and the teacher go to shared storage behind a ``file://`` URI, which takes the same path through
  pyarrow as ``s3://``: the driver publishes the teacher there and each node fetches it into its own ``$TMPDIR``.
  What arrives at the server is read back over its REST API, as any other client would see it.

The test prints the timeline (run it with ``-s``): the README's cluster section quotes it.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from fake_cluster import FakeAutoscalingCluster
from mlflow_server import MlflowServer
from search_process import EVERY_EPOCH

from iakd.judging import judged_epochs

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILE = ROOT / "cluster.yaml"
CONFIG = ROOT / "tune" / "configs" / "digits.yaml"
INTENDED = "gpu.1x.g5.xlarge"  # cluster.yaml: "four CIFAR trials with resources.gpu=0.25, cpu=1"
SAMPLES = 4
GPU_PER_TRIAL = 0.25
EPOCHS = 2
IDLE_TIMEOUT_MINUTES = 0.1
# Removal comes after the idle timeout plus the autoscaler's rounds (every 1 s here) and the node's shutdown;
# measured 1-2 s over on 2 cores. The test waits up to 30 s over.
REMOVAL_SLACK_S = 30

pytestmark = pytest.mark.cluster


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
def autoscaling_cluster(monkeypatch, tmp_path, mlflow_server):
    import ray

    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    for key, value in {"RAY_TMPDIR": str(ray_tmp), "TMPDIR": str(tmp_path / "node"),
                       # a token file in ~/.ray would switch a CLI-started head to token auth: not for this test
                       "RAY_AUTH_MODE": "disabled",
                       # Ray runs its workers at nice 15: beside any busy process on 2 cores they would crawl
                       "RAY_worker_niceness": "0"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "node").mkdir()
    cluster = FakeAutoscalingCluster(CLUSTER_FILE, ray_tmp, idle_timeout_minutes=IDLE_TIMEOUT_MINUTES,
                                     env=dict(os.environ))
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _alive_workers(head: str) -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n["Alive"] and n["NodeID"] != head]


def _when_first_worker(head: str, found: list[float], deadline_s: float = 600) -> None:
    deadline = time.monotonic() + deadline_s
    while not _alive_workers(head) and time.monotonic() < deadline:
        time.sleep(0.2)
    found.append(time.time())


def _server_runs(server: MlflowServer, experiment: str) -> list[dict]:
    experiment_id = server.get("experiments/get-by-name", experiment_name=experiment)["experiment"]["experiment_id"]
    return server.post("runs/search", {"experiment_ids": [experiment_id], "max_results": 100})["runs"]


def _history(server: MlflowServer, run_id: str, key: str) -> dict[int, float]:
    return {m["step"]: m["value"] for m in server.get("metrics/get-history", run_id=run_id, metric_key=key)["metrics"]}


def test_the_autoscaler_brings_up_the_intended_gpu_workers_and_removes_them_when_idle(autoscaling_cluster,
                                                                                     mlflow_server, tmp_path):
    import ray
    import torch

    from iakd.search.experiment import load_experiment
    from iakd.search.runner import run_search

    cluster = autoscaling_cluster
    assert cluster.config["available_node_types"][INTENDED]["resources"]["GPU"] >= 1
    start = time.time()
    cluster.start()  # on AWS: `ray up cluster.yaml`
    head_up = time.time()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    (head,) = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    # No worker at start (min_workers 0), and none comes while nothing asks: three autoscaler rounds of 1 s.
    time.sleep(3)
    assert _alive_workers(head) == []
    assert ray.cluster_resources().get("CPU", 0) == 0 and ray.cluster_resources().get("GPU", 0) == 0

    experiment = load_experiment(CONFIG, [
        f"num_samples={SAMPLES}", f"max_concurrent={SAMPLES}", "scheduler.name=none", f"run.optim.epochs={EPOCHS}",
        *EVERY_EPOCH,
        "run.teacher.epochs=1", "run.data.image_size=8", "run.teacher.arch=resnet20", "baselines.methods=[]",
        "confirm.top_k=0", "analysis=false", "run.evaluation.bn_images=64",
        "resources.cpu=1", f"resources.gpu={GPU_PER_TRIAL}", f"storage_path=file://{tmp_path}/shared",
        f"run.teacher.cache_dir={tmp_path}/driver", f"tracking_uri={mlflow_server.url}",
    ])
    torch.set_num_threads(1)  # the driver's teacher training (conftest's autouse fixture resets it per test)
    first_worker: list[float] = []
    watch = threading.Thread(target=_when_first_worker, args=(head, first_worker), daemon=True)
    watch.start()
    summary = run_search(experiment, address=cluster.address, verbose=0, log=lambda _: None)
    sweep_done = time.time()
    watch.join(timeout=5)
    assert not summary.interrupted and len(summary.trials) == SAMPLES

    # The nodes the autoscaler added (ray.nodes() keeps those already gone): all of the intended type, as many
    # as the trials fill (four trials of a quarter GPU and one CPU each fit on one).
    workers = {n["NodeID"]: n for n in ray.nodes() if n["NodeID"] != head}
    node_types = [cluster.node_type(n["Resources"]) for n in workers.values()]
    intended = cluster.config["available_node_types"][INTENDED]["resources"]
    per_node = min(intended["CPU"] // 1, round(intended["GPU"] / GPU_PER_TRIAL))
    assert node_types == [INTENDED] * math.ceil(SAMPLES / per_node), node_types

    # What the server holds: the parent run and one finished child run per trial, each from a worker, with every
    # epoch once and its files, which went through the server into its artifact destination (on AWS: S3).
    assert summary.tracking_uri == mlflow_server.url
    runs = _server_runs(mlflow_server, experiment.config.experiment)
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    parent = next(r for r in runs if r["info"]["run_id"] == summary.parent_run_id)
    assert parent["info"]["status"] == "FINISHED"
    children = [r for r in runs if tags[r["info"]["run_id"]].get("mlflow.parentRunId") == summary.parent_run_id]
    assert {r["info"]["run_name"] for r in children} == {t.name for t in summary.trials}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray's fake GPUs are no CUDA device
    for run in children:
        run_id, run_tags = run["info"]["run_id"], tags[run["info"]["run_id"]]
        assert run["info"]["status"] == "FINISHED" and run_tags["status"] == "finished"
        assert run_tags["iakd.role"] == "search"
        assert run_tags["node"] in workers, f"a trial ran on {run_tags['node']}, not on a worker (head {head})"
        assert {p["key"]: p["value"] for p in run["data"]["params"]}["device"] == device
        val_acc, swap = _history(mlflow_server, run_id, "val_acc"), _history(mlflow_server, run_id, "swap_prob")
        assert sorted(val_acc) == list(range(1, EPOCHS + 1)) and all(0 <= v <= 100 for v in val_acc.values())
        final = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        epochs = [{"epoch": e, "val_acc": val_acc[e], "swap_prob": swap[e]} for e in sorted(val_acc)]
        assert final["epochs"] == EPOCHS
        assert final["best_val_acc"] == max(h["val_acc"] for h in judged_epochs(epochs))  # after the handover
        listed = mlflow_server.get("artifacts/list", run_id=run_id).get("files", [])
        sizes = {f["path"]: int(f.get("file_size", 0)) for f in listed if not f.get("is_dir")}
        assert all(sizes.get(name, 0) > 0 for name in ("config.yaml", "student.pt", "train.log")), sorted(sizes)
    assert len(list(mlflow_server.artifacts.rglob("student.pt"))) == SAMPLES

    # Idle once the last trial ended: removed after the idle timeout, not before.
    last_end = max(int(run["info"]["end_time"]) for run in children) / 1000
    while _alive_workers(head) and time.time() < last_end + cluster.idle_timeout_s + REMOVAL_SLACK_S:
        time.sleep(0.5)
    removed = time.time()
    assert _alive_workers(head) == [], (f"idle workers still up {removed - last_end:.0f} s after the last trial "
                                        f"ended (idle timeout {cluster.idle_timeout_s:.0f} s)")
    assert removed - last_end >= cluster.idle_timeout_s, "a worker was removed before its idle timeout"
    assert ray.cluster_resources().get("GPU", 0) == 0

    first_trial = min(int(run["info"]["start_time"]) for run in children) / 1000
    print(f"\nsimulated cluster.yaml: head up in {head_up - start:.1f} s; first worker up after "
          f"{first_worker[0] - start:.1f} s; first trial started "
          f"{first_trial - start:.1f} s after the start (the driver trains the teacher first); sweep done after "
          f"{sweep_done - start:.1f} s; workers ({', '.join(node_types)}) removed "
          f"{removed - last_end:.1f} s after the last trial ended (idle timeout {cluster.idle_timeout_s:.0f} s)")
