"""cluster.yaml and its offline checker (iakd.search.cluster_check, tune/check_cluster.py), and the per-node
dataset preparation its setup commands run (iakd.prepare_data)."""

from __future__ import annotations

import copy
import pickle
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml
from packaging.requirements import Requirement

from iakd import prepare_data
from iakd.data import load_dataset
from iakd.search.cluster_check import check_cluster_file, placeholders

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"
CHECKER = ROOT / "tune" / "check_cluster.py"
HEAD = "available_node_types.ray.head.default"


def run_checker(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECKER), str(path)], check=False, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def shipped() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


# ---------------------------------------------------------------------------------------- the shipped file


def test_shipped_cluster_file_has_no_problems():
    assert check_cluster_file(CLUSTER) == []


def test_checker_command_prints_ok_and_the_placeholders_left_and_exits_0():
    result = run_checker(CLUSTER)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ok: {CLUSTER}")
    for name in ("<YOUR_REGION>", "<YOUR_BUCKET>", "<YOUR_KEY_NAME>", "<YOUR_HEAD_INSTANCE_PROFILE_ARN>"):
        assert name in lines[0]


def test_every_value_a_user_sets_is_a_placeholder(shipped):
    assert shipped["provider"]["region"] == "<YOUR_REGION>"
    for node_type in shipped["available_node_types"].values():
        config = node_type["node_config"]
        assert config["KeyName"] == "<YOUR_KEY_NAME>"
        assert re.fullmatch(r"<YOUR_(HEAD|WORKER)_INSTANCE_PROFILE_ARN>", config["IamInstanceProfile"]["Arn"])
    assert set(placeholders(CLUSTER)) == {"<YOUR_REGION>", "<YOUR_AMI_ID>", "<YOUR_KEY_NAME>", "<YOUR_BUCKET>",
                                          "<YOUR_HEAD_INSTANCE_PROFILE_ARN>", "<YOUR_WORKER_INSTANCE_PROFILE_ARN>"}


def test_no_local_output_is_copied_to_the_nodes(shipped):
    """Every folder or file the project writes locally (what .gitignore keeps out of git) stays on the user's
    machine, except teacher files (*.pth), which a sweep may read from the project folder."""
    outputs = [line.strip().rstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    kept = {"*.pt", "*.pth"}  # the teacher a cluster sweep reads travels with the project (README, cluster)
    excluded = {pattern.lstrip("/").removeprefix("**/") for pattern in shipped["rsync_exclude"]}
    assert [o for o in outputs if o not in kept and o not in excluded] == []


def test_image_runs_the_ray_version_pyproject_pins(shipped):
    pinned = Requirement(re.search(r'"(ray\[tune\][^"]*)"', (ROOT / "pyproject.toml").read_text()).group(1))
    version = re.search(r":(\d+\.\d+\.\d+)-", shipped["docker"]["image"]).group(1)
    assert version == ray.__version__ and version in pinned.specifier
    # the pin admits patch releases of that one minor version only: a newer Ray on a laptop would not match
    assert f"{version.rsplit('.', 1)[0]}.99" in pinned.specifier
    assert not pinned.specifier.contains(f"{int(version.split('.')[0])}.{int(version.split('.')[1]) + 1}.0")


def test_head_takes_no_trials_and_workers_have_gpus_and_scale_from_zero(shipped):
    types = shipped["available_node_types"]
    assert types[shipped["head_node_type"]]["resources"] == {"CPU": 0}
    workers = {name: t for name, t in types.items() if name != shipped["head_node_type"]}
    assert {t["node_config"]["InstanceType"]: t["resources"]["GPU"] for t in workers.values()} == {
        "g5.xlarge": 1, "g5.12xlarge": 4}
    assert all(t["min_workers"] == 0 for t in workers.values())


# ------------------------------------------------------------------------------------ broken variants


def _without_mlflow(config: dict) -> None:
    config["head_start_ray_commands"] = [c for c in config["head_start_ray_commands"] if "mlflow" not in c]


def _replace_in_commands(key: str, old: str, new: str):
    def edit(config: dict) -> None:
        assert any(old in c for c in config[key]), f"{old!r} not in {key}"
        config[key] = [c.replace(old, new) for c in config[key]]
    return edit


def _rename(config: dict) -> None:
    config["head_start_ray_comands"] = config.pop("head_start_ray_commands")


def _head_resources(**resources):
    def edit(config: dict) -> None:
        config["available_node_types"]["ray.head.default"]["resources"].update(resources)
    return edit


def _drop_worker_gpus(config: dict) -> None:
    del config["available_node_types"]["gpu.1x.g5.xlarge"]["resources"]["GPU"]


def _image(image: str):
    def edit(config: dict) -> None:
        config["docker"]["image"] = image
    return edit


BROKEN = {
    "misspelt key": (
        _rename, "head_start_ray_comands: not a key of Ray's cluster schema; did you mean head_start_ray_commands?"),
    "misspelt node type key": (
        lambda c: c["available_node_types"]["gpu.1x.g5.xlarge"].update(min_worker=0),
        ("available_node_types.gpu.1x.g5.xlarge.min_worker: not a key of Ray's cluster schema; did you mean "
        "min_workers?")),
    "schema type": (
        lambda c: c["available_node_types"]["gpu.1x.g5.xlarge"].update(max_workers="eight"),
        "available_node_types.gpu.1x.g5.xlarge.max_workers: 'eight' is not of type 'integer'"),
    "head with trial CPUs": (_head_resources(CPU=8), f"{HEAD}.resources.CPU: 8 lets trials run on the head"),
    "head with a GPU": (_head_resources(GPU=1), f"{HEAD}.resources.GPU: 1: the head takes no trials"),
    "head on a GPU instance": (
        lambda c: c["available_node_types"]["ray.head.default"]["node_config"].update(InstanceType="g5.xlarge"),
        f"{HEAD}.resources.GPU: missing on the GPU instance type g5.xlarge"),
    "worker without GPUs": (
        _drop_worker_gpus, "available_node_types.gpu.1x.g5.xlarge.resources.GPU: missing; every worker type declares"),
    "other Ray in the image": (
        _image("rayproject/ray:2.59.0-py311-gpu"),
        f"docker.image: 'rayproject/ray:2.59.0-py311-gpu' runs Ray 2.59.0 but Ray {ray.__version__} is installed"),
    "unpinned image": (_image("rayproject/ray:latest-gpu"), "docker.image: 'rayproject/ray:latest-gpu' names no Ray"),
    "no MLflow server": (_without_mlflow, "head_start_ray_commands: no 'mlflow server' command"),
    "MLflow server on loopback": (
        _replace_in_commands("head_start_ray_commands", "--host 0.0.0.0", "--host 127.0.0.1"),
        "head_start_ray_commands: the mlflow server listens on 127.0.0.1, which the workers cannot reach"),
    "no tracking URI for the search": (
        lambda c: c.update(head_setup_commands=[x for x in c["head_setup_commands"] if "IAKD_TRACKING_URI" not in x]),
        "head_setup_commands: IAKD_TRACKING_URI is not set"),
    "tracking URI on another port": (
        _replace_in_commands("head_setup_commands", "$HEAD_IP:5000", "$HEAD_IP:5001"),
        ("head_setup_commands: IAKD_TRACKING_URI=http://$HEAD_IP:5001 points at port 5001 but the mlflow server "
        "listens on 5000")),
    "local storage path": (
        _replace_in_commands("head_setup_commands", "s3://<YOUR_BUCKET>/ray_results", "/home/ray/ray_results"),
        "head_setup_commands: IAKD_STORAGE_PATH=/home/ray/ray_results is a local folder"),
    "no Optuna storage for the search": (
        lambda c: c.update(head_setup_commands=[x for x in c["head_setup_commands"] if "IAKD_OPTUNA" not in x]),
        "head_setup_commands: IAKD_OPTUNA_STORAGE is not set"),
    "Optuna study inside the container": (
        _replace_in_commands("head_setup_commands", "sqlite:////home/ray/mlflow/optuna.db",
                             "sqlite:////home/ray/optuna.db"),
        ("head_setup_commands: IAKD_OPTUNA_STORAGE=sqlite:////home/ray/optuna.db is inside the head's container, "
         "which `ray up` may replace; put the study in a folder mounted from the host (mounted: /home/ray/mlflow)")),
}


@pytest.mark.parametrize("edit, expected", list(BROKEN.values()), ids=list(BROKEN))
def test_broken_cluster_file_fails_naming_the_key_and_the_reason(shipped, tmp_path, edit, expected):
    config = copy.deepcopy(shipped)
    edit(config)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    problems = check_cluster_file(path)
    assert len(problems) == 1 and problems[0].startswith(expected), problems

    result = run_checker(path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"{path}: {problems[0]}"]


def test_credentials_written_in_the_file_are_refused(tmp_path):
    text = CLUSTER.read_text().replace(
        "  - pip install -q -e /home/ray/iakd\n",
        "  - pip install -q -e /home/ray/iakd\n  - export AWS_SECRET_ACCESS_KEY=abc123\n")
    number = text.splitlines().index("  - export AWS_SECRET_ACCESS_KEY=abc123") + 1
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    assert check_cluster_file(path) == [
        (f"line {number}: holds an AWS secret key or session token; write no credentials here: nodes get AWS access "
        "from their IAM instance profile")]


@pytest.mark.parametrize("content, reason", [("a: [unclosed\n", "not valid YAML"),
                                             ("- a list\n", "expected a mapping")])
def test_unreadable_cluster_file_is_one_line_and_exit_2(tmp_path, content, reason):
    path = tmp_path / "cluster.yaml"
    path.write_text(content)
    result = run_checker(path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {reason}")


# ------------------------------------------------------------------------------------------ prepare_data


def write_fake_cifar100(root: Path, n: int = 4) -> None:
    """A few images in the official python-version files, in the folder layout iakd.data reads."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": list(range(n))}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"x"] * 100}, protocol=2))


def test_prepare_data_rejects_an_unknown_dataset_with_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "iakd.prepare_data", "--dataset", "cifar1000", "--dir",
                             str(tmp_path)], check=False, capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        ("error: --dataset: 'cifar1000' is not allowed; one of cifar10, cifar100 (digits is embedded, ImageFolder "
        "data is copied by hand)")]
    assert not any(tmp_path.iterdir())


def test_prepare_data_usage_error_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_data.main(["--dataset", "cifar100"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: the following arguments are required: --dir"]


def test_prepare_data_downloads_nothing_when_the_files_are_there(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    write_fake_cifar100(tmp_path)

    def no_download(*args, **kwargs):
        raise AssertionError("prepare_data downloaded although the data was there")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", no_download)
    assert prepare_data.main(["--dataset", "cifar100", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"cifar100: ready in {tmp_path / 'cifar-100-python'}"
    # the layout prepare_data checks is the one iakd.data reads
    assert len(load_dataset("cifar100", tmp_path, val_fraction=0.25).train) == 3


def test_prepare_data_downloads_once_when_two_processes_race(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def slow_download(root: str, train: bool, download: bool) -> None:
        calls.append(root)
        time.sleep(0.3)  # the other caller arrives while this one still fetches
        write_fake_cifar100(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", slow_download)
    # flock locks belong to each open() of the lock file, so two threads contend like two processes
    threads = [threading.Thread(target=prepare_data.prepare, args=("cifar100", tmp_path / "data"),
                                kwargs={"log": lambda _: None}) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert calls == [str(tmp_path / "data")]
    assert prepare_data.is_present("cifar100", tmp_path / "data")
