"""Bad input is refused at the door: one line naming the key, flag or file, exit code 2, and nothing started or
written (no Ray session, no MLflow database or run, no teacher file, no output folder)."""

from __future__ import annotations

import gzip
import importlib.util
import socket
from pathlib import Path

import pytest
import torch
from idx_files import write_idx_dataset

from iakd import models
from iakd.teachers import save_teacher
from iakd.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["data.image_size=8", "optim.epochs=1", "optim.batch_size=64", "teacher.arch=resnet14", "student.arch=resnet8"]


def _search_main():
    spec = importlib.util.spec_from_file_location("search_script", ROOT / "tune" / "search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Input files the bad cases point at: a config, broken and foreign teacher files, a resumable run."""
    tmp = tmp_path_factory.mktemp("inputs")
    (tmp / "run.yaml").write_text("method: {name: kd}\n")
    (tmp / "corrupt.pth").write_bytes(b"not a torch file")
    save_teacher(tmp / "cifar_teacher.pth", models.build("resnet14", 10), arch="resnet14", dataset="cifar10",
                 num_classes=10, accuracy=90.0)
    torch.save({"model": [1, 2, 3]}, tmp / "no_state_dict.pth")
    (tmp / "a_file").write_text("")
    (tmp / "random.db").write_bytes(bytes(range(256)) * 20)  # not SQLite
    import sqlite3

    with sqlite3.connect(tmp / "foreign.db") as db:  # SQLite, but another program's
        db.execute("CREATE TABLE notes (text)")
    (tmp / "empty.yaml").write_text("")
    # MLflow's and Optuna's databases cut short (a copy interrupted, a full disk)
    import optuna

    from iakd import tracking

    tracking.connect(f"sqlite:///{tmp / 'mlflow_full.db'}", "x")
    optuna.storages.RDBStorage(f"sqlite:///{tmp / 'optuna_full.db'}").engine.dispose()
    for store in ("mlflow", "optuna"):
        full = (tmp / f"{store}_full.db").read_bytes()
        (tmp / f"{store}_truncated.db").write_bytes(full[:len(full) // 2])
    # Fashion-MNIST's four files with the test images cut short, as an interrupted copy leaves them.
    write_idx_dataset(tmp / "fashion", gz=True)
    images = tmp / "fashion" / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-784]))
    # A finished one-epoch ce run to resume from (the catalogue's --resume cases compare against it).
    assert train_main(["--config", str(tmp / "run.yaml"), "--out", str(tmp / "done"), *FAST, "method.name=ce"]) == 0
    return tmp


def _train_cases(f: Path) -> list[tuple[list[str], str]]:
    run = ["--config", str(f / "run.yaml")]
    return [
        (["--config", str(f / "missing.yaml")], f"config file {f / 'missing.yaml'} not found"),
        ([*run, "optim.lrr=0.1"], "optim.lrr: unknown key; did you mean 'lr'?"),
        ([*run, "studnet.arch=resnet8"], "studnet: unknown key; did you mean 'student'?"),
        ([*run, "student.arch=resnet9"], "student.arch: 'resnet9' is not allowed; known architectures: "),
        ([*run, "method.name=fitnet"], "method.name: 'fitnet' is not allowed; known: ce, kd, iakd, iakd+kd"),
        ([*run, "method.name=iakd", "method.granularity=4"],
         "method.granularity: 4 is impossible for resnet20 -> resnet8: stage 0 has 1 student and 3 teacher blocks"),
        ([*run, "method.name=iakd", "student.arch=vgg8"],
         "student.arch: 'vgg8' has 5 stages and teacher.arch 'resnet20' 3; swapping needs the same number"),
        ([*run, "method.name=iakd", "method.kd_weight=0.5"], "method.kd_weight: 0.5 is not allowed; method.name=iakd "
                                                             "has no KD term"),
        ([*run, "schedule.p0=1.5"], "schedule.p0: 1.5 is outside [0, 1]"),
        ([*run, "schedule.family=sawtooth"], "schedule.family: 'sawtooth' is unknown; known: constant, linear"),
        ([*run, "optim.lr=nan"], "optim.lr: 'nan' is not a finite number"),
        ([*run, "optim.weight_decay=.inf"], "optim.weight_decay: inf is not a finite number"),
        ([*run, "optim.lr=0"], "optim.lr: 0.0 is not allowed; must be > 0"),
        ([*run, "optim.epochs=ten"], "optim.epochs: 'ten' is not int"),
        ([*run, "optim.milestones=[0.9, 0.5]"], "optim.milestones: [0.9, 0.5] is not allowed; must be increasing"),
        ([*run, "seed=-1"], "seed: -1 is not allowed; must be in [0, 2**32)"),
        ([*run, "data.split_seed=-3"], "data.split_seed: -3 is not allowed; must be in [0, 2**32)"),
        ([*run, "data.val_fraction=1.0"], "data.val_fraction: 1.0 is not allowed; must be in [0, 1)"),
        ([*run, "data.name=svhn"], "data.name: 'svhn' is not one of 'digits', 'fashion_mnist', 'mnist', 'cifar10', "
         "'cifar100', 'imagefolder'"),
        ([*run, "data.train_size=0"], "data.train_size: 0 is not allowed; must be > 0"),
        ([*run, "data.name=cifar100", f"data.dir={f / 'nowhere'}"],
         f"data.dir: {f / 'nowhere' / 'cifar-100-python'} not found"),
        ([*run, "data.name=imagefolder", f"data.dir={f / 'nowhere'}"],
         f"data.dir: {f / 'nowhere' / 'train'} not found"),
        ([*run, "data.name=fashion_mnist", f"data.dir={f / 'nowhere'}"],
         f"data.dir: {f / 'nowhere'} not found; fashion_mnist needs its four IDX files there: install them with "
         "`apt-get install dataset-fashion-mnist`"),
        ([*run, *FAST, "data.image_size=null", "method.name=ce", "data.name=fashion_mnist",
          f"data.dir={f / 'fashion'}"],
         f"{f / 'fashion' / 't10k-images-idx3-ubyte.gz'}: truncated (14912 bytes, the header (20, 28, 28) needs "
         "15696)"),
        ([*run, "device=tpu"], "device: 'tpu' is not one of 'auto', 'cpu', 'cuda'"),
        ([*run, "method.temperature=0"], "method.temperature: 0.0 is not allowed; must be > 0"),
        ([*run, "optim.lr"], "override 'optim.lr': expected key=value"),
        ([*run, *FAST, f"teacher.checkpoint={f / 'missing.pth'}"],
         f"teacher.checkpoint: {f / 'missing.pth'} not found"),
        ([*run, *FAST, f"teacher.checkpoint={f / 'corrupt.pth'}"],
         f"teacher checkpoint {f / 'corrupt.pth'}: unreadable or corrupt (not a file torch.save wrote, or one cut "
         "short)"),
        ([*run, *FAST, f"teacher.checkpoint={f / 'cifar_teacher.pth'}"],
         f"teacher checkpoint {f / 'cifar_teacher.pth'}: was trained on 'cifar10', but data.name is 'digits'"),
        ([*run, *FAST, f"teacher.checkpoint={f / 'no_state_dict.pth'}"],
         f"teacher checkpoint {f / 'no_state_dict.pth'}: its 'model' entry is not a state dict"),
        ([*run, "--out", str(f / "done"), "--resume", *FAST, "method.name=kd"],
         f"--resume: method.name is 'kd' here but 'ce' in {f / 'done' / 'checkpoint.pt'}"),
        ([*run, "--out", str(f / "done"), "--resume", *FAST, "method.name=ce", "optim.epochs=3"],
         f"--resume: optim.epochs is 3 here but 1 in {f / 'done' / 'checkpoint.pt'}"),
        # a folder that holds a run is never replaced without being asked to
        ([*run, "--out", str(f / "done"), *FAST, "method.name=ce"],
         f"--out {f / 'done'} already holds a run ({f / 'done' / 'checkpoint.pt'}); continue it with --resume, or "
         "start it over on purpose with --restart"),
        (["--config", str(f / "empty.yaml")], f"config file {f / 'empty.yaml'}: is empty"),
        ([*run, "--out", str(f / "a_file" / "out"), *FAST],
         f"--out (out_dir): {f / 'a_file' / 'out'} is not a writable folder ({f / 'a_file'} is a file)"),
        ([*run, "--out", "/proc/iakd-out", *FAST],
         "--out (out_dir): /proc/iakd-out is not a writable folder (nothing can be made in /proc"),
    ]


def _search_cases(f: Path) -> list[tuple[list[str], str]]:
    port = _closed_port()
    return [
        (["num_samples=0"], "num_samples: 0 is not allowed; must be >= 1"),
        (["resources.gpu=1.5"], "resources.gpu: 1.5 is not allowed; a fraction <= 1 or a whole number of GPUs"),
        (["confirm.top_k=-1"], "confirm.top_k: -1 is not allowed; must be >= 0"),
        (["confirm.seeds=[0, 1]"], "confirm.seeds: [0, 1] holds run.seed 0, the search's own seed"),
        (["run.optim.lr=nan"], "run.optim.lr: 'nan' is not a finite number"),
        (["space.schedule.p0={low: 2, high: 3}"], "space.schedule.p0: 2.0 is outside [0, 1]"),
        (["--storage-path", str(f / "a_file" / "ray")], f"--storage-path (storage_path): {f / 'a_file' / 'ray'} is not "
                                                        "a writable folder"),
        (["--tracking-uri", f"sqlite:///{f / 'a_file' / 'mlflow.db'}"],
         f"--tracking-uri (tracking_uri): {f / 'a_file'} is not a writable folder"),
        (["--tracking-uri", f"http://127.0.0.1:{port}"],
         f"--tracking-uri (tracking_uri): no MLflow server answers at http://127.0.0.1:{port} within 5 s"),
        (["--tracking-uri", "ftp://example"],
         "--tracking-uri (tracking_uri): 'ftp://example' is not a sqlite:/// path"),
        (["--address", f"127.0.0.1:{port}"], f"--address: no Ray cluster answers at 127.0.0.1:{port} within 5 s"),
        (["--address", "nowhere"], "--address: 'nowhere' is not host:port, ray://host:port, auto or local"),
        (["run.data.name=cifar100", f"run.data.dir={f / 'nowhere'}"],
         f"run.data.dir: {f / 'nowhere' / 'cifar-100-python'} not found"),
        (["run.data.name=fashion_mnist", "run.data.image_size=null", f"run.data.dir={f / 'nowhere'}"],
         f"run.data.dir: {f / 'nowhere'} not found; fashion_mnist needs its four IDX files there"),
        (["run.teacher.checkpoint=/nowhere/teacher.pth"], "run.teacher.checkpoint: /nowhere/teacher.pth not found"),
        (["--storage-path", "/proc/iakd-x"], "--storage-path (storage_path): /proc/iakd-x is not a writable folder"),
        (["--tracking-uri", f"sqlite:///{f}"], f"--tracking-uri (tracking_uri): {f} is a folder, not an MLflow "
                                                "database file"),
        ([f"optuna_storage=sqlite:///{f}"], f"optuna_storage: {f} is a folder, not an Optuna database file"),
        (["optuna_storage=optuna.db"], "optuna_storage: 'optuna.db' is not an RDB URL"),
        # names that would escape the storage path or analysis_out/, or break MLflow's filter strings
        (["--experiment", ".."], "experiment: '..' is not allowed; a name of letters, digits, '_', '.' and '-'"),
        (["--experiment", "it's mine"], "experiment: \"it's mine\" is not allowed; a name of letters, digits"),
        (["experiment=runs/x"], "experiment: 'runs/x' is not allowed; a name of letters, digits"),
        # what can only give an empty sweep: every trial failing, or every score NaN
        (["run.data.train_size=100000"], "run.data.train_size: 100000 is not in [1, 1294], the images of the digits "
                                         "training split"),
        (["run.data.val_fraction=0"], "run.data.val_fraction: 0.0 is not allowed; a search selects on the "
                                      "validation split"),
        (["run.data.val_fraction=0.0001"], "run.data.val_fraction: 0.0001 holds out no image of the digits training "
                                           "set"),
        # stores opened before any work: a corrupt or foreign file is one line naming it
        (["--tracking-uri", f"sqlite:///{f / 'random.db'}"],
         f"--tracking-uri (tracking_uri): {f / 'random.db'} is not an SQLite database (file is not a database)"),
        (["--tracking-uri", f"sqlite:///{f / 'foreign.db'}"],
         f"--tracking-uri (tracking_uri): {f / 'foreign.db'} is an SQLite database but not MLflow's (it has no "
         "experiments table)"),
        ([f"optuna_storage=sqlite:///{f / 'random.db'}"], f"optuna_storage: {f / 'random.db'} is not an SQLite "
                                                          "database"),
        ([f"optuna_storage=sqlite:///{f / 'foreign.db'}"], f"optuna_storage: {f / 'foreign.db'} is an SQLite database "
                                                           "but not Optuna's (it has no studies table)"),
        (["--tracking-uri", f"sqlite:///{f / 'mlflow_truncated.db'}"],
         f"--tracking-uri (tracking_uri): {f / 'mlflow_truncated.db'} is not an SQLite database (database disk image "
         "is malformed)"),
        ([f"optuna_storage=sqlite:///{f / 'optuna_truncated.db'}"],
         f"optuna_storage: {f / 'optuna_truncated.db'} is not an SQLite database (database disk image is malformed)"),
        # keys a search decides itself: refused, not silently ignored
        (["run.out_dir=mine"], "run.out_dir: 'mine' is not used by a search: each trial writes in its own Tune folder"),
        (["run.teacher.cache_dir=mine"], "run.teacher.cache_dir: 'mine' is not used by a search on a folder"),
    ]


def _nothing_started_or_written(cwd: Path) -> None:
    import ray

    assert not ray.is_initialized()
    assert sorted(p.name for p in cwd.iterdir()) == []  # no mlflow.db, runs/, ray_results/, analysis_out/


TRAIN_CASES, SEARCH_CASES = 37, 33  # the parametrized tests below run each case of the catalogue


def test_the_catalogue_runs_every_case_it_holds(files):
    assert (len(_train_cases(files)), len(_search_cases(files))) == (TRAIN_CASES, SEARCH_CASES)


@pytest.mark.parametrize("index", range(TRAIN_CASES))
def test_python_m_iakd_train_refuses_bad_input_with_one_line(index, files, tmp_path, monkeypatch, capsys):
    args, message = _train_cases(files)[index]
    monkeypatch.chdir(tmp_path)
    done = {p: p.stat().st_mtime_ns for p in (files / "done").iterdir()}
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {message}"), err
    _nothing_started_or_written(tmp_path)
    assert {p: p.stat().st_mtime_ns for p in (files / "done").iterdir()} == done  # the resumable run untouched


@pytest.mark.parametrize("index", range(SEARCH_CASES))
def test_tune_search_refuses_bad_input_with_one_line(index, files, tmp_path, monkeypatch, capsys):
    args, message = _search_cases(files)[index]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IAKD_TRACKING_URI", raising=False)
    monkeypatch.delenv("IAKD_STORAGE_PATH", raising=False)
    monkeypatch.delenv("IAKD_OPTUNA_STORAGE", raising=False)
    assert _search_main()(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {message}"), err
    _nothing_started_or_written(tmp_path)


def test_tune_search_takes_the_optuna_storage_from_the_cluster_environment(tmp_path, monkeypatch, capsys):
    """On a cluster the head's iakd.env sets IAKD_OPTUNA_STORAGE (cluster.yaml): the search uses it, checked at the
    door like the key it stands for."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IAKD_OPTUNA_STORAGE", "optuna.db")
    assert _search_main()(["num_samples=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: optuna_storage: 'optuna.db' is not an RDB URL"), err
    _nothing_started_or_written(tmp_path)


def test_overrides_may_stand_before_between_and_after_the_flags(tmp_path, files):
    args = ["optim.epochs=1", "--config", str(files / "run.yaml"), "method.name=ce", "--out", str(tmp_path / "o"),
            "data.image_size=8", "student.arch=resnet8"]
    assert train_main(args) == 0
    assert (tmp_path / "o" / "student.pt").is_file()


def test_a_run_without_a_validation_split_says_so_instead_of_printing_nan(tmp_path, files, capsys):
    """data.val_fraction=0 is allowed for a single run (it trains on every training image and reports test); its
    epochs show no val column and its last line says there is no best epoch, never 'nan%' or 'epoch None'."""
    args = ["--config", str(files / "run.yaml"), "--out", str(tmp_path / "o"), *FAST, "method.name=ce",
            "data.val_fraction=0"]
    assert train_main(args) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "None" not in out, out
    assert " val " not in out and " test " in out.splitlines()[-2]
    assert out.splitlines()[-1].startswith("finished: trained 1 epochs; no validation split (data.val_fraction=0), "
                                           "so no best epoch, last test ")
