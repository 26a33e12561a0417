"""The IDX file format of MNIST and Fashion-MNIST: one file read and checked, gzipped or not.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), each dimension as a
big-endian uint32, then the values in C order. Every way a file can be wrong (not IDX, another type or shape than
expected, fewer or more bytes than its header promises) raises a :class:`DataError` naming the file.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from iakd.errors import DataError

__all__ = ["read_idx", "IDX_TYPES"]

# Type code (the magic number's third byte) -> big-endian numpy dtype, as the format defines them.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path, how: str) -> bytes:
    """The file's bytes, gunzipped when it starts with gzip's magic (whatever its name says)."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error}); {how}") from None
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:  # a truncated or damaged archive
        raise DataError(f"{path}: not a readable gzip file ({error}); {how}") from None


def read_idx(path: str | Path, *, dtype: np.dtype | type = np.uint8, ndim: int | None = None,
             how: str = "replace it with the official file") -> np.ndarray:
    """The array an IDX file holds (gzipped or not), checked to be of ``dtype`` with ``ndim`` dimensions.

    ``how`` ends every error message: what the user can do about a bad file.
    """
    path = Path(path)
    data = _read_bytes(path, how)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (magic number {data[:4].hex() or 'missing'}); {how}")
    file_dtype, dims = IDX_TYPES[data[2]], data[3]
    if np.dtype(dtype).kind != file_dtype.kind or np.dtype(dtype).itemsize != file_dtype.itemsize:
        raise DataError(f"{path}: holds {file_dtype.name} values, expected {np.dtype(dtype).name}; {how}")
    if ndim is not None and dims != ndim:
        raise DataError(f"{path}: has {dims} dimensions, expected {ndim}; {how}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise DataError(f"{path}: truncated in its header ({len(data)} bytes); {how}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=dims, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * file_dtype.itemsize
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(f"{path}: {state} ({len(data)} bytes, the header {shape} needs {expected}); {how}")
    return np.frombuffer(data, dtype=file_dtype, offset=header).reshape(shape).astype(dtype, copy=False)
