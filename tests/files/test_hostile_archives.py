"""Bounded archives (issue 25, item 3): every member inflated through a decompressor with a limit.

The class: a member of valid layout that inflates far beyond its compressed size. For every zip
method (stored, deflate, bzip2, lzma) the reader (ewc_ref.safe_zip.MemberReader) must
- produce exactly the bytes np.load does, across chunk boundaries, with the CRC checked;
- inflate no more than it is asked for: reading a header of a bzip2/lzma/deflate bomb costs
  kilobytes (tracemalloc), not the whole block;
- refuse, from the zip directory alone, a large member at a compression ratio no real float
  array reaches (safe_zip.check_ratio), unless EWC_REF_ALLOW_COMPRESSION_RATIO=1;
- read a legitimate array straight into its final buffer (peak traced memory ~ the array).
Sizes are scaled down through the module constants so every case runs in milliseconds.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from support.hostile import METHODS, npy_bytes, zip_bytes
from support.memory import traced_peak

import ewc_ref as er
from ewc_ref import safe_files, safe_zip
from ewc_ref.safe_files import FileFormatError, read_npz

MiB = 1024**2


def _write(tmp_path, raw: bytes, name: str = "a.npz"):
    path = tmp_path / name
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("in_chunk", [7, 4096, MiB])
def test_every_method_reads_what_np_load_reads_across_chunk_boundaries(tmp_path, monkeypatch, method, in_chunk):
    monkeypatch.setattr(safe_zip, "IN_CHUNK_BYTES", in_chunk)
    monkeypatch.setattr(safe_files, "CHUNK_BYTES", 1000)  # output chunks that split every array
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((300, 7)), "b": np.zeros(5000), "c": np.arange(10, dtype=">i4"), "d": np.array("relu")}
    path = _write(tmp_path, zip_bytes([(f"{k}.npy", npy_bytes(v)) for k, v in arrays.items()], method))
    got = read_npz(path)
    with np.load(path, allow_pickle=False) as oracle:
        for key in arrays:
            np.testing.assert_array_equal(got[key], oracle[key])


@pytest.mark.parametrize("method", ["deflated", "bzip2", "lzma"])
def test_a_damaged_compressed_stream_is_one_line(tmp_path, method):
    raw = bytearray(zip_bytes([("x.npy", npy_bytes(np.random.default_rng(1).standard_normal(20_000)))], method))
    start = raw.find(b"x.npy") + len("x.npy")
    raw[start + 400 : start + 420] = b"\x55" * 20
    with pytest.raises(FileFormatError, match=r"a\.npz: key 'x': (damaged member|truncated data)") as raised:
        read_npz(_write(tmp_path, bytes(raw)))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("method", ["stored", "deflated", "bzip2", "lzma"])
def test_a_member_cut_short_is_truncated_not_padded(tmp_path, method):
    """The compressed bytes end before the recorded size: refused, naming the key."""
    payload = npy_bytes(np.random.default_rng(2).standard_normal(5000))
    raw = zip_bytes([("x.npy", payload)], method)
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        info = archive.infolist()[0]
    data_start = info.header_offset + 30 + len("x.npy")
    cut = raw[: data_start + info.compress_size // 2] + raw[data_start + info.compress_size :]
    # the central directory moved: rebuild one that records the original sizes at the new offset
    with pytest.raises(FileFormatError, match=r"a\.npz"):
        read_npz(_write(tmp_path, cut))


def test_crc_is_checked_at_the_end_of_every_member(tmp_path):
    raw = bytearray(zip_bytes([("x.npy", npy_bytes(np.arange(100.0)))], "stored"))
    raw[raw.find(b"x.npy") + 200] ^= 0x01
    with pytest.raises(FileFormatError, match="key 'x': damaged member \\(BadZipFile: Bad CRC-32"):
        read_npz(_write(tmp_path, bytes(raw)))


def _bomb(method: str, n_float64: int, shape=None) -> bytes:
    """A member x.npy whose header declares `shape` (default (n,)) float64 and whose data are zeros."""
    shape = (n_float64,) if shape is None else shape
    header = npy_bytes(np.zeros(0))[:0]
    from support.hostile import npy_header

    header = npy_header(f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape!r}, }}")
    return zip_bytes([("x.npy", header + bytes(8 * n_float64))], method, level=9 if method == "deflated" else None)


@pytest.mark.parametrize("method", ["deflated", "bzip2", "lzma"])
def test_reading_a_bombs_header_inflates_only_the_header(tmp_path, method, monkeypatch):
    """A 64 MiB member of zeros whose layout the caller refuses from the header: the reader must have
    inflated kilobytes, not the block (zipfile inflated a whole bzip2 block: 2 GiB for 2^27 float64)."""
    monkeypatch.setattr(safe_zip, "RATIO_FLOOR_BYTES", 2**40)  # the ratio cap off: the header path alone
    path = _write(tmp_path, _bomb(method, 8 * MiB))

    def refuse(headers):
        raise ValueError("x: layout refused from the header")

    with traced_peak() as traced, pytest.raises(ValueError, match="layout refused from the header"):
        read_npz(path, check=refuse)
    peak = traced.peak
    # the decoder's own state (lzma's 8 MiB dictionary, bzip2's 3.6 MiB) and IN_CHUNK_BYTES of input,
    # never the 64 MiB of the block
    assert peak < 16 * MiB, peak


@pytest.mark.parametrize("method", ["deflated", "bzip2", "lzma"])
def test_a_large_member_at_a_bombs_ratio_is_refused_before_inflating(tmp_path, method, monkeypatch):
    monkeypatch.setattr(safe_zip, "RATIO_FLOOR_BYTES", 4 * MiB)
    path = _write(tmp_path, _bomb(method, MiB))  # 8 MiB of zeros: ratio 1000 (deflate) to 10^5 (bzip2)
    with traced_peak() as traced, pytest.raises(FileFormatError, match=r"key 'x': \d+ compressed bytes would inflate to 8388\d+ \(\d+:1, above the 200:1") as raised:
        read_npz(path)
    peak = traced.peak
    assert "EWC_REF_ALLOW_COMPRESSION_RATIO=1" in str(raised.value)
    assert peak < MiB, peak  # refused from the directory: nothing inflated


@pytest.mark.parametrize("method", ["deflated", "bzip2", "lzma"])
def test_the_environment_variable_lets_a_genuine_compressible_file_through(tmp_path, method, monkeypatch):
    monkeypatch.setattr(safe_zip, "RATIO_FLOOR_BYTES", 4 * MiB)
    monkeypatch.setenv("EWC_REF_ALLOW_COMPRESSION_RATIO", "1")
    arrays = read_npz(_write(tmp_path, _bomb(method, MiB)))
    assert arrays["x"].shape == (MiB,) and not arrays["x"].any()


@pytest.mark.parametrize("value", ["0", "yes", "true", ""])
def test_only_exactly_1_lifts_the_cap(tmp_path, monkeypatch, value):
    monkeypatch.setattr(safe_zip, "RATIO_FLOOR_BYTES", 4 * MiB)
    monkeypatch.setenv("EWC_REF_ALLOW_COMPRESSION_RATIO", value)
    with pytest.raises(FileFormatError, match="compression bomb"):
        read_npz(_write(tmp_path, _bomb("deflated", MiB)))


@pytest.mark.parametrize("method", list(METHODS))
def test_real_data_below_the_ratio_is_read_whatever_its_size(tmp_path, method, monkeypatch):
    """Random floats (ratio ~1) and one-hot targets of 10 classes (ratio < 200) above the floor are read."""
    monkeypatch.setattr(safe_zip, "RATIO_FLOOR_BYTES", 64 * 1024)
    rng = np.random.default_rng(3)
    arrays = {"x": rng.standard_normal((4000, 8)), "y": np.eye(10)[rng.integers(0, 10, 4000)]}
    path = _write(tmp_path, zip_bytes([(f"{k}.npy", npy_bytes(v)) for k, v in arrays.items()], method))
    got = read_npz(path)
    for key, value in arrays.items():
        np.testing.assert_array_equal(got[key], value)


def test_compressed_bytes_recorded_beyond_the_file_are_refused(tmp_path):
    raw = bytearray(zip_bytes([("x.npy", npy_bytes(np.arange(10.0)))], "deflated"))
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 20 : central + 24] = (10**8).to_bytes(4, "little")  # compressed size 100 MB
    with pytest.raises(FileFormatError, match="beyond the end of the"):
        read_npz(_write(tmp_path, bytes(raw)))


# Memory besides the array: one CHUNK_BYTES (4 MiB) of output in flight, IN_CHUNK_BYTES of input, and
# the decoder's own state (bzip2 ~3.6 MiB, lzma's dictionary 8 MiB at the default preset).
OVERHEAD_MIB = {"stored": 6, "deflated": 6, "bzip2": 10, "lzma": 14}


@pytest.mark.parametrize("method", list(METHODS))
def test_a_legitimate_array_is_read_into_its_final_buffer(tmp_path, method):
    """Peak traced memory while reading 16 MiB of floats: the array plus the overhead above, never a
    second copy of the array (which would be 32 MiB)."""
    value = np.random.default_rng(4).standard_normal(2 * MiB)  # 16 MiB
    path = _write(tmp_path, zip_bytes([("x.npy", npy_bytes(value))], method))
    with traced_peak() as traced:
        got = read_npz(path)["x"]
    peak = traced.peak
    np.testing.assert_array_equal(got, value)
    assert peak < value.nbytes + OVERHEAD_MIB[method] * MiB, (peak, value.nbytes)


def test_load_model_of_a_weight_bomb_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """Through the CLI: a model file whose valid 2 x 2^19 weight is zeros at a bomb's ratio."""
    monkeypatch.setattr(safe_zip, "RATIO_FLOOR_BYTES", 4 * MiB)
    from support.hostile import npy_header

    from ewc_ref.cli import main

    header = npy_header("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 524288), }")
    members = [("0.weight.npy", header + bytes(8 * 2 * 524288)), ("0.bias.npy", npy_bytes(np.zeros(2))),
               ("__activation__.npy", npy_bytes(np.array("relu"))), ("__likelihood__.npy", npy_bytes(np.array("categorical")))]
    for method in ("deflated", "bzip2", "lzma"):
        path = _write(tmp_path, zip_bytes(members, method), f"{method}.npz")
        assert main(["inspect", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "key '0.weight'" in err and "compression bomb" in err, err
        with pytest.raises(ValueError, match="compression bomb"):
            er.load_model(path)


def test_a_gzip_idx_at_a_bombs_ratio_is_refused_before_inflating(tmp_path, monkeypatch):
    """The same cap on a gzip IDX file (MNIST): 8 MiB of zero pixels from a few KiB."""
    from support.hostile import gzip_bytes, idx_bytes

    from ewc_ref.safe_idx import read_idx

    monkeypatch.setattr(safe_zip, "RATIO_FLOOR_BYTES", 4 * MiB)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip_bytes(idx_bytes(np.zeros((10_700, 28, 28), np.uint8))))
    with pytest.raises(FileFormatError, match="train-images-idx3-ubyte.gz: .* compressed bytes would inflate to 8388816"):
        read_idx(path)
    monkeypatch.setenv("EWC_REF_ALLOW_COMPRESSION_RATIO", "1")
    assert read_idx(path).shape == (10_700, 28, 28)
