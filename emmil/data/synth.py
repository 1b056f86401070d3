"""Semi-synthetic I3D-like two-stream features on the REAL THUMOS14 / ActivityNet1.2 annotations.

This docstring is the one description of the generative model (DESIGN.md section 4); its numbers
live in :class:`SynthParams`. The features are NOT real I3D features: every result computed on them
is labelled "semi-synthetic" (``Dataset.source``) and is no reproduction of the paper's numbers.

Time grid. Video i (real duration d_i seconds, real segments and labels) gets
T_i = max(1, round(d_i / 0.64)) clips; clip t covers [t, t+1) in clip units (0.64 s, the W-TALC
grid: 16 frames at 25 fps). Each clip has x_t = [rgb_t | flow_t] in R^(2*dim).

Directions (drawn once from ``seed``; unit vectors in R^dim, one set per stream s in {rgb, flow}):
  g^s            a generic "motion" direction shared by all actions (class-agnostic actionness),
  a_c^s          action direction of class c: normalise(sqrt(1-h) u_c^s + sqrt(h) g^s), h = actionness_share,
  k_c^s          scene-context direction of class c (independent of a_c^s: the scene is not the action),
  b_1..b_M       M = background_modes generic scene modes (unit in R^(2*dim)), shared by all classes,
  mu             the shared background pattern: every entry mu_j = background_mean + background_pattern_std*N(0,1).

Per-clip pre-activation, stream s (w_act^s, w_ctx^s the stream weights below):
  z_t^s = mu^s + o^s + sum_m beta_m b_m^s                                     (shared background + video offset)
        + sum_{c in video}  w_act^s * A * m_c(t) * a_c^s                      (action)
        + sum_{c in video}  w_ctx^s * K * r_c(t) * k_c^s                      (class-correlated context)
        + sigma * e_t^s                                                       (noise)
  x_t^s = max(z_t^s, 0)          (I3D features are post-ReLU averages: non-negative, many near 0)
where, with A = action_amplitude, K = context_amplitude, sigma = noise_std (all in the units of a
projection on a unit direction, so a direction's per-clip signal-to-noise ratio does not depend on dim):
  o^s      per-video offset, entries N(0, video_offset_std^2) (camera, lighting, compression),
  beta_m   per-video scene-mode weights, N(0, background_mode_amplitude^2),
  e_t^s    AR(1) Gaussian noise along time: e_t = rho e_{t-1} + sqrt(1-rho^2) n_t, rho = noise_correlation,
           unit variance per entry (neighbouring I3D clips overlap in content and are correlated),
  m_c(t)   action strength profile: for each GT segment [s, e] of class c (clip units) and clip t
           overlapping it by o in (0, 1] at relative position u in [0, 1] (centre of the overlap),
               m = alpha * o * (beta + (1 - beta) * sin(pi u)^p),  beta = action_boundary_level,
           p = action_profile_power, alpha ~ LogNormal(0, instance_amplitude_std^2) per segment;
           the max over segments of the class. The middle of an action is its most discriminative
           part, its boundaries only weakly so: an attention MIL model collapses on the middle and
           its proposals come out incomplete (the phenomenon EM-MIL argues about).
  r_c(t)   context strength for each class c of the video (video labels and segment labels):
               r = far + (near - far) * exp(-dist_t / context_decay_s),
           dist_t = seconds from the centre of clip t to the nearest segment of class c (0 inside);
           a class with no segment in the video gets `far` everywhere. Scene clips around an action
           and in the rest of its video carry the class's context without being the action.
Streams: RGB carries more scene context, flow more motion (w_ctx^rgb > w_ctx^flow, w_act^flow > w_act^rgb).
THUMOS14 Ambiguous segments get no action signal (their clips are background/context).

Determinism: directions come from numpy's PCG64 seeded with [seed, 0]; video v's draws (offset,
mode weights, segment amplitudes, then noise, in that order) from [seed, 1, crc32(name)], so a
video's features do not depend on which other videos are generated (a `max_videos` subset has
the same rows as the full set) and the same seed gives a byte-identical file.

Parameter choice (plausibility, not to favour any method; the values are what they are): the
per-entry noise is 1 with a background mean of 0.5, so about a third of the entries are 0 after the
ReLU, as in post-ReLU I3D averages; an action's middle clip projects A=3 noise standard deviations
onto its flow direction, its boundary clip 0.25*3; context near an action projects K=2 on RGB,
0.3*2 on flow; consecutive clips are correlated (rho=0.6).

File output (`write_synthetic`): the W-TALC release layout, read back by `emmil.data.wtalc.load_wtalc`:
    <out>/<Prefix>-I3D-JOINTFeatures.npy   1-D object array of (T_i, 2*dim) float32, videoname.npy order
    <out>/<Prefix>-Annotations/            the shipped annotation folder (or its max_videos subset)
    <out>/SYNTHETIC.json                   {"description": ..., "params": {...}, ...}
The feature file is written by a streaming pickler (protocol 5 framing, one in-band buffer per video,
no copy of the array), whose pickle uses only the globals numpy itself writes for float arrays
(`_reconstruct`, `ndarray`, `dtype`), so the restricted unpickler of `emmil.data.safe_pickle` reads it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from emmil.data.dataset import TRAIN_TEST_SUBSETS, Dataset, Video, clip_to_seconds, seconds_to_clip
from emmil.data.loading import shipped_annotation_dir
from emmil.data.safe_pickle import load_npy
from emmil.data.wtalc import WtalcAnnotations, annotation_dir_name, feature_file_name, read_annotations
from emmil.errors import ConfigError, DataError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.26
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

GENERATOR_VERSION = "emmil synth v1"
SYNTHETIC_MARKER = "SYNTHETIC.json"
# (T, 2*dim) progress callback: (clips done, clips total)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SynthParams:
    """Parameters of the generative model of the module docstring (units: per-entry / projection)."""

    # Shared background (same for every video) and per-video variation.
    background_mean: float = 0.5  # mean pre-activation entry; with noise 1 ~35% zeros after the ReLU
    background_pattern_std: float = 0.5  # spread of the fixed shared background pattern mu across entries
    background_modes: int = 8  # M generic scene modes shared by all classes (indoor, outdoor, crowd, ...)
    background_mode_amplitude: float = 2.0  # std of a video's weight beta_m on each mode
    video_offset_std: float = 0.2  # per-entry std of a video's own offset o
    # Actions (motion): most discriminative in the middle, weak at the boundaries.
    action_amplitude: float = 3.0  # A: projection of a middle clip on its action direction
    action_boundary_level: float = 0.25  # beta: strength at a boundary relative to the middle
    action_profile_power: float = 2.0  # p in sin(pi u)^p
    actionness_share: float = 0.3  # h: share of an action direction common to all classes
    instance_amplitude_std: float = 0.25  # log-normal spread of one segment's strength alpha
    # Class-correlated scene context.
    context_amplitude: float = 2.0  # K
    context_near_level: float = 1.0  # r at/inside an action of the class
    context_far_level: float = 0.3  # r far from any action of the class, still in its video
    context_decay_s: float = 8.0  # seconds: e-folding distance of context from a segment
    # Streams: RGB sees more scene context, flow more motion.
    rgb_action_weight: float = 0.5
    flow_action_weight: float = 1.0
    rgb_context_weight: float = 1.0
    flow_context_weight: float = 0.3
    # Noise.
    noise_std: float = 1.0  # sigma, per entry
    noise_correlation: float = 0.6  # rho: AR(1) coefficient between consecutive 0.64 s clips

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)) or value < 0:
                raise ConfigError(f"SynthParams.{f.name} = {value!r}: expected a finite number >= 0")
        for name in ("action_boundary_level", "actionness_share"):
            if getattr(self, name) > 1:
                raise ConfigError(f"SynthParams.{name} = {getattr(self, name)!r}: expected a value in [0, 1]")
        if self.noise_correlation >= 1:
            raise ConfigError(f"SynthParams.noise_correlation = {self.noise_correlation!r}: expected [0, 1)")
        if self.context_decay_s <= 0:
            raise ConfigError(f"SynthParams.context_decay_s = {self.context_decay_s!r}: expected > 0")
        if int(self.background_modes) != self.background_modes:
            raise ConfigError(f"SynthParams.background_modes = {self.background_modes!r}: expected an integer")


@dataclass(frozen=True, eq=False)
class Prototypes:
    """The seeded directions of the model; every row a unit vector per stream."""

    action: np.ndarray  # (C, 2*dim) float32: [w_act^rgb a_c^rgb | w_act^flow a_c^flow] * A
    context: np.ndarray  # (C, 2*dim) float32: [w_ctx^rgb k_c^rgb | w_ctx^flow k_c^flow] * K
    modes: np.ndarray  # (M, 2*dim) float32: unit scene modes b_m
    background: np.ndarray  # (2*dim,) float32: mu


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_prototypes(num_classes: int, dim: int, seed: int, params: SynthParams) -> Prototypes:
    """Class action/context directions, scene modes and background pattern from seed [seed, 0]."""
    rng = np.random.default_rng([seed, 0])
    h = params.actionness_share
    streams = []
    for _ in range(2):  # rgb, flow
        generic = _unit_rows(rng.standard_normal(dim))
        own = _unit_rows(rng.standard_normal((num_classes, dim)))
        action = _unit_rows(math.sqrt(1 - h) * own + math.sqrt(h) * generic)
        context = _unit_rows(rng.standard_normal((num_classes, dim)))
        streams.append((action, context))
    (a_rgb, k_rgb), (a_flow, k_flow) = streams
    action = params.action_amplitude * np.concatenate(
        [params.rgb_action_weight * a_rgb, params.flow_action_weight * a_flow], axis=1)
    context = params.context_amplitude * np.concatenate(
        [params.rgb_context_weight * k_rgb, params.flow_context_weight * k_flow], axis=1)
    modes = _unit_rows(rng.standard_normal((int(params.background_modes), 2 * dim)))
    background = params.background_mean + params.background_pattern_std * rng.standard_normal(2 * dim)
    return Prototypes(action.astype(np.float32), context.astype(np.float32), modes.astype(np.float32),
                      background.astype(np.float32))


def num_clips(duration: float) -> int:
    """T = max(1, round(duration / 0.64)): clips of a video on the W-TALC grid."""
    return max(1, int(np.round(seconds_to_clip(duration))))


def action_profile(segment: tuple[float, float], num: int, params: SynthParams) -> np.ndarray:
    """(T,) m(t) of one segment (seconds) before its amplitude alpha: overlap * (beta + (1-beta) sin(pi u)^p).

    E.g. segment [0, 4*0.64] s, T=4, beta=0.25, p=2: u = 1/8, 3/8, 5/8, 7/8 -> sin^2 = 0.146, 0.854,
    0.854, 0.146 -> m = 0.360, 0.890, 0.890, 0.360 (middle clips strongest)."""
    s, e = (float(x) for x in seconds_to_clip(np.asarray(segment, dtype=np.float64)))
    out = np.zeros(num, dtype=np.float64)
    if e <= s:
        return out
    t = np.arange(max(0, math.floor(s)), min(num, math.ceil(e)))
    lo, hi = np.maximum(t, s), np.minimum(t + 1.0, e)
    overlap = np.clip(hi - lo, 0.0, 1.0)
    u = ((lo + hi) / 2 - s) / (e - s)
    beta = params.action_boundary_level
    out[t] = overlap * (beta + (1 - beta) * np.sin(np.pi * u) ** params.action_profile_power)
    return out


def context_profile(segments: Sequence[tuple[float, float]], num: int, params: SynthParams) -> np.ndarray:
    """(T,) r(t) = far + (near - far) exp(-dist/decay); dist in seconds from the clip centre to the
    nearest of `segments` (0 inside one); `far` everywhere when there is no segment."""
    out = np.full(num, params.context_far_level, dtype=np.float64)
    if not segments:
        return out
    centre = clip_to_seconds(np.arange(num) + 0.5)
    dist = np.full(num, np.inf)
    for s, e in segments:
        dist = np.minimum(dist, np.maximum(0.0, np.maximum(s - centre, centre - e)))
    near, far = params.context_near_level, params.context_far_level
    return far + (near - far) * np.exp(-dist / params.context_decay_s)


def _video_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, 1, zlib.crc32(name.encode("utf-8"))])


def generate_video(out: np.ndarray, video: Video, class_index: Mapping[str, int], protos: Prototypes,
                   seed: int, params: SynthParams, scratch: np.ndarray | None = None) -> None:
    """Fill `out` (T, 2*dim) float32 in place with video `video`'s features (module docstring)."""
    num, width = out.shape
    rng = _video_rng(seed, video.name)
    # Constant part: shared background + video offset + scene modes. (2*dim,)
    base = protos.background + params.video_offset_std * rng.standard_normal(width, dtype=np.float32)
    beta = params.background_mode_amplitude * rng.standard_normal(len(protos.modes), dtype=np.float32)
    base += beta @ protos.modes
    # Per-class time courses: (T, k) coefficients times (k, 2*dim) directions.
    classes = sorted(set(video.labels) | set(video.segment_labels), key=lambda c: class_index[c])
    alpha = np.exp(params.instance_amplitude_std * rng.standard_normal(len(video.segments)))
    coef = np.zeros((num, 2 * len(classes)), dtype=np.float64)
    for j, c in enumerate(classes):
        segs = [seg for seg, lab in zip(video.segments, video.segment_labels) if lab == c]
        for k, (seg, lab) in enumerate(zip(video.segments, video.segment_labels)):
            if lab == c:
                coef[:, j] = np.maximum(coef[:, j], alpha[k] * action_profile(seg, num, params))
        coef[:, len(classes) + j] = context_profile(segs, num, params)
    idx = [class_index[c] for c in classes]
    dirs = np.concatenate([protos.action[idx], protos.context[idx]], axis=0)  # (2k, 2*dim)
    # Noise: unit-variance AR(1) along time, generated straight into `out`.
    rng.standard_normal(dtype=np.float32, out=out)
    rho = params.noise_correlation
    if rho > 0 and num > 1:
        out[1:] *= math.sqrt(1 - rho * rho)
        tmp = np.empty(width, dtype=np.float32) if scratch is None else scratch
        for t in range(1, num):
            np.multiply(out[t - 1], rho, out=tmp)
            out[t] += tmp
    out *= params.noise_std
    out += base
    if classes:
        # einsum's own loop, not BLAS: with k = 2-6 components a threaded matmul is slower here.
        out += np.einsum("tk,kd->td", coef.astype(np.float32), dirs)
    np.maximum(out, 0.0, out=out)


def select_videos(annotations: WtalcAnnotations, name: str, max_videos: int | None) -> tuple[int, ...]:
    """Indices (file order) of the videos to generate. None: all. Else, separately for the train and
    the test subset: a greedy class cover (the video adding most uncovered classes, first in file
    order on ties) and then evenly spaced fill-ins, at most `max_videos` per subset."""
    if max_videos is None:
        return tuple(range(len(annotations.videos)))
    if max_videos < 1:
        raise ConfigError(f"max_videos = {max_videos!r}: expected a positive number of videos per subset")
    keep: list[int] = []
    for subset in TRAIN_TEST_SUBSETS[name]:
        pool = [i for i, v in enumerate(annotations.videos) if v.subset == subset]
        classes_of = {i: set(annotations.videos[i].labels) | set(annotations.videos[i].segment_labels)
                      for i in pool}
        uncovered = set().union(*classes_of.values()) if pool else set()
        chosen: list[int] = []
        while uncovered and len(chosen) < max_videos:
            best = max(pool, key=lambda i: (len(classes_of[i] & uncovered), -i))
            chosen.append(best)
            uncovered -= classes_of[best]
        rest = [i for i in pool if i not in set(chosen)]
        fill = min(max_videos - len(chosen), len(rest))
        if fill > 0:
            picks = np.unique(np.round(np.linspace(0, len(rest) - 1, fill)).astype(int))
            chosen += [rest[p] for p in picks]
        keep += chosen
    return tuple(sorted(keep))


def check_args(name: str, dim: int, seed: int) -> None:
    if name not in TRAIN_TEST_SUBSETS:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {tuple(TRAIN_TEST_SUBSETS)}")
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ConfigError(f"dim = {dim!r}: expected a positive integer (features per stream)")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed = {seed!r}: expected a non-negative integer")


def description(name: str, dim: int, seed: int, max_videos: int | None = None) -> str:
    """The SYNTHETIC.json description; Dataset.source is "semi-synthetic (<description>)"."""
    text = f"{GENERATOR_VERSION}, dim={dim}, seed={seed}, {name}"
    return text if max_videos is None else f"{text}, max_videos={max_videos}"


def _generate(name: str, dim: int, seed: int, max_videos: int | None, params: SynthParams,
              progress: Progress | None) -> tuple[Dataset, WtalcAnnotations, tuple[int, ...]]:
    check_args(name, dim, seed)
    annotations = read_annotations(shipped_annotation_dir(name), name)
    keep = select_videos(annotations, name, max_videos)
    videos, start = [], 0
    for i in keep:
        v = annotations.videos[i]
        t = num_clips(v.duration)
        videos.append(dataclasses.replace(v, start=start, num_clips=t))
        start += t
    features = np.empty((start, 2 * dim), dtype=np.float32)  # (sum T_i, 2*dim), the only big array
    protos = make_prototypes(len(annotations.classes), dim, seed, params)
    class_index = {c: i for i, c in enumerate(annotations.classes)}
    scratch = np.empty(2 * dim, dtype=np.float32)
    for v in videos:
        generate_video(features[v.start: v.start + v.num_clips], v, class_index, protos, seed, params, scratch)
        if progress is not None:
            progress(v.start + v.num_clips, start)
    names = {v.name for v in videos}
    dataset = Dataset(
        name=name,
        classes=tuple(annotations.classes),
        videos=tuple(videos),
        features=features,
        rgb_dim=dim,
        flow_dim=dim,
        ambiguous={k: v for k, v in annotations.ambiguous.items() if k in names},
        source=f"semi-synthetic ({description(name, dim, seed, max_videos)})",
    )
    return dataset, annotations, keep


def make_synthetic(name: str, *, dim: int, seed: int, max_videos: int | None = None,
                   params: SynthParams = SynthParams(), progress: Progress | None = None) -> Dataset:
    """The semi-synthetic dataset in memory (one (sum T_i, 2*dim) float32 array); see the module docstring.
    `max_videos` keeps at most that many videos of each of the train and test subsets, covering their classes."""
    return _generate(name, dim, seed, max_videos, params, progress)[0]


class _StreamingArrayPickler(pickle.Pickler):
    """Pickles float arrays as numpy does for protocol <= 4 (`_reconstruct` + `__setstate__` with the
    raw bytes) but hands the bytes over as a read-only in-band PickleBuffer: the C pickler writes
    large buffers straight to the file, so nothing is copied and memory does not double."""

    def reducer_override(self, obj):
        if type(obj) is np.ndarray and obj.dtype != object and obj.flags.c_contiguous:
            raw = pickle.PickleBuffer(memoryview(obj).cast("B").toreadonly())
            return (_reconstruct, (np.ndarray, (0,), b"b"), (1, obj.shape, obj.dtype, False, raw))
        return NotImplemented


def write_object_npy(path: Path, arrays: Sequence[np.ndarray]) -> None:
    """Write a 1-D object .npy of `arrays` (e.g. views into one big array) without copying them."""
    obj = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        obj[i] = a
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(obj))
        _StreamingArrayPickler(fh, protocol=5).dump(obj)


def _write_annotations(src: Path, dst: Path, keep: tuple[int, ...], total: int, names: set[str]) -> None:
    """Copy the annotation folder; with a subset, index every per-video array by `keep` and keep
    only the kept videos' Ambiguous lines."""
    if len(keep) == total:
        shutil.copytree(src, dst)
        return
    dst.mkdir()
    index = np.asarray(keep, dtype=np.int64)
    for f in sorted(src.iterdir()):
        if f.suffix == ".npy" and f.name != "classlist.npy":
            arr = load_npy(f, kind=f"annotation {f.stem!r}")
            if arr.ndim == 0 or arr.shape[0] != total:
                raise DataError(f"{f}: has {arr.shape} entries, expected one per video ({total})")
            np.save(dst / f.name, arr[index], allow_pickle=arr.dtype == object)
        elif f.name == "Ambiguous_test.txt":
            lines = [ln for ln in f.read_text().splitlines() if ln.split()[:1] and ln.split()[0] in names]
            (dst / f.name).write_text("".join(ln + "\n" for ln in lines))
        else:
            shutil.copy2(f, dst / f.name)


def _synth_entries() -> set[str]:
    """Every name a synthetic output folder may hold (of either dataset)."""
    names = {SYNTHETIC_MARKER}
    for dataset in TRAIN_TEST_SUBSETS:
        names |= {annotation_dir_name(dataset), feature_file_name(dataset)}
    return names


def check_target(out_dir: Path) -> None:
    """Refuse a target that exists and is neither empty nor an earlier synthetic output."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder; choose another --out")
    entries = {p.name for p in out_dir.iterdir()}
    if not entries:
        return
    if SYNTHETIC_MARKER not in entries:
        raise DataError(f"{out_dir}: folder is not empty and holds no {SYNTHETIC_MARKER} (not an earlier "
                        f"synthetic output); refusing to overwrite it (found {sorted(entries)[:5]})")
    extra = entries - _synth_entries()
    if extra:
        raise DataError(f"{out_dir}: earlier synthetic output also holds other files {sorted(extra)[:5]}; "
                        f"refusing to overwrite it")


def write_synthetic(name: str, out_dir, *, dim: int, seed: int, max_videos: int | None = None,
                    params: SynthParams = SynthParams(), progress: Progress | None = None) -> Path:
    """Write the semi-synthetic dataset in the W-TALC layout to `out_dir` and return it.

    Everything is written into a hidden sibling folder `.<out>.partial-<pid>` that is renamed to
    `out_dir` only when complete (SYNTHETIC.json last), so a half-written dataset never carries the
    final name. `out_dir` may be absent, empty or an earlier synthetic output (replaced)."""
    out_dir = Path(out_dir)
    check_args(name, dim, seed)
    check_target(out_dir)
    dataset, annotations, keep = _generate(name, dim, seed, max_videos, params, progress)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir()
    try:
        write_object_npy(tmp / feature_file_name(name), [dataset.features_of(v) for v in dataset.videos])
        _write_annotations(shipped_annotation_dir(name), tmp / annotation_dir_name(name), keep,
                           len(annotations.videos), {v.name for v in dataset.videos})
        meta = {
            "description": description(name, dim, seed, max_videos),
            "params": dataclasses.asdict(params),
            "dataset": name,
            "dim": dim,
            "seed": seed,
            "max_videos": max_videos,
            "videos": len(dataset.videos),
            "clips": int(dataset.features.shape[0]),
        }
        (tmp / SYNTHETIC_MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        check_target(out_dir)  # nobody filled it meanwhile
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out_dir.exists():
            old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out_dir
