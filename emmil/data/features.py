"""Shared by both loaders: per-video feature checks, one preallocated feature array, the
`Dataset.source` string, the time-base check, and the min_clips filter."""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from emmil.data.dataset import WTALC_CLIP_SECONDS, Video
from emmil.data.problems import ProblemLog
from emmil.data.safe_parse import load_json, short_repr
from emmil.errors import DataError

SYNTHETIC_MARKER = "SYNTHETIC.json"
# `Dataset.source` by evidence (issue 14.4). Nothing in a feature folder proves that its features are
# the real release (converted synthetic features look the same), so "real" needs the user's word.
UNVERIFIED_SOURCE = "user-provided features (unverified)"


def real_source(release: str) -> str:
    """The label of features the user declared real (`real_features=True`); `release` names the layout."""
    return f"real I3D features ({release}, declared by the user)"


REAL_SOURCE = real_source("W-TALC release")


def source_of(data_dir: Path, declared: str | None = None) -> str:
    """`Dataset.source`: "semi-synthetic (<description>)" when data_dir holds SYNTHETIC.json (written
    by the synthetic generator); else `declared` (the real-features label, when the user declared
    them real); else "user-provided features (unverified)". A declaration contradicting
    SYNTHETIC.json is an error naming both."""
    marker = Path(data_dir) / SYNTHETIC_MARKER
    if not marker.is_file():
        return UNVERIFIED_SOURCE if declared is None else declared
    meta = load_json(marker, "synthetic-data marker")
    if not isinstance(meta, dict) or not isinstance(meta.get("description"), str):
        raise DataError(f"{marker}: field 'description' (a string) is missing")
    if declared is not None:
        raise DataError(f"{marker}: the features are declared real (real_features / --real-features) but this "
                        f"file marks {data_dir} as written by `emmil data synth` ({short_repr(meta['description'])})")
    return f"semi-synthetic ({meta['description']})"


# Time-base check (issue 14.3): the median over videos of (clips x clip_seconds) / duration must lie
# within TIME_BASE_TOLERANCE of 1. Legitimate offsets are absolute and small: a dropped last partial
# chunk (< 1 clip), a 16-frame window sliding by 4 (12 frames = 0.4-0.5 s short), durations rounded to
# 0.01 s, 29.97 vs 30 fps (0.1 %): under 1 % of a typical 2-3 minute THUMOS14 / ActivityNet video.
# The usual mistakes are far outside 10 %: 16/30 s for 16/25 s (x1.2), a 4-frame stride taken for 16
# (x4), 8-frame chunks for 16 (x2). The median, not every video: ActivityNet durations come from
# YouTube metadata and a re-encoded download can differ by more; such single videos are listed in a
# note (off by more than the tolerance plus TIME_BASE_SLACK_CLIPS clips, the slack for short videos).
TIME_BASE_TOLERANCE = 0.10
TIME_BASE_SLACK_CLIPS = 2


def check_clip_seconds(clip_seconds) -> float:
    """clip_seconds as a float: a finite positive number (seconds of video per feature clip)."""
    if isinstance(clip_seconds, bool) or not isinstance(clip_seconds, (int, float)) or not (
            math.isfinite(clip_seconds) and clip_seconds > 0):
        raise DataError(f"clip_seconds (--clip-seconds) is {short_repr(clip_seconds)}, expected a positive "
                        "number of seconds per feature clip")
    return float(clip_seconds)


def check_time_base(videos: Sequence[Video], clip_seconds: float, where: str, fixed: bool = False) -> str | None:
    """Refuse a clip_seconds that the durations contradict (see TIME_BASE_TOLERANCE); returns a note
    listing single videos whose clip count disagrees with their duration, or None.
    videos: placed (num_clips set, duration > 0). where: the data folder / annotation file, for messages.
    fixed: the layout's time base cannot be changed (W-TALC), so the message does not suggest it."""
    timed = [v for v in videos if v.num_clips > 0 and v.duration > 0]
    if not timed:
        return None
    ratios = [v.num_clips * clip_seconds / v.duration for v in timed]  # 1.0 = features span the video
    median = statistics.median(ratios)
    if abs(median - 1.0) > TIME_BASE_TOLERANCE:
        v = timed[ratios.index(min(ratios, key=lambda r: abs(r - median)))]
        implied = statistics.median(v.duration / v.num_clips for v in timed)
        default = " (the default, 16/25 s)" if clip_seconds == WTALC_CLIP_SECONDS else ""
        fix = ("this layout's time base is fixed: the features or durations are not the release's" if fixed
               else f"the features imply about {implied:.4f} s per clip: pass --clip-seconds {implied:.4f} "
                    "(or the exact value of your feature extractor)")
        raise DataError(
            f"{where}: field 'duration' contradicts clip_seconds = {clip_seconds:g} s{default}: clips x "
            f"clip_seconds / duration has median {median:.3f} over {len(timed)} videos, expected 1 +- "
            f"{TIME_BASE_TOLERANCE:g} (e.g. video {v.name!r}: {v.num_clips} clips x {clip_seconds:g} s = "
            f"{v.num_clips * clip_seconds:.2f} s, duration {v.duration:g} s); {fix}")
    off = [f"{v.name} ({v.num_clips} clips = {v.num_clips * clip_seconds:.1f} s, duration {v.duration:g} s)"
           for v, r in zip(timed, ratios)
           if abs(v.num_clips * clip_seconds - v.duration) > TIME_BASE_TOLERANCE * v.duration
           + TIME_BASE_SLACK_CLIPS * clip_seconds]
    if not off:
        return None
    return (f"time base: {len(off)} of {len(timed)} videos have a clip count that disagrees with their "
            f"duration by more than {TIME_BASE_TOLERANCE:.0%} + {TIME_BASE_SLACK_CLIPS} clips (kept; "
            f"their segments may not line up with the features): " + ", ".join(off[:5])
            + (", ..." if len(off) > 5 else ""))


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
