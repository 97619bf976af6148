"""The IDX format of MNIST-style datasets, gzip-compressed or plain, read with numpy.

Layout: two zero bytes, a dtype code, the number of dims ``ndim``, then ``ndim`` big-endian uint32
sizes, then ``prod(dims)`` big-endian values. Every defect (missing file, bad gzip stream, wrong
magic, short or long payload) raises ``DataError`` with a one-line message naming the file.
"""

from __future__ import annotations

import gzip as _gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from bilinear.errors import DataError

# IDX dtype code -> numpy dtype (values are stored big-endian).
DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def read_raw(path: str | os.PathLike) -> bytes:
    """The decompressed bytes of an IDX file (gzip is detected by its magic bytes, not the name)."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if not blob.startswith(_GZIP_MAGIC):
        return blob
    try:
        return _gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as e:
        # OSError covers BadGzipFile and "CRC check failed"; EOFError a cut-off stream.
        raise DataError(f"{path}: corrupt gzip data ({e}); re-run `make data`") from None


def parse_idx(buf: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse decompressed IDX bytes into a native-endian, writable array of shape ``dims``."""
    if len(buf) < 4:
        raise DataError(f"{source}: too short to be an IDX file ({len(buf)} bytes)")
    zero, code, ndim = int.from_bytes(buf[:2], "big"), buf[2], buf[3]
    if zero != 0:
        raise DataError(f"{source}: not an IDX file (bad magic number 0x{buf[:4].hex()})")
    if code not in DTYPES:
        raise DataError(f"{source}: unknown IDX dtype code 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{source}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{source}: truncated IDX header (needs {header} bytes, file has {len(buf)})")
    dims = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    got = len(buf) - header
    if got != expected:
        kind = "truncated" if got < expected else "trailing bytes after"
        raise DataError(f"{source}: {kind} payload (dims {dims} need {expected} bytes, found {got})")
    # astype copies: the result owns writable, native-endian memory (torch.from_numpy wants that).
    return np.frombuffer(buf, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip or plain); e.g. MNIST train images give uint8 (60000, 28, 28)."""
    return parse_idx(read_raw(path), str(path))


def write_idx(path: str | os.PathLike, array: np.ndarray, gzip: bool = True) -> Path:
    """Write ``array`` (any shape, a dtype IDX supports) as an IDX file; used to make test fixtures.

    gzip output has mtime 0 so the same array always gives the same bytes (and the same checksum).
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of {sorted(str(d) for d in _CODES)}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs 1..255 dimensions, got {array.ndim}")
    code = _CODES[native]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=DTYPES[code]).tobytes()
    if gzip:
        data = _gzip.compress(data, mtime=0)
    path = Path(path)
    path.write_bytes(data)
    return path
