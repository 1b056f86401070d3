"""emmil.data.safe_pickle: plain arrays load, crafted pickles are refused before anything runs."""

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from emmil.data.loading import shipped_annotation_dir
from emmil.data.safe_pickle import load_npy, read_npy_header
from emmil.errors import DataError, UnsafePickleError


def _npy_with_pickle(path: Path, payload: bytes) -> Path:
    """A .npy whose header says object dtype and whose body is an arbitrary pickle."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": (1,)})
        fh.write(payload)
    return path


class _TouchMarker:
    """Unpickling this calls os.system('touch <marker>')."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload_cls", [_TouchMarker, _ExecMarker])
def test_crafted_pickle_is_refused_and_nothing_runs(tmp_path, payload_cls):
    marker = tmp_path / "pwned"
    # the payload sits inside a list inside an object array, as a poisoned annotation file would
    path = tmp_path / "segments.npy"
    _npy_with_pickle(path, pickle.dumps([[payload_cls(marker)]], protocol=3))
    with pytest.raises(UnsafePickleError, match=r"segments\.npy: refused to unpickle global (posix\.system|os\.system|builtins\.exec)"):
        load_npy(path, kind="annotation 'segments'")
    assert not marker.exists()
    # plain numpy with allow_pickle=True WOULD have run it: the test payload is real
    if payload_cls is _TouchMarker and sys.platform != "win32":
        np.load(path, allow_pickle=True)
        assert marker.exists()


def test_codecs_encode_admitted_only_for_text_codecs(tmp_path):
    import _codecs

    class Enc:
        def __init__(self, text, codec):
            self.args = (text, codec)

        def __reduce__(self):
            return (_codecs.encode, self.args)

    ok = _npy_with_pickle(tmp_path / "ok.npy", pickle.dumps(np.array([Enc("caf\xe9", "latin1")], dtype=object), protocol=3))
    assert load_npy(ok, kind="x")[0] == b"caf\xe9"
    bad = _npy_with_pickle(tmp_path / "bad.npy", pickle.dumps(np.array([Enc("x", "rot13")], dtype=object), protocol=3))
    with pytest.raises(UnsafePickleError, match="rot13"):
        load_npy(bad, kind="x")


def test_shipped_annotations_load_identically_to_numpy():
    # every shipped file, including ActivityNet's labels_all (which needs _codecs.encode)
    for name in ("thumos14", "anet12"):
        for f in sorted(shipped_annotation_dir(name).glob("*.npy")):
            ours, ref = load_npy(f, kind="annotation"), np.load(f, allow_pickle=True)
            assert ours.shape == ref.shape and ours.dtype == ref.dtype, f
            assert [list(a) if isinstance(a, list) else a for a in ours.tolist()] == ref.tolist(), f


def test_numeric_array_and_header(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a.npy", a)
    assert np.array_equal(load_npy(tmp_path / "a.npy", kind="features"), a)
    assert read_npy_header(tmp_path / "a.npy", kind="features") == ((3, 4), np.dtype(np.float32))


def test_object_array_of_arrays_roundtrip(tmp_path):
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = np.ones((3, 4), np.float32), np.zeros((1, 4), np.float32)
    np.save(tmp_path / "f.npy", arr, allow_pickle=True)
    out = load_npy(tmp_path / "f.npy", kind="features")
    assert out.shape == (2,) and out[0].shape == (3, 4) and out[0].sum() == 12.0


@pytest.mark.parametrize("obj", [False, True])
def test_truncated_file_is_a_data_error_naming_the_file(tmp_path, obj):
    arr = np.empty(1, dtype=object) if obj else np.ones((50, 8), np.float32)
    if obj:
        arr[0] = np.ones((50, 8), np.float32)
    np.save(tmp_path / "t.npy", arr, allow_pickle=True)
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.npy: features file is truncated or corrupt"):
        load_npy(tmp_path / "t.npy", kind="features")


def test_missing_and_not_npy(tmp_path):
    with pytest.raises(DataError, match=r"nope\.npy: features file not found"):
        load_npy(tmp_path / "nope.npy", kind="features")
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(DataError, match=r"text\.npy: not a valid \.npy file \(features\)"):
        load_npy(tmp_path / "text.npy", kind="features")


def _header_only(path: Path, descr: str, shape: tuple, body: bytes) -> Path:
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": descr, "fortran_order": False, "shape": shape})
        fh.write(body)
    return path


@pytest.mark.parametrize("reader", [load_npy, read_npy_header])
def test_header_claiming_more_than_the_file_is_refused(tmp_path, reader):
    # (2**40, 4) float32 = 2**44 bytes claimed, 64 bytes present: refused by both readers (the loaders
    # preallocate from read_npy_header), and the Python-int product does not wrap like int64 would
    path = _header_only(tmp_path / "big.npy", "<f4", (2**40, 4), bytes(64))
    with pytest.raises(DataError, match=r"big\.npy: features file is truncated or corrupt: its header says shape "
                                        r"\(1099511627776, 4\) of float32 \(17592186044416 bytes\) but only 64 "
                                        r"bytes follow the header"):
        reader(path, kind="features")
    # 2**62 * 8 * 8 bytes overflows int64 to 0: must still be refused
    wrap = _header_only(tmp_path / "wrap.npy", "<f8", (2**62, 8), b"")
    with pytest.raises(DataError, match=r"wrap\.npy: .* \(295147905179352825856 bytes\) but only 0 bytes"):
        reader(wrap, kind="features")


def test_header_of_exact_size_is_accepted(tmp_path):
    # limiting case: 3 x 2 float32 = 24 bytes, exactly what follows the header
    path = _header_only(tmp_path / "ok.npy", "<f4", (3, 2), np.arange(6, dtype=np.float32).tobytes())
    assert read_npy_header(path, kind="features") == ((3, 2), np.dtype(np.float32))
    assert load_npy(path, kind="features").sum() == 15.0  # 0 + 1 + ... + 5
    short = _header_only(tmp_path / "short.npy", "<f4", (3, 2), bytes(23))  # one byte short
    with pytest.raises(DataError, match=r"short\.npy: .* \(24 bytes\) but only 23 bytes"):
        read_npy_header(short, kind="features")


def test_negative_header_dimension_is_refused(tmp_path):
    path = _header_only(tmp_path / "neg.npy", "<f4", (-1, 8), bytes(32))
    with pytest.raises(DataError, match=r"neg\.npy: not a valid \.npy file \(features\): header shape \(-1, 8\) "
                                        r"has a negative size"):
        read_npy_header(path, kind="features")


def test_object_header_claiming_more_elements_than_bytes_is_refused(tmp_path):
    # a pickle spends >= 1 byte per element: 10**9 elements cannot fit in the ~60 bytes of this pickle
    payload = pickle.dumps(np.array([1, 2], dtype=object), protocol=3)
    path = _header_only(tmp_path / "obj.npy", "|O", (10**9,), payload)
    with pytest.raises(DataError, match=rf"obj\.npy: segments file is truncated or corrupt: its header says shape "
                                        rf"\(1000000000,\) of object \(1000000000 pickled elements \(>= 1000000000 "
                                        rf"bytes\)\) but only {len(payload)} bytes"):
        load_npy(path, kind="segments")
    # a header telling the truth about the same pickle still loads (2 elements)
    ok = _header_only(tmp_path / "ok.npy", "|O", (2,), payload)
    assert load_npy(ok, kind="segments").tolist() == [1, 2]
