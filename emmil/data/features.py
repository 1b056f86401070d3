"""Shared by both loaders: per-video feature checks, one preallocated feature array, the
`Dataset.source` string, and the min_clips filter."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from emmil.data.dataset import Video
from emmil.data.problems import ProblemLog
from emmil.errors import DataError

REAL_SOURCE = "real I3D features (W-TALC release)"
SYNTHETIC_MARKER = "SYNTHETIC.json"


def source_of(data_dir: Path, default: str = REAL_SOURCE) -> str:
    """`Dataset.source`: "semi-synthetic (<description>)" when data_dir holds SYNTHETIC.json (written
    by the synthetic generator), else `default`."""
    marker = Path(data_dir) / SYNTHETIC_MARKER
    if not marker.is_file():
        return default
    try:
        meta = json.loads(marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{marker}: malformed JSON: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("description"), str):
        raise DataError(f"{marker}: field 'description' (a string) is missing")
    return f"semi-synthetic ({meta['description']})"


def check_feature_dtype(arr: np.ndarray, where: str, log: ProblemLog, video: str) -> None:
    """Features must be floating point; float64/float16 are converted to float32 (counted)."""
    if arr.dtype.kind != "f":
        raise DataError(f"{where}: features have dtype {arr.dtype}, expected float32 (floating point)")
    if arr.dtype != np.float32:
        log.add("features_float64_converted", f"{video} ({arr.dtype})")


def check_feature_shape(arr, where: str, width: int | None) -> tuple[int, int]:
    """(T, D) with D even (RGB columns first, flow after) and D == `width` when given."""
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{where}: expected a (T, D) float array of features, found {type(arr).__name__}")
    if arr.ndim != 2:
        raise DataError(f"{where}: features have shape {arr.shape}, expected (T, D)")
    t, d = arr.shape
    if width is not None and d != width:
        raise DataError(f"{where}: feature width is {d}, expected {width} (the width of the other videos)")
    if d == 0 or d % 2:
        raise DataError(f"{where}: feature width {d} is not an even number (RGB half + flow half)")
    return t, d


def check_finite(block: np.ndarray, where: str) -> None:
    """No NaN/inf features: they would poison every loss silently."""
    if not np.isfinite(block).all():
        bad = np.argwhere(~np.isfinite(block))[0]
        raise DataError(f"{where}: features contain NaN/inf (first at clip {int(bad[0])}, column {int(bad[1])})")


def keep_by_min_clips(videos: Sequence[Video], lengths: Sequence[int], min_clips: int,
                      log: ProblemLog, where: Callable[[Video], str]) -> list[int]:
    """Indices of the videos kept: those with >= min_clips clips. A dropped video is counted; an
    empty video that min_clips does not drop (min_clips=0) is an error."""
    keep = []
    for i, (v, t) in enumerate(zip(videos, lengths)):
        if t < min_clips:
            log.add("videos_dropped_min_clips", f"{v.name} ({t} clips)")
            continue
        if t == 0:
            raise DataError(f"{where(v)}: video has 0 feature clips (use min_clips >= 1 to drop such videos)")
        keep.append(i)
    return keep


def place(videos: Sequence[Video], lengths: Sequence[int]) -> tuple[list[Video], int]:
    """Assign each video its row range in the concatenated array; returns (videos, total rows)."""
    out, start = [], 0
    for v, t in zip(videos, lengths):
        out.append(dataclasses.replace(v, start=start, num_clips=int(t)))
        start += int(t)
    return out, start
