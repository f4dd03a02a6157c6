"""One hardened reader for every file ewc_ref reads: .npz archives, .npy arrays, IDX (MNIST) files.

A file from elsewhere is hostile until proven otherwise: it may be truncated, bit-flipped, a zip
bomb, hold pickled Python objects, or declare an array larger than the machine. This module is the
only place that turns bytes of such a file into arrays, and it does so in three steps, each of
which can refuse the file before the next one spends memory:

1. **Directory.** The zip central directory (or the IDX header) is read and every member is
   checked by name and kind: a .npz member must be ``KEY.npy``, unencrypted, not a folder, named
   once, and no two keys may be *ambiguous* (rule below).
2. **Headers.** A member's recorded sizes are checked first (``safe_zip.check_ratio``: a large
   member at a ratio no real array reaches is refused uninflated); its .npy header is inflated only
   as far as it goes (``safe_zip.MemberReader``) and parsed (``ast.literal_eval`` of a dict with
   exactly ``descr``, ``fortran_order``, ``shape``, at most ``MAX_HEADER_BYTES``; never pickle).
   ``prod(shape) x itemsize`` is checked against ``MAX_FILE_BYTES`` (summed over the file) and the
   recorded size; a caller's ``check`` sees the headers here, before any data is read.
3. **Data.** The decompressed bytes go straight into the preallocated array (or a caller's
   buffer, ``into=``), ``CHUNK_BYTES`` at a time, never more than declared; peak memory is the
   array plus a few MiB. The zip CRC-32 and the gzip CRC and length are verified at the end.

Every failure is one :class:`ValueError` whose message is a single line naming the file and,
when there is one, the key: zlib, zip, gzip, LZMA/BZ2, truncation, header and budget errors alike.

Ambiguous keys: equal once every run of digits is read as an integer (``0.weight`` and
``00.weight``, ``block.1`` and ``block.01``); such a file is refused naming both, not one silently kept.

Budgets (module constants, read at call time, so a user with more memory can raise them)
----------------------------------------------------------------------------------------
================  ========  ============================================================
name              default   what it bounds
================  ========  ============================================================
MAX_FILE_BYTES    4 GiB     declared bytes of all arrays of one file (a 2 GiB dense P x P
                            curvature fits with room); ``max_bytes=`` overrides per call
MAX_HEADER_BYTES  10,000    one .npy header (numpy's own ``max_header_size`` default)
CHUNK_BYTES       4 MiB     decompressed bytes held in flight while filling an array
================  ========  ============================================================

This module imports only the standard library and numpy, so every layer of ewc_ref may use it.
"""

from __future__ import annotations

import ast
import gzip
import lzma
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from .safe_zip import FileFormatError, MemberReader, check_ratio

MAX_FILE_BYTES = 4 * 1024**3
MAX_HEADER_BYTES = 10_000
CHUNK_BYTES = 4 * 1024**2

NPY_MAGIC = b"\x93NUMPY"
# .npy format version -> (struct format of the header length, text encoding of the header)
NPY_VERSIONS = {1: ("<H", "latin1"), 2: ("<I", "latin1"), 3: ("<I", "utf8")}
NPY_HEADER_KEYS = {"descr", "fortran_order", "shape"}
# dtype kinds a file may hold: booleans, integers, floats, complex, bytes and unicode strings.
# Objects (pickle), structured/void, datetimes are refused in step 2.
ALLOWED_KINDS = "biufcSU"

# Every exception the standard library's decoders raise for a damaged stream.
DECODE_ERRORS = (
    zipfile.BadZipFile, zlib.error, gzip.BadGzipFile, lzma.LZMAError, EOFError, OSError,
    NotImplementedError, RuntimeError, struct.error, UnicodeDecodeError, OverflowError,
)


@dataclass(frozen=True)
class ArrayHeader:
    """What a .npy header (or IDX header) declares, before any data is read.

    Attributes
    ----------
    shape : declared shape, non-negative Python ints
    dtype : declared dtype (byte order as in the file)
    fortran_order : column-major data
    offset : bytes before the data (the header's own length)
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        """prod(shape) x itemsize, computed in Python ints (no overflow)."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count * self.dtype.itemsize


# ----------------------------------------------------------------------------- budget
def format_bytes(n: int) -> str:
    """'1.5 GiB', '12.0 KiB', '7 bytes'."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def check_budget(nbytes: int, what: str, max_bytes: int | None = None) -> None:
    """Raise FileFormatError naming `what` when `nbytes` exceeds the budget (default MAX_FILE_BYTES)."""
    limit = MAX_FILE_BYTES if max_bytes is None else max_bytes
    if nbytes > limit:
        raise FileFormatError(
            f"{what} needs {format_bytes(nbytes)} ({nbytes} bytes), above the memory budget of "
            f"{format_bytes(limit)} (ewc_ref.safe_files.MAX_FILE_BYTES)"
        )


def one_line(error: BaseException) -> str:
    """An exception as one line of text, its type named (zlib.error, not error): the tail of a refusal."""
    name = type(error).__name__
    if name == "error":  # zlib.error
        name = f"{type(error).__module__}.error"
    text = " ".join(str(error).split())
    return f"{name}: {text}" if text else name


# ----------------------------------------------------------------------------- .npy headers
def _read_exact(stream, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise FileFormatError(f"{what}: truncated ({len(data)} of {n} bytes)")
    return data


def parse_npy_header(stream, where: str) -> ArrayHeader:
    """Read the magic, version and header dict of a .npy stream; never more than MAX_HEADER_BYTES.

    Parameters
    ----------
    stream : binary file object positioned at the start of the .npy data
    where : '<file>: key <key>' used in every message

    Raises
    ------
    FileFormatError
        not a .npy array, unknown version, oversized or malformed header, shape not a tuple of
        non-negative ints, a dtype that holds Python objects or is not numeric/string.
    """
    prefix = _read_exact(stream, len(NPY_MAGIC) + 2, f"{where}: .npy header")
    if prefix[: len(NPY_MAGIC)] != NPY_MAGIC:
        raise FileFormatError(f"{where}: not a .npy array (magic {prefix[:6]!r}, expected {NPY_MAGIC!r})")
    major, minor = prefix[-2], prefix[-1]
    if major not in NPY_VERSIONS or minor != 0:
        raise FileFormatError(f"{where}: unsupported .npy format version {major}.{minor} (expected 1.0, 2.0 or 3.0)")
    length_format, encoding = NPY_VERSIONS[major]
    length_size = struct.calcsize(length_format)
    (length,) = struct.unpack(length_format, _read_exact(stream, length_size, f"{where}: .npy header length"))
    if length > MAX_HEADER_BYTES:
        raise FileFormatError(f"{where}: .npy header of {length} bytes, above the limit of {MAX_HEADER_BYTES}")
    text = _read_exact(stream, length, f"{where}: .npy header").decode(encoding)
    try:
        fields = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError) as error:
        raise FileFormatError(f"{where}: malformed .npy header ({one_line(error)})") from None
    if not isinstance(fields, dict) or set(fields) != NPY_HEADER_KEYS:
        raise FileFormatError(f"{where}: malformed .npy header: expected a dict with keys {sorted(NPY_HEADER_KEYS)}")
    shape, fortran_order = fields["shape"], fields["fortran_order"]
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise FileFormatError(f"{where}: .npy header shape must be a tuple of non-negative integers, got {shape!r}")
    if type(fortran_order) is not bool:
        raise FileFormatError(f"{where}: .npy header fortran_order must be True or False, got {fortran_order!r}")
    try:
        dtype = np.lib.format.descr_to_dtype(fields["descr"])
    except (ValueError, TypeError, KeyError, IndexError, SyntaxError, RecursionError) as error:
        raise FileFormatError(f"{where}: .npy header descr {fields['descr']!r} is not a dtype ({one_line(error)})") from None
    if dtype.hasobject:
        raise FileFormatError(f"{where} holds Python objects (pickled); refused, expected a numeric or string array")
    if dtype.kind not in ALLOWED_KINDS or dtype.itemsize == 0 or dtype.subdtype is not None:
        raise FileFormatError(f"{where}: dtype {dtype} is not supported; expected a numeric or string array")
    return ArrayHeader(tuple(shape), dtype, fortran_order, len(prefix) + length_size + length)


def _fits(out, header: ArrayHeader) -> bool:
    """`out` can receive the data of `header` as they are: same shape, the dtype in native order, C order."""
    return (isinstance(out, np.ndarray) and out.shape == header.shape and out.flags.c_contiguous and out.flags.writeable
            and out.dtype == header.dtype.newbyteorder("=") and not header.fortran_order)


def read_into(stream, header: ArrayHeader, where: str, out: np.ndarray | None = None) -> np.ndarray:
    """Fill `out` (when it fits the header) or a new array of header.nbytes from `stream` in CHUNK_BYTES
    pieces; refuse extra bytes."""
    nbytes = header.nbytes
    try:
        raw = out.reshape(-1).view(np.uint8) if _fits(out, header) else np.empty(nbytes, dtype=np.uint8)
    except MemoryError:
        raise FileFormatError(f"{where}: cannot allocate {format_bytes(nbytes)} for shape {header.shape} {header.dtype}") from None
    view, filled = memoryview(raw), 0
    while filled < nbytes:  # straight into the array: no second copy of the data is ever held
        got = stream.readinto(view[filled : filled + min(CHUNK_BYTES, nbytes - filled)])
        if not got:
            raise FileFormatError(f"{where}: truncated data: {filled} of {nbytes} bytes declared by shape {header.shape} {header.dtype}")
        filled += got
    if stream.read(1):
        raise FileFormatError(f"{where}: more data than shape {header.shape} {header.dtype} declares ({nbytes} bytes)")
    if _fits(out, header):
        return out if header.dtype.isnative else out.byteswap(inplace=True)
    order = "F" if header.fortran_order else "C"
    return _native(raw.view(header.dtype).reshape(header.shape, order=order))


def _native(array: np.ndarray) -> np.ndarray:
    """`array` in the machine's byte order: big-endian ('>f8', '>i4', '>U5') swapped in place, no copy."""
    if array.dtype.isnative:
        return array
    return array.byteswap(inplace=True).view(array.dtype.newbyteorder("="))


# ----------------------------------------------------------------------------- .npz
def canonical_key(key: str) -> tuple:
    """The key with every run of digits read as an integer: '00.weight' -> ('', 0, '.weight')."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", key)))


def check_path(path, name: str = "path") -> str:
    """`path` as a str when it is a str or an os.PathLike naming a str; else TypeError naming `name`.

    bytes paths are refused (every message of ewc_ref names files as text); an empty name is a ValueError.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{name}: expected a path (str or os.PathLike), got {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"{name}: expected a path (str or os.PathLike) naming text, got {type(text).__name__}")
    if not text:
        raise ValueError(f"{name}: expected a file name, got an empty path")
    if "\x00" in text:
        raise ValueError(f"{name}: a path may not contain a NUL character, got {text!r}")
    return text


def existing_file(path, what: str) -> str:
    """`path` (``check_path``) naming a regular file, else FileFormatError '<path>: <what> not found'."""
    path = check_path(path)
    if not os.path.isfile(path):
        raise FileFormatError(f"{path}: {what} not found" if not os.path.exists(path) else f"{path}: {what} is not a regular file")
    return path


def _members(archive: zipfile.ZipFile, path: str) -> dict[str, zipfile.ZipInfo]:
    """Step 1: key -> ZipInfo from the central directory, refusing what np.savez never writes."""
    members: dict[str, zipfile.ZipInfo] = {}
    seen: dict[tuple, str] = {}
    for info in archive.infolist():
        name = info.filename
        if info.is_dir() or not name.endswith(".npy") or len(name) == len(".npy"):
            raise FileFormatError(f"{path}: member {name!r} is not a .npy array (an .npz holds only KEY.npy members)")
        if info.flag_bits & 0x1:
            raise FileFormatError(f"{path}: member {name!r} is encrypted")
        key = name[: -len(".npy")]
        if key in members:
            raise FileFormatError(f"{path}: key {key!r} appears twice in the zip directory")
        other = seen.setdefault(canonical_key(key), key)
        if other != key:
            raise FileFormatError(
                f"{path}: keys {other!r} and {key!r} are ambiguous (equal once their digits are read as numbers); keep one"
            )
        members[key] = info
    return members


def _npz_headers(members, path, max_bytes) -> dict[str, ArrayHeader]:
    """Step 2: every member's .npy header, sizes checked against the budget and the directory.

    A member's recorded sizes are checked (safe_zip.check_ratio) before a byte of it is inflated,
    and the header is inflated only as far as it goes (safe_zip.MemberReader)."""
    headers, total, size = {}, 0, os.path.getsize(path)
    for key, info in members.items():
        where = f"{path}: key {key!r}"
        check_ratio(info, size, where)
        try:
            with MemberReader(path, info) as stream:
                header = parse_npy_header(stream, where)
        except FileFormatError:
            raise
        except DECODE_ERRORS as error:
            raise FileFormatError(f"{where}: damaged member ({one_line(error)})") from None
        total += header.nbytes
        check_budget(total, f"{where}: shape {header.shape} {header.dtype} (with the keys before it)", max_bytes)
        if info.file_size != header.offset + header.nbytes:
            raise FileFormatError(
                f"{where}: the zip directory records {info.file_size} bytes, but the .npy header declares "
                f"{header.offset + header.nbytes} ({header.offset} header + shape {header.shape} {header.dtype})"
            )
        headers[key] = header
    return headers


def read_npz(path, what: str = "file", check=None, max_bytes: int | None = None, into=None) -> dict[str, np.ndarray]:
    """Every array of an .npz archive, read through the three steps of the module docstring.

    Parameters
    ----------
    path : str or PathLike
    what : what the file is, for messages ('model file', 'curvature file')
    check : optional callable(headers: dict[str, ArrayHeader]) called after step 2, before any
        data is read; it raises ValueError to refuse the file (e.g. keys or shapes that cannot
        be right), so a bomb with a wrong layout is never inflated
    max_bytes : memory budget for the declared arrays of this file (default MAX_FILE_BYTES)
    into : optional callable(headers) -> {key: ndarray}, called after `check`: the arrays the data of
        those keys are read straight into (each must have the key's shape and dtype in native byte
        order, C order; one that does not fit is ignored), so a caller's final buffer is filled
        without a second copy (load_model reads every weight into the model's one parameter vector)

    Returns
    -------
    dict key -> ndarray, in the order of the zip directory, dtypes as stored but in the machine's
    byte order (a big-endian '>f8' member comes back as float64, swapped in place).

    Raises
    ------
    FileFormatError (a ValueError)
        one line naming the file and key, for every damaged, hostile or oversized input.
    """
    path = existing_file(path, what)
    try:
        archive = zipfile.ZipFile(path)
    except DECODE_ERRORS as error:
        raise FileFormatError(f"{path}: not a readable .npz file ({one_line(error)}; expected a zip archive of .npy arrays)") from None
    with archive:
        members = _members(archive, path)
        headers = _npz_headers(members, path, max_bytes)
        if check is not None:
            check(headers)
        targets = into(headers) if into is not None else {}
        arrays = {}
        for key, info in members.items():
            where = f"{path}: key {key!r}"
            try:
                with MemberReader(path, info) as stream:
                    stream.read(headers[key].offset)
                    arrays[key] = read_into(stream, headers[key], where, targets.get(key))
            except FileFormatError:
                raise
            except DECODE_ERRORS as error:
                raise FileFormatError(f"{where}: damaged member ({one_line(error)})") from None
    return arrays


def read_npy(path, what: str = "file", max_bytes: int | None = None) -> np.ndarray:
    """One .npy file, with the header and size checks of :func:`read_npz` (on the file's size)."""
    path = existing_file(path, what)
    try:
        with open(path, "rb") as stream:
            header = parse_npy_header(stream, path)
            check_budget(header.nbytes, f"{path}: shape {header.shape} {header.dtype}", max_bytes)
            size = os.fstat(stream.fileno()).st_size
            if size != header.offset + header.nbytes:
                raise FileFormatError(f"{path}: file has {size} bytes, the .npy header declares {header.offset + header.nbytes}")
            return read_into(stream, header, path)
    except FileFormatError:
        raise
    except DECODE_ERRORS as error:
        raise FileFormatError(f"{path}: cannot read .npy file ({one_line(error)})") from None


__all__ = [
    "MAX_FILE_BYTES", "MAX_HEADER_BYTES", "CHUNK_BYTES", "ArrayHeader", "FileFormatError", "canonical_key",
    "check_budget", "check_path", "existing_file", "format_bytes", "one_line", "parse_npy_header", "read_into", "read_npy",
    "read_npz",
]
