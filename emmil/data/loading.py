"""One entry point for every dataset layout, and where the shipped annotations live."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from emmil.data.dataset import Dataset
from emmil.data.problems import LoadReport
from emmil.errors import DataError

ANNOTATIONS_ROOT = Path(__file__).resolve().parent / "annotations"
_SHIPPED = {"thumos14": "Thumos14reduced-Annotations", "anet12": "ActivityNet1.2-Annotations"}
SHIPPED_THUMOS14_JSON = ANNOTATIONS_ROOT / "thumos14_actionformer.json"
LAYOUTS = ("auto", "wtalc", "per-video")


def shipped_annotation_dir(name: str) -> Path:
    """The W-TALC annotation folder shipped inside the package for dataset `name`."""
    if name not in _SHIPPED:
        raise DataError(f"unknown dataset {name!r}; expected one of {tuple(_SHIPPED)}")
    return ANNOTATIONS_ROOT / _SHIPPED[name]


def detect_layout(name: str, data_dir) -> str:
    """"wtalc" when <data_dir>/<Prefix>-I3D-JOINTFeatures.npy exists, "per-video" when data_dir
    holds rgb/ + flow/ folders or .npy files, else an error naming what was looked for."""
    from emmil.data.wtalc import feature_file_name

    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"{d}: data directory not found")
    if (d / feature_file_name(name)).is_file():
        return "wtalc"
    if ((d / "rgb").is_dir() and (d / "flow").is_dir()) or any(d.glob("*.npy")):
        return "per-video"
    raise DataError(f"{d}: neither {feature_file_name(name)} (W-TALC layout) nor per-video .npy files "
                    "(<video>.npy or rgb/ + flow/) found")


def load_dataset_report(name: str, data_dir, layout: str = "auto", *, annotations=None, min_clips: int = 1,
                        classes=None, clip_seconds: float | None = None, real_features: bool = False) -> LoadReport:
    """Load `name` from `data_dir` in any layout; the Dataset plus the problem log and notes.
    annotations: the ActivityNet-style JSON for the per-video layout (THUMOS14 defaults to the
    shipped ActionFormer JSON); ignored with a note for the W-TALC layout.
    clip_seconds: seconds per feature clip (None: 16/25, the only value of the W-TALC layout); in both
    layouts the clip counts are checked against the annotated durations (features.check_time_base).
    real_features: the user declares the features real I3D features; without it Dataset.source is
    "user-provided features (unverified)" (or "semi-synthetic (...)" where SYNTHETIC.json says so)."""
    from emmil.data import features as F
    from emmil.data.per_video import read_per_video
    from emmil.data.wtalc import WTALC_CLIP_SECONDS, read_wtalc

    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if layout == "auto":
        layout = detect_layout(name, data_dir)
    if layout == "wtalc":
        if clip_seconds is not None and F.check_clip_seconds(clip_seconds) != WTALC_CLIP_SECONDS:
            raise DataError(f"clip_seconds={clip_seconds}: the W-TALC layout has a fixed 16/25 s time base")
        return _checked_wtalc(read_wtalc(data_dir, name, min_clips=min_clips), data_dir, real_features)
    if annotations is None:
        if name != "thumos14":
            raise DataError(f"{data_dir}: the per-video layout of {name!r} needs an annotation JSON (--annotations)")
        annotations = SHIPPED_THUMOS14_JSON
    return read_per_video(data_dir, name, annotations, classes=classes, min_clips=min_clips,
                          clip_seconds=clip_seconds, real_features=real_features)


def _checked_wtalc(report: LoadReport, data_dir, real_features: bool) -> LoadReport:
    """The W-TALC report with the time-base check of its durations (duration.npy) and, when the user
    declared the features real, the real-features label (read_wtalc labels them unverified)."""
    from emmil.data import features as F

    ds = report.dataset
    # A warning, not a refusal, in this layout: its time base is fixed by the release, and clip counts of
    # the real ActivityNet1.2 release (videos at their own frame rates) could not be checked here
    try:
        note = F.check_time_base(ds.videos, ds.clip_seconds, f"{data_dir} (W-TALC features vs duration.npy)",
                                 fixed=True)
    except DataError as exc:
        note = f"WARNING: {exc}"
    if real_features:
        ds = dataclasses.replace(ds, source=F.source_of(Path(data_dir), F.REAL_SOURCE))
    if note is None and ds is report.dataset:
        return report
    return dataclasses.replace(report, dataset=ds, notes=report.notes + ((note,) if note else ()))


def load_dataset(name: str, data_dir, layout: str = "auto", **kw) -> Dataset:
    """`load_dataset_report(...).dataset`: the contract entry point of every part that trains."""
    return load_dataset_report(name, data_dir, layout, **kw).dataset
