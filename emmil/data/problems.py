"""The record of what a loader found and handled deliberately (clipped segments, repaired labels,
dropped tiny videos, ...). Nothing is skipped silently: every such case is counted here, and
`emmil data info` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from emmil.data.dataset import Dataset

# Problem keys -> one-line explanation printed by `emmil data info`.
PROBLEM_HELP = {
    "segments_clipped_to_duration": "segments ending after the video's duration: end clipped to the duration",
    "segments_entirely_past_duration": "of those, segments starting at/after the duration (zero length after clipping)",
    "labels_all_empty": "videos with an empty labels_all: video labels taken from the segment labels",
    "labels_all_differs": "videos whose labels_all differs from their segment labels: video labels = union",
    "videos_without_labels": "videos with no label at all (neither labels_all nor segments)",
    "ambiguous_unknown_video": "Ambiguous_test.txt lines naming a video not in the dataset (ignored)",
    "videos_dropped_min_clips": "videos with fewer clips than --min-clips: dropped",
    "videos_other_subset": "JSON videos in a subset this dataset does not use (e.g. 'testing'): not loaded",
    "features_float64_converted": "feature arrays stored as float64: converted to float32",
}


class ProblemLog:
    """Mutable collector used while loading; frozen into a dict by `as_dict`."""

    def __init__(self) -> None:
        self._items: dict[str, list[str]] = {}

    def add(self, key: str, item: str) -> None:
        """Record one occurrence of problem `key` (`item`: the video / segment / line concerned)."""
        if key not in PROBLEM_HELP:
            raise KeyError(f"unknown problem key {key!r}")
        self._items.setdefault(key, []).append(item)

    def as_dict(self) -> dict[str, tuple[str, ...]]:
        return {k: tuple(v) for k, v in self._items.items()}


@dataclass(frozen=True, eq=False)
class LoadReport:
    """A loaded dataset plus what the loader handled on the way."""

    dataset: Dataset
    # problem key (see PROBLEM_HELP) -> the affected items (video names, "video start end", ...)
    problems: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # e.g. "annotations: shipped copy (none in data_dir)"
    layout: str = ""  # "wtalc" | "per-video"

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.problems.items()}
