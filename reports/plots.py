"""Report figures as PNG bytes (matplotlib, Agg backend). Inputs are plain numbers, not MLflow objects."""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from emmil.errors import DataError  # noqa: E402

DPI = 100
GT_COLOR = "tab:red"  # Figure 5: ground truth in red
PRED_COLOR = "tab:blue"  # Figure 5: L_t and predicted segments in blue


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


@dataclass(frozen=True)
class Curve:
    label: str
    x: tuple[float, ...]
    mean: tuple[float, ...]  # percent
    std: tuple[float, ...]  # percent; nan where n < 2 (no band drawn)
    n: int


def wrap(title: str, width: int = 90) -> str:
    return "\n".join(textwrap.wrap(title, width))


def curves_plot(curves: Sequence[Curve], *, title: str, xlabel: str, ylabel: str,
                reference: Curve | None = None, integer_x: bool = False) -> bytes:
    """Mean line per curve with a mean ± std seed band; an optional dashed reference (published) line."""
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        x, m, s = np.asarray(c.x), np.asarray(c.mean), np.asarray(c.std)
        ax.plot(x, m, marker="o", ms=3, color=color, label=f"{c.label} (n={c.n})")
        if c.n >= 2 and np.isfinite(s).any():
            ax.fill_between(x, m - np.nan_to_num(s), m + np.nan_to_num(s), color=color, alpha=0.2, lw=0)
    if reference is not None:
        ok = np.isfinite(np.asarray(reference.mean))
        ax.plot(np.asarray(reference.x)[ok], np.asarray(reference.mean)[ok], "k--", marker="s", ms=3,
                label=reference.label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(wrap(title), fontsize=9)
    if integer_x:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="best")
    return to_png(fig)


# ---------------------------------------------------------------- Figure 5 timelines
@dataclass(frozen=True)
class Track:
    label: str
    L: tuple[float, ...]  # (T,) fused localisation score, Eq. 9
    threshold: float
    segments: tuple[tuple[float, float], ...]  # predicted (start_s, end_s)


@dataclass(frozen=True)
class VideoTimeline:
    video: str
    clip_seconds: float
    duration: float
    tracks: tuple[Track, ...]
    ground_truth: tuple[tuple[str, float, float], ...]  # (label, start_s, end_s)


def _floats(value, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) for v in value):
        raise DataError(f"{where}: expected a list of numbers")
    return tuple(float(v) for v in value)


def _segment(value, where: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) < 2 or not all(isinstance(v, (int, float))
                                                                          for v in value[:2]):
        raise DataError(f"{where}: expected [start_s, end_s, ...], got {value!r}")
    return float(value[0]), float(value[1])


def parse_timelines(doc, where: str) -> dict[str, VideoTimeline]:
    """Validate a timelines.json document (docs/CONTRACTS.md); errors name `where` and the key."""
    if not isinstance(doc, dict) or not isinstance(doc.get("videos"), dict):
        raise DataError(f"{where}: expected {{'clip_seconds': ..., 'videos': {{video: ...}}}}")
    clip = doc.get("clip_seconds", 0.64)
    out = {}
    for name, v in doc["videos"].items():
        w = f"{where}: videos[{name!r}]"
        if not isinstance(v, dict) or not isinstance(v.get("tracks"), list):
            raise DataError(f"{w}: expected a 'tracks' list")
        tracks = []
        for i, t in enumerate(v["tracks"]):
            tw = f"{w}.tracks[{i}]"
            if not isinstance(t, dict) or "L" not in t or "threshold" not in t:
                raise DataError(f"{tw}: needs 'label', 'L' and 'threshold'")
            tracks.append(Track(str(t.get("label", "")), _floats(t["L"], f"{tw}.L"), float(t["threshold"]),
                                tuple(_segment(s, f"{tw}.segments[{j}]") for j, s in enumerate(t.get("segments", [])))))
        gt = []
        for j, g in enumerate(v.get("ground_truth", [])):
            if not isinstance(g, dict) or "segment" not in g:
                raise DataError(f"{w}.ground_truth[{j}]: expected {{'label', 'segment': [s, e]}}")
            gt.append((str(g.get("label", "")),) + _segment(g["segment"], f"{w}.ground_truth[{j}].segment"))
        T = max((len(t.L) for t in tracks), default=0)
        duration = float(v.get("duration", T * float(v.get("clip_seconds", clip))))
        out[str(name)] = VideoTimeline(str(name), float(v.get("clip_seconds", clip)), duration, tuple(tracks),
                                       tuple(gt))
    return out


def _main_track(video: VideoTimeline) -> Track | None:
    """The track of a ground-truth class (the one Figure 5 shows), else the first one."""
    gt_labels = {g[0] for g in video.ground_truth}
    for t in video.tracks:
        if t.label in gt_labels:
            return t
    return video.tracks[0] if video.tracks else None


def timelines_plot(per_variant: Mapping[str, Mapping[str, VideoTimeline]], videos: Sequence[str], *,
                   title: str) -> bytes:
    """Figure-5 style: per video and variant, L_t (blue), threshold (dashed), predictions (blue bars) and
    ground truth (red bars) on a shared time axis in seconds."""
    variants = list(per_variant)
    nrows = max(1, len(videos) * len(variants))
    fig, axes = plt.subplots(nrows, 1, figsize=(9.0, 1.55 * nrows + 0.6), squeeze=False)
    row = 0
    for video in videos:
        for variant in variants:
            ax = axes[row, 0]
            row += 1
            tl = per_variant[variant][video]
            track = _main_track(tl)
            if track is not None and track.L:
                t = (np.arange(len(track.L)) + 0.5) * tl.clip_seconds  # clip centres, seconds
                ax.plot(t, track.L, color=PRED_COLOR, lw=1.0, label="L_t (Eq. 9)")
                ax.axhline(track.threshold, color="0.3", ls="--", lw=0.8, label="threshold")
                for s, e in track.segments:
                    ax.axvspan(s, e, ymin=0.0, ymax=0.08, color=PRED_COLOR, alpha=0.8)
            for label, s, e in tl.ground_truth:
                if track is None or label == track.label:
                    ax.axvspan(s, e, ymin=0.92, ymax=1.0, color=GT_COLOR, alpha=0.8)
            ax.set_xlim(0, max(tl.duration, 1e-6))
            ax.set_ylim(-0.1, 1.12)
            cls = f", class {track.label}" if track is not None else ""
            ax.set_title(f"{video} - {variant}{cls}", fontsize=8, loc="left")
            ax.tick_params(labelsize=7)
            if row == 1:
                ax.legend(fontsize=6, loc="upper right", ncol=2)
    axes[-1, 0].set_xlabel("time (s); top red bars: ground truth, bottom blue bars: predicted segments")
    fig.suptitle(wrap(title, 110), fontsize=9)
    fig.tight_layout()
    return to_png(fig)


def bar_plot(names: Sequence[str], values: Sequence[float], *, title: str, xlabel: str) -> bytes:
    """Horizontal bars, largest on top (used for Optuna parameter importances)."""
    order = np.argsort(values)
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * max(len(names), 2) + 1.2))
    ax.barh([names[i] for i in order], [values[i] for i in order], color="C0")
    for y, i in enumerate(order):
        ax.text(values[i], y, f" {values[i]:.2f}", va="center", fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, max(max(values, default=0) * 1.2, 1e-6))
    return to_png(fig)


def axes_png(ax, *, title: str | None = None) -> bytes:
    """PNG of the figure holding an Axes returned by optuna.visualization.matplotlib."""
    fig = ax.figure if not isinstance(ax, np.ndarray) else ax.flat[0].figure
    if title:
        fig.suptitle(title, fontsize=9)
    fig.set_size_inches(7.0, 4.2)
    return to_png(fig)


def nan_list(n: int) -> tuple[float, ...]:
    return tuple(math.nan for _ in range(n))
