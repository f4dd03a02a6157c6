"""Bounded reading of one zip member: the decompression step of ewc_ref/safe_files.py.

``zipfile.ZipExtFile`` hands each 4 KiB of compressed input to the decompressor WITHOUT an output
limit, and a bzip2 or lzma block of zeros inflates to gigabytes from a few KiB: reading the
100-byte .npy header of such a member cost 2 GiB and 9 s. :class:`MemberReader` does what
zipfile does (local header, stored/deflate/bzip2/lzma, CRC-32) with the limit zipfile lacks:
every call to a decompressor asks for at most the bytes the caller wants (``max_length``; zlib's
``unconsumed_tail``, bz2/lzma's internal buffer keep the rest), never more than the member's
recorded size is produced, and ``readinto`` writes straight into the caller's array.

Before a member is opened, :func:`check_ratio` compares its recorded sizes: a member that inflates
above RATIO_FLOOR_BYTES at more than MAX_COMPRESSION_RATIO : 1 is refused unless the environment
variable ALLOW_RATIO_ENV is "1". Ratios measured on 16 MB arrays (deflate level 9 / bzip2 / lzma):
random float64 or float32 1.0-1.1; integer labels 12-18; 80 %-zero pixels / 255 13-24; a 95 %-zero
Fisher 16-18; one-hot float64 targets of 10 classes 79 / 167 / 76 and of 100 classes 379 / 825 /
288; zeros 1028 (229 at deflate level 1) / 320,000 / 6,500. The cap stops a naive bomb before any
byte is inflated; the memory budget (safe_files.MAX_FILE_BYTES) and reading into the final buffer
bound everything else.

================  =========  =========================================================
name              default    what it bounds
================  =========  =========================================================
MAX_COMPRESSION_RATIO  200   recorded size / compressed size of one large member
RATIO_FLOOR_BYTES  256 MiB   members at most this large are never refused for their ratio
ALLOW_RATIO_ENV   EWC_REF_ALLOW_COMPRESSION_RATIO  "1" lifts the ratio cap
IN_CHUNK_BYTES     1 MiB     compressed bytes read from the file at a time
================  =========  =========================================================
"""

from __future__ import annotations

import bz2
import lzma
import os
import struct
import zipfile
import zlib

MAX_COMPRESSION_RATIO = 200
RATIO_FLOOR_BYTES = 256 * 1024**2
ALLOW_RATIO_ENV = "EWC_REF_ALLOW_COMPRESSION_RATIO"
IN_CHUNK_BYTES = 1024**2

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader, 30 bytes
_LOCAL_SIGNATURE = b"PK\x03\x04"


class FileFormatError(ValueError):
    """A hostile or damaged file: the message is one line naming the file (and key)."""


def check_ratio(info: zipfile.ZipInfo, archive_size: int, where: str) -> None:
    """Refuse, from the zip directory alone, a member whose compressed bytes lie outside the file or
    that would inflate above RATIO_FLOOR_BYTES at more than MAX_COMPRESSION_RATIO : 1."""
    if info.header_offset + info.compress_size > archive_size:
        raise FileFormatError(f"{where}: the zip directory records {info.compress_size} compressed bytes at offset "
                              f"{info.header_offset}, beyond the end of the {archive_size}-byte file")
    if info.compress_type != zipfile.ZIP_STORED:
        check_sizes(info.compress_size, info.file_size, where)


def check_sizes(compressed: int, inflated: int, where: str) -> None:
    """The ratio cap of the module docstring on `compressed` bytes that declare `inflated` (a zip member,
    a gzip IDX file)."""
    if inflated <= RATIO_FLOOR_BYTES:
        return
    ratio = inflated / max(compressed, 1)
    if ratio > MAX_COMPRESSION_RATIO and os.environ.get(ALLOW_RATIO_ENV) != "1":
        raise FileFormatError(
            f"{where}: {compressed} compressed bytes would inflate to {inflated} "
            f"({ratio:.0f}:1, above the {MAX_COMPRESSION_RATIO}:1 no real array of more than "
            f"{RATIO_FLOOR_BYTES // 1024**2} MiB reaches); refused as a compression bomb before inflating it. "
            f"If the file is genuine, set {ALLOW_RATIO_ENV}=1"
        )


def _decompressor(method: int, stream, remaining: int):
    """(decompressor or None for stored, compressed bytes left after any method header)."""
    if method == zipfile.ZIP_STORED:
        return None, remaining
    if method == zipfile.ZIP_DEFLATED:
        return zlib.decompressobj(-15), remaining  # raw deflate, as zipfile
    if method == zipfile.ZIP_BZIP2:
        return bz2.BZ2Decompressor(), remaining
    if method == zipfile.ZIP_LZMA:  # 2 bytes version, 2 bytes properties size, properties (APPNOTE 5.8.8)
        head = stream.read(4)
        if len(head) != 4:
            raise EOFError("truncated LZMA header")
        (size,) = struct.unpack("<H", head[2:])
        props = stream.read(size)
        if len(props) != size:
            raise EOFError("truncated LZMA properties")
        filters = [lzma._decode_filter_properties(lzma.FILTER_LZMA1, props)]  # as zipfile's LZMADecompressor
        return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters), remaining - 4 - size
    raise NotImplementedError(f"compression method {method} is not supported (stored, deflate, bzip2, lzma are)")


class MemberReader:
    """The uncompressed bytes of one zip member, produced only as far as they are asked for.

    ``read(n)`` and ``readinto(buffer)`` return at most the bytes asked and at most the member's
    recorded size in total; at the end the CRC-32 of everything produced is checked against the
    zip directory (zipfile.BadZipFile when it differs), as zipfile does.
    """

    def __init__(self, path: str, info: zipfile.ZipInfo):
        self.info = info
        self.file = open(path, "rb")  # noqa: SIM115 -- closed by close() / the context manager
        try:
            self.file.seek(info.header_offset)
            fields = _LOCAL_HEADER.unpack(self._raw(_LOCAL_HEADER.size))
            if fields[0] != _LOCAL_SIGNATURE:
                raise zipfile.BadZipFile(f"bad local file header for {info.filename!r}")
            name = self._raw(fields[-2])  # the local header must name the member the directory names (as zipfile)
            text = name.decode("utf-8" if info.flag_bits & 0x800 else "cp437")
            if text != info.orig_filename:
                raise zipfile.BadZipFile(f"File name in directory {info.orig_filename!r} and header {name!r} differ.")
            if info.flag_bits & 0x20:
                raise NotImplementedError("compressed patched data (flag bit 5)")
            self.file.seek(fields[-1], os.SEEK_CUR)
            self.decompressor, self.compressed_left = _decompressor(info.compress_type, self.file, info.compress_size)
        except BaseException:
            self.file.close()
            raise
        self.left = info.file_size  # uncompressed bytes still to produce
        self.tail = b""  # compressed input zlib has not consumed yet
        self.zlib = info.compress_type == zipfile.ZIP_DEFLATED
        self.crc = 0

    def _raw(self, n: int) -> bytes:
        data = self.file.read(n)
        if len(data) != n:
            raise EOFError(f"truncated zip member {self.info.filename!r}")
        return data

    def _input(self) -> bytes:
        """The next piece of compressed input (b'' when the member's compressed bytes are used up)."""
        n = min(IN_CHUNK_BYTES, self.compressed_left)
        data = self.file.read(n) if n else b""
        self.compressed_left -= len(data)
        return data

    def _produce(self, limit: int) -> bytes:
        """At most `limit` (> 0) uncompressed bytes of a compressed member; b'' at the end of the stream
        or when the compressed bytes end first (the caller then reports the member truncated)."""
        d, idle = self.decompressor, 0
        while not d.eof:
            if self.zlib:  # input zlib could not use within `limit` comes back as unconsumed_tail
                data = self.tail or self._input()
                out = d.decompress(data, limit)
                self.tail = d.unconsumed_tail
                if not out and not data and not self.tail:
                    return b""
            else:  # bz2 / lzma keep what they could not emit; needs_input says when to feed more
                data = self._input() if d.needs_input else b""
                if d.needs_input and not data:
                    return b""
                out = d.decompress(data, limit)
                idle = 0 if (out or data) else idle + 1
                if idle > 2:
                    raise EOFError("the decompressor produces nothing more and asks for no input")
            if out:
                return out
        return b""

    def readinto(self, buffer) -> int:
        """Fill `buffer` (a writable bytes-like object) as far as the member allows; return the count."""
        view = memoryview(buffer).cast("B")
        want = min(len(view), self.left)
        if want == 0:
            return 0
        if self.decompressor is None:  # stored: straight from the file into the caller's buffer
            got = self.file.readinto(view[: min(want, self.compressed_left)])
            self.compressed_left -= got
            chunk = view[:got]
        else:
            data = self._produce(want)
            got = len(data)
            view[:got] = data
            chunk = data
        self._account(chunk, got)
        return got

    def read(self, n: int) -> bytes:
        """At most `n` uncompressed bytes (fewer only at the end of the member)."""
        out = bytearray(min(n, self.left))
        filled = 0
        while filled < len(out):
            got = self.readinto(memoryview(out)[filled:])
            if got == 0:
                break
            filled += got
        return bytes(out[:filled])

    def _account(self, chunk, got: int) -> None:
        self.crc = zlib.crc32(chunk, self.crc)
        self.left -= got
        if self.left == 0 and self.crc != self.info.CRC:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {self.info.filename!r}")

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
