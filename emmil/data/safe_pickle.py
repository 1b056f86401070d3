"""Load any .npy file without letting a pickle run code (DESIGN.md section 8).

Numeric arrays are read with ``allow_pickle=False``. Object arrays (the W-TALC annotation and
feature files are pickled object arrays) go through a restricted unpickler that can build only:
numpy arrays, numpy dtypes and numpy scalars, plain containers (list/tuple/dict/set) of
str/bytes/int/float/bool/None, and ``_codecs.encode`` limited to the latin-1/utf-8 text codecs
(Python 2 era pickles, such as the ActivityNet1.2 ``labels_all.npy``, store str that way).
Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) is refused with
:class:`UnsafePickleError` *before* it is called: ``find_class`` raises, so nothing is executed.
"""

from __future__ import annotations

import codecs
import math
import os
import pickle
from pathlib import Path

import numpy as np

from emmil.errors import DataError, UnsafePickleError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.26
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

# Text codecs that `_codecs.encode` may be asked for: str -> bytes of a known text encoding only.
_TEXT_CODECS = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1", "utf-8", "utf8", "ascii"})


def _text_encode(obj, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """The only admitted use of `_codecs.encode`: encode a str with a text codec (no bytes codecs
    such as zlib/base64, which could be used to smuggle data past the checks)."""
    if not isinstance(obj, str) or not isinstance(encoding, str) or codecs.lookup(encoding).name not in {
        codecs.lookup(c).name for c in _TEXT_CODECS
    }:
        raise UnsafePickleError(f"_codecs.encode({type(obj).__name__}, {encoding!r}) is not a text encoding")
    return codecs.encode(obj, encoding, errors)


# (module, name) -> the callable/class the restricted unpickler hands out. Numpy's pickles of
# arrays reference `numpy.core.multiarray._reconstruct` (numpy 1.x writers) or
# `numpy._core.multiarray._reconstruct` (numpy 2.x writers).
_ALLOWED: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _text_encode,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(_mod, "scalar")] = _multiarray.scalar


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._path}: refused to unpickle global {module}.{name}: only numpy arrays and plain "
                "containers of str/bytes/numbers are admitted (the file may be crafted); nothing was executed"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._path}: refused a persistent id in the pickle; nothing was executed")


def _read_header(fh, path: Path, kind: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fh)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(fh)
        raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, EOFError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: not a valid .npy file ({kind}): {exc}") from None


def check_header_fits(shape: tuple[int, ...], dtype: np.dtype, data_bytes: int, path: Path, kind: str) -> None:
    """Refuse a header whose shape the file cannot hold (issue 15.3): numpy would first allocate the
    claimed array (a 100-byte file saying shape (10**12,) asks for 4 TB) and the loaders preallocate
    from headers. `data_bytes`: the file's size after the header. Numeric dtypes need exactly
    prod(shape) * itemsize bytes; an object array is a pickle in which every element costs at least
    one opcode byte, so prod(shape) <= data_bytes bounds it. Python ints: no int64 overflow."""
    if any(d < 0 for d in shape):
        raise DataError(f"{path}: not a valid .npy file ({kind}): header shape {shape} has a negative size")
    count = math.prod(shape)
    need = count if dtype.hasobject else count * dtype.itemsize
    if need > data_bytes:
        what = f"{count} pickled elements (>= {need} bytes)" if dtype.hasobject else f"{need} bytes"
        raise DataError(f"{path}: {kind} file is truncated or corrupt: its header says shape {shape} of "
                        f"{dtype} ({what}) but only {data_bytes} bytes follow the header (refused before "
                        "allocating anything)")


def _read_checked_header(fh, path: Path, kind: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The header of open file `fh`, refused when its shape does not fit in the file."""
    shape, fortran_order, dtype = _read_header(fh, path, kind)
    check_header_fits(tuple(shape), dtype, os.fstat(fh.fileno()).st_size - fh.tell(), path, kind)
    return shape, fortran_order, dtype


def load_npy(path, *, kind: str) -> np.ndarray:
    """Load a .npy file safely. `kind` says what the file is (e.g. "features", "annotation
    'segments'") and appears in every error message together with the path.

    Numeric/bytes/str arrays: ``np.load(allow_pickle=False)``. Object arrays: restricted unpickler.
    Raises DataError (missing, truncated, not .npy) or UnsafePickleError (a refused global).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {kind} file not found")
    with open(path, "rb") as fh:
        shape, fortran_order, dtype = _read_checked_header(fh, path, kind)
        if not dtype.hasobject:
            fh.seek(0)
            try:
                return np.load(fh, allow_pickle=False)
            except (ValueError, EOFError, OSError) as exc:
                raise DataError(f"{path}: {kind} file is truncated or corrupt: {exc}") from None
        try:
            array = _RestrictedUnpickler(fh, path).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError, MemoryError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: {kind} file is truncated or corrupt (object array): "
                            f"{type(exc).__name__}: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path}: {kind} file holds a pickled {type(array).__name__}, not an array")
    expected = math.prod(shape)
    if array.size != expected:
        raise DataError(f"{path}: {kind} file holds {array.size} elements, its header says shape {shape}")
    if array.shape != tuple(shape):
        array = array.reshape(shape, order="F" if fortran_order else "C")
    return array


def read_npy_header(path, *, kind: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a .npy file from its header alone (nothing unpickled, data not read); a
    shape larger than the file is refused, so callers may preallocate from it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {kind} file not found")
    with open(path, "rb") as fh:
        shape, _fortran, dtype = _read_checked_header(fh, path, kind)
    return tuple(shape), dtype
