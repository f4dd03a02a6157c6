"""The hardened reader: one refusal per fault class, each naming the file and key, and no false ones.

Every refusal test builds the smallest file that has exactly that fault (tests/support/hostile.py) and
checks the message; the round-trip tests check that what np.savez writes is read bit-exactly,
so a reader that refused too much would fail them.
"""

import gzip

import numpy as np
import pytest
from support.hostile import (
    gzip_bytes,
    idx_bytes,
    npy_bytes,
    npy_header,
    npz_bytes,
    set_recorded_size,
    zip_bytes,
)
from support.memory import traced_peak

import ewc_ref as er
from ewc_ref import safe_files
from ewc_ref.safe_files import FileFormatError, canonical_key, read_npy, read_npz
from ewc_ref.safe_idx import read_idx

ROUND_TRIP = {
    "float64": np.arange(6.0).reshape(2, 3),
    "float32 fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    "big-endian": np.arange(4, dtype=">f8"),
    "int8": np.array([-1, 2], np.int8),
    "bool": np.array([True, False]),
    "complex": np.array([1 + 2j]),
    "0-d string": np.array("relu"),
    "bytes": np.array([b"ab", b"c"]),
    "empty": np.zeros((0, 3)),
    "0-d float": np.array(1.5),
}


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_matches_numpy_bit_exactly(tmp_path, compress):
    path = tmp_path / "a.npz"
    (np.savez_compressed if compress else np.savez)(path, **ROUND_TRIP)
    arrays = read_npz(path)
    assert list(arrays) == list(ROUND_TRIP)
    for key, value in ROUND_TRIP.items():
        native = value.astype(value.dtype.newbyteorder("="))  # the reader returns the machine's byte order
        assert arrays[key].dtype == native.dtype and arrays[key].shape == value.shape, key
        assert arrays[key].dtype.isnative, key
        assert arrays[key].tobytes(order="A") == native.tobytes(order="A"), key
        assert arrays[key].flags.f_contiguous == value.flags.f_contiguous, key


@pytest.mark.parametrize("method", ["bzip2", "lzma"])
def test_other_zip_methods_are_read(tmp_path, method):
    path = tmp_path / "a.npz"
    path.write_bytes(npz_bytes({"x": np.arange(5.0)}, method))
    np.testing.assert_array_equal(read_npz(path)["x"], np.arange(5.0))


def test_npy_versions_2_and_3_are_read(tmp_path):
    data = np.arange(3.0).tobytes()
    for version in (2, 3):
        path = tmp_path / f"v{version}.npz"
        header = npy_header("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", version)
        path.write_bytes(zip_bytes([("x.npy", header + data)]))
        np.testing.assert_array_equal(read_npz(path)["x"], np.arange(3.0))


def _refused(tmp_path, payload: bytes, message: str, name="f.npz", **kwargs) -> str:
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(FileFormatError, match=message) as info:
        (read_idx if ".npz" not in name else read_npz)(path, **kwargs)
    text = str(info.value)
    assert str(path) in text and "\n" not in text
    assert isinstance(info.value, ValueError)
    return text


GOOD = np.arange(6.0)
HEADER = "{'descr': '<f8', 'fortran_order': False, 'shape': (6,), }"

BAD_NPZ = [
    ("not a zip", b"hello", "not a readable .npz"),
    ("empty file", b"", "not a readable .npz"),
    ("raw bytes member", zip_bytes([("0.weight.npy", b"raw bytes, not npy")]), "key '0.weight': not a .npy array"),
    ("member not .npy", zip_bytes([("notes.txt", b"hi")]), "member 'notes.txt' is not a .npy array"),
    ("folder member", zip_bytes([("dir/", b"")]), "member 'dir/' is not a .npy array"),
    ("bare .npy name", zip_bytes([(".npy", npy_bytes(GOOD))]), "member '.npy' is not a .npy array"),
    ("duplicate member", zip_bytes([("x.npy", npy_bytes(GOOD)), ("x.npy", npy_bytes(GOOD))]), "key 'x' appears twice"),
    ("ambiguous keys", npz_bytes({"0.weight": GOOD, "00.weight": GOOD}), "keys '0.weight' and '00.weight' are ambiguous"),
    ("ambiguous blocks", npz_bytes({"block.1": GOOD, "block.01": GOOD}), "keys 'block.1' and 'block.01' are ambiguous"),
    ("object dtype", npz_bytes({"4.weight": np.array([None, 1], dtype=object)}), "key '4.weight' holds Python objects"),
    ("structured dtype", npz_bytes({"s": np.zeros(2, dtype=[("a", "<f8")])}), "key 's': dtype .* not supported"),
    ("datetime dtype", npz_bytes({"t": np.zeros(2, dtype="M8[s]")}), "key 't': dtype .* not supported"),
    ("bad magic", zip_bytes([("x.npy", b"\x93NUMPZ\x01\x00" + npy_bytes(GOOD)[8:])]), "key 'x': not a .npy array"),
    ("version 9", zip_bytes([("x.npy", b"\x93NUMPY\x09\x00" + npy_bytes(GOOD)[8:])]), "unsupported .npy format version 9.0"),
    ("header over limit", zip_bytes([("x.npy", b"\x93NUMPY\x02\x00" + (10**6).to_bytes(4, "little"))]), "header of 1000000 bytes"),
    ("truncated header", zip_bytes([("x.npy", npy_bytes(GOOD)[:30])]), "key 'x': .npy header: truncated"),
    ("header not python", zip_bytes([("x.npy", npy_header("{'descr': import os}") + GOOD.tobytes())]), "malformed .npy header"),
    ("header a call", zip_bytes([("x.npy", npy_header("__import__('os').system('false')") + GOOD.tobytes())]), "malformed .npy header"),
    ("header extra key", zip_bytes([("x.npy", npy_header("{'descr': '<f8', 'fortran_order': False, 'shape': (6,), 'x': 1}") + GOOD.tobytes())]), "expected a dict with keys"),
    ("negative dim", zip_bytes([("x.npy", npy_header(HEADER.replace("(6,)", "(-6,)")) + GOOD.tobytes())]), "non-negative integers"),
    ("float dim", zip_bytes([("x.npy", npy_header(HEADER.replace("(6,)", "(6.0,)")) + GOOD.tobytes())]), "non-negative integers"),
    ("bool dim", zip_bytes([("x.npy", npy_header(HEADER.replace("(6,)", "(True,)")) + GOOD.tobytes())]), "non-negative integers"),
    ("fortran not bool", zip_bytes([("x.npy", npy_header(HEADER.replace("False", "0")) + GOOD.tobytes())]), "fortran_order must be True or False"),
    ("descr nonsense", zip_bytes([("x.npy", npy_header(HEADER.replace("'<f8'", "'<q9'")) + GOOD.tobytes())]), "descr '<q9' is not a dtype"),
    ("descr zero size", zip_bytes([("x.npy", npy_header(HEADER.replace("'<f8'", "'<U0'")) + b"")]), "dtype <U0 is not supported"),
    ("data short of shape", zip_bytes([("x.npy", npy_header(HEADER.replace("(6,)", "(7,)")) + GOOD.tobytes())]), "zip directory records 176 bytes, but the .npy header declares 184"),
    ("data beyond shape", zip_bytes([("x.npy", npy_header(HEADER.replace("(6,)", "(5,)")) + GOOD.tobytes())]), "records 176 bytes, but the .npy header declares 168"),
    ("shape of 10**12", zip_bytes([("x.npy", npy_header(HEADER.replace("(6,)", "(10**12,)".replace("10**12", str(10**12)))))]), "key 'x': shape \\(1000000000000,\\) float64 .* needs 7.3 TiB .* above the memory budget of 4.0 GiB"),
    ("shape 10**6 x 10**6", zip_bytes([("x.npy", npy_header(HEADER.replace("(6,)", "(1000000, 1000000)")))]), "needs 7.3 TiB"),
]


@pytest.mark.parametrize(("payload", "message"), [b[1:] for b in BAD_NPZ], ids=[b[0] for b in BAD_NPZ])
def test_bad_npz_is_one_line_naming_file_and_key(tmp_path, payload, message):
    _refused(tmp_path, payload, message)


def test_damaged_deflate_stream_names_the_key(tmp_path):
    raw = bytearray(npz_bytes({"x": np.arange(1000.0), "y": np.ones(3)}, "deflated"))
    start = raw.find(b"x.npy") + len("x.npy")  # first member's compressed data follow its name
    raw[start + 40 : start + 48] = b"\xff" * 8
    text = _refused(tmp_path, bytes(raw), "key 'x': damaged member")
    assert "Error" in text or "CRC" in text


def test_flipped_stored_byte_fails_the_crc(tmp_path):
    raw = bytearray(npz_bytes({"x": np.arange(100.0)}))
    raw[raw.find(b"x.npy") + 5 + 200] ^= 0x01
    _refused(tmp_path, bytes(raw), "key 'x': damaged member .*CRC")


def test_truncated_archive(tmp_path):
    raw = npz_bytes({"x": np.arange(100.0)})
    _refused(tmp_path, raw[: len(raw) // 2], "not a readable .npz")


def test_encrypted_member_is_refused(tmp_path):
    raw = bytearray(npz_bytes({"x": GOOD}))
    raw[6] |= 1  # local header flag bits
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 8] |= 1
    _refused(tmp_path, bytes(raw), "member 'x.npy' is encrypted")


def test_budget_is_summed_over_the_keys_and_can_be_set(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, a=np.zeros(100), b=np.zeros(100))
    assert set(read_npz(path, max_bytes=1600)) == {"a", "b"}
    with pytest.raises(FileFormatError, match="key 'b': shape \\(100,\\) float64 \\(with the keys before it\\) needs 1.6 KiB \\(1600 bytes\\), above the memory budget of 1.6 KiB"):
        read_npz(path, max_bytes=1599)


def test_recorded_size_larger_than_the_data_is_refused_before_allocating(tmp_path):
    # A directory that lies about the size: the header says 6 numbers, the directory 1 GiB.
    raw = set_recorded_size(npz_bytes({"x": GOOD}), 2**30)
    _refused(tmp_path, raw, "zip directory records 1073741824 bytes")


def test_check_sees_headers_before_any_data(tmp_path, monkeypatch):
    path = tmp_path / "f.npz"
    np.savez(path, x=np.zeros((3, 2), np.float32), y=np.array("s"))
    seen = {}

    def check(headers):
        seen.update({key: (h.shape, str(h.dtype)) for key, h in headers.items()})
        raise ValueError("refused by check")

    def no_data(*args):
        raise AssertionError("data read before check")

    monkeypatch.setattr(safe_files, "read_into", no_data)
    with pytest.raises(ValueError, match="refused by check"):
        read_npz(path, check=check)
    assert seen == {"x": ((3, 2), "float32"), "y": ((), "<U1")}


def test_npz_bomb_is_refused_without_inflating(tmp_path, monkeypatch):
    # 64 MiB of zeros deflate to ~64 KiB; a budget of 1 MiB refuses it from the header alone.
    monkeypatch.setattr(safe_files, "MAX_FILE_BYTES", 2**20)
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((2**23, 1)), y=np.zeros(2**23, np.uint8))
    assert path.stat().st_size < 2**20
    load_data = er.load_data  # import ewc_ref.io before tracing: the package loads it lazily
    with traced_peak() as traced, pytest.raises(ValueError, match="key 'x': shape \\(8388608, 1\\) float64 .*above the memory budget of 1.0 MiB"):
        load_data(path)
    peak = traced.peak
    assert peak < 2**20, peak


def test_layout_bomb_is_refused_from_headers(tmp_path):
    # Within the budget, but the wrong layout for the model: refused before inflating 64 MiB.
    model = er.MLP.random([3, 2], "relu", rng=0)
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((2**20, 8)), y=np.zeros(2**20, np.uint8))
    with traced_peak() as traced, pytest.raises(ValueError, match="key 'x': expected 3 features per row"):
        er.load_data(path, model, er.Categorical())
    peak = traced.peak
    assert peak < 2**20, peak


def test_canonical_key_reads_digit_runs_as_numbers():
    assert canonical_key("00.weight") == canonical_key("0.weight") != canonical_key("1.weight")
    assert canonical_key("kfac.01.A") == canonical_key("kfac.1.A") != canonical_key("kfac.1.G")
    assert canonical_key("x") != canonical_key("y")


def test_ambiguous_model_keys_are_refused_by_load_model(tmp_path):
    path = tmp_path / "model.npz"
    w = np.ones((2, 3))
    np.savez(path, **{"0.weight": w, "00.weight": 2 * w, "__activation__": np.array("relu"), "__likelihood__": np.array("categorical")})
    with pytest.raises(ValueError, match="'0.weight' and '00.weight' are ambiguous"):
        er.load_model(path)


def test_missing_and_non_regular_paths(tmp_path):
    with pytest.raises(FileFormatError, match="model file not found"):
        read_npz(tmp_path / "nope.npz", "model file")
    with pytest.raises(FileFormatError, match="is not a regular file"):
        read_npz(tmp_path, "data file")


def test_read_npy(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(4.0))
    np.testing.assert_array_equal(read_npy(path), np.arange(4.0))
    path.write_bytes(path.read_bytes() + b"extra")
    with pytest.raises(FileFormatError, match="file has 165 bytes, the .npy header declares 160"):
        read_npy(path)


# ----------------------------------------------------------------------------- IDX
IMAGES = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    payload = idx_bytes(IMAGES)
    path = tmp_path / ("i.gz" if gz else "i")
    path.write_bytes(gzip_bytes(payload) if gz else payload)
    np.testing.assert_array_equal(read_idx(path), IMAGES)
    floats = np.array([1.5, -2.0])
    path.write_bytes(gzip_bytes(idx_bytes(floats, 0x0E)) if gz else idx_bytes(floats, 0x0E))
    back = read_idx(path)
    assert back.dtype == np.float64 and back.dtype.isnative and np.array_equal(back, floats)


BAD_IDX = [
    ("zero dims", idx_bytes(np.zeros((0, 0, 0), np.uint8)), "i", "dimension of size 0"),
    ("zero pixels", idx_bytes(np.zeros((3, 0, 0), np.uint8)), "i", "shape \\(3, 0, 0\\): a dimension of size 0"),
    ("over budget", bytes([0, 0, 8, 2]) + (10**6).to_bytes(4, "big") * 2, "i", "needs 931.3 GiB"),
    ("short", idx_bytes(IMAGES)[:-1], "i", "size mismatch"),
    ("long", idx_bytes(IMAGES) + b"\x00", "i", "size mismatch"),
    ("not gzip", b"not gzip at all", "i.gz", "cannot read IDX file \\(BadGzipFile"),
    ("gzip truncated", gzip_bytes(idx_bytes(IMAGES))[:-12], "i.gz", "cannot read IDX file|size mismatch"),
    ("gzip lying trailer", gzip_bytes(idx_bytes(IMAGES), isize=10**6), "i.gz", "the gzip trailer records 1000000 bytes"),
]


@pytest.mark.parametrize(("payload", "name", "message"), [b[1:] for b in BAD_IDX], ids=[b[0] for b in BAD_IDX])
def test_bad_idx_is_one_line_naming_the_file(tmp_path, payload, name, message):
    _refused(tmp_path, payload, message, name=name)


def test_damaged_gzip_idx_is_a_value_error(tmp_path):
    raw = bytearray(gzip_bytes(idx_bytes(np.arange(5000, dtype=np.uint8).reshape(50, 10, 10) % 7)))
    raw[len(raw) // 2] ^= 0xFF
    _refused(tmp_path, bytes(raw), "cannot read IDX file|more data", name="i.gz")


def test_gzip_idx_bomb_with_lying_trailer_inflates_no_more_than_declared(tmp_path):
    # Header: 10 bytes of data. Stream: 32 MiB more zeros; the trailer is forged to say 26 bytes.
    header = idx_bytes(np.zeros(10, np.uint8))
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(header)
        for _ in range(32):
            handle.write(bytes(2**20))
    raw = bytearray(path.read_bytes())
    raw[-4:] = len(header).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with traced_peak() as traced, pytest.raises(FileFormatError, match="more data than shape \\(10,\\) uint8 declares"):
        read_idx(path)
    peak = traced.peak
    assert peak < 2**20, peak


def test_zip_bomb_over_the_declared_size_is_cut_at_the_recorded_size(tmp_path):
    # The member's deflate stream holds 32 MiB, the directory records 128 bytes of header + 6
    # numbers: zipfile stops at the recorded size and the CRC of those bytes decides.
    payload = npy_bytes(GOOD) + bytes(2**25)
    raw = zip_bytes([("x.npy", payload)], "deflated")
    raw = set_recorded_size(raw, len(npy_bytes(GOOD)))
    path = tmp_path / "bomb.npz"
    path.write_bytes(raw)
    with traced_peak() as traced, pytest.raises(FileFormatError, match="key 'x': damaged member .*CRC"):
        read_npz(path)
    peak = traced.peak
    assert peak < 2**20, peak


# Every byte order of every dtype the files of docs/file-format.md hold: read, converted to the
# machine's order, equal in value; the loaders built on the reader accept them as native ones.
BYTE_ORDERS = {f"{order}{code}": np.dtype(f"{order}{code}") for order in "<>" for code in ("f4", "f8", "i2", "i4", "i8", "u2", "u4", "u8", "c16", "U3")}


@pytest.mark.parametrize("name", list(BYTE_ORDERS))
@pytest.mark.parametrize("compress", [False, True])
def test_every_byte_order_is_read_in_native_order(tmp_path, name, compress):
    dtype = BYTE_ORDERS[name]
    value = (np.array(["ab", "cde"]) if dtype.kind == "U" else np.arange(6).reshape(2, 3)).astype(dtype)
    (np.savez_compressed if compress else np.savez)(tmp_path / "a.npz", a=value, f=np.asfortranarray(value))
    arrays = read_npz(tmp_path / "a.npz")
    for key in ("a", "f"):
        assert arrays[key].dtype == dtype.newbyteorder("=") and arrays[key].dtype.isnative, key
        np.testing.assert_array_equal(arrays[key], value)
    assert arrays["f"].flags.f_contiguous


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("code", ["f4", "f8"])
def test_model_data_and_curvature_files_of_either_byte_order_load(tmp_path, order, code):
    """A big-endian export (e.g. from a big-endian machine) loads as the same model, data and curvature."""
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    dtype = np.dtype(f"{order}{code}")
    state = {key: value.astype(dtype) for key, value in model.state_dict().items()}
    np.savez(tmp_path / "m.npz", **state, __activation__=np.array("tanh"), __likelihood__=np.array("categorical"))
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3))
    np.savez(tmp_path / "d.npz", x=x.astype(dtype), y=np.array([0, 1, 1, 0, 1], dtype=f"{order}i8"))
    loaded, _ = er.load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.theta, model.theta.astype(dtype))
    assert loaded.dtype == np.dtype(code)
    xs, ys = er.load_data(tmp_path / "d.npz", loaded, er.Categorical())
    np.testing.assert_array_equal(xs, x.astype(dtype))
    np.testing.assert_array_equal(ys, [0, 1, 1, 0, 1])
    fisher = er.fisher(model, er.Categorical(), x, ys, "exact")
    np.savez(tmp_path / "F.npz", **{k: v.astype(f"{order}f8") if v.dtype.kind == "f" else v
                                      for k, v in fisher.to_arrays().items()})
    np.testing.assert_array_equal(er.Curvature.load(tmp_path / "F.npz", model).flat, fisher.flat)
