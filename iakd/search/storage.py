"""Files the driver shares with every trial through the Tune storage path.

The storage path is a local or NFS folder, or a URI that pyarrow understands (``s3://``, ``gs://``, ...), the
same one Ray Tune writes its experiments to. On a folder every node reads the file in place; behind a URI each
node downloads it once into a node-local cache. This is how trials on any node read the sweep's teacher, which
the driver trains or checks once before the sweep.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import pickletools
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs

from iakd.checkpoint import publish
from iakd.errors import ConfigError

__all__ = ["is_uri", "join", "exists", "upload", "download", "fetch", "sweep_lock", "check_restorable"]


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` locations (object stores), False for plain paths."""
    return "://" in location


def join(storage_path: str, *parts: str) -> str:
    return "/".join([storage_path.rstrip("/"), *parts])


def _resolve(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    return pyarrow.fs.FileSystem.from_uri(location)


def exists(location: str) -> bool:
    fs, path = _resolve(location)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.File


def upload(local: str | Path, location: str) -> str:
    """Copy a local file to ``location`` (its folders are made as needed); return ``location``.

    The copy goes to a temporary name beside it first and is then moved into place: a driver killed mid-upload
    never leaves a partial file that later runs would take for the published one (object stores write whole
    objects anyway; folders and NFS need the move).
    """
    fs, path = _resolve(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    partial = f"{path}.{uuid.uuid4().hex}.partial"
    pyarrow.fs.copy_files(str(Path(local).resolve()), partial, destination_filesystem=fs)
    try:
        fs.move(partial, path)
    except BaseException:
        fs.delete_file(partial)
        raise
    return location


def download(location: str, local: str | Path) -> Path:
    """Copy ``location`` to the local file ``local`` atomically (a reader never sees half a file)."""
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    fs, path = _resolve(location)
    handle, partial = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.")
    os.close(handle)
    try:
        pyarrow.fs.copy_files(path, partial, source_filesystem=fs)
        publish(partial, local)
    finally:
        Path(partial).unlink(missing_ok=True)
    return local


def fetch(location: str, cache_dir: str | Path | None = None) -> Path:
    """A local path to read ``location`` from: a plain path as it is; a URI through a node-local copy,
    downloaded on the first request and reused by every later trial on the node."""
    if not is_uri(location):
        return Path(location)
    if cache_dir is None:
        cache_dir = Path(tempfile.gettempdir()) / "iakd-shared"
    digest = hashlib.sha256(location.encode()).hexdigest()[:12]
    local = Path(cache_dir) / f"{digest}-{location.rsplit('/', 1)[-1]}"
    if not local.is_file():
        download(location, local)
    return local


@contextlib.contextmanager
def sweep_lock(storage_path: str, experiment: str) -> Iterator[None]:
    """Hold the experiment's lock on a storage folder for the whole sweep: a second sweep of the same experiment
    there is refused (a ConfigError naming the lock) instead of sharing its Tune folders and overwriting its state.

    The lock is ``flock`` on ``<storage_path>/.<experiment>.lock``: the kernel releases it when the holder dies,
    so a killed driver never blocks the next sweep (the empty file may stay). Behind a URI (``s3://``) there is no
    such lock: one sweep per experiment there is the user's to keep."""
    if is_uri(storage_path):
        yield
        return
    import fcntl

    folder = Path(storage_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{experiment}.lock"
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"experiment {experiment!r}: another sweep of it is running on {storage_path} (it holds "
                              f"{path}); wait for it to end, or use another experiment name or storage path") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_restorable(folder: str) -> None:
    """Before ``--resume`` hands a Tune folder to ``Tuner.restore``, which unpickles the files in it (``tuner.pkl``,
    the searcher's state) and reads its JSON state: on a local or NFS folder, the folder and those files must be
    the user's own and not writable by others, as ssh asks of its keys, and each must be whole (a pickle is
    parsed to its end with :mod:`pickletools`, which runs nothing); a ConfigError names the first that is not.
    Behind a URI nothing can be checked: such a storage path must be as private as the code (README, "What
    --resume trusts")."""
    if is_uri(folder):
        return
    root = Path(folder)
    files = sorted(p for p in root.iterdir() if p.suffix in (".pkl", ".json"))
    for path in [root, *files]:
        info = path.stat()
        if info.st_uid != os.getuid():
            why = f"is owned by user id {info.st_uid}, not by you ({os.getuid()})"
        elif info.st_mode & 0o002:
            why = "is writable by every user"
        else:
            continue
        raise ConfigError(f"--resume: {path} {why}; Tune unpickles what that folder holds, so it must be yours "
                          "alone (chmod o-w, or start a new sweep)")
    for path in files:
        damage = _damage(path)
        if damage:
            raise ConfigError(f"--resume: {path} is damaged ({damage}), so Tune cannot restore {root}: put the "
                              "folder back from a copy, or move it away and run the sweep again without --resume")


def _damage(path: Path) -> str | None:
    """What is wrong with a Tune state file (a pickle cut short, JSON that does not parse), or None. Some of Tune's
    ``.json`` files are pickles (``basic-variant-state-*.json``, ``search_gen_state-*.json``): a file that
    starts with the pickle protocol's opcode is read as one."""
    data = path.read_bytes()
    try:
        if path.suffix == ".pkl" or data[:1] == pickle.PROTO:
            for _ in pickletools.genops(data):
                pass
        else:
            json.loads(data)
    except Exception as error:  # json's and pickletools' own errors (ValueError, UnicodeDecodeError, ...)
        return str(error) or type(error).__name__
    return None
