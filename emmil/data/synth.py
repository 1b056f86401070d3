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
        + sum_n gamma_n f_n^s                                                 (per-video appearance; v2 only)
        + sum_{c in video}  w_act^s * A * m_c(t) * a_c^s                      (action)
        + sum_{c in video}  w_act^s * A * G * (n_c(t) - m_c(t)) * g^s          (generic motion fill; v2 only)
        + sum_{c in video}  w_ctx^s * K * r_c(t) * k_c^s                      (class-correlated context)
        + sigma * e_t^s                                                       (noise)
  x_t^s = max(z_t^s, 0)          (I3D features are post-ReLU averages: non-negative, many near 0)
where, with A = action_amplitude, K = context_amplitude, sigma = noise_std (all in the units of a
projection on a unit direction, so a direction's per-clip signal-to-noise ratio does not depend on dim):
  o^s      per-video offset, entries N(0, video_offset_std^2) (camera, lighting, compression),
  beta_m   per-video scene-mode weights, N(0, background_mode_amplitude^2),
  f_n      N = appearance_modes appearance directions in R^(2*dim) with N(0, 1) entries (NOT unit: a
           per-entry scale, so the appearance's share of the variance does not depend on dim); gamma_n
           per-video weights N(0, appearance_amplitude^2 / N), so the term's per-entry std is
           appearance_amplitude. Real I3D features vary more between videos (scene, camera, lighting)
           than between the clips of one video; v1's unit-norm scene modes and small offset do not
           give that (between/within variance ~0.3 at dim 64, less at larger dims). The appearance
           lies in a low-rank subspace (N << dim), so a classifier can learn to discount it.
           Off in v1 (appearance_amplitude = 0: nothing drawn, v1 stays byte-identical).
  e_t^s    AR(1) Gaussian noise along time: e_t = rho e_{t-1} + sqrt(1-rho^2) n_t, rho = noise_correlation,
           unit variance per entry (neighbouring I3D clips overlap in content and are correlated),
  m_c(t)   action strength profile: for each GT segment [s, e] of class c (clip units) and clip t
           overlapping it by o in (0, 1] at relative position u in [0, 1] (centre of the overlap),
               m = alpha * o * (beta + (1 - beta) * sin(pi u)^p),  beta = action_boundary_level,
           p = action_profile_power, alpha ~ LogNormal(0, instance_amplitude_std^2) per segment;
           the max over segments of the class. The middle of an action is its most discriminative
           part, its boundaries only weakly so: an attention MIL model collapses on the middle and
           its proposals come out incomplete (the phenomenon EM-MIL argues about).
  n_c(t)   the flat extent of the same segments: alpha * o (the max over segments of the class), so
           n - m >= 0 is what the peaked profile leaves out. G = generic_fill (v2 only; 0 in v1): the
           clips of an action carry motion throughout, but near its boundaries that motion is the
           class-agnostic g (a person getting ready looks alike in every sport) rather than the class
           direction. With G > 0 the boundaries are present but weakly DISCRIMINATIVE (a supervised
           model trained on clip labels can learn g as actionness; a MIL model trained on video labels
           has no reason to); in v1 they are only weakly PRESENT, which hinders supervision as well.
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
the same rows as the full set) and the same seed gives a byte-identical file. The v2-only
appearance draws come from their own streams ([seed, 2] for f_n, [seed, 3, crc32(name)] for
gamma_n) and the generic fill draws nothing (g is drawn in every version), so switching them off
leaves every other draw, and v1's bytes, unchanged.

Versions (`generator=`; SYNTHETIC.json "generator", the description "emmil synth v1|v2, ..."):
  v1  SynthParams() (= V1_PARAMS), chosen for plausibility (below); far harder than real THUMOS14
      for every method (a fully supervised clip classifier reaches ~27 average mAP, what weakly
      supervised STPN reaches on real I3D features).
  v2  V2_PARAMS: the same family plus two switches that are off in v1 (the per-video appearance,
      the generic fill), with the signal parameters set by calibration against reference rows that
      are not EM-MIL (bench/calibrate_synth.py and the calibration table of docs/synth.md); targets:
      attention MIL near STPN's published real-feature mAPs, the supervised ceiling well above fully
      supervised TAL-Net.

v1 parameter choice (plausibility, not to favour any method; the values are what they are): the
per-entry noise is 1 with a background mean of 0.5, so about a third of the entries are 0 after the
ReLU, as in post-ReLU I3D averages; an action's middle clip projects A=3 noise standard deviations
onto its flow direction, its boundary clip 0.25*3; context near an action projects K=2 on RGB,
0.3*2 on flow; consecutive clips are correlated (rho=0.6).

File output (`write_synthetic`): the W-TALC release layout, read back by `emmil.data.wtalc.load_wtalc`:
    <out>/<Prefix>-I3D-JOINTFeatures.npy   1-D object array of (T_i, 2*dim) float32, videoname.npy order
    <out>/<Prefix>-Annotations/            the shipped annotation folder (or its max_videos subset)
    <out>/SYNTHETIC.json                   {"description": ..., "generator": "v1"|"v2", "params": {...}, ...}
A folder written before versions existed has no "generator" key: it is v1 (`generator_of`).
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

# Generator version -> the name that starts the description (and so Dataset.source).
GENERATOR_VERSION = {"v1": "emmil synth v1", "v2": "emmil synth v2"}
GENERATORS = tuple(GENERATOR_VERSION)
DEFAULT_GENERATOR = "v2"
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
    # v2 only (0 = off, the v1 value).
    generic_fill: float = 0.0  # G: boundary clips carry generic motion g instead of class evidence
    # Low-rank per-video appearance, per-entry std (module docstring).
    appearance_amplitude: float = 0.0
    appearance_modes: int = 4  # N directions (low rank: learnable to discount); unused while appearance_amplitude = 0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)) or value < 0:
                raise ConfigError(f"SynthParams.{f.name} = {value!r}: expected a finite number >= 0")
        for name in ("action_boundary_level", "actionness_share", "generic_fill"):
            if getattr(self, name) > 1:
                raise ConfigError(f"SynthParams.{name} = {getattr(self, name)!r}: expected a value in [0, 1]")
        if self.noise_correlation >= 1:
            raise ConfigError(f"SynthParams.noise_correlation = {self.noise_correlation!r}: expected [0, 1)")
        if self.context_decay_s <= 0:
            raise ConfigError(f"SynthParams.context_decay_s = {self.context_decay_s!r}: expected > 0")
        for name in ("background_modes", "appearance_modes"):
            if int(getattr(self, name)) != getattr(self, name):
                raise ConfigError(f"SynthParams.{name} = {getattr(self, name)!r}: expected an integer")

    def v2_only(self) -> tuple[str, ...]:
        """Names of the v2-only structural fields switched on (not at their v1 value)."""
        on = ("generic_fill",) if self.generic_fill > 0 else ()
        appearance = self.appearance_amplitude > 0 and self.appearance_modes > 0
        return on + (("appearance_amplitude",) if appearance else ())


# v1: the defaults above. Every field's v1 value reproduces v1 exactly (tests pin v1's bytes).
V1_PARAMS = SynthParams()
# v2: FROZEN 2026-12-02 by the final calibration (bench/calibrate_synth.py, default grid, 3 training
# seeds; table in docs/synth.md "Calibration table (v2)"), before any EM-MIL variant ran on it. A later
# change is a new version (v3), never an edit here.
V2_PARAMS = SynthParams(
    action_amplitude=6.0,  # calibrated (grid 6, 8)
    action_boundary_level=0.3,
    generic_fill=1.0,  # boundaries weakly discriminative, not weakly present (module docstring)
    context_amplitude=8.0,
    context_far_level=0.5,  # calibrated (grid 0.5, 0.7)
    # Not calibrated on mAP: between-video / within-video variance ~2.3 (> 1, as in real I3D features;
    # v1 ~0.3), low rank (4 directions) so that it can be discounted.
    appearance_amplitude=1.5,
    appearance_modes=4,
)
VERSION_PARAMS = {"v1": V1_PARAMS, "v2": V2_PARAMS}


@dataclass(frozen=True, eq=False)
class Prototypes:
    """The seeded directions of the model; every row a unit vector per stream."""

    action: np.ndarray  # (C, 2*dim) float32: [w_act^rgb a_c^rgb | w_act^flow a_c^flow] * A
    context: np.ndarray  # (C, 2*dim) float32: [w_ctx^rgb k_c^rgb | w_ctx^flow k_c^flow] * K
    modes: np.ndarray  # (M, 2*dim) float32: unit scene modes b_m
    background: np.ndarray  # (2*dim,) float32: mu
    appearance: np.ndarray | None = None  # (N, 2*dim) float32: f_n, N(0,1) entries (v2); None when off
    # (2*dim,) float32: [w_act^rgb g^rgb | w_act^flow g^flow] * A * G (v2); None when G = 0
    generic: np.ndarray | None = None


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
        streams.append((action, context, generic))
    (a_rgb, k_rgb, g_rgb), (a_flow, k_flow, g_flow) = streams
    action = params.action_amplitude * np.concatenate(
        [params.rgb_action_weight * a_rgb, params.flow_action_weight * a_flow], axis=1)
    context = params.context_amplitude * np.concatenate(
        [params.rgb_context_weight * k_rgb, params.flow_context_weight * k_flow], axis=1)
    modes = _unit_rows(rng.standard_normal((int(params.background_modes), 2 * dim)))
    background = params.background_mean + params.background_pattern_std * rng.standard_normal(2 * dim)
    appearance = generic = None
    if "appearance_amplitude" in params.v2_only():  # own stream: v1's draws above stay as they are
        appearance = np.random.default_rng([seed, 2]).standard_normal(
            (int(params.appearance_modes), 2 * dim)).astype(np.float32)
    if params.generic_fill > 0:  # g, already drawn above (no new draw)
        generic = (params.action_amplitude * params.generic_fill * np.concatenate(
            [params.rgb_action_weight * g_rgb, params.flow_action_weight * g_flow])).astype(np.float32)
    return Prototypes(action.astype(np.float32), context.astype(np.float32), modes.astype(np.float32),
                      background.astype(np.float32), appearance, generic)


def num_clips(duration: float) -> int:
    """T = max(1, round(duration / 0.64)): clips of a video on the W-TALC grid."""
    return max(1, int(np.round(seconds_to_clip(duration))))


def action_profile(segment: tuple[float, float], num: int, params: SynthParams, *, flat: bool = False) -> np.ndarray:
    """(T,) m(t) of one segment (seconds) before its amplitude alpha: overlap * (beta + (1-beta) sin(pi u)^p);
    `flat`: n(t) = overlap (the extent without the peaked profile).

    E.g. segment [0, 4*0.64] s, T=4, beta=0.25, p=2: u = 1/8, 3/8, 5/8, 7/8 -> sin^2 = 0.146, 0.854,
    0.854, 0.146 -> m = 0.360, 0.890, 0.890, 0.360 (middle clips strongest); flat: 1, 1, 1, 1."""
    s, e = (float(x) for x in seconds_to_clip(np.asarray(segment, dtype=np.float64)))
    out = np.zeros(num, dtype=np.float64)
    if e <= s:
        return out
    t = np.arange(max(0, math.floor(s)), min(num, math.ceil(e)))
    lo, hi = np.maximum(t, s), np.minimum(t + 1.0, e)
    overlap = np.clip(hi - lo, 0.0, 1.0)
    u = ((lo + hi) / 2 - s) / (e - s)
    beta = params.action_boundary_level
    out[t] = overlap if flat else overlap * (beta + (1 - beta) * np.sin(np.pi * u) ** params.action_profile_power)
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
    if protos.appearance is not None:  # v2: per-video appearance, own stream (module docstring)
        n = len(protos.appearance)
        gamma = np.random.default_rng([seed, 3, zlib.crc32(video.name.encode("utf-8"))]).standard_normal(
            n, dtype=np.float32) * np.float32(params.appearance_amplitude / math.sqrt(n))
        base += gamma @ protos.appearance
    # Per-class time courses: (T, k) coefficients times (k, 2*dim) directions.
    classes = sorted(set(video.labels) | set(video.segment_labels), key=lambda c: class_index[c])
    alpha = np.exp(params.instance_amplitude_std * rng.standard_normal(len(video.segments)))
    fill = protos.generic is not None and bool(classes)  # v2: generic motion fills the flat extent
    coef = np.zeros((num, 2 * len(classes) + fill), dtype=np.float64)
    for j, c in enumerate(classes):
        segs = [seg for seg, lab in zip(video.segments, video.segment_labels) if lab == c]
        extent = np.zeros(num)
        for k, (seg, lab) in enumerate(zip(video.segments, video.segment_labels)):
            if lab == c:
                coef[:, j] = np.maximum(coef[:, j], alpha[k] * action_profile(seg, num, params))
                if fill:
                    extent = np.maximum(extent, alpha[k] * action_profile(seg, num, params, flat=True))
        coef[:, len(classes) + j] = context_profile(segs, num, params)
        if fill:
            coef[:, -1] += extent - coef[:, j]  # n_c - m_c >= 0, summed over the video's classes
    idx = [class_index[c] for c in classes]
    dirs = np.concatenate([protos.action[idx], protos.context[idx]], axis=0)  # (2k, 2*dim)
    if fill:
        dirs = np.concatenate([dirs, protos.generic[None]], axis=0)  # (2k+1, 2*dim)
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


def check_generator(generator: str) -> str:
    """The generator version ("v1" | "v2"); ConfigError naming any other value."""
    if generator not in GENERATOR_VERSION:
        raise ConfigError(f"unknown synthetic generator {generator!r}; expected one of {GENERATORS}")
    return generator


def resolve_params(generator: str, params: SynthParams | None) -> SynthParams:
    """The parameters of a run: the version's frozen ones, or `params` (a v1 run refuses v2-only fields)."""
    check_generator(generator)
    if params is None:
        return VERSION_PARAMS[generator]
    if not isinstance(params, SynthParams):
        raise ConfigError(f"params = {params!r}: expected a SynthParams")
    if generator == "v1" and params.v2_only():
        raise ConfigError(f"generator 'v1' has no {', '.join(params.v2_only())} (a v2-only field); "
                          f"use generator='v2'")
    return params


def generator_of(meta: Mapping) -> str:
    """The generator version of a SYNTHETIC.json's contents; a folder written before versions has no
    "generator" key and is v1."""
    return check_generator(meta.get("generator", "v1"))


def check_args(name: str, dim: int, seed: int) -> None:
    if name not in TRAIN_TEST_SUBSETS:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {tuple(TRAIN_TEST_SUBSETS)}")
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ConfigError(f"dim = {dim!r}: expected a positive integer (features per stream)")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed = {seed!r}: expected a non-negative integer")


def description(name: str, dim: int, seed: int, max_videos: int | None = None, generator: str = DEFAULT_GENERATOR,
                params: SynthParams | None = None) -> str:
    """The SYNTHETIC.json description; Dataset.source is "semi-synthetic (<description>)".
    E.g. "emmil synth v2, dim=64, seed=0, thumos14"; parameters other than the version's frozen ones
    (a calibration grid point) add ", custom params"."""
    text = f"{GENERATOR_VERSION[check_generator(generator)]}, dim={dim}, seed={seed}, {name}"
    if max_videos is not None:
        text = f"{text}, max_videos={max_videos}"
    if params is not None and params != VERSION_PARAMS[generator]:
        text = f"{text}, custom params"
    return text


def _generate(name: str, dim: int, seed: int, max_videos: int | None, params: SynthParams,
              progress: Progress | None, generator: str) -> tuple[Dataset, WtalcAnnotations, tuple[int, ...]]:
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
        source=f"semi-synthetic ({description(name, dim, seed, max_videos, generator, params)})",
    )
    return dataset, annotations, keep


def make_synthetic(name: str, *, dim: int, seed: int, max_videos: int | None = None,
                   params: SynthParams | None = None, generator: str = DEFAULT_GENERATOR,
                   progress: Progress | None = None) -> Dataset:
    """The semi-synthetic dataset in memory (one (sum T_i, 2*dim) float32 array); see the module docstring.
    `max_videos` keeps at most that many videos of each of the train and test subsets, covering their classes.
    `generator` "v1" | "v2"; `params` None = that version's frozen parameters (V1_PARAMS / V2_PARAMS)."""
    params = resolve_params(generator, params)
    return _generate(name, dim, seed, max_videos, params, progress, generator)[0]


def action_coverage(dataset: Dataset, subset: str | None = None) -> float:
    """Mean over the videos of `subset` (default: the test subset) of the fraction of the video's
    duration inside the union of its ground-truth segments (clipped to [0, duration]; Ambiguous
    segments not counted). Comes from the real annotations, not from the features."""
    videos = dataset.in_subset(dataset.test_subset if subset is None else subset)
    fractions = []
    for v in videos:
        if v.duration <= 0:
            continue
        covered, end = 0.0, 0.0
        for s, e in sorted((max(0.0, s), min(float(v.duration), e)) for s, e in v.segments):
            s = max(s, end)
            if e > s:
                covered += e - s
                end = e
        fractions.append(covered / v.duration)
    return float(np.mean(fractions)) if fractions else float("nan")


def feature_statistics(dataset: Dataset) -> dict[str, float]:
    """Statistics to set beside public facts about I3D features (docs/synth.md):
    zero_fraction        entries exactly 0 (post-ReLU),
    near_zero_fraction   entries below 5% of the mean entry,
    between_within_ratio sum over entries of the variance of the video means, divided by the sum over
                         entries of the mean within-video variance (videos with >= 2 clips),
    action_coverage      `action_coverage` of the test subset (from the annotations)."""
    f = dataset.features
    total = float(f.mean(dtype=np.float64))
    means, within = [], []  # per video (>= 2 clips): (2*dim,) mean and variance of each entry
    for v in dataset.videos:
        if v.num_clips >= 2:
            x = dataset.features_of(v).astype(np.float64)
            means.append(x.mean(axis=0))
            within.append(x.var(axis=0))
    ratio = float(np.var(means, axis=0).sum() / np.mean(within, axis=0).sum()) if means else float("nan")
    return {
        "zero_fraction": float(np.count_nonzero(f == 0) / f.size),
        "near_zero_fraction": float(np.count_nonzero(f < 0.05 * total) / f.size),
        "between_within_ratio": ratio,
        "action_coverage": action_coverage(dataset),
    }


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
                    params: SynthParams | None = None, generator: str = DEFAULT_GENERATOR,
                    progress: Progress | None = None) -> Path:
    """Write the semi-synthetic dataset in the W-TALC layout to `out_dir` and return it.

    Everything is written into a hidden sibling folder `.<out>.partial-<pid>` that is renamed to
    `out_dir` only when complete (SYNTHETIC.json last), so a half-written dataset never carries the
    final name. `out_dir` may be absent, empty or an earlier synthetic output (replaced)."""
    out_dir = Path(out_dir)
    check_args(name, dim, seed)
    params = resolve_params(generator, params)
    check_target(out_dir)
    dataset, annotations, keep = _generate(name, dim, seed, max_videos, params, progress, generator)
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
            "description": description(name, dim, seed, max_videos, generator, params),
            "generator": generator,
            "params": dataclasses.asdict(params),
            "dataset": name,
            "dim": dim,
            "seed": seed,
            "max_videos": max_videos,
            "videos": len(dataset.videos),
            "clips": int(dataset.features.shape[0]),
        }
        (tmp / SYNTHETIC_MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n")
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
