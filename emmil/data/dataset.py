"""The one in-memory dataset type, and the only place that converts seconds <-> clip indices.

All videos' features live in ONE contiguous float32 array (sum_i T_i, D_rgb + D_flow); a video is
a row range of it. One array means: one put into Ray's object store, read zero-copy by every
trial; one host->GPU copy; and per-video views without copies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from emmil.errors import DataError

# W-TALC release: I3D run on non-overlapping 16-frame chunks of 25 fps video -> one clip = 0.64 s.
WTALC_CLIP_SECONDS = 16 / 25

# Which W-TALC subset is trained on and which is evaluated (DESIGN.md section 4).
# THUMOS14: 'validation' is the TRAINING split and 'test' is evaluated.
TRAIN_TEST_SUBSETS = {"thumos14": ("validation", "test"), "anet12": ("training", "validation")}
DATASET_NAMES = tuple(TRAIN_TEST_SUBSETS)


def seconds_to_clip(seconds, clip_seconds: float = WTALC_CLIP_SECONDS):
    """Continuous clip index of a time in seconds: clip i covers [i*clip_seconds, (i+1)*clip_seconds)."""
    return np.asarray(seconds, dtype=np.float64) / clip_seconds


def clip_to_seconds(index, clip_seconds: float = WTALC_CLIP_SECONDS):
    """Start time in seconds of (continuous) clip index `index`; index T gives the end of clip T-1."""
    return np.asarray(index, dtype=np.float64) * clip_seconds


@dataclass(frozen=True)
class Video:
    name: str
    subset: str
    duration: float  # seconds
    start: int  # first row of this video in Dataset.features
    num_clips: int  # T
    labels: tuple[str, ...]  # video-level labels, sorted, unique
    segments: tuple[tuple[float, float], ...] = ()  # ground truth (start_s, end_s)
    segment_labels: tuple[str, ...] = ()  # one class name per segment


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str  # "thumos14" | "anet12"
    classes: tuple[str, ...]
    videos: tuple[Video, ...]
    features: np.ndarray  # (sum_i T_i, rgb_dim + flow_dim) float32; RGB columns first
    rgb_dim: int
    flow_dim: int
    clip_seconds: float = WTALC_CLIP_SECONDS
    # THUMOS14 Ambiguous segments: video name -> ((start_s, end_s), ...)
    ambiguous: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    # What the features are, by evidence (features.source_of): "real I3D features (..., declared by the
    # user)", "semi-synthetic (...)" or "user-provided features (unverified)". Reports print it; a
    # Dataset built without saying claims nothing.
    source: str = "user-provided features (unverified)"
    path: str = ""  # where it was loaded from, for messages

    def __post_init__(self):
        if self.name not in TRAIN_TEST_SUBSETS:
            raise DataError(f"unknown dataset name {self.name!r}; expected one of {DATASET_NAMES}")
        if self.features.ndim != 2 or self.features.shape[1] != self.rgb_dim + self.flow_dim:
            raise DataError(
                f"{self.path or self.name}: features have shape {self.features.shape}, expected "
                f"(clips, {self.rgb_dim + self.flow_dim})"
            )

    @property
    def is_synthetic(self) -> bool:
        return self.source.startswith("semi-synthetic")

    @property
    def train_subset(self) -> str:
        return TRAIN_TEST_SUBSETS[self.name][0]

    @property
    def test_subset(self) -> str:
        return TRAIN_TEST_SUBSETS[self.name][1]

    @property
    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def features_of(self, video: Video) -> np.ndarray:
        """(T, D) view (no copy) of one video's features."""
        return self.features[video.start : video.start + video.num_clips]

    def in_subset(self, subset: str) -> tuple[Video, ...]:
        return tuple(v for v in self.videos if v.subset == subset)

    def select(self, names) -> "Dataset":
        """The same dataset restricted to `names` (order kept); shares the feature array."""
        wanted = set(names)
        missing = wanted - {v.name for v in self.videos}
        if missing:
            raise DataError(f"{self.name}: unknown video(s) {sorted(missing)[:5]}")
        return dataclasses.replace(self, videos=tuple(v for v in self.videos if v.name in wanted))

    def label_matrix(self, videos) -> np.ndarray:
        """(N, C) float32 multi-hot video-level labels."""
        idx = self.class_index
        y = np.zeros((len(videos), len(self.classes)), dtype=np.float32)
        for i, v in enumerate(videos):
            for label in v.labels:
                y[i, idx[label]] = 1.0
        return y

    def ground_truth(self, subset: str | None = None) -> dict:
        """ActivityNet-style ground truth {"database": {video: {subset, duration, annotations}}}."""
        database = {}
        for v in self.videos:
            if subset is not None and v.subset != subset:
                continue
            database[v.name] = {
                "subset": v.subset,
                "duration": v.duration,
                "annotations": [
                    {"label": lab, "segment": [float(s), float(e)]}
                    for (s, e), lab in zip(v.segments, v.segment_labels)
                ],
            }
        return {"database": database}
