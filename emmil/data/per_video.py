"""Loader for per-video feature releases (BaS-Net/UM, ActionFormer; DESIGN.md section 4).

    <data_dir>/<video>.npy                        (T, D) float, RGB columns first then flow, or
    <data_dir>/rgb/<video>.npy + flow/<video>.npy (T, D_rgb) and (T, D_flow), same T
plus an ActivityNet-style JSON: {"database": {video: {"subset", "duration", "annotations":
[{"label", "segment": [start_s, end_s]}]}}}. Subset names are matched case-insensitively
("Validation"/"Test" in the ActionFormer THUMOS14 file -> "validation"/"test"). Classes are the
sorted JSON labels unless a class list is given. Feature files are numeric .npy (allow_pickle=False).
The JSON gets the evaluator's type checks (numbers are JSON numbers, not strings or booleans; labels
and subsets are strings), duplicate keys are refused, and a video name must be a plain file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from emmil.data import features as F
from emmil.data.dataset import TRAIN_TEST_SUBSETS, WTALC_CLIP_SECONDS, Dataset, Video
from emmil.data.problems import LoadReport, ProblemLog
from emmil.data.safe_parse import load_json, short_repr
from emmil.data.safe_pickle import load_npy, read_npy_header
from emmil.data.wtalc import build_video, check_load_args, check_unique, read_ambiguous
from emmil.errors import DataError
from emmil.evaluate import _number  # the evaluator's number rule: int/float, not bool, finite

# Dataset.source when the user declares the features real (real_features=True); else
# "user-provided features (unverified)" or "semi-synthetic (...)": see features.source_of.
PER_VIDEO_SOURCE = F.real_source("per-video release")


@dataclass(frozen=True)
class _Entry:
    """One JSON video entry after the type checks (nothing converted by guessing)."""

    subset: str  # as written ("Validation"); matched lower-cased
    duration: float  # seconds
    segments: tuple[tuple[float, float], ...]  # (start_s, end_s) as written (checked in build_video)
    labels: tuple[str, ...]  # one class name per segment


def read_json_database(path) -> dict:
    """The `database` mapping of an ActivityNet-style JSON file (UTF-8, duplicate keys refused:
    json's default keeps the last of two same-named videos and drops the first one's annotations)."""
    path = Path(path)
    doc = load_json(path, "annotation JSON")
    if not isinstance(doc, dict) or not isinstance(doc.get("database"), dict):
        raise DataError(f"{path}: field 'database' (an object: video -> annotation) is missing")
    return doc["database"]


def check_video_name(vname: str, path: Path) -> str:
    """A video name is a file name under --data-dir (<data_dir>/<video>.npy): refuse one that is not a
    single plain path component ('../x', '/abs', 'a/b', '.', '') and would read outside data_dir."""
    if vname in ("", ".", "..") or any(c in vname for c in "/\\\x00"):
        raise DataError(f"{path}: video {short_repr(vname)}: the video name must be a plain file name (no '/', "
                        "'\\', '..'): features are read from <data-dir>/<video>.npy and this name leaves --data-dir")
    return vname


def _segment(seg, where: str) -> tuple[float, float]:
    """[start, end] of two JSON numbers; "37" (a string of 2 characters) and [true, true] refused."""
    if not isinstance(seg, list) or len(seg) != 2:
        raise DataError(f"{where} field 'segment' is {short_repr(seg)}, expected [start, end] in seconds")
    start, end = (_number(x, f"{where} field 'segment'") for x in seg)
    return start, end


def _entry(vname: str, entry, path: Path) -> _Entry:
    """The type checks of one video entry; every error names the file, the video and the field."""
    where = f"{path}: video {vname!r}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with subset/duration/annotations")
    for key in ("subset", "duration", "annotations"):
        if key not in entry:
            raise DataError(f"{where}: field {key!r} is missing")
    if not isinstance(entry["subset"], str):
        raise DataError(f"{where}: field 'subset' is {short_repr(entry['subset'])}, expected a subset name (a string)")
    # a number, not "1e3" or true; positive and finite is checked in build_video
    duration = _number(entry["duration"], f"{where} field 'duration'")
    anns = entry["annotations"]
    if not isinstance(anns, list):
        raise DataError(f"{where}: field 'annotations' must be a list")
    segments, labels = [], []
    for k, a in enumerate(anns):
        if not isinstance(a, dict) or "label" not in a or "segment" not in a:
            raise DataError(f"{where}: annotation {k} needs fields 'label' and 'segment'")
        if not isinstance(a["label"], str):  # 7 is not the class "7"
            raise DataError(f"{where}: annotation {k} field 'label' is {short_repr(a['label'])}, expected a "
                            "class name (a string)")
        segments.append(_segment(a["segment"], f"{where}: annotation {k}"))
        labels.append(a["label"])
    return _Entry(entry["subset"], duration, tuple(segments), tuple(labels))


def _read_entries(path: Path) -> dict[str, _Entry]:
    """Every video of the JSON, type-checked, in file order (other subsets included: they name classes)."""
    return {check_video_name(v, path): _entry(v, e, path) for v, e in read_json_database(path).items()}


def _video(vname: str, e: _Entry, name: str, path: Path, class_set, log: ProblemLog) -> Video | None:
    subset = e.subset.lower()
    if subset not in TRAIN_TEST_SUBSETS[name]:
        log.add("videos_other_subset", f"{vname} ({e.subset})")
        return None
    return build_video(vname, subset, e.duration, e.segments, e.labels, None, class_set,
                       f"{path}: video {vname!r}", log)


def _stream_paths(data_dir: Path, vname: str, split: bool) -> tuple[Path, ...]:
    if split:
        return (data_dir / "rgb" / f"{vname}.npy", data_dir / "flow" / f"{vname}.npy")
    return (data_dir / f"{vname}.npy",)


def _shape(path: Path, vname: str, width: int | None) -> tuple[int, int]:
    shape, dtype = read_npy_header(path, kind=f"features of video {vname!r}")
    if dtype.hasobject:
        raise DataError(f"{path}: video {vname!r}: features are a pickled object array, expected a "
                        "numeric (T, D) array")
    if len(shape) != 2:
        raise DataError(f"{path}: video {vname!r}: features have shape {shape}, expected (T, D)")
    if width is not None and shape[1] != width:
        raise DataError(f"{path}: video {vname!r}: feature width is {shape[1]}, expected {width} "
                        "(the width of the other videos)")
    return int(shape[0]), int(shape[1])


def read_per_video(data_dir, name: str, annotation_json, *, classes: Sequence[str] | None = None,
                   min_clips: int = 1, clip_seconds: float | None = None,
                   real_features: bool = False) -> LoadReport:
    """Load a per-video feature folder + ActivityNet JSON into one Dataset plus the problem log.
    Two passes: headers first (lengths, widths), then each file copied into one preallocated
    (sum_i T_i, D_rgb + D_flow) float32 array.
    clip_seconds: seconds per feature clip (None: 16/25), checked against the JSON durations before any
    feature is read (features.check_time_base). real_features: the user declares the features real;
    Dataset.source says so (else "user-provided features (unverified)", or "semi-synthetic (...)")."""
    data_dir = check_load_args(name, data_dir, min_clips)
    clip_seconds = F.check_clip_seconds(WTALC_CLIP_SECONDS if clip_seconds is None else clip_seconds)
    json_path = Path(annotation_json)
    entries = _read_entries(json_path)
    log = ProblemLog()
    if classes is None:
        classes = tuple(sorted({lab for e in entries.values() for lab in e.labels}))
    else:
        classes = tuple(classes)
        check_unique(classes, "class list", "class")
    if not classes:
        raise DataError(f"{json_path}: no class label found in any annotation")
    class_set = frozenset(classes)
    videos = []
    for vname, entry in entries.items():
        v = _video(vname, entry, name, json_path, class_set, log)
        if v is not None:
            videos.append(v)
    source = F.source_of(data_dir, PER_VIDEO_SOURCE if real_features else None)
    split = (data_dir / "rgb").is_dir() and (data_dir / "flow").is_dir()
    # pass 1: headers -> lengths and widths
    widths: list[int | None] = [None, None] if split else [None]
    lengths = []
    for v in videos:
        shapes = []
        for k, p in enumerate(_stream_paths(data_dir, v.name, split)):
            t, widths[k] = _shape(p, v.name, widths[k])
            shapes.append(t)
        if split and shapes[0] != shapes[1]:
            raise DataError(f"{data_dir}: video {v.name!r}: RGB has {shapes[0]} clips "
                            f"(rgb/{v.name}.npy) but flow has {shapes[1]} (flow/{v.name}.npy)")
        lengths.append(shapes[0])
    if split:
        rgb_dim, flow_dim = int(widths[0] or 0), int(widths[1] or 0)
    else:
        d = int(widths[0] or 0)
        if d % 2:
            raise DataError(f"{data_dir}: feature width {d} is not even (RGB half + flow half)")
        rgb_dim = flow_dim = d // 2
    keep = F.keep_by_min_clips(videos, lengths, min_clips, log,
                               lambda v: f"{_stream_paths(data_dir, v.name, split)[0]}: video {v.name!r}")
    if not keep:
        raise DataError(f"{data_dir}: no video left after filtering (min_clips={min_clips}, "
                        f"{len(videos)} annotated videos in {json_path})")
    placed, total = F.place([videos[i] for i in keep], [lengths[i] for i in keep])
    time_note = F.check_time_base(placed, clip_seconds, f"{json_path} (features in {data_dir})")
    features = np.empty((total, rgb_dim + flow_dim), dtype=np.float32)  # (sum_i T_i, D)
    # pass 2: copy each file into its row range
    for v in placed:
        rows = features[v.start : v.start + v.num_clips]
        col = 0
        for p in _stream_paths(data_dir, v.name, split):
            where = f"{p}: video {v.name!r}"
            arr = load_npy(p, kind=f"features of video {v.name!r}")
            F.check_feature_dtype(arr, where, log, v.name)
            rows[:, col : col + arr.shape[1]] = arr
            col += arr.shape[1]
        F.check_finite(rows, f"{data_dir}: video {v.name!r}")
    notes = [f"streams: {'rgb/ + flow/ folders' if split else 'one (T, D) file per video'}"]
    if time_note:
        notes.append(time_note)
    ambiguous: dict = {}
    if name == "thumos14":
        from emmil.data.loading import shipped_annotation_dir

        amb = shipped_annotation_dir(name) / "Ambiguous_test.txt"
        ambiguous = read_ambiguous(amb, {v.name for v in placed}, log)
        notes.append(f"ambiguous segments: from the shipped {amb.name}")
    dataset = Dataset(
        name=name,
        classes=classes,
        videos=tuple(placed),
        features=features,
        rgb_dim=rgb_dim,
        flow_dim=flow_dim,
        clip_seconds=clip_seconds,
        ambiguous=ambiguous,
        source=source,
        path=str(data_dir),
    )
    return LoadReport(dataset=dataset, problems=log.as_dict(), notes=tuple(notes), layout="per-video")


def load_per_video(data_dir, name: str, annotation_json, *, classes: Sequence[str] | None = None,
                   min_clips: int = 1, clip_seconds: float | None = None, real_features: bool = False) -> Dataset:
    """Per-video features + ActivityNet JSON as one Dataset (see `read_per_video`)."""
    return read_per_video(data_dir, name, annotation_json, classes=classes, min_clips=min_clips,
                          clip_seconds=clip_seconds, real_features=real_features).dataset
