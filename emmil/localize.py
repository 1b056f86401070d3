"""Inference: per-clip scores of one video -> scored action proposals (paper section 3.4, Eq. 9).

    L_{t,c} = lam * Q_t + (1 - lam) * P_{t,c}                               (Eq. 9)
    Q = rgb_weight * Q^rgb + (1 - rgb_weight) * Q^flow   (P likewise, per class)

Two ways to turn L_c (T,) into runs of "on" clips (`thresholds`, docs/localize.md):
    ""  (the paper's, default): one threshold of the Eq. 5 form,
        clip t is "on" for class c when L_{t,c} > mean_t L_c + gamma * (max_t L_c - min_t L_c);
    "0.1,0.5" or "A:B:S" (the field's: W-TALC used the one level 0.5, CO2-Net/DELU many):
        L_c min-max normalised over the video, N_c = (L_c - min L_c) / (max L_c - min L_c)
        (constant L_c: no proposals), and clip t "on"
        when N_{t,c} > theta, for EACH level theta; the runs of every level are pooled, identical
        runs kept once. Nested runs from different levels remain: use NMS (e.g. nms_iou 0.5).

Runs of consecutive "on" clips are proposals [start, end) in clip indices (a run that reaches the
last clip is kept). Only classes passing the video-level gate are localised. Each proposal gets a
real score (the authors' released code wrote score 1 for every proposal; see DESIGN.md section 3):
    "mean":        mean of L_c inside the proposal, times the video-level class score;
    "outer-inner": (mean of L_c inside - mean of L_c in a margin of max(1, round(outer_margin *
                   length)) clips on each side, clipped to the video; 0 if the margin is empty),
                   times the video-level class score.
Optionally per-class greedy NMS (tIoU > nms_iou suppresses; 0 or None = off). Times in seconds come
from emmil.data.dataset.clip_to_seconds; the end is clipped to the video duration.

`whole_video_proposals` is the floor reference: one proposal covering the whole video per gated
class, scored by the video-level class score (what localisation must beat).

All functions are pure and take numpy arrays (torch tensors are converted).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np

from emmil.data.dataset import WTALC_CLIP_SECONDS, clip_to_seconds
from emmil.errors import ConfigError, DataError

SCORE_METHODS = ("mean", "outer-inner")
MAX_THRESHOLDS = 100  # most levels a `thresholds` spec may give (W-TALC-style sweeps use ~10)
_RANGE_TOLERANCE = 1e-9  # "0.1:0.9:0.1" includes 0.9 although 0.1 + 8 * 0.1 = 0.9000000000000001


def parse_thresholds(spec: str) -> tuple[float, ...]:
    """`localize.thresholds` spec -> the levels, ascending, duplicates removed; "" -> () (Eq. 5 mode).

    "0.1, 0.25,0.5" -> (0.1, 0.25, 0.5); "0.1:0.9:0.1" -> (0.1, 0.2, ..., 0.9) (inclusive range
    A:B:S, A <= B, S > 0; values rounded to 10 decimals). Every value in [0, 1], at most
    MAX_THRESHOLDS of them; anything else raises ConfigError naming the key and the spec.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"localize.thresholds: must be a string spec, got {spec!r}")
    return _parse_thresholds(spec)


@lru_cache(maxsize=64)  # localize_video parses its params' spec once per video: cache the few specs
def _parse_thresholds(spec: str) -> tuple[float, ...]:
    def bad(reason: str) -> ConfigError:
        return ConfigError(f"localize.thresholds: {reason} in spec {spec!r} (expected '', a list "
                           f"'0.1,0.25,0.5' or an inclusive range 'A:B:S' like '0.1:0.9:0.1')")

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise bad(f"{text.strip()!r} is not a number") from None
        if not np.isfinite(value):
            raise bad(f"{text.strip()!r} is not finite")
        return value

    text = spec.strip()
    if not text:
        return ()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3 or "," in text:
            raise bad("a range needs exactly 'A:B:S' (no commas)")
        a, b, step = (number(x) for x in parts)
        if step <= 0:
            raise bad(f"the step must be > 0, got {step!r}")
        if a > b:
            raise bad(f"the start {a!r} is above the end {b!r}")
        span = (b - a) / step + _RANGE_TOLERANCE  # count - 1 (+ tolerance); may be inf for a tiny step
        if not span < MAX_THRESHOLDS:
            raise bad(f"more than {MAX_THRESHOLDS} values")
        values = [round(a + k * step, 10) for k in range(int(np.floor(span)) + 1)]
    else:
        items = text.split(",")
        if len(items) > MAX_THRESHOLDS:
            raise bad(f"more than {MAX_THRESHOLDS} values")
        values = [number(x) for x in items]
    outside = [v for v in values if not 0.0 <= v <= 1.0]
    if outside:
        raise bad(f"value {outside[0]!r} is outside [0, 1]")
    return tuple(sorted(set(values)))


def thresholds_ok(spec: str) -> bool:
    """True when parse_thresholds(spec) succeeds (emmil.config.validate's check)."""
    try:
        parse_thresholds(spec)
    except ConfigError:
        return False
    return True


@dataclass(frozen=True)
class LocalizeParams:
    """Inference settings (config section `localize`); defaults are the paper's THUMOS14 values."""

    lam: float = 0.8  # Eq. 9 lambda: 0.8 THUMOS14, 0.3 ActivityNet1.2 (paper section 4.2)
    rgb_weight: float = 0.5  # weight of the RGB stream when fusing Q and P over streams
    gamma: float = 0.15  # Eq. 5 threshold: 0.15 THUMOS14, 0 ActivityNet1.2
    gate: float = 0.15  # video-level class score needed to localise a class (released code: 0.15)
    score: str = "outer-inner"  # proposal score: "mean" | "outer-inner" (module doc)
    nms_iou: float | None = None  # per-class NMS tIoU threshold; 0 or None = off
    # "" = one Eq. 5-form threshold (paper); "0.1,0.5" / "0.1:0.9:0.1" = levels on the min-max
    # normalised L_c, runs pooled over levels (CO2-Net/DELU style; use with nms_iou, e.g. 0.5)
    thresholds: str = ""
    min_clips: int = 1  # shortest proposal kept, in clips
    outer_margin: float = 0.25  # outer-inner margin as a fraction of the proposal length

    def __post_init__(self):
        for name in ("lam", "rgb_weight", "gate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ConfigError(f"localize.{name}: must be a number in [0, 1], got {value!r}")
        if not (isinstance(self.outer_margin, (int, float)) and 0.0 <= self.outer_margin < float("inf")):
            raise ConfigError(f"localize.outer_margin: must be a number >= 0, got {self.outer_margin!r}")
        if not (isinstance(self.gamma, (int, float)) and np.isfinite(self.gamma)):
            raise ConfigError(f"localize.gamma: must be a finite number, got {self.gamma!r}")
        if self.score not in SCORE_METHODS:
            raise ConfigError(f"localize.score: must be one of {SCORE_METHODS}, got {self.score!r}")
        if self.nms_iou is not None and not (isinstance(self.nms_iou, (int, float)) and 0.0 <= self.nms_iou <= 1.0):
            raise ConfigError(f"localize.nms_iou: must be None or a number in [0, 1], got {self.nms_iou!r}")
        if isinstance(self.min_clips, bool) or not isinstance(self.min_clips, int) or self.min_clips < 1:
            raise ConfigError(f"localize.min_clips: must be an integer >= 1, got {self.min_clips!r}")
        parse_thresholds(self.thresholds)  # raises ConfigError naming localize.thresholds and the spec


@dataclass(frozen=True)
class Proposal:
    class_index: int  # into the dataset's classes
    start_clip: int  # first clip (inclusive)
    end_clip: int  # one past the last clip
    start: float  # seconds
    end: float  # seconds, clipped to the video duration
    score: float


def _array(x, name: str, ndim: int) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise DataError(f"localize: {name} must have {ndim} dimension(s), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise DataError(f"localize: {name} contains NaN or infinite values")
    return a


def fuse_streams(rgb: np.ndarray, flow: np.ndarray, rgb_weight: float) -> np.ndarray:
    """rgb_weight * rgb + (1 - rgb_weight) * flow; shapes must agree (no silent truncation)."""
    if rgb.shape != flow.shape:
        raise DataError(f"localize: RGB scores {rgb.shape} and flow scores {flow.shape} differ in shape")
    return rgb_weight * rgb + (1.0 - rgb_weight) * flow


def fuse_localization(q: np.ndarray, p: np.ndarray, lam: float) -> np.ndarray:
    """Eq. 9: L (T, C) = lam * Q (T,) [:, None] + (1 - lam) * P (T, C)."""
    if p.shape[0] != q.shape[0]:
        raise DataError(f"localize: Q has {q.shape[0]} clips but P has {p.shape[0]}")
    return lam * q[:, None] + (1.0 - lam) * p


def class_thresholds(L: np.ndarray, gamma: float) -> np.ndarray:
    """Eq. 5 form per class: (C,) = mean_t L + gamma * (max_t L - min_t L), L (T, C)."""
    return L.mean(axis=0) + gamma * (L.max(axis=0) - L.min(axis=0))


def group_clips(on: np.ndarray, min_clips: int = 1) -> np.ndarray:
    """Runs of consecutive True in on (T,) -> (N, 2) int [start, end) clip ranges, length >= min_clips.

    A run that reaches the last clip is kept (end = T).
    """
    on = np.asarray(on, dtype=bool)
    edges = np.diff(np.concatenate([[False], on, [False]]).astype(np.int8))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    runs = np.stack([starts, ends], axis=1).astype(np.int64).reshape(-1, 2)
    return runs[(runs[:, 1] - runs[:, 0]) >= min_clips]


def normalise_minmax(L_c: np.ndarray) -> np.ndarray | None:
    """(L_c - min) / (max - min), (T,) -> (T,) in [0, 1]; None when L_c is constant (or empty)."""
    if len(L_c) == 0:
        return None
    lo, hi = L_c.min(), L_c.max()
    return (L_c - lo) / (hi - lo) if hi > lo else None


def multi_threshold_runs(L_c: np.ndarray, levels: Sequence[float], min_clips: int = 1) -> np.ndarray:
    """Runs (N, 2) [start, end) of N_c > theta for every theta in levels, N_c = L_c (T,) min-max
    normalised; pooled over levels, identical runs kept once, sorted by (start, end). A constant
    L_c or no levels -> (0, 2). Runs shorter than min_clips are dropped."""
    norm = normalise_minmax(L_c)
    if norm is None or len(levels) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    on = norm[None, :] > np.asarray(levels, dtype=np.float64)[:, None]  # (K, T): level k, clip t
    padded = np.zeros((on.shape[0], on.shape[1] + 2), dtype=np.int8)  # (K, T + 2), False at both ends
    padded[:, 1:-1] = on
    edges = np.diff(padded, axis=1)  # (K, T + 1): +1 at a run's first clip, -1 one past its last
    # row-major order: in each level the k-th start pairs with the k-th end, levels one after another
    starts = np.nonzero(edges == 1)[1]
    ends = np.nonzero(edges == -1)[1]
    keep = (ends - starts) >= min_clips
    width = on.shape[1] + 1  # ends <= T: start * (T + 1) + end is unique per run and sorts by (start, end)
    keys = np.unique(starts[keep].astype(np.int64) * width + ends[keep])  # (N,) distinct runs, sorted
    return np.stack([keys // width, keys % width], axis=1).reshape(-1, 2)


def proposal_scores(
    L_c: np.ndarray, runs: np.ndarray, method: str, outer_margin: float, video_score: float
) -> np.ndarray:
    """Scores (N,) of runs (N, 2) on one class's L_c (T,) (module doc: "mean" | "outer-inner")."""
    if method not in SCORE_METHODS:
        raise ConfigError(f"localize.score: must be one of {SCORE_METHODS}, got {method!r}")
    T = len(L_c)
    csum = np.concatenate([[0.0], np.cumsum(L_c)])  # (T+1,): sum over [a, b) = csum[b] - csum[a]
    s, e = runs[:, 0], runs[:, 1]
    inner = (csum[e] - csum[s]) / (e - s)
    if method == "mean":
        return inner * video_score
    margin = np.maximum(1, np.round(outer_margin * (e - s))).astype(np.int64)
    ls, re = np.maximum(s - margin, 0), np.minimum(e + margin, T)
    outer_sum = (csum[s] - csum[ls]) + (csum[re] - csum[e])
    outer_len = (s - ls) + (re - e)
    outer = np.divide(outer_sum, outer_len, out=np.zeros(len(s)), where=outer_len > 0)
    return (inner - outer) * video_score


def gate_classes(video_scores: np.ndarray, gate: float) -> np.ndarray:
    """Indices of classes with video_scores >= gate; if none passes, the top-scoring class alone."""
    passed = np.flatnonzero(video_scores >= gate)
    return passed if len(passed) else np.array([int(np.argmax(video_scores))])


def nms(runs: np.ndarray, scores: np.ndarray, iou: float | None) -> np.ndarray:
    """Greedy NMS on one class: indices kept, best score first (ties: input order); a proposal with
    tIoU > iou with a kept one is dropped. iou 0 or None: all kept (sorted by score)."""
    order = np.argsort(-scores, kind="stable")
    if not iou:
        return order
    s, e = runs[:, 0].astype(np.float64), runs[:, 1].astype(np.float64)
    # (N, N) tIoU of every pair; runs have length >= 1 clip, so the union is > 0
    inter = np.clip(np.minimum(e[:, None], e[None, :]) - np.maximum(s[:, None], s[None, :]), 0, None)
    overlaps = inter / ((e - s)[:, None] + (e - s)[None, :] - inter) > iou  # (N, N) bool
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= overlaps[i]
    return np.array(keep, dtype=np.int64)


def to_seconds(runs: np.ndarray, clip_seconds: float, duration: float | None) -> np.ndarray:
    """(N, 2) clip ranges -> (N, 2) seconds; both ends clipped to the duration when given."""
    sec = clip_to_seconds(runs, clip_seconds)
    return np.minimum(sec, duration) if duration is not None else sec


def localize_video(
    q_rgb, q_flow, p_rgb, p_flow, video_scores, *, params: LocalizeParams,
    clip_seconds: float = WTALC_CLIP_SECONDS, duration: float | None = None,
) -> list[Proposal]:
    """One video's proposals. q_* (T,), p_* (T, C), video_scores (C,) -> proposals of gated classes,
    grouped by class (ascending), each class's best score first."""
    q = fuse_streams(_array(q_rgb, "q_rgb", 1), _array(q_flow, "q_flow", 1), params.rgb_weight)
    p = fuse_streams(_array(p_rgb, "p_rgb", 2), _array(p_flow, "p_flow", 2), params.rgb_weight)
    vs = _array(video_scores, "video_scores", 1)
    if p.shape[1] != len(vs):
        raise DataError(f"localize: P has {p.shape[1]} classes but video_scores has {len(vs)}")
    L = fuse_localization(q, p, params.lam)  # (T, C)
    if L.shape[0] == 0:
        return []
    classes = gate_classes(vs, params.gate)
    levels = parse_thresholds(params.thresholds)  # () = the paper's single Eq. 5-form threshold
    if not levels:
        thresholds = class_thresholds(L[:, classes], params.gamma)  # (C_gated,)
        class_runs = (group_clips(L[:, c] > thr, params.min_clips) for c, thr in zip(classes, thresholds))
    else:
        class_runs = (multi_threshold_runs(L[:, c], levels, params.min_clips) for c in classes)
    out: list[Proposal] = []
    for c, runs in zip(classes, class_runs):
        if len(runs) == 0:
            continue
        scores = proposal_scores(L[:, c], runs, params.score, params.outer_margin, float(vs[c]))
        keep = nms(runs, scores, params.nms_iou)
        sec = to_seconds(runs[keep], clip_seconds, duration)
        ci = int(c)
        # .tolist() first: iterating numpy rows costs ~1 us per element, and there can be many proposals
        for (s, e), (ss, es), sc in zip(runs[keep].tolist(), sec.tolist(), scores[keep].tolist()):
            out.append(Proposal(ci, int(s), int(e), float(ss), float(es), float(sc)))
    return out


def whole_video_proposals(
    video_scores, num_clips: int, *, gate: float, clip_seconds: float = WTALC_CLIP_SECONDS,
    duration: float | None = None,
) -> list[Proposal]:
    """The floor reference: for each class passing gate_classes(video_scores (C,), gate), ascending,
    one proposal [0, num_clips) scored by that class's video score, end clipped to the duration.
    No clips -> no proposals."""
    vs = _array(video_scores, "video_scores", 1)
    if isinstance(num_clips, bool) or not isinstance(num_clips, (int, np.integer)) or num_clips < 0:
        raise DataError(f"localize: num_clips must be an integer >= 0, got {num_clips!r}")
    if num_clips == 0 or len(vs) == 0:
        return []
    (start, end), = to_seconds(np.array([[0, int(num_clips)]]), clip_seconds, duration)
    return [Proposal(int(c), 0, int(num_clips), float(start), float(end), float(vs[c]))
            for c in gate_classes(vs, gate)]


def results_json(proposals: Mapping[str, Sequence[Proposal]], classes: Sequence[str]) -> dict:
    """{"results": {video: [{"label", "segment": [start_s, end_s], "score"}]}} (ActivityNet format)."""
    return {
        "results": {
            video: [
                {"label": classes[p.class_index], "segment": [p.start, p.end], "score": p.score} for p in props
            ]
            for video, props in proposals.items()
        }
    }
