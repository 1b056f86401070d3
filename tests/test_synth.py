"""The semi-synthetic generator (emmil/data/synth.py) and `emmil data synth`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest

from emmil.data import synth
from emmil.data.dataset import seconds_to_clip
from emmil.data.safe_pickle import load_npy
from emmil.data.synth import (
    V1_PARAMS,
    V2_PARAMS,
    SynthParams,
    action_coverage,
    action_profile,
    context_profile,
    feature_statistics,
    generator_of,
    make_prototypes,
    make_synthetic,
    num_clips,
    write_synthetic,
)
from emmil.data.wtalc import load_wtalc
from emmil.errors import ConfigError, DataError
from harness.cli import main as cli_main

DIM = 32  # per stream; small so the full THUMOS14 set is generated in < 1 s
FEATURES = "Thumos14reduced-I3D-JOINTFeatures.npy"
# sha256 of make_synthetic("thumos14", dim=16, seed=0, max_videos=6, generator="v1").features.tobytes(),
# computed with the generator as it was before versions existed (v1 must stay byte-identical), and of the
# feature file write_synthetic writes for the same arguments (numpy's pickle framing of float arrays).
V1_FEATURES_SHA256 = "5e30dcc2f5a90318d69f38a00248979f351322cf6001f37e20400bdf39df9baa"
V1_FILE_SHA256 = "ee16d91b12f2813ffe9d28c84e8dc23b8ef3d9c4ff5edf12063851ae7ebc36aa"


@pytest.fixture(scope="module")
def thumos():
    # The phenomena tests below were measured on v1 (the numbers in their comments).
    return make_synthetic("thumos14", dim=DIM, seed=0, generator="v1")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- time grid and shapes -------------------------------------------------------------------------

def test_num_clips_on_the_064_s_grid():
    # 0.1 s -> round(0.156) = 0 -> at least 1 clip; 6.4 s -> exactly 10; 169.794 s -> round(265.30) = 265
    assert num_clips(0.1) == 1
    assert num_clips(6.4) == 10
    assert num_clips(169.794) == 265


def test_full_thumos_shapes_and_rows(thumos):
    assert len(thumos.videos) == 412 and len(thumos.classes) == 20
    assert thumos.features.shape == (137118, 2 * DIM) and thumos.features.dtype == np.float32
    assert (thumos.rgb_dim, thumos.flow_dim) == (DIM, DIM)
    start = 0
    for v in thumos.videos:
        assert v.start == start and v.num_clips == num_clips(v.duration)
        start += v.num_clips
    assert thumos.features.min() >= 0.0  # post-ReLU like I3D
    assert 0.2 < float((thumos.features == 0).mean()) < 0.5  # ~34% zeros at the default parameters
    assert thumos.source == "semi-synthetic (emmil synth v1, dim=32, seed=0, thumos14)"
    assert thumos.is_synthetic


# --- profiles (hand-worked) -----------------------------------------------------------------------

def test_action_profile_peaks_in_the_middle():
    p = SynthParams()  # beta = 0.25, p = 2
    # segment = clips [0, 4): u = 1/8, 3/8, 5/8, 7/8; sin^2(pi/8) = 0.1464, sin^2(3pi/8) = 0.8536
    # m = 0.25 + 0.75 * sin^2 = 0.3598, 0.8902, 0.8902, 0.3598; clip 4 lies outside -> 0
    m = action_profile((0.0, 4 * 0.64), 5, p)
    np.testing.assert_allclose(m, [0.35983, 0.89017, 0.89017, 0.35983, 0.0], atol=1e-5)


def test_flat_extent_profile_for_the_generic_fill():
    # n(t) = overlap only: whole clips 1, half a clip 0.5; n - m >= 0 is what the peaked m leaves out
    p = SynthParams()
    np.testing.assert_allclose(action_profile((0.0, 4 * 0.64), 5, p, flat=True), [1, 1, 1, 1, 0], atol=1e-12)
    np.testing.assert_allclose(action_profile((0.0, 0.32), 2, p, flat=True), [0.5, 0.0], atol=1e-12)
    assert (action_profile((0.0, 9 * 0.64), 9, p, flat=True) >= action_profile((0.0, 9 * 0.64), 9, p)).all()


def test_action_profile_partial_clip_and_edge_cases():
    p = SynthParams()
    # half a clip [0, 0.32 s]: overlap 0.5, u = 0.5 -> sin^2 = 1 -> m = 0.5 * 1 = 0.5
    np.testing.assert_allclose(action_profile((0.0, 0.32), 2, p), [0.5, 0.0], atol=1e-9)
    # zero-length segment (10 exist in ActivityNet1.2) and a segment past the video's end: no signal
    assert action_profile((1.0, 1.0), 3, p).tolist() == [0.0, 0.0, 0.0]
    assert action_profile((10.0, 20.0), 3, p).tolist() == [0.0, 0.0, 0.0]


def test_context_profile_decays_away_from_the_action():
    p = SynthParams()  # near 1.0, far 0.3, decay 8 s
    # no segment of the class: far everywhere
    assert context_profile([], 2, p).tolist() == [0.3, 0.3]
    # segment [0, 0.64]: clip 0 centre 0.32 s is inside -> 1.0; clip 1 centre 0.96 s, 0.32 s away:
    # 0.3 + 0.7 * exp(-0.32 / 8) = 0.3 + 0.7 * 0.960789 = 0.972553
    np.testing.assert_allclose(context_profile([(0.0, 0.64)], 2, p), [1.0, 0.972553], atol=1e-6)


# --- the phenomena the model must contain (statistics over the full THUMOS14 set) ------------------

def _projections(ds, directions: np.ndarray, cols: slice) -> np.ndarray:
    """(N, C) projections of one stream's columns on unit class directions (C, dim)."""
    return ds.features[:, cols] @ _unit(directions[:, cols]).T


def test_actions_are_detectable_and_weak_at_boundaries(thumos):
    protos = make_prototypes(len(thumos.classes), DIM, 0, SynthParams())
    flow = slice(DIM, 2 * DIM)
    act = _projections(thumos, protos.action, flow)  # (N, 20) flow projection on a_c
    inside, outside, middle, boundary = [], [], [], []
    for v in thumos.videos:
        centre = (np.arange(v.num_clips) + 0.5) * 0.64
        in_any = np.zeros(v.num_clips, bool)
        for (s, e) in v.segments:
            in_any |= (centre >= s) & (centre < e)
        for (s, e), lab in zip(v.segments, v.segment_labels):
            k = thumos.class_index[lab]
            a = v.start + int(math.ceil(seconds_to_clip(s)))
            b = v.start + int(math.floor(seconds_to_clip(e))) - 1  # last clip fully inside
            if b < v.start + v.num_clips:
                if b >= a:
                    inside.append(act[a : b + 1, k].mean())
                if b - a >= 8:  # long enough to have a middle
                    middle.append(act[(a + b) // 2, k])
                    boundary += [act[a, k], act[b, k]]
            outside.append(act[v.start : v.start + v.num_clips][~in_any, k].mean() if (~in_any).any() else np.nan)
    # measured at seed 0: inside ~1.8, outside ~0.6, middle ~2.3, boundary ~0.9 (noise std ~1.1)
    assert np.nanmean(inside) > np.nanmean(outside) + 0.8
    assert np.mean(middle) > np.mean(boundary) + 0.8
    assert np.mean(boundary) > np.nanmean(outside)  # boundaries weak, but not absent


def test_context_is_class_specific_and_stronger_in_rgb(thumos):
    protos = make_prototypes(len(thumos.classes), DIM, 0, SynthParams())
    rgb, flow = slice(0, DIM), slice(DIM, 2 * DIM)
    ctx = {"rgb": _projections(thumos, protos.context, rgb), "flow": _projections(thumos, protos.context, flow)}
    act = _projections(thumos, protos.action, flow)
    near = np.zeros((len(thumos.features), len(thumos.classes)), bool)  # within 3 s outside any action
    absent = np.zeros_like(near)  # clips of videos without the class
    for v in thumos.videos:
        rows = slice(v.start, v.start + v.num_clips)
        centre = (np.arange(v.num_clips) + 0.5) * 0.64
        in_any = np.zeros(v.num_clips, bool)
        for (s, e) in v.segments:
            in_any |= (centre >= s) & (centre < e)
        for c in thumos.classes:
            k = thumos.class_index[c]
            if c not in v.labels:
                absent[rows, k] = True
                continue
            for (s, e), lab in zip(v.segments, v.segment_labels):
                if lab == c:
                    near[rows, k] |= (centre >= s - 3) & (centre < e + 3) & ~in_any
    gap = {s: ctx[s][near].mean() - ctx[s][absent].mean() for s in ctx}
    # measured at seed 0: rgb gap ~1.19, flow gap ~0.53 (weights 1.0 vs 0.3 before the ReLU)
    assert gap["rgb"] > 0.8
    assert gap["rgb"] > 1.5 * gap["flow"] > 0
    # context clips are not the action: their flow action projection is at the background level (~0.64 vs 0.73)
    assert abs(act[near].mean() - act[absent].mean()) < 0.3


# --- determinism, subsets, files ------------------------------------------------------------------

def test_subset_is_class_covering_and_rows_match_the_full_set(thumos):
    sub = make_synthetic("thumos14", dim=DIM, seed=0, max_videos=20, generator="v1")
    for subset in ("validation", "test"):
        vids = sub.in_subset(subset)
        assert len(vids) == 20
        assert set().union(*(v.labels for v in vids)) == set(sub.classes)
    full = {v.name: v for v in thumos.videos}
    for v in sub.videos:  # a video's features do not depend on which other videos are generated
        np.testing.assert_array_equal(sub.features_of(v), thumos.features_of(full[v.name]))
    again = make_synthetic("thumos14", dim=DIM, seed=0, max_videos=20, generator="v1")
    assert [v.name for v in again.videos] == [v.name for v in sub.videos]


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    a = write_synthetic("thumos14", tmp_path / "a", dim=8, seed=5, max_videos=3)
    b = write_synthetic("thumos14", tmp_path / "b", dim=8, seed=5, max_videos=3)
    c = write_synthetic("thumos14", tmp_path / "c", dim=8, seed=6, max_videos=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 12  # features, SYNTHETIC.json, 10 annotation files
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / FEATURES).read_bytes() != (c / FEATURES).read_bytes()


def test_round_trip_through_the_real_loader(tmp_path):
    out = write_synthetic("thumos14", tmp_path / "d", dim=8, seed=3, max_videos=4)  # default: v2
    mem = make_synthetic("thumos14", dim=8, seed=3, max_videos=4)
    loaded = load_wtalc(out, "thumos14")
    assert loaded.source == mem.source == "semi-synthetic (emmil synth v2, dim=8, seed=3, thumos14, max_videos=4)"
    assert [(v.name, v.subset, v.num_clips, v.segments, v.labels) for v in loaded.videos] == [
        (v.name, v.subset, v.num_clips, v.segments, v.labels) for v in mem.videos
    ]
    np.testing.assert_array_equal(loaded.features, mem.features)
    assert dict(loaded.ambiguous) == dict(mem.ambiguous)
    assert len(loaded.videos) == 8 and loaded.classes == mem.classes
    # the annotation subset is consistent: every per-video array has 8 entries
    assert len(load_npy(out / "Thumos14reduced-Annotations" / "segments.npy", kind="segments")) == 8
    meta = json.loads((out / "SYNTHETIC.json").read_text())
    assert meta["generator"] == "v2" and meta["description"].startswith("emmil synth v2")
    assert meta["params"] == dataclasses.asdict(V2_PARAMS)
    assert (meta["dim"], meta["seed"], meta["max_videos"], meta["videos"]) == (8, 3, 4, 8)


def test_activitynet_subset_round_trip(tmp_path):
    out = write_synthetic("anet12", tmp_path / "anet", dim=4, seed=0, max_videos=2)
    loaded = load_wtalc(out, "anet12")
    assert [v.subset for v in loaded.videos].count("training") == 2
    assert [v.subset for v in loaded.videos].count("validation") == 2
    assert loaded.features.shape[1] == 8


def test_a_failed_write_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    def boom(path, arrays):
        path.write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(synth, "write_object_npy", boom)
    with pytest.raises(OSError):
        write_synthetic("thumos14", tmp_path / "x", dim=4, seed=0, max_videos=1)
    assert list(tmp_path.iterdir()) == []  # neither x nor its .partial folder


# --- generator versions ----------------------------------------------------------------------------

def test_v1_is_byte_identical_to_the_pinned_digest(tmp_path):
    ds = make_synthetic("thumos14", dim=16, seed=0, max_videos=6, generator="v1")
    assert ds.features.shape == (4767, 32)
    assert hashlib.sha256(ds.features.tobytes()).hexdigest() == V1_FEATURES_SHA256
    out = write_synthetic("thumos14", tmp_path / "v1", dim=16, seed=0, max_videos=6, generator="v1")
    assert hashlib.sha256((out / FEATURES).read_bytes()).hexdigest() == V1_FILE_SHA256
    # SynthParams() is v1; passing it explicitly is the same generator
    again = make_synthetic("thumos14", dim=16, seed=0, max_videos=6, generator="v1", params=SynthParams())
    np.testing.assert_array_equal(again.features, ds.features)
    assert V1_PARAMS == SynthParams() and not V1_PARAMS.v2_only()


def test_v2_is_deterministic_and_differs_from_v1():
    a = make_synthetic("thumos14", dim=16, seed=0, max_videos=6)  # the default generator is v2
    b = make_synthetic("thumos14", dim=16, seed=0, max_videos=6, generator="v2")
    v1 = make_synthetic("thumos14", dim=16, seed=0, max_videos=6, generator="v1")
    assert a.features.tobytes() == b.features.tobytes()
    assert a.features.shape == v1.features.shape and not np.array_equal(a.features, v1.features)
    assert a.source == "semi-synthetic (emmil synth v2, dim=16, seed=0, thumos14, max_videos=6)"
    assert v1.source == "semi-synthetic (emmil synth v1, dim=16, seed=0, thumos14, max_videos=6)"
    # a calibration grid point (other parameters) is labelled as such
    custom = make_synthetic("thumos14", dim=4, seed=0, max_videos=1, params=dataclasses.replace(V2_PARAMS,
                            action_amplitude=V2_PARAMS.action_amplitude + 1))
    assert custom.source == "semi-synthetic (emmil synth v2, dim=4, seed=0, thumos14, max_videos=1, custom params)"


def test_v2_with_the_appearance_off_is_v1():
    # the v2-only fields draw from their own streams (or nothing): off, every other draw is v1's
    off = dataclasses.replace(V2_PARAMS, appearance_amplitude=0.0, generic_fill=0.0)
    v2_off = make_synthetic("thumos14", dim=8, seed=1, max_videos=3, generator="v2", params=off)
    v1_same = make_synthetic("thumos14", dim=8, seed=1, max_videos=3, generator="v1", params=off)
    np.testing.assert_array_equal(v2_off.features, v1_same.features)


def test_generic_fill_puts_generic_motion_at_the_boundaries():
    # One long THUMOS14 segment, v2 without appearance: with G = 1 and beta = 0 a boundary clip carries
    # the generic direction g (not the class), the middle clip the class direction.
    params = SynthParams(action_amplitude=8.0, action_boundary_level=0.0, generic_fill=1.0, noise_std=0.0,
                         context_amplitude=0.0, instance_amplitude_std=0.0)
    protos = make_prototypes(20, 16, 0, params)
    assert protos.generic is not None and protos.generic.shape == (32,)
    assert make_prototypes(20, 16, 0, dataclasses.replace(params, generic_fill=0.0)).generic is None
    ds = make_synthetic("thumos14", dim=16, seed=0, max_videos=6, params=params)
    v, (s, e), label = next((v, seg, lab) for v in ds.videos for seg, lab in zip(v.segments, v.segment_labels)
                            if seg[1] - seg[0] > 10 * 0.64)  # video_validation_0000266, 12.4-21.8 s
    first, middle = int(math.ceil(seconds_to_clip(s))), int(seconds_to_clip((s + e) / 2))
    x = ds.features_of(v)
    flow = slice(16, 32)
    a, g = _unit(protos.action[ds.class_index[label], flow]), _unit(protos.generic[flow])
    # boundary: sin(pi u)^2 ~ 0 -> mostly g; middle: sin ~ 1 -> mostly the class direction
    assert x[first, flow] @ g - x[first, flow] @ a > 1.0
    assert x[middle, flow] @ a > x[first, flow] @ a + 2.0


def test_v2_respects_the_public_facts_about_i3d_features():
    # full THUMOS14 at dim 32: post-ReLU with many zeros; videos differ more than clips within a video
    v2 = feature_statistics(make_synthetic("thumos14", dim=DIM, seed=0))
    v1 = feature_statistics(make_synthetic("thumos14", dim=DIM, seed=0, generator="v1"))
    assert 0.25 < v2["zero_fraction"] < 0.5  # measured 0.405 (v1 0.343)
    assert v2["between_within_ratio"] > 1.0  # measured 2.8 at dim 32 (v1 0.50: v1 does not respect it)
    assert v1["between_within_ratio"] < 1.0
    # actions cover 29.4% of a THUMOS14 test video on average (the real annotations: both versions)
    assert v2["action_coverage"] == v1["action_coverage"] == pytest.approx(0.2945, abs=5e-4)


def test_action_coverage_merges_overlaps_and_clips_to_the_duration(thumos):
    v = thumos.videos[0]
    one = dataclasses.replace(thumos, videos=(dataclasses.replace(
        v, subset=thumos.test_subset, duration=10.0,
        segments=((1.0, 3.0), (2.0, 4.0), (9.0, 12.0)), segment_labels=(v.labels[0],) * 3),))
    # union [1, 4] + [9, 10] (clipped) = 4 s of 10 s
    assert action_coverage(one) == pytest.approx(0.4)


def test_synthetic_json_records_the_version_and_old_folders_read_as_v1(tmp_path):
    out = write_synthetic("thumos14", tmp_path / "v1", dim=4, seed=0, max_videos=1, generator="v1")
    meta = json.loads((out / "SYNTHETIC.json").read_text())
    assert meta["generator"] == "v1" and meta["description"] == "emmil synth v1, dim=4, seed=0, thumos14, max_videos=1"
    assert generator_of(meta) == "v1"
    # a folder written before versions existed: no "generator" key -> v1, and the loader still labels it
    del meta["generator"]
    (out / "SYNTHETIC.json").write_text(json.dumps(meta))
    assert generator_of(meta) == "v1"
    source = load_wtalc(out, "thumos14").source
    assert source == "semi-synthetic (emmil synth v1, dim=4, seed=0, thumos14, max_videos=1)"
    assert generator_of({"generator": "v2"}) == "v2"


def test_unknown_generator_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="unknown synthetic generator 'v3'"):
        make_synthetic("thumos14", dim=4, seed=0, max_videos=1, generator="v3")
    with pytest.raises(ConfigError, match="unknown synthetic generator 'V2'"):
        write_synthetic("thumos14", tmp_path / "x", dim=4, seed=0, max_videos=1, generator="V2")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="unknown synthetic generator 'v0'"):
        generator_of({"generator": "v0"})
    # v1 has no appearance term: a v2-only field switched on is refused, not silently mislabelled
    with pytest.raises(ConfigError, match="generator 'v1' has no .*appearance_amplitude"):
        make_synthetic("thumos14", dim=4, seed=0, max_videos=1, generator="v1",
                       params=SynthParams(appearance_amplitude=1.0))
    with pytest.raises(ConfigError, match="generator 'v1' has no generic_fill"):
        make_synthetic("thumos14", dim=4, seed=0, max_videos=1, generator="v1", params=SynthParams(generic_fill=0.5))


def test_invalid_arguments_raise_config_errors():
    with pytest.raises(ConfigError, match="dim = 0"):
        make_synthetic("thumos14", dim=0, seed=0)
    with pytest.raises(ConfigError, match="seed = -1"):
        make_synthetic("thumos14", dim=4, seed=-1)
    with pytest.raises(ConfigError, match="unknown dataset 'thumos'"):
        make_synthetic("thumos", dim=4, seed=0)
    with pytest.raises(ConfigError, match="max_videos = 0"):
        make_synthetic("thumos14", dim=4, seed=0, max_videos=0)
    with pytest.raises(ConfigError, match="SynthParams.noise_std"):
        SynthParams(noise_std=-1.0)
    with pytest.raises(ConfigError, match="SynthParams.noise_correlation"):
        SynthParams(noise_correlation=1.0)


# --- command line ---------------------------------------------------------------------------------

def test_cli_writes_then_overwrites_its_own_output(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["data", "synth", "--dataset", "thumos14", "--out", str(out), "--dim", "4", "--max-videos", "2",
            "--no-progress"]
    assert cli_main(args) == 0
    assert "wrote" in capsys.readouterr().out
    first = (out / FEATURES).read_bytes()
    assert cli_main(args[:-3] + ["--seed", "1", "--max-videos", "2"]) == 0  # replaces the earlier output
    assert (out / FEATURES).read_bytes() != first
    assert json.loads((out / "SYNTHETIC.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no partial/old folder left


def test_cli_generator_option(tmp_path, capsys):
    base = ["data", "synth", "--dataset", "thumos14", "--dim", "4", "--max-videos", "1", "--no-progress"]
    assert cli_main(base + ["--out", str(tmp_path / "default")]) == 0  # default v2
    assert "generator v2" in capsys.readouterr().out
    assert json.loads((tmp_path / "default" / "SYNTHETIC.json").read_text())["generator"] == "v2"
    assert cli_main(base + ["--out", str(tmp_path / "old"), "--generator", "v1"]) == 0
    meta = json.loads((tmp_path / "old" / "SYNTHETIC.json").read_text())
    assert meta["generator"] == "v1" and meta["description"].startswith("emmil synth v1,")
    assert cli_main(base + ["--out", str(tmp_path / "bad"), "--generator", "v9"]) == 2
    assert "unknown synthetic generator 'v9'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_cli_help_documents_the_generator(capsys):
    with pytest.raises(SystemExit):
        cli_main(["data", "synth", "--help"])
    text = capsys.readouterr().out
    assert "--generator" in text and "default v2" in text


def test_cli_refuses_a_foreign_non_empty_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code = cli_main(["data", "synth", "--dataset", "thumos14", "--out", str(tmp_path), "--preset", "quick"])
    err = capsys.readouterr().err
    assert code == 2 and "refusing to overwrite" in err and str(tmp_path) in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_refuses_synth_output_with_extra_files_and_bad_values(tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / "SYNTHETIC.json").write_text("{}")
    (out / "results.csv").write_text("x")
    assert cli_main(["data", "synth", "--dataset", "anet12", "--out", str(out), "--dim", "4"]) == 2
    assert "results.csv" in capsys.readouterr().err
    assert cli_main(["data", "synth", "--dataset", "anet12", "--out", str(tmp_path / "n"), "--dim", "0"]) == 2
    assert "dim = 0" in capsys.readouterr().err
    assert cli_main(["data", "synth", "--dataset", "anet12", "--out", str(tmp_path / "n"),
                     "--max-videos", "0"]) == 2
    assert "--max-videos 0" in capsys.readouterr().err
    assert not (tmp_path / "n").exists()


def test_data_error_for_a_file_as_target(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        write_synthetic("thumos14", f, dim=4, seed=0, max_videos=1)
