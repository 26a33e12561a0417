"""Small IDX files written the way the official MNIST / Fashion-MNIST files are, for the loader's tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from iakd.data import IDX_FILES

N_TRAIN, N_TEST = 50, 20


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """The IDX encoding of ``array``: magic (0, 0, type, ndim), big-endian uint32 dimensions, the values."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    data = idx_bytes(array)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_idx_dataset(folder: Path, *, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Four small official-format files in ``folder``: random 28x28 images, labels i % 10."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(N_TEST) % 10).astype(np.uint8),
    }
    for part, array in arrays.items():
        write_idx(folder / IDX_FILES[part], array, gz=gz)
    return arrays
