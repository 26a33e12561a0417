"""The search on a simulated two-node Ray cluster (``ray.cluster_utils.Cluster``), each node with one fake GPU.

Trials ask for ``resources.gpu=0.5`` and ``resources.cpu=1``; each node has 2 CPUs and 1 GPU, so one node
holds at most two trials, and the four trials of the sweep, all started at once (``max_concurrent=4``, each
training for a few seconds), must spread over both nodes. There is no CUDA here (the GPUs exist only in
Ray's bookkeeping): every trial must fall back to the CPU.

No baselines (they would only add a Tune experiment before the search), and the driver trains the teacher
with one torch thread: on a 2-core machine shared with Ray's processes, two threads are many times slower.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tune" / "configs" / "digits.yaml"
SAMPLES = 4
EPOCHS = 2


@pytest.fixture
def two_node_cluster(monkeypatch):
    """A head node and one worker node, 2 CPUs and 1 (fake) GPU each, with the driver connected to it.

    RAY_TMPDIR is set to a short private folder first: Ray's unix socket paths must stay under 107
    characters, and it keeps the driver from joining any other Ray cluster running on the machine.
    The nodes are started in this process, so they take the environment set here.
    """
    import ray
    from ray.cluster_utils import Cluster

    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # Ray runs its workers at nice 15: beside any busy process on this 2-core machine the trials would crawl.
    monkeypatch.setenv("RAY_worker_niceness", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1})
    try:
        cluster.add_node(num_cpus=2, num_gpus=1)
        cluster.wait_for_nodes(timeout=60)
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback where Ray's GPUs are fake: no CUDA device")
def test_trials_spread_over_both_nodes_and_fall_back_to_the_cpu(two_node_cluster, tmp_path):
    import ray
    from mlflow.tracking import MlflowClient

    from iakd import tracking
    from iakd.search.experiment import load_experiment
    from iakd.search.runner import run_search
    from iakd.search.summary import format_summary

    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    assert ray.cluster_resources().get("GPU") == 2

    experiment = load_experiment(CONFIG, [
        f"num_samples={SAMPLES}", f"max_concurrent={SAMPLES}", "scheduler.name=none", f"run.optim.epochs={EPOCHS}",
        "run.teacher.epochs=1", "run.data.image_size=8", "run.teacher.arch=resnet20", "baselines.methods=[]",
        "confirm.top_k=0", "analysis=false",
        "resources.cpu=1", "resources.gpu=0.5", f"storage_path={tmp_path}/ray",
        f"tracking_uri=sqlite:///{tmp_path}/mlflow.db",
    ])
    torch.set_num_threads(1)  # the driver's teacher training (conftest's autouse fixture resets it per test)
    summary = run_search(experiment, address=two_node_cluster.address, verbose=0, log=lambda _: None)

    assert not summary.interrupted
    assert len(summary.trials) == SAMPLES and summary.baselines == []
    assert f"Best trial {summary.best.name}" in format_summary(summary)

    client = MlflowClient(summary.tracking_uri)
    assert client.get_run(summary.parent_run_id).info.status == "FINISHED"
    children = tracking.child_runs(summary.tracking_uri, summary.parent_run_id)
    assert [r.data.tags["iakd.role"] for r in children] == ["search"] * SAMPLES
    assert [r.info.status for r in children] == ["FINISHED"] * SAMPLES
    assert {r.info.run_name for r in children} == {t.name for t in summary.trials}

    assert len({r.data.tags["iakd.trial_id"] for r in children}) == SAMPLES
    used = {r.data.tags["node"] for r in children}
    assert used <= nodes
    assert len(used) == 2, f"all search trials ran on one node: {used}"

    # Ray's fake GPUs are not a CUDA device: every trial must have fallen back to the CPU.
    for run in children:
        assert run.data.params["device"] == "cpu"
        assert run.data.tags["status"] == "finished"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, EPOCHS + 1))
