"""The hardened IDX reader (MNIST's format, optionally gzip-compressed): header, size and memory budget
checked before any data is read, the data streamed into its final array (``safe_files.read_into``).
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from . import safe_files
from .safe_files import (
    DECODE_ERRORS,
    ArrayHeader,
    FileFormatError,
    check_budget,
    existing_file,
    one_line,
)
from .safe_zip import check_sizes

# IDX (LeCun's MNIST page): 2 zero bytes, a type code, the number of dimensions, then one
# big-endian uint32 per dimension, then the data, big-endian, row-major.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open_idx(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _idx_header(stream, path: str) -> ArrayHeader:
    magic = stream.read(4)
    if len(magic) < 4:
        raise FileFormatError(f"{path}: not an IDX file (only {len(magic)} bytes, expected a 4-byte magic number)")
    if magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_TYPES:
        raise FileFormatError(
            f"{path}: not an IDX file: bad magic number 0x{magic.hex()} (expected 0x0000TTDD with "
            f"type TT in {{08, 09, 0b, 0c, 0d, 0e}})"
        )
    dtype, ndim = np.dtype(IDX_TYPES[magic[2]]), magic[3]
    if ndim == 0:
        raise FileFormatError(f"{path}: IDX magic number says 0 dimensions")
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise FileFormatError(f"{path}: truncated IDX header: {4 + len(dims)} bytes, expected {4 + 4 * ndim}")
    shape = struct.unpack(f">{ndim}I", dims)
    if 0 in shape:
        raise FileFormatError(f"{path}: IDX header declares shape {shape}: a dimension of size 0")
    return ArrayHeader(shape, dtype, False, 4 + 4 * ndim)


def _check_idx_size(path: str, header: ArrayHeader) -> None:
    """The declared bytes against the file size (plain) or the gzip trailer's ISIZE (``.gz``)."""
    expected = header.offset + header.nbytes
    if path.endswith(".gz"):
        with open(path, "rb") as raw:  # ISIZE: the last 4 bytes, uncompressed size mod 2**32 (RFC 1952)
            raw.seek(-4, os.SEEK_END)
            recorded, what = struct.unpack("<I", raw.read(4))[0], "the gzip trailer records"
        mismatch = recorded != expected % 2**32
    else:
        recorded, what = os.path.getsize(path), "file has"
        mismatch = recorded != expected
    if mismatch:
        raise FileFormatError(
            f"{path}: IDX size mismatch: header says shape {header.shape} of {header.dtype.str[1:]} "
            f"({expected} bytes with the header), {what} {recorded} bytes"
        )


def idx_header(path) -> ArrayHeader:
    """Shape and dtype an IDX file (optionally ``.gz``) declares, reading only its header.

    Raises FileFormatError naming the file on a bad magic number, 0 dimensions, a truncated
    header, a dimension of size 0, or a declared size that differs from the file size (plain)
    or from the size the gzip trailer records (``.gz``, modulo 2**32, so a gzip file of several
    members is refused unless its last member records the total).
    """
    path = existing_file(path, "IDX file")
    try:
        with _open_idx(path) as stream:
            header = _idx_header(stream, path)
        _check_idx_size(path, header)
    except FileFormatError:
        raise
    except DECODE_ERRORS as error:
        raise FileFormatError(f"{path}: cannot read IDX file ({one_line(error)})") from None
    return header


def read_idx(path, max_bytes: int | None = None) -> np.ndarray:
    """One IDX file (optionally gzip-compressed: name ending in ``.gz``), in native byte order.

    The checks of :func:`idx_header`, then the declared bytes against the memory budget, then
    the data streamed into a preallocated array, never inflating more than declared + 1 byte.

    Raises
    ------
    FileFormatError (a ValueError)
        naming the file, for a bad magic number, type code, dimensions or size, a damaged gzip
        stream, a missing file, or a declared size above the memory budget.
    """
    path = existing_file(path, "IDX file")
    try:
        with _open_idx(path) as stream:
            header = _idx_header(stream, path)
            check_budget(header.nbytes, f"{path}: IDX shape {header.shape} {header.dtype.str[1:]}", max_bytes)
            _check_idx_size(path, header)
            if path.endswith(".gz"):  # the ratio cap of the npz members, on the gzip file as a whole
                check_sizes(os.path.getsize(path), header.offset + header.nbytes, path)
            array = safe_files.read_into(stream, header, path)  # through the module: one place to intercept
    except FileFormatError:
        raise
    except DECODE_ERRORS as error:
        raise FileFormatError(f"{path}: cannot read IDX file ({one_line(error)})") from None
    return array  # IDX is big-endian: read_into swapped it to native order in place


__all__ = ["IDX_TYPES", "idx_header", "read_idx"]
