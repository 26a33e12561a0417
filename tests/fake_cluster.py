"""cluster.yaml's own node types on one machine, autoscaler included: Ray's fake multi-node provider.

Ray documents this provider for testing autoscaling locally: ``RAY_FAKE_CLUSTER=1 ray start --head
--autoscaling-config=<config>`` starts a head with the autoscaler (the monitor process), and the autoscaler starts
and stops worker nodes (local raylets with the resources of their node type) exactly as it launches and
terminates instances on AWS. ``ray.cluster_utils.AutoscalingCluster`` wraps that recipe, but cannot be used as it
is in Ray 2.60: it builds its config on an example file the wheel no longer ships, and its start and shutdown
run ``ray stop --force``, which stops every Ray process of the user on the machine. This module is the same
recipe with the config built from cluster.yaml (:func:`fake_config`) and a shutdown that stops only the processes
of this cluster (those whose environment holds its private ``RAY_TMPDIR``).

What is kept from the file: the cluster's ``max_workers`` and ``upscaling_speed``, the head node type, and every
node type's ``resources``, ``min_workers`` and ``max_workers``. What changes for this machine: the provider (fake
instead of AWS), the idle timeout (shortened by the test), and each node's object store (a small fixed size: by
default each local raylet would reserve 30 % of this machine's memory). Ray's CPU and GPU counts are logical, so
the node types keep theirs: the autoscaler's choice between them depends on those numbers, and the GPUs exist
only in Ray's bookkeeping (trials fall back to the CPU).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from mlflow_server import free_port
from search_process import session_processes

OBJECT_STORE_BYTES = 128 * 2**20  # per node; Ray's minimum is 75 MiB
START_TIMEOUT_S = 120


def fake_config(cluster_file: Path, *, idle_timeout_minutes: float, gcs_address: str) -> dict[str, Any]:
    """The autoscaling config of the fake provider for the cluster described by ``cluster_file``."""
    cluster = yaml.safe_load(Path(cluster_file).read_text())
    head = cluster["head_node_type"]
    node_types = {}
    for name, node_type in cluster["available_node_types"].items():
        resources = {**node_type.get("resources", {}), "object_store_memory": OBJECT_STORE_BYTES}
        if name == head:
            node_types[name] = {"resources": resources, "node_config": {}, "max_workers": 0}
        else:
            node_types[name] = {"resources": resources, "node_config": {},
                                "min_workers": node_type.get("min_workers", 0), "max_workers": node_type["max_workers"]}
    empty_lists = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                   "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files", "rsync_exclude",
                   "rsync_filter")
    return {
        "cluster_name": cluster["cluster_name"],
        "max_workers": cluster["max_workers"],
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "head_node_type": head,
        "available_node_types": node_types,
        "auth": {}, "docker": {}, "file_mounts": {}, "file_mounts_sync_continuously": False,
        **{key: [] for key in empty_lists},
    }


class FakeAutoscalingCluster:
    """A head started with the autoscaling config of :func:`fake_config`; the driver connects to ``address``.

    ``temp_dir`` is Ray's temp folder for every node of this cluster (short: Ray's socket paths must stay under
    107 characters); ``env`` is the environment of the head and, through the autoscaler, of every worker node.
    """

    def __init__(self, cluster_file: Path, temp_dir: Path, *, idle_timeout_minutes: float, env: dict[str, str]):
        import ray

        self.temp_dir = Path(temp_dir)
        self.port = free_port()
        self.address = f"{ray.util.get_node_ip_address()}:{self.port}"
        self.config = fake_config(cluster_file, idle_timeout_minutes=idle_timeout_minutes, gcs_address=self.address)
        self.idle_timeout_s = idle_timeout_minutes * 60
        self.env = {**env, "RAY_TMPDIR": str(self.temp_dir), "RAY_FAKE_CLUSTER": "1",
                    "AUTOSCALER_UPDATE_INTERVAL_S": "1"}

    def start(self) -> None:
        """``ray start --head`` with the head node type's own resources, returning once the head is up."""
        path = self.temp_dir / "autoscaling.json"
        path.write_text(json.dumps(self.config))
        head = dict(self.config["available_node_types"][self.config["head_node_type"]]["resources"])
        command = [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={self.port}",
                   f"--autoscaling-config={path}", f"--temp-dir={self.temp_dir}",
                   f"--num-cpus={head.pop('CPU', 0)}", f"--num-gpus={head.pop('GPU', 0)}",
                   f"--object-store-memory={head.pop('object_store_memory')}",
                   "--include-dashboard=false", f"--dashboard-port={free_port()}",
                   "--disable-usage-stats"]
        if head:
            command.append(f"--resources={json.dumps(head)}")
        done = subprocess.run(command, env=self.env, timeout=START_TIMEOUT_S, capture_output=True, text=True)
        assert done.returncode == 0, f"ray start --head failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"

    def node_type(self, resources: dict[str, float]) -> str:
        """The node type whose CPU and GPU counts a node has (cluster.yaml's types differ in them)."""
        types = self.config["available_node_types"]
        found = [name for name, t in types.items()
                 if all(float(resources.get(k, 0)) == float(t["resources"].get(k, 0)) for k in ("CPU", "GPU"))]
        assert len(found) == 1, f"node resources {resources} match the node types {found}"
        return found[0]

    def stop(self, grace_s: float = 3.0) -> None:
        """Stop every process of this cluster (each has its ``RAY_TMPDIR`` in its environment, the head's and what
        the autoscaler started alike): SIGTERM, then SIGKILL for those still there after ``grace_s``."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            for pid in session_processes(str(self.temp_dir)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while session_processes(str(self.temp_dir)) and time.monotonic() < deadline:
                time.sleep(0.2)
