"""Fuzz suite: Hypothesis mutations of valid files against every API reader (issue 15).

The contract, checked on every mutated file: the reader raises ValueError with ONE line naming
the file, or it returns the right result. "Right" is decided by an independent oracle, never by
the reader itself:

- .npz: numpy's own ``np.load(allow_pickle=False)`` of the same bytes (run only after our reader
  accepted them, so the oracle never sees an unchecked size). For the API readers (load_model,
  load_data, Curvature.load) the oracle's arrays are re-saved with plain np.savez and read
  again: a hostile encoding must not change what a file means.
- IDX: ``gzip.decompress`` + ``np.frombuffer`` of the declared shape.
- Mutations that keep the content (recompression) must read back equal to the original.

Mutations: truncation, byte flips, overwritten spans, member renames (to ambiguous, duplicate,
non-.npy names), member swaps and drops, recompression (stored, deflate at any level, bzip2,
lzma), .npy header edits (shape, dtype, order, version), lying recorded sizes, appended bombs.
Run ``pytest tests/files/test_hostile_files.py --hypothesis-show-statistics`` for the counts of
refused and accepted files per test.
"""

from __future__ import annotations

import gzip
import io
import re
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support.hostile import (
    METHODS,
    gzip_bytes,
    idx_bytes,
    npy_bytes,
    npy_header,
    set_recorded_size,
    zip_bytes,
    zip_members,
)

import ewc_ref as er
from ewc_ref import safe_files, safe_idx, safe_zip
from ewc_ref.continual.datasets import read_idx

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------- valid seeds
def _model_arrays():
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    return {**model.state_dict(), "__activation__": np.array("tanh"), "__likelihood__": np.array("categorical")}


def _data_arrays():
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((5, 3)), "y": np.array([0, 1, 1, 0, 1])}


def _curvature_arrays():
    model = er.MLP.random([3, 4, 2], "tanh", rng=0)
    x, y = _data_arrays()["x"], _data_arrays()["y"]
    return er.fisher(model, er.Categorical(), x, y, "exact", "diag").to_arrays()


def _encode(arrays: dict, method: str = "stored") -> bytes:
    return zip_bytes([(f"{key}.npy", npy_bytes(value)) for key, value in arrays.items()], method)


SEEDS = {
    "model": _model_arrays(),
    "data": _data_arrays(),
    "curvature": _curvature_arrays(),
}


def _model_result(path):
    model, lik = er.load_model(path)
    return (model.param_names, model.activation.name, repr(lik), model.theta.tobytes())


def _data_result(path):
    x, y = er.load_data(path)
    return (x.dtype.str, x.tobytes(), y.dtype.str, y.shape, y.tobytes())


def _curvature_result(path):
    c = er.Curvature.load(path)
    return (c.structure, c.estimator, c.param_names, np.asarray(c.data).tobytes())


# name -> (seed arrays, API reader returning comparable values)
API_READERS = {"model": ("model", _model_result), "data": ("data", _data_result), "curvature": ("curvature", _curvature_result)}


# ----------------------------------------------------------------------------- mutations
@st.composite
def byte_mutations(draw, raw: bytes) -> bytes:
    """Truncation, flips of single bits or whole bytes, or a span overwritten with random bytes."""
    kind = draw(st.sampled_from(["truncate", "flip", "span"]))
    event(f"byte mutation: {kind}")
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    data = bytearray(raw)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data)
    start = draw(st.integers(0, len(raw) - 1))
    span = draw(st.binary(min_size=1, max_size=16))
    data[start : start + len(span)] = span
    return bytes(data)


DESCRS = ["<f8", "<f4", ">f8", "<i8", "|u1", "|b1", "<c16", "<U4", "|S3", "|O", "<M8[s]", "[('a', '<f8')]", "<f2", "<U0"]
NAMES = ["0.weight.npy", "00.weight.npy", "2.bias.npy", "02.bias.npy", "x.npy", "y.npy", "x", "x.npy.txt", "a/b.npy",
         "__activation__.npy", "__n__.npy", "full.npy", ".npy", "dir/", "__param_names__.npy", "kfac.0.A.npy"]


@st.composite
def zip_mutations(draw, raw: bytes) -> bytes:
    """Rebuild the archive with one member-level edit; each result is a well-formed zip."""
    members = zip_members(raw)
    kind = draw(st.sampled_from(["rename", "swap", "drop", "duplicate", "header", "reshape", "recorded size", "bomb", "recompress"]))
    event(f"zip mutation: {kind}")
    method = draw(st.sampled_from(sorted(METHODS)))
    i = draw(st.integers(0, len(members) - 1))
    name, payload = members[i]
    if kind == "rename":
        members[i] = (draw(st.sampled_from(NAMES)), payload)
    elif kind == "swap":
        j = draw(st.integers(0, len(members) - 1))
        members[i], members[j] = (name, members[j][1]), (members[j][0], payload)
    elif kind == "drop":
        del members[i]
    elif kind == "duplicate":
        members.append((name, draw(st.sampled_from([payload, members[0][1]]))))
    elif kind == "header":
        shape = draw(st.lists(st.integers(0, 7), max_size=3).map(tuple) | st.sampled_from([(10**12,), (10**6, 10**6), (2**62, 4)]))
        text = f"{{'descr': {draw(st.sampled_from(DESCRS))!r}, 'fortran_order': {draw(st.booleans())}, 'shape': {shape}, }}"
        text = text.replace("\"[('a', '<f8')]\"", "[('a', '<f8')]")
        header = npy_header(text, draw(st.sampled_from([1, 2, 3])))
        data_size = len(payload) - len(npy_bytes(np.zeros(0))) if draw(st.booleans()) else draw(st.integers(0, 64))
        members[i] = (name, header + payload[-data_size:] if data_size > 0 else header)
    elif kind == "reshape":  # a consistent reinterpretation: same bytes, another shape, order or dtype
        array = np.load(io.BytesIO(payload), allow_pickle=False)  # a seed member: trusted
        n = array.size
        shape = draw(st.sampled_from([(n,), *((a, n // a) for a in range(1, n + 1) if n % a == 0)]))
        descr = draw(st.sampled_from(["<f8", ">f8", "<i8", "<c8", "<u8"])) if array.dtype.itemsize == 8 else array.dtype.str
        text = f"{{'descr': {descr!r}, 'fortran_order': {draw(st.booleans())}, 'shape': {shape}, }}"
        members[i] = (name, npy_header(text, draw(st.sampled_from([1, 2, 3]))) + array.tobytes())
    elif kind == "bomb":
        zeros = draw(st.sampled_from([2**20, 2**22]))
        members.append(("bomb.npy", npy_header(f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({zeros // 8},), }}") + bytes(zeros)))
        method = "deflated"
    if not members:
        return zip_bytes([], method)
    rebuilt = zip_bytes(members, method, draw(st.integers(1, 9)) if method == "deflated" else None)
    if kind == "recorded size" and len(members) == len(zip_members(raw)):
        rebuilt = set_recorded_size(rebuilt, draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, len(members[0][1]) + 1])))
    return rebuilt


def _assert_one_line_naming(error: ValueError, path) -> None:
    text = str(error)
    assert "\n" not in text, text
    assert str(path) in text, text


def _npz_oracle(raw: bytes) -> dict:
    """np.load's arrays in the machine's byte order (the reader converts '>f8' and the like)."""
    with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
        return {key: _native(archive[key]) for key in archive.files}


def _native(array: np.ndarray) -> np.ndarray:
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _same_arrays(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes(order="A") == b[k].tobytes(order="A") for k in a
    )


def _declared_size(member: bytes) -> int | None:
    """header + data bytes that a .npy member's header declares (None: numpy cannot parse it)."""
    stream = io.BytesIO(member)
    try:
        version = np.lib.format.read_magic(stream)
        shape, _, dtype = np.lib.format._read_array_header(stream, version)
    except Exception:
        return None
    return stream.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _justified_refusal(raw: bytes, text: str, max_bytes: int) -> bool:
    """May ewc_ref refuse these bytes with this message? Yes when numpy's own reader cannot read
    them, or when the rule the message names (ewc_ref/safe_files.py, one per phrase below) holds
    for the bytes, checked here on the bytes themselves. A reader that refused everything, or
    refused a well-formed file for the wrong reason, fails this check."""
    try:
        oracle = _npz_oracle(raw)
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            infos = archive.infolist()
            members = [archive.read(info) for info in infos]
    except Exception:
        return True  # numpy refuses it too
    names = [info.filename for info in infos]
    keys = {name.removesuffix(".npy") for name in names}
    rules = {
        "appears twice in the zip directory": len(names) != len(set(names)),
        "is not a .npy array": any(name.endswith("/") or not name.endswith(".npy") or name == ".npy" for name in names),
        "is encrypted": any(info.flag_bits & 0x1 for info in infos),
        "are ambiguous": len({re.sub(r"\d+", lambda m: str(int(m.group())), key) for key in keys}) < len(keys),
        "above the memory budget": sum(a.nbytes for a in oracle.values()) > max_bytes,
        "is not supported": any(a.dtype.kind not in safe_files.ALLOWED_KINDS or a.dtype.itemsize == 0
                                for a in oracle.values()),
        "the zip directory records": any(_declared_size(m) != len(m) for m in members),
        "more data than shape": any(_declared_size(m) is not None and _declared_size(m) < len(m) for m in members),
        "refused as a compression bomb": any(info.file_size > safe_zip.RATIO_FLOOR_BYTES
                                             and info.file_size > safe_zip.MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
                                             for info in infos),
    }
    return any(phrase in text and holds for phrase, holds in rules.items())


# ----------------------------------------------------------------------------- the readers
def _check_raw_reader(tmp_path, raw: bytes) -> None:
    path = tmp_path / "fuzz.npz"
    path.write_bytes(raw)
    try:
        arrays = safe_files.read_npz(path, max_bytes=2**21)
    except ValueError as error:
        event("refused")
        _assert_one_line_naming(error, path)
        assert _justified_refusal(raw, str(error), 2**21), f"refused for no reason numpy or a rule gives: {error}"
        return
    event("accepted")
    assert _same_arrays(arrays, _npz_oracle(raw))


@FUZZ
@given(data=st.data(), seed=st.sampled_from(sorted(SEEDS)), compress=st.booleans())
def test_raw_reader_on_byte_mutations(tmp_path, data, seed, compress):
    raw = _encode(SEEDS[seed], "deflated" if compress else "stored")
    _check_raw_reader(tmp_path, data.draw(byte_mutations(raw)))


@FUZZ
@given(data=st.data(), seed=st.sampled_from(sorted(SEEDS)))
def test_raw_reader_on_zip_mutations(tmp_path, data, seed):
    _check_raw_reader(tmp_path, data.draw(zip_mutations(_encode(SEEDS[seed]))))


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), method=st.sampled_from(sorted(METHODS)), level=st.integers(1, 9))
def test_recompression_changes_nothing(tmp_path, seed, method, level):
    path = tmp_path / "fuzz.npz"
    path.write_bytes(zip_bytes(zip_members(_encode(SEEDS[seed])), method, level if method == "deflated" else None))
    assert _same_arrays(safe_files.read_npz(path), SEEDS[seed])


@FUZZ
@given(data=st.data(), reader=st.sampled_from(sorted(API_READERS)), level=st.sampled_from(["bytes", "zip"]))
def test_api_readers_keep_the_contract(tmp_path, monkeypatch, data, reader, level):
    monkeypatch.setattr(safe_files, "MAX_FILE_BYTES", 2**21)  # so the bombs are over budget
    seed, read = API_READERS[reader]
    raw = _encode(SEEDS[seed], data.draw(st.sampled_from(["stored", "deflated"])))
    raw = data.draw(byte_mutations(raw) if level == "bytes" else zip_mutations(raw))
    path = tmp_path / f"{reader}.npz"
    path.write_bytes(raw)
    try:
        result = read(path)
    except ValueError as error:
        event("refused")
        _assert_one_line_naming(error, path)
        try:
            safe_files.read_npz(path)
        except ValueError:  # refused as bytes: for a reason numpy or a rule of safe_files gives
            assert _justified_refusal(raw, str(error), 2**21), f"refused for no reason numpy or a rule gives: {error}"
            return
        # readable bytes refused for what they mean: the same file written plainly means the same
        clean = tmp_path / f"clean-{reader}.npz"
        np.savez(clean, **_npz_oracle(raw))
        with pytest.raises(ValueError) as plain:
            read(clean)
        assert str(plain.value).replace(str(clean), "FILE") == str(error).replace(str(path), "FILE")
        return
    event("accepted")
    clean = tmp_path / f"clean-{reader}.npz"
    np.savez(clean, **_npz_oracle(raw))
    assert result == read(clean)


# ----------------------------------------------------------------------------- IDX
IDX_SEED = (np.arange(2 * 3 * 4) * 7 % 256).astype(np.uint8).reshape(2, 3, 4)


def _idx_oracle(raw: bytes, gz: bool) -> np.ndarray:
    plain = gzip.decompress(raw) if gz else raw
    dtype = np.dtype(safe_idx.IDX_TYPES[plain[2]])
    shape = tuple(int(d) for d in np.frombuffer(plain, ">u4", count=plain[3], offset=4))
    return np.frombuffer(plain, dtype, offset=4 + 4 * plain[3]).reshape(shape)


def _well_formed_idx(raw: bytes, gz: bool) -> bool:
    """True when the bytes are an IDX file by its definition (a complete gzip stream when `gz`; magic
    0x0000TTDD with a known type TT and D >= 1 dimensions, none 0; exactly the declared data after
    the header) and small: a reader may refuse only what this says False to."""
    try:
        plain = gzip.decompress(raw) if gz else raw
    except Exception:
        return False
    if len(plain) < 4 or plain[:2] != b"\0\0" or plain[2] not in safe_idx.IDX_TYPES or plain[3] == 0:
        return False
    ndim = plain[3]
    if len(plain) < 4 + 4 * ndim:
        return False
    shape = [int(d) for d in np.frombuffer(plain, ">u4", count=ndim, offset=4)]
    size = int(np.prod(shape, dtype=object)) * np.dtype(safe_idx.IDX_TYPES[plain[2]]).itemsize
    return 0 not in shape and len(plain) == 4 + 4 * ndim + size and size <= 2**20


@st.composite
def idx_mutations(draw, raw: bytes) -> bytes:
    """Byte mutations of the plain IDX, or header edits (type code, ndim, dims), or appended data."""
    kind = draw(st.sampled_from(["bytes", "type", "ndim", "dims", "append"]))
    event(f"idx mutation: {kind}")
    if kind == "bytes":
        return draw(byte_mutations(raw))
    data = bytearray(raw)
    if kind == "type":
        data[2] = draw(st.sampled_from([0x07, 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0xFF]))
    elif kind == "ndim":
        data[3] = draw(st.integers(0, 255))
    elif kind == "dims":
        k = draw(st.integers(0, data[3] - 1))
        data[4 + 4 * k : 8 + 4 * k] = draw(st.sampled_from([0, 1, 3, 6, 2**16, 2**32 - 1])).to_bytes(4, "big")
    else:
        data += bytes(draw(st.sampled_from([1, 24, 2**20])))
    return bytes(data)


@FUZZ
@given(data=st.data(), gz=st.booleans(), lie=st.booleans())
def test_idx_reader_keeps_the_contract(tmp_path, data, gz, lie):
    plain = data.draw(idx_mutations(idx_bytes(IDX_SEED)))
    raw = gzip_bytes(plain, isize=len(idx_bytes(IDX_SEED)) if lie else None) if gz else plain
    if gz and data.draw(st.booleans()):
        raw = data.draw(byte_mutations(raw))  # damage the deflate stream itself
    path = tmp_path / ("fuzz-idx3-ubyte.gz" if gz else "fuzz-idx3-ubyte")
    path.write_bytes(raw)
    try:
        array = read_idx(path)
    except ValueError as error:
        event("refused")
        _assert_one_line_naming(error, path)
        assert not _well_formed_idx(raw, gz), f"a well-formed IDX file refused: {error}"
        return
    event("accepted")
    expected = _idx_oracle(raw, gz)
    assert array.dtype == expected.dtype.newbyteorder("=") and np.array_equal(array, expected)


@pytest.mark.parametrize("gz", [False, True])
def test_unmutated_seeds_are_accepted(tmp_path, gz):
    # the fuzz tests above would pass vacuously if the seeds themselves were refused
    for name, (seed, read) in API_READERS.items():
        path = tmp_path / f"{name}.npz"
        path.write_bytes(_encode(SEEDS[seed], "deflated" if gz else "stored"))
        read(path)
    path = tmp_path / ("i.gz" if gz else "i")
    path.write_bytes(gzip_bytes(idx_bytes(IDX_SEED)) if gz else idx_bytes(IDX_SEED))
    np.testing.assert_array_equal(read_idx(path), IDX_SEED)


def test_a_reader_that_refuses_everything_fails_the_fuzz_checks(tmp_path, monkeypatch):
    """The refusal check bites: a recompressed seed (numpy reads it, no rule is broken) refused as
    'damaged', or a file with a duplicate key refused for its budget, is caught."""
    raw = zip_bytes(zip_members(_encode(SEEDS["data"])), "deflated", 6)

    def refuse(path, **_):
        raise ValueError(f"{path}: key 'x': damaged member (zlib.error)")

    monkeypatch.setattr(safe_files, "read_npz", refuse)
    monkeypatch.setattr(sys.modules[__name__], "event", lambda *_: None)  # outside a Hypothesis test
    with pytest.raises(AssertionError, match="refused for no reason"):
        _check_raw_reader(tmp_path, raw)
    duplicate = zip_bytes([*zip_members(raw), zip_members(raw)[0]])
    assert _justified_refusal(duplicate, "key 'x' appears twice in the zip directory", 2**21)
    assert not _justified_refusal(duplicate, "key 'x': shape (5, 3) float64 needs 1 MiB, above the memory budget", 2**21)
