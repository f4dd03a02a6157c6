"""Builders of hostile .npz / .npy / IDX bytes for test_safe_files.py and test_hostile_files.py.

Everything is built by hand from the formats' definitions (zip directory, .npy header, IDX
header), so a test can produce files that np.savez never would: duplicate members, lying sizes,
foreign compression methods, headers with any text.
"""

from __future__ import annotations

import gzip
import io
import struct
import warnings
import zipfile

import numpy as np

METHODS = {"stored": zipfile.ZIP_STORED, "deflated": zipfile.ZIP_DEFLATED, "bzip2": zipfile.ZIP_BZIP2, "lzma": zipfile.ZIP_LZMA}


def npy_bytes(array: np.ndarray) -> bytes:
    """The .npy encoding numpy writes for `array` (version 1.0 unless it needs more)."""
    stream = io.BytesIO()
    # allow_pickle deliberately: this crafts the object-array payloads the readers must refuse.
    np.lib.format.write_array(stream, np.asarray(array), allow_pickle=True)
    return stream.getvalue()


def npy_header(text: str, version: int = 1) -> bytes:
    """Magic, version and a header of exactly `text` (padded with spaces and a newline to 64 bytes)."""
    encoded = text.encode("utf8" if version == 3 else "latin1")
    length_format = "<H" if version == 1 else "<I"
    prefix_size = 8 + struct.calcsize(length_format)
    padding = -(prefix_size + len(encoded) + 1) % 64
    encoded += b" " * padding + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(length_format, len(encoded)) + encoded


def zip_bytes(members, method: str = "stored", level: int | None = None) -> bytes:
    """A zip of (name, payload) pairs in order; duplicate names allowed (zipfile only warns)."""
    stream = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(stream, "w", compression=METHODS[method], compresslevel=level) as archive:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": wanted here
        for name, payload in members:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = METHODS[method]
            with archive.open(info, "w", force_zip64=len(payload) > 2**30) as handle:
                handle.write(payload)
    return stream.getvalue()


def npz_bytes(arrays: dict, method: str = "stored") -> bytes:
    return zip_bytes([(f"{key}.npy", npy_bytes(value)) for key, value in arrays.items()], method)


def zip_members(raw: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def set_recorded_size(raw: bytes, size: int) -> bytes:
    """Rewrite the uncompressed size of the first member in the central directory (and local header)."""
    raw = bytearray(raw)
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24 : central + 28] = struct.pack("<I", size)
    raw[22:26] = struct.pack("<I", size)
    return bytes(raw)


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype({0x08: ">u1", 0x0D: ">f4", 0x0E: ">f8", 0x0C: ">i4"}[code]).tobytes()


def gzip_bytes(payload: bytes, isize: int | None = None) -> bytes:
    """gzip of `payload`; `isize` overwrites the trailer's recorded length (a lying trailer)."""
    raw = bytearray(gzip.compress(payload, mtime=0))
    if isize is not None:
        raw[-4:] = struct.pack("<I", isize % 2**32)
    return bytes(raw)
