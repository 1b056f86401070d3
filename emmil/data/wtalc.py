"""Loader for the W-TALC release layout (DESIGN.md section 4).

    <data_dir>/<Prefix>-I3D-JOINTFeatures.npy   1-D object array of (T_i, D) float32, aligned with
                                                 videoname.npy; columns [0, D/2) RGB, [D/2, D) flow
    <data_dir>/<Prefix>-Annotations/            videoname, subset, classlist, segments, labels,
                                                 labels_all, duration (.npy), Ambiguous_test.txt
Prefix: "Thumos14reduced" (THUMOS14) or "ActivityNet1.2" (ActivityNet1.2). If the annotation folder
is absent from data_dir the copy shipped in the package is used (and the report says so).
Every file goes through `safe_pickle.load_npy`; every gotcha of the release is handled on purpose
and counted in the problem log (emmil.data.problems), never skipped silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from emmil.data.dataset import TRAIN_TEST_SUBSETS, WTALC_CLIP_SECONDS, Dataset, Video
from emmil.data import features as F
from emmil.data.problems import LoadReport, ProblemLog
from emmil.data.safe_pickle import load_npy
from emmil.errors import DataError

WTALC_PREFIX = {"thumos14": "Thumos14reduced", "anet12": "ActivityNet1.2"}


@dataclass(frozen=True, eq=False)
class WtalcAnnotations:
    classes: tuple[str, ...]  # classlist.npy order
    videos: tuple[Video, ...]  # videoname.npy order; start=0, num_clips=0 (no features read)
    ambiguous: dict  # video name -> ((start_s, end_s), ...) from Ambiguous_test.txt
    problems: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    path: str = ""


def check_name(name: str) -> str:
    if name not in WTALC_PREFIX:
        raise DataError(f"unknown dataset {name!r}; expected one of {tuple(WTALC_PREFIX)}")
    return name


def check_load_args(name: str, data_dir, min_clips: int) -> Path:
    """The arguments every loader shares: a known dataset name, an existing folder, min_clips >= 0."""
    check_name(name)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found")
    if min_clips < 0:
        raise DataError(f"min_clips is {min_clips}, expected >= 0")
    return data_dir


def annotation_dir_name(name: str) -> str:
    return f"{WTALC_PREFIX[check_name(name)]}-Annotations"


def feature_file_name(name: str) -> str:
    return f"{WTALC_PREFIX[check_name(name)]}-I3D-JOINTFeatures.npy"


def _text(value, where: str) -> str:
    """bytes / numpy bytes / str -> str (the release stores names as bytes)."""
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(value).decode("latin1")
    if isinstance(value, str):
        return str(value)
    raise DataError(f"{where}: expected text (str or bytes), found {type(value).__name__}")


def _text_array(path: Path, kind: str) -> tuple[str, ...]:
    arr = load_npy(path, kind=kind)
    if arr.ndim != 1:
        raise DataError(f"{path}: {kind} has shape {arr.shape}, expected a 1-D array")
    return tuple(_text(v, f"{path}: {kind} entry {i}") for i, v in enumerate(arr))


def _object_list(path: Path, kind: str, n: int) -> list:
    """A 1-D array of length n whose entries are lists (or arrays) - segments, labels, labels_all."""
    arr = load_npy(path, kind=kind)
    if arr.ndim != 1 or arr.dtype != object:
        raise DataError(f"{path}: {kind} must be a 1-D object array (one list per video), found "
                        f"dtype {arr.dtype} shape {arr.shape}")
    if len(arr) != n:
        raise DataError(f"{path}: {kind} has {len(arr)} entries but videoname.npy has {n}")
    return list(arr)


def _durations(path: Path, n: int) -> np.ndarray:
    """duration.npy: THUMOS14 stores (N, 1), ActivityNet1.2 (N,); both -> (N,) float64 seconds."""
    arr = load_npy(path, kind="annotation 'duration'")
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{path}: duration has dtype {arr.dtype}, expected numbers (seconds)")
    if not (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)):
        raise DataError(f"{path}: duration has shape {arr.shape}, expected (N,) or (N, 1)")
    arr = arr.reshape(-1).astype(np.float64)
    if len(arr) != n:
        raise DataError(f"{path}: duration has {len(arr)} entries but videoname.npy has {n}")
    return arr


def _segments_of(raw, where: str) -> list[tuple[float, float]]:
    try:
        pairs = [tuple(float(x) for x in pair) for pair in raw]
    except (TypeError, ValueError):
        raise DataError(f"{where}: segments must be a list of [start, end] pairs of seconds") from None
    for pair in pairs:
        if len(pair) != 2:
            raise DataError(f"{where}: segment {list(pair)} is not a [start, end] pair")
    return pairs


def _labels_of(raw, where: str) -> list[str]:
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__iter__"):
        raise DataError(f"{where}: expected a list of class names, found {type(raw).__name__}")
    return [_text(x, where) for x in raw]


def check_segment(start: float, end: float, where: str) -> None:
    """A ground-truth segment must be finite, non-negative and end >= start."""
    if not (math.isfinite(start) and math.isfinite(end)):
        raise DataError(f"{where}: segment [{start}, {end}] is not finite")
    if start < 0 or end < 0:
        raise DataError(f"{where}: segment [{start}, {end}] has a negative time")
    if end < start:
        raise DataError(f"{where}: segment [{start}, {end}] ends before it starts")


def clip_segment(start: float, end: float, duration: float, video: str, log: ProblemLog) -> tuple[float, float]:
    """Clip a segment to [0, duration]; a segment ending past the duration is counted, and one that
    starts at/after it (30 THUMOS14 segments) becomes zero-length [duration, duration]: it stays in
    the ground truth, unmatchable, exactly as an unreachable segment counts in the official protocol."""
    if end <= duration:
        return start, end
    log.add("segments_clipped_to_duration", f"{video} [{start}, {end}] > {duration:.3f}")
    if start >= duration:
        log.add("segments_entirely_past_duration", f"{video} [{start}, {end}]")
    return min(start, duration), duration


def build_video(
    name: str,
    subset: str,
    duration: float,
    segments: Sequence[tuple[float, float]],
    segment_labels: Sequence[str],
    labels_all: Sequence[str] | None,
    class_set: frozenset[str],
    where: str,
    log: ProblemLog,
) -> Video:
    """One annotated Video (start=0, num_clips=0). Checks segments and labels, repairs labels_all."""
    if not (math.isfinite(duration) and duration > 0):
        raise DataError(f"{where}: field 'duration' is {duration}, expected a positive number of seconds")
    if len(segments) != len(segment_labels):
        raise DataError(f"{where}: {len(segments)} segments but {len(segment_labels)} segment labels")
    clipped = []
    for (s, e), lab in zip(segments, segment_labels):
        check_segment(s, e, where)
        if lab not in class_set:
            raise DataError(f"{where}: segment label {lab!r} is not in the class list")
        clipped.append(clip_segment(s, e, duration, name, log))
    seg_set = set(segment_labels)
    if labels_all is None:
        labels = seg_set
    else:
        for lab in labels_all:
            if lab not in class_set:
                raise DataError(f"{where}: field 'labels_all' has label {lab!r}, not in the class list")
        if not labels_all and seg_set:
            log.add("labels_all_empty", name)
        elif set(labels_all) != seg_set and seg_set:
            log.add("labels_all_differs", name)
        labels = set(labels_all) | seg_set
    if not labels:
        log.add("videos_without_labels", name)
    return Video(
        name=name,
        subset=subset,
        duration=float(duration),
        start=0,
        num_clips=0,
        labels=tuple(sorted(labels)),
        segments=tuple(clipped),
        segment_labels=tuple(segment_labels),
    )


def check_subset(subset: str, name: str, where: str) -> str:
    allowed = TRAIN_TEST_SUBSETS[name]
    if subset not in allowed:
        raise DataError(f"{where}: field 'subset' is {subset!r}, expected one of {allowed}")
    return subset


def check_unique(names: Sequence[str], where: str, what: str = "video") -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DataError(f"{where}: {what} {n!r} appears more than once")
        seen.add(n)


def read_ambiguous(path: Path, known: set[str], log: ProblemLog) -> dict[str, tuple[tuple[float, float], ...]]:
    """Ambiguous_test.txt: one `name  start end` per line (whitespace separated, seconds).
    Lines naming a video outside the set (video_test_0001292) are counted, not kept."""
    out: dict[str, list[tuple[float, float]]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        where = f"{path}:{lineno}"
        if len(parts) != 3:
            raise DataError(f"{where}: expected 'video start end', found {line!r}")
        try:
            s, e = float(parts[1]), float(parts[2])
        except ValueError:
            raise DataError(f"{where}: start/end of video {parts[0]!r} are not numbers: {line!r}") from None
        check_segment(s, e, f"{where} (video {parts[0]})")
        if parts[0] not in known:
            log.add("ambiguous_unknown_video", f"{parts[0]} {s} {e}")
            continue
        out.setdefault(parts[0], []).append((s, e))
    return {k: tuple(v) for k, v in out.items()}


def read_annotations(annotation_dir, name: str) -> WtalcAnnotations:
    """Read a W-TALC `<Prefix>-Annotations/` folder alone (no features): classes, videos with
    start=0/num_clips=0, THUMOS14 Ambiguous segments, and the problem log."""
    check_name(name)
    d = Path(annotation_dir)
    if not d.is_dir():
        raise DataError(f"{d}: annotation folder not found")
    log = ProblemLog()
    names = _text_array(d / "videoname.npy", "annotation 'videoname'")
    n = len(names)
    check_unique(names, str(d / "videoname.npy"))
    subsets = _text_array(d / "subset.npy", "annotation 'subset'")
    if len(subsets) != n:
        raise DataError(f"{d / 'subset.npy'}: subset has {len(subsets)} entries but videoname.npy has {n}")
    classes = _text_array(d / "classlist.npy", "annotation 'classlist'")
    check_unique(classes, str(d / "classlist.npy"), "class")
    durations = _durations(d / "duration.npy", n)
    segments = _object_list(d / "segments.npy", "annotation 'segments'", n)
    labels = _object_list(d / "labels.npy", "annotation 'labels'", n)
    labels_all_path = d / "labels_all.npy"
    labels_all = _object_list(labels_all_path, "annotation 'labels_all'", n) if labels_all_path.exists() else None
    class_set = frozenset(classes)
    videos = []
    for i, vname in enumerate(names):
        where = f"{d}: video {vname!r}"
        videos.append(
            build_video(
                vname,
                check_subset(subsets[i], name, where),
                float(durations[i]),
                _segments_of(segments[i], f"{where} field 'segments'"),
                _labels_of(labels[i], f"{where} field 'labels'"),
                None if labels_all is None else _labels_of(labels_all[i], f"{where} field 'labels_all'"),
                class_set,
                where,
                log,
            )
        )
    amb_path = d / "Ambiguous_test.txt"
    ambiguous = read_ambiguous(amb_path, set(names), log) if amb_path.is_file() else {}
    return WtalcAnnotations(classes=classes, videos=tuple(videos), ambiguous=ambiguous,
                            problems=log.as_dict(), path=str(d))


def _annotation_dir(data_dir: Path, name: str) -> tuple[Path, str | None]:
    """<data_dir>/<Prefix>-Annotations, or the shipped copy (with a note) when data_dir lacks it."""
    local = data_dir / annotation_dir_name(name)
    if local.is_dir():
        return local, None
    from emmil.data.loading import shipped_annotation_dir

    shipped = shipped_annotation_dir(name)
    return shipped, f"annotations: {local.name} not in {data_dir}; using the copy shipped in the package ({shipped})"


def read_wtalc(data_dir, name: str, *, min_clips: int = 1) -> LoadReport:
    """Load a W-TALC release folder into one Dataset plus the problem log and notes.

    Memory: the unpickled per-video arrays (one copy) are copied one by one into a preallocated
    (sum_i T_i, D) float32 array and released as they are copied: at most ~2 copies at the peak.
    """
    data_dir = check_load_args(name, data_dir, min_clips)
    ann_dir, note = _annotation_dir(data_dir, name)
    ann = read_annotations(ann_dir, name)
    log = ProblemLog()
    for key, items in ann.problems.items():
        for item in items:
            log.add(key, item)
    feat_path = data_dir / feature_file_name(name)
    feats = load_npy(feat_path, kind="features")
    if feats.dtype != object or feats.ndim != 1:
        raise DataError(f"{feat_path}: expected a 1-D object array of per-video (T, D) arrays, found "
                        f"dtype {feats.dtype} shape {feats.shape}")
    if len(feats) != len(ann.videos):
        raise DataError(f"{feat_path}: {len(feats)} feature arrays but {ann_dir / 'videoname.npy'} lists "
                        f"{len(ann.videos)} videos (they must be aligned)")
    width = None
    lengths = []
    for v, arr in zip(ann.videos, feats):
        where = f"{feat_path}: video {v.name!r}"
        t, width = F.check_feature_shape(arr, where, width)
        F.check_feature_dtype(arr, where, log, v.name)
        lengths.append(t)
    keep = F.keep_by_min_clips(ann.videos, lengths, min_clips, log, lambda v: f"{feat_path}: video {v.name!r}")
    if not keep:
        raise DataError(f"{data_dir}: no video left after filtering (min_clips={min_clips}, "
                        f"{len(ann.videos)} videos in {ann_dir})")
    videos, total = F.place([ann.videos[i] for i in keep], [lengths[i] for i in keep])
    features = np.empty((total, width), dtype=np.float32)  # (sum_i T_i, D)
    for v, i in zip(videos, keep):
        block = features[v.start : v.start + v.num_clips]
        block[...] = feats[i]
        feats[i] = None  # release this video's unpickled copy now
        F.check_finite(block, f"{feat_path}: video {v.name!r}")
    del feats
    kept = {v.name for v in videos}
    dataset = Dataset(
        name=name,
        classes=ann.classes,
        videos=tuple(videos),
        features=features,
        rgb_dim=width // 2,
        flow_dim=width // 2,
        clip_seconds=WTALC_CLIP_SECONDS,
        ambiguous={k: s for k, s in ann.ambiguous.items() if k in kept},
        source=F.source_of(data_dir),
        path=str(data_dir),
    )
    notes = (note,) if note else ()
    return LoadReport(dataset=dataset, problems=log.as_dict(), notes=notes, layout="wtalc")


def load_wtalc(data_dir, name: str, *, min_clips: int = 1) -> Dataset:
    """The W-TALC release in `data_dir` as one Dataset (see `read_wtalc` for the problem log)."""
    return read_wtalc(data_dir, name, min_clips=min_clips).dataset
