"""Checks at the door of a search: everything external, before any teacher training, Ray start or MLflow run.

Each check raises a one-line :class:`ConfigError` that names the flag (and the config key behind it), so a
typo in a path, a server that is down or a read-only folder costs a second, not minutes of retries and a
traceback, and leaves nothing behind.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from iakd.checkpoint import check_writable_folder
from iakd.config import TrainConfig
from iakd.data import CIFAR_LAYOUTS, check_data_folder, load_dataset
from iakd.errors import ConfigError
from iakd.search import storage
from iakd.search.storage import is_uri
from iakd.tracking import TIMEOUT_S, check_server, check_sqlite_store, sqlite_file

__all__ = ["check_storage", "check_tracking_uri", "check_optuna_storage", "check_address", "check_run_inputs",
           "TIMEOUT_S"]



def check_storage(storage_path: str) -> None:
    """The Tune storage path: a writable folder, or a URI whose filesystem answers."""
    what = "--storage-path (storage_path)"
    if not storage.is_uri(storage_path):
        check_writable_folder(Path(storage_path), what)
        return
    try:
        import pyarrow.fs

        filesystem, path = pyarrow.fs.FileSystem.from_uri(storage_path)
        filesystem.get_file_info(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types; the message is what matters
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{what}: {storage_path} cannot be reached ({reason})") from None


def check_tracking_uri(tracking_uri: str, timeout: float = TIMEOUT_S) -> None:
    """The MLflow tracking URI: a sqlite file in a writable folder, or an http(s) server that answers."""
    what = "--tracking-uri (tracking_uri)"
    if tracking_uri.startswith("sqlite:"):

        database = sqlite_file(tracking_uri)
        if database is None:  # in-memory
            return
        if database.is_dir():
            raise ConfigError(f"{what}: {database} is a folder, not an MLflow database file")
        check_writable_folder(database.resolve().parent, what)
        if database.exists() and not os.access(database, os.R_OK | os.W_OK):
            raise ConfigError(f"{what}: {database} is not a readable and writable file")
        check_sqlite_store(database, what, "experiments", "MLflow")
        return
    if tracking_uri.startswith(("http://", "https://")):
        check_server(tracking_uri, what, timeout)
        return
    raise ConfigError(f"{what}: {tracking_uri!r} is not a sqlite:/// path or an http(s):// server")


def check_optuna_storage(storage: str) -> None:
    """The Optuna study's storage: a sqlite file in a writable folder (not a folder itself), or another RDB URL
    (``postgresql://``, ``mysql://``: the database server MLflow uses, checked when the study opens)."""
    what = "optuna_storage"
    if storage.startswith("sqlite:"):
        database = sqlite_file(storage)
        if database is None:
            return
        if database.is_dir():
            raise ConfigError(f"{what}: {database} is a folder, not an Optuna database file")
        check_writable_folder(database.absolute().parent, what)
        check_sqlite_store(database, what, "studies", "Optuna")
        return
    if not is_uri(storage):
        raise ConfigError(f"{what}: {storage!r} is not an RDB URL (sqlite:///path, postgresql://..., mysql://...)")


def check_address(address: str | None, timeout: float = TIMEOUT_S) -> None:
    """A Ray cluster address (``host:port`` or ``ray://host:port``) whose port answers; ``auto``, ``local``
    and None are left to Ray, which answers quickly for them."""
    if address in (None, "auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address: {address!r} is not host:port, ray://host:port, auto or local")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ConfigError(f"--address: no Ray cluster answers at {address} within {timeout:g} s "
                          f"({e.strerror or type(e).__name__})") from None


def check_run_inputs(base: TrainConfig, key_prefix: str = "run.") -> None:
    """The folders a run reads its dataset from (its teacher file is checked when the experiment is loaded), and
    splits that give every trial something to train on and the search something to select on."""
    try:
        check_data_folder(base.data.name, base.data.dir, download=base.data.download)
        _check_splits(base)
    except ConfigError as e:
        raise ConfigError(f"{key_prefix}{e}") from None


def _check_splits(base: TrainConfig) -> None:
    """``data.train_size`` within the training split, and a validation split that holds an image: otherwise every
    trial fails (its retries too) or every score is NaN, and the sweep is empty. The dataset is read once here,
    unless it is still to be downloaded: seconds for the in-memory datasets; for an ImageFolder one listing of its
    files (no image is decoded), which every trial also makes."""
    data = base.data
    if data.val_fraction == 0:
        raise ConfigError("data.val_fraction: 0.0 is not allowed; a search selects on the validation split: "
                          "must be > 0")
    layout = CIFAR_LAYOUTS.get(data.name)
    if data.download and layout is not None and not (Path(data.dir) / layout.folder).is_dir():
        return  # the driver downloads it before the teacher trains
    dataset = load_dataset(data.name, data.dir, val_fraction=data.val_fraction, split_seed=data.split_seed,
                           image_size=data.image_size, num_workers=0, train_size=data.train_size)
    if len(dataset.val) == 0:
        raise ConfigError(f"data.val_fraction: {data.val_fraction} holds out no image of the {data.name} training "
                          "set; a search selects on the validation split")
