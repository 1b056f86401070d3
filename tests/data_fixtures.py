"""Small hand-made datasets on disk, in both layouts, for the data tests (and anyone else's).

`write_wtalc(root)` writes a valid THUMOS14-named W-TALC folder of 4 videos:

    video                     subset      duration  clips  segments (s)                 labels_all
    video_validation_0000001  validation  10.0      15     [1,3] A, [5,6.5] B            [A, B]
    video_validation_0000002  validation  8.0       12     [2,4] C                       [C]
    video_test_0000001        test        6.4       10     [0,2] A, [4,7.5] A (past 6.4) [A]
    video_test_0000002        test        5.0       7      [1,2] B                       []   (empty)

classes (A, B, C), feature width 8 (4 RGB + 4 flow) float32, value = video index + clip/100.
Keyword overrides replace one annotation array or the feature list so a test can corrupt it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

NAMES = ["video_validation_0000001", "video_validation_0000002", "video_test_0000001", "video_test_0000002"]
SUBSETS = ["validation", "validation", "test", "test"]
DURATIONS = [10.0, 8.0, 6.4, 5.0]
CLIPS = [15, 12, 10, 7]
SEGMENTS = [[[1.0, 3.0], [5.0, 6.5]], [[2.0, 4.0]], [[0.0, 2.0], [4.0, 7.5]], [[1.0, 2.0]]]
LABELS = [["A", "B"], ["C"], ["A", "A"], ["B"]]
LABELS_ALL = [["A", "B"], ["C"], ["A"], []]
CLASSES = ["A", "B", "C"]
WIDTH = 8


def object_array(items) -> np.ndarray:
    """1-D object array whose entries are exactly `items` (no broadcasting into 2-D)."""
    out = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        out[i] = x
    return out


def default_features(clips=CLIPS, width: int = WIDTH) -> list[np.ndarray]:
    # video i, clip t -> every column equals i + t / 100 (easy to check a row landed in place)
    return [(i + np.arange(t, dtype=np.float32)[:, None] / 100) * np.ones((1, width), np.float32)
            for i, t in enumerate(clips)]


def write_wtalc(root, *, prefix: str = "Thumos14reduced", features=None, ambiguous: str | None = None,
                synthetic: dict | None = None, write_annotations: bool = True, **overrides) -> Path:
    """Write `<root>/<prefix>-I3D-JOINTFeatures.npy` and `<root>/<prefix>-Annotations/`.
    overrides: videoname, subset, classlist, duration, segments, labels, labels_all (raw arrays)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "videoname": np.array([n.encode() for n in NAMES]),
        "subset": np.array([s.encode() for s in SUBSETS]),
        "classlist": np.array([c.encode() for c in CLASSES]),
        "duration": np.array(DURATIONS, dtype=np.float64)[:, None],  # THUMOS stores (N, 1)
        "segments": object_array(SEGMENTS),
        "labels": object_array(LABELS),
        "labels_all": object_array(LABELS_ALL),
    }
    arrays.update(overrides)
    if write_annotations:
        ann = root / f"{prefix}-Annotations"
        ann.mkdir(exist_ok=True)
        for key, arr in arrays.items():
            if arr is not None:
                np.save(ann / f"{key}.npy", arr, allow_pickle=True)
        if ambiguous is not None:
            (ann / "Ambiguous_test.txt").write_text(ambiguous)
    feats = default_features() if features is None else features
    feats_arr = feats if isinstance(feats, np.ndarray) else object_array(feats)
    np.save(root / f"{prefix}-I3D-JOINTFeatures.npy", feats_arr, allow_pickle=True)
    if synthetic is not None:
        (root / "SYNTHETIC.json").write_text(json.dumps(synthetic))
    return root


def write_per_video(root, *, split_streams: bool = False, features=None, database: dict | None = None,
                    json_text: str | None = None) -> tuple[Path, Path]:
    """Per-video layout: `<root>/<video>.npy` (T, 8) or `<root>/rgb|flow/<video>.npy` (T, 4), plus
    `<root>/annotations.json` in the ActivityNet layout with capitalised subsets ("Validation"/"Test")
    like the shipped ActionFormer THUMOS14 JSON. Returns (feature dir, json path)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    feats = default_features() if features is None else features
    for name, f in zip(NAMES, feats):
        if f is None:
            continue
        if split_streams:
            rgb, flow = f if isinstance(f, tuple) else (f[:, : f.shape[1] // 2], f[:, f.shape[1] // 2 :])
            for stream, part in (("rgb", rgb), ("flow", flow)):
                (root / stream).mkdir(exist_ok=True)
                np.save(root / stream / f"{name}.npy", part)
        else:
            np.save(root / f"{name}.npy", f)
    if database is None:
        database = {
            n: {
                "subset": s.capitalize(),
                "duration": d,
                "annotations": [{"label": lab, "segment": seg} for seg, lab in zip(segs, labs)],
            }
            for n, s, d, segs, labs in zip(NAMES, SUBSETS, DURATIONS, SEGMENTS, LABELS)
        }
    path = root / "annotations.json"
    path.write_text(json_text if json_text is not None else json.dumps({"database": database}))
    return root, path
