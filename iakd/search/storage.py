"""Files the driver shares with every trial through the Tune storage path.

The storage path is a local or NFS folder, or a URI that pyarrow understands (``s3://``, ``gs://``, ...), the
same one Ray Tune writes its experiments to. On a folder every node reads the file in place; behind a URI each
node downloads it once into a node-local cache. This is how trials on any node read the sweep's teacher, which
the driver trains or checks once before the sweep.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from pathlib import Path

import pyarrow.fs

from iakd.checkpoint import publish

__all__ = ["is_uri", "join", "exists", "upload", "download", "fetch"]


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
