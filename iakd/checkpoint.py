"""Checkpoint files: written atomically, read with ``weights_only=True``, with every RNG state a resume needs."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iakd.errors import ConfigError

__all__ = ["check_writable_folder", "save_atomic", "copy_atomic", "write_text_atomic", "atomic_path", "load_file",
           "capture_rng", "restore_rng", "CHECKPOINT_FORMAT"]

# v2: one generator per random stream (order, augment, swap) instead of one shared by order and augmentation.
CHECKPOINT_FORMAT = "iakd-checkpoint-v2"


def check_writable_folder(folder: str | Path, what: str) -> None:
    """``folder`` is a writable folder, or could be made as one: its nearest existing ancestor is a folder in
    which a folder can really be made (tried, and removed at once: permission bits say nothing of ``/proc`` or a
    read-only mount, and root passes them all). Nothing is left behind; a ConfigError names ``what``."""
    folder = Path(folder)
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what}: {folder} is not a writable folder ({existing} is a file)")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".iakd-probe-", dir=existing))
    except OSError as e:
        raise ConfigError(f"{what}: {folder} is not a writable folder (nothing can be made in {existing}: "
                          f"{e.strerror or type(e).__name__})") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import (single-threaded): os.umask can only be read by setting it, which would race other threads.
_FILE_MODE = 0o666 & ~_umask()


def publish(tmp: str | Path, path: str | Path) -> None:
    """Rename the finished temporary file ``tmp`` to ``path`` with the permissions a plain ``open`` gives
    (mkstemp makes its files private, 0600: a report or teacher file others cannot read)."""
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)


def _write_atomic(path: str | Path, write: Any) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save ``obj`` to ``path`` atomically."""
    return _write_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return _write_atomic(path, lambda f: f.write(text.encode("utf-8")))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a library that writes files by name (Parquet, PNG); renamed to
    ``path`` when the block ends without an error, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def copy_atomic(source: str | Path, path: str | Path) -> Path:
    """Copy the file ``source`` to ``path`` atomically."""
    with open(source, "rb") as src:
        return _write_atomic(path, lambda f: shutil.copyfileobj(src, f))


def load_file(path: str | Path, *, what: str = "checkpoint", required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a torch file safely; a missing, corrupt or foreign file is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle of arbitrary objects, not a torch file at all
        text = str(e).strip()
        if text.startswith("Weights only load failed") and "GLOBAL" in text:  # a pickle that names code to call
            raise ConfigError(f"{what} {path}: refused, it holds objects other than tensors and plain data (a pickle "
                              "that could run code); files are read with torch.load(weights_only=True)") from None
        if text.startswith("Weights only load failed"):  # torch's advice to retry with weights_only=False: not ours
            reason = "not a file torch.save wrote, or one cut short"
        else:
            reason = text.splitlines()[0] if text else type(e).__name__
        raise ConfigError(f"{what} {path}: unreadable or corrupt ({reason[:160]})") from None
    if not isinstance(obj, dict) or any(k not in obj for k in required):
        raise ConfigError(f"{what} {path}: not a {what} file (expected keys: {', '.join(required)})")
    return obj


def capture_rng(**generators: torch.Generator) -> dict[str, Any]:
    """The global torch / numpy / python RNG states and those of the named generators, as weights-only data."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy's state is a tuple holding an ndarray; stored as a tensor so weights_only can read it back
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def restore_rng(state: dict[str, Any], **generators: torch.Generator) -> None:
    """Put back what `capture_rng` took."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for name, g in generators.items():
        g.set_state(state["generators"][name])
