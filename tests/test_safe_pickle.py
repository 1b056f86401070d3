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
