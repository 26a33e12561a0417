"""python -m iakd.prepare_data --dataset cifar100 --dir /home/ray/data

Puts a CIFAR dataset into a node-local folder, in the layout ``iakd.data`` reads (``<dir>/cifar-10-batches-py/``
or ``<dir>/cifar-100-python/``, the official python-version files), so that trials never download. Every node of
a cluster runs it once from its setup commands; it is idempotent (nothing is fetched when the files are there)
and holds a file lock while it fetches, so two processes on one node do not download twice. Bad input exits
with code 2 and one line; a failed download exits with code 1.
"""

from __future__ import annotations

import argparse
import fcntl
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from iakd.data import CIFAR_LAYOUTS, CifarLayout
from iakd.errors import ConfigError

__all__ = ["is_present", "main", "prepare"]


def _layout(dataset: str) -> CifarLayout:
    if dataset not in CIFAR_LAYOUTS:
        raise ConfigError(f"--dataset: {dataset!r} is not allowed; one of {', '.join(CIFAR_LAYOUTS)} "
                          "(digits is embedded, ImageFolder data is copied by hand)")
    return CIFAR_LAYOUTS[dataset]


def is_present(dataset: str, data_dir: str | Path) -> bool:
    """True when every file ``iakd.data`` reads for ``dataset`` is already under ``data_dir``."""
    layout = _layout(dataset)
    folder = Path(data_dir) / layout.folder
    return all((folder / name).is_file() for name in layout.files)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # flock is released by the kernel when the process dies, so a killed download never leaves a stale lock.
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare(dataset: str, data_dir: str | Path, *, log: Callable[[str], None] = print) -> Path:
    """Download ``dataset`` into ``data_dir`` unless it is there already; return the dataset's folder.

    The check is repeated under the lock: a process that waited while another one downloaded finds the files
    and returns without fetching.
    """
    layout = _layout(dataset)
    root = Path(data_dir).expanduser()
    folder = root / layout.folder
    if is_present(dataset, root):
        log(f"{dataset}: ready in {folder}")
        return folder
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--dir: {root} is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--dir: cannot create {root}: {e.strerror}") from None
    with _locked(root / f".{dataset}.lock"):
        if is_present(dataset, root):
            log(f"{dataset}: ready in {folder} (fetched by another process)")
            return folder
        import torchvision.datasets

        log(f"{dataset}: downloading into {root}")
        # torchvision fetches the official archive, checks its md5 and unpacks it (train and test in one file).
        getattr(torchvision.datasets, layout.downloader)(root=str(root), train=True, download=True)
        missing = [name for name in layout.files if not (folder / name).is_file()]
        if missing:
            raise RuntimeError(f"{dataset}: the download left {folder} without {', '.join(missing)}")
    log(f"{dataset}: ready in {folder}")
    return folder


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (like every other bad input here), with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(prog="python -m iakd.prepare_data", description=__doc__.split("\n\n")[1])
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(CIFAR_LAYOUTS)}")
    parser.add_argument("--dir", required=True, help="the data folder (run config key data.dir)")
    args = parser.parse_args(argv)
    try:
        prepare(args.dataset, args.dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as e:  # network, disk, or a corrupt archive (torchvision's md5 check)
        print(f"error: {args.dataset}: download failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
