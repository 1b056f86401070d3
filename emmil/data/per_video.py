"""Loader for per-video feature releases (BaS-Net/UM, ActionFormer; DESIGN.md section 4).

    <data_dir>/<video>.npy                        (T, D) float, RGB columns first then flow, or
    <data_dir>/rgb/<video>.npy + flow/<video>.npy (T, D_rgb) and (T, D_flow), same T
plus an ActivityNet-style JSON: {"database": {video: {"subset", "duration", "annotations":
[{"label", "segment": [start_s, end_s]}]}}}. Subset names are matched case-insensitively
("Validation"/"Test" in the ActionFormer THUMOS14 file -> "validation"/"test"). Classes are the
sorted JSON labels unless a class list is given. Feature files are numeric .npy (allow_pickle=False).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from emmil.data import features as F
from emmil.data.dataset import TRAIN_TEST_SUBSETS, WTALC_CLIP_SECONDS, Dataset, Video
from emmil.data.problems import LoadReport, ProblemLog
from emmil.data.safe_pickle import load_npy, read_npy_header
from emmil.data.wtalc import build_video, check_load_args, check_unique, read_ambiguous
from emmil.errors import DataError

PER_VIDEO_SOURCE = "real I3D features (per-video release)"


def read_json_database(path) -> dict:
    """The `database` mapping of an ActivityNet-style JSON file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation JSON file not found")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("database"), dict):
        raise DataError(f"{path}: field 'database' (an object: video -> annotation) is missing")
    return doc["database"]


def _video_from_json(vname: str, entry, name: str, path: Path, class_set, log: ProblemLog) -> Video | None:
    where = f"{path}: video {vname!r}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with subset/duration/annotations")
    for key in ("subset", "duration", "annotations"):
        if key not in entry:
            raise DataError(f"{where}: field {key!r} is missing")
    subset = str(entry["subset"]).lower()
    if subset not in TRAIN_TEST_SUBSETS[name]:
        log.add("videos_other_subset", f"{vname} ({entry['subset']})")
        return None
    try:
        duration = float(entry["duration"])
    except (TypeError, ValueError):
        raise DataError(f"{where}: field 'duration' is {entry['duration']!r}, not a number") from None
    anns = entry["annotations"]
    if not isinstance(anns, list):
        raise DataError(f"{where}: field 'annotations' must be a list")
    segments, labels = [], []
    for k, a in enumerate(anns):
        if not isinstance(a, dict) or "label" not in a or "segment" not in a:
            raise DataError(f"{where}: annotation {k} needs fields 'label' and 'segment'")
        seg = a["segment"]
        try:
            s, e = (float(x) for x in seg)
        except (TypeError, ValueError):
            raise DataError(f"{where}: annotation {k} field 'segment' is {seg!r}, expected [start, end]") from None
        segments.append((s, e))
        labels.append(str(a["label"]))
    return build_video(vname, subset, duration, segments, labels, None, class_set, where, log)


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
                   min_clips: int = 1, clip_seconds: float = WTALC_CLIP_SECONDS) -> LoadReport:
    """Load a per-video feature folder + ActivityNet JSON into one Dataset plus the problem log.
    Two passes: headers first (lengths, widths), then each file copied into one preallocated
    (sum_i T_i, D_rgb + D_flow) float32 array."""
    data_dir = check_load_args(name, data_dir, min_clips)
    json_path = Path(annotation_json)
    database = read_json_database(json_path)
    log = ProblemLog()
    if classes is None:
        labels = set()
        for vname, entry in database.items():
            if isinstance(entry, dict) and isinstance(entry.get("annotations"), list):
                labels.update(str(a.get("label")) for a in entry["annotations"] if isinstance(a, dict))
        classes = tuple(sorted(labels))
    else:
        classes = tuple(classes)
        check_unique(classes, "class list", "class")
    if not classes:
        raise DataError(f"{json_path}: no class label found in any annotation")
    class_set = frozenset(classes)
    videos = []
    for vname, entry in database.items():
        v = _video_from_json(str(vname), entry, name, json_path, class_set, log)
        if v is not None:
            videos.append(v)
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
        clip_seconds=float(clip_seconds),
        ambiguous=ambiguous,
        source=F.source_of(data_dir, PER_VIDEO_SOURCE),
        path=str(data_dir),
    )
    return LoadReport(dataset=dataset, problems=log.as_dict(), notes=tuple(notes), layout="per-video")


def load_per_video(data_dir, name: str, annotation_json, *, classes: Sequence[str] | None = None,
                   min_clips: int = 1, clip_seconds: float = WTALC_CLIP_SECONDS) -> Dataset:
    """Per-video features + ActivityNet JSON as one Dataset (see `read_per_video`)."""
    return read_per_video(data_dir, name, annotation_json, classes=classes, min_clips=min_clips,
                          clip_seconds=clip_seconds).dataset
