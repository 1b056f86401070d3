"""Per-video layout: (T, D) files or rgb/ + flow/, plus an ActivityNet-style JSON."""

import json
import re

import numpy as np
import pytest

from data_fixtures import NAMES, default_features, write_per_video, write_wtalc
from emmil.data.loading import SHIPPED_THUMOS14_JSON, detect_layout, load_dataset_report
from emmil.data.per_video import load_per_video, read_json_database, read_per_video
from emmil.data.wtalc import load_wtalc
from emmil.errors import DataError


def test_joined_and_split_streams_give_the_wtalc_array(tmp_path):
    ref = load_wtalc(write_wtalc(tmp_path / "w"), "thumos14")
    d1, j1 = write_per_video(tmp_path / "joined")
    d2, j2 = write_per_video(tmp_path / "split", split_streams=True)
    for d, j in ((d1, j1), (d2, j2)):
        ds = load_per_video(d, "thumos14", j)
        assert np.array_equal(ds.features, ref.features)
        # "Validation"/"Test" in the JSON -> W-TALC subset names
        assert [v.subset for v in ds.videos] == ["validation", "validation", "test", "test"]
        assert [v.segments for v in ds.videos] == [v.segments for v in ref.videos]
        # no SYNTHETIC.json and no declaration: nothing says these are real features (issue 14.4)
        assert ds.classes == ("A", "B", "C") and ds.source == "user-provided features (unverified)"
    assert detect_layout("thumos14", d1) == "per-video" and detect_layout("thumos14", tmp_path / "w") == "wtalc"


def test_split_streams_of_different_widths(tmp_path):
    feats = [(np.zeros((t, 5), np.float32), np.ones((t, 3), np.float32)) for t in (15, 12, 10, 7)]
    d, j = write_per_video(tmp_path, split_streams=True, features=feats)
    ds = load_per_video(d, "thumos14", j)
    assert (ds.rgb_dim, ds.flow_dim) == (5, 3) and ds.features[:, 5:].min() == 1.0


def test_class_list_given_and_other_subset_counted(tmp_path):
    d, j = write_per_video(tmp_path)
    db = read_json_database(j)
    db["video_extra"] = {"subset": "testing", "duration": 3.0, "annotations": []}
    j.write_text(json.dumps({"database": db}))
    # 0.62 s per clip: ratios 15*0.62/10 = 0.93, 12*0.62/8 = 0.93, 10*0.62/6.4 = 0.96875, 7*0.62/5 = 0.868;
    # median 0.93, inside 1 +- 0.1
    rep = read_per_video(d, "thumos14", j, classes=("C", "B", "A", "D"), clip_seconds=0.62)
    assert rep.dataset.classes == ("C", "B", "A", "D") and rep.dataset.clip_seconds == 0.62
    assert rep.problems["videos_other_subset"] == ("video_extra (testing)",)


def test_shipped_actionformer_json_subsets_and_classes():
    db = read_json_database(SHIPPED_THUMOS14_JSON)
    # capitalised in the file; 200 Validation (training split) + 212 Test
    assert sorted({v["subset"] for v in db.values()}) == ["Test", "Validation"]
    assert sum(v["subset"] == "Validation" for v in db.values()) == 200
    assert len({a["label"] for v in db.values() for a in v["annotations"]}) == 20


def test_per_video_default_json_for_thumos14_is_the_shipped_one(tmp_path):
    np.save(tmp_path / f"{NAMES[0]}.npy", default_features()[0])
    # the shipped JSON lists 412 videos; the first missing file is named in the error
    with pytest.raises(DataError, match=r"\.npy: features of video 'video_.*' file not found"):
        load_dataset_report("thumos14", tmp_path, "per-video")


# ---- issue 14.4: Dataset.source by evidence ----------------------------------------------------------


def test_source_label_declared_real_unverified_or_synthetic(tmp_path):
    d, j = write_per_video(tmp_path)
    assert load_per_video(d, "thumos14", j).source == "user-provided features (unverified)"
    declared = load_dataset_report("thumos14", d, annotations=j, real_features=True).dataset
    assert declared.source == "real I3D features (per-video release, declared by the user)"
    assert not declared.is_synthetic
    # features converted from `emmil data synth` keep their marker: semi-synthetic, whatever the layout
    (d / "SYNTHETIC.json").write_text(json.dumps({"description": "emmil synth v2, dim=4, seed=0, thumos14"}))
    ds = load_per_video(d, "thumos14", j)
    assert ds.source == "semi-synthetic (emmil synth v2, dim=4, seed=0, thumos14)" and ds.is_synthetic
    # declaring them real contradicts the marker: refused, naming the marker file
    with pytest.raises(DataError, match=r"SYNTHETIC\.json: the features are declared real .* `emmil data synth`"):
        load_per_video(d, "thumos14", j, real_features=True)


def test_wtalc_source_label_unverified_unless_declared(tmp_path):
    root = write_wtalc(tmp_path)
    assert load_dataset_report("thumos14", root).dataset.source == "user-provided features (unverified)"
    rep = load_dataset_report("thumos14", root, real_features=True)
    assert rep.dataset.source == "real I3D features (W-TALC release, declared by the user)"
    assert rep.notes == ()  # the fixture's clip counts agree with its durations: no time-base note


# ---- issue 14.3: clip_seconds checked against the durations ---------------------------------------------


def test_wrong_clip_seconds_is_refused_by_name_with_the_implied_value(tmp_path):
    d, j = write_per_video(tmp_path)
    # 0.5 s: ratios 15*0.5/10 = 0.75, 12*0.5/8 = 0.75, 10*0.5/6.4 = 0.78125, 7*0.5/5 = 0.7 -> median 0.75;
    # implied: median of 10/15, 8/12, 6.4/10, 5/7 = median(0.6667, 0.6667, 0.64, 0.7143) = 0.6667
    with pytest.raises(DataError, match=r"annotations\.json \(features in .*\): field 'duration' contradicts "
                                        r"clip_seconds = 0\.5 s: .* median 0\.750 over 4 videos.*"
                                        r"--clip-seconds 0\.6667"):
        load_per_video(d, "thumos14", j, clip_seconds=0.5)
    # 0.64 * 1.2 = 0.768 (16/25 taken for 16/30 the other way round): median 0.96 * 1.2 = 1.152 > 1.1
    with pytest.raises(DataError, match=r"clip_seconds = 0\.768 s: .* median 1\.152"):
        load_per_video(d, "thumos14", j, clip_seconds=0.768)


def test_default_clip_seconds_is_checked_too(tmp_path):
    # features at 4/30 s per clip (ActionFormer's THUMOS14 stride) loaded with the 0.64 s default:
    # 75 clips x 0.64 = 48 s for a 10 s video, ratio 4.8 for every video
    clips = [75, 60, 48, 37]
    d, j = write_per_video(tmp_path, features=[np.zeros((t, 8), np.float32) for t in clips])
    with pytest.raises(DataError, match=r"clip_seconds = 0\.64 s \(the default, 16/25 s\): .* median 4\.8"):
        load_per_video(d, "thumos14", j)
    # median of 10/75, 8/60, 6.4/48, 5/37 = median(0.13333, 0.13333, 0.13333, 0.13514) = 0.13333
    ds = load_per_video(d, "thumos14", j, clip_seconds=4 / 30)
    assert ds.clip_seconds == pytest.approx(0.133333, abs=1e-6)


def test_single_video_off_is_kept_with_a_note(tmp_path):
    # video_validation_0000002 (8 s) with 40 clips = 25.6 s: off by 17.6 s > 0.1*8 + 2*0.64 = 2.08 s;
    # the median (0.96, 0.96, 1.0, 3.2 -> 0.98) is fine, so the load goes on and the note names it
    f = default_features()
    f[1] = np.zeros((40, 8), np.float32)
    d, j = write_per_video(tmp_path, features=f)
    rep = read_per_video(d, "thumos14", j)
    (note,) = [n for n in rep.notes if n.startswith("time base")]
    assert "1 of 4 videos" in note and "video_validation_0000002 (40 clips = 25.6 s, duration 8 s)" in note


@pytest.mark.parametrize("bad", [0, -0.64, float("nan"), float("inf"), True, "0.64"])
def test_clip_seconds_must_be_a_positive_number(tmp_path, bad):
    d, j = write_per_video(tmp_path)
    with pytest.raises(DataError, match=r"clip_seconds \(--clip-seconds\) is .*, expected a positive number"):
        load_per_video(d, "thumos14", j, clip_seconds=bad)


def test_wtalc_durations_checked_against_the_fixed_time_base(tmp_path):
    # every W-TALC video 3x longer in clips than its duration allows: median ratio 0.96*3 = 2.88
    root = write_wtalc(tmp_path, features=default_features([t * 3 for t in (15, 12, 10, 7)]))
    # a warning in this layout (its time base is the release's), not a refusal: see loading._checked_wtalc
    notes = " ".join(load_dataset_report("thumos14", root).notes)
    assert re.search(r"WARNING: .*W-TALC features vs duration\.npy\): field 'duration' contradicts "
                     r"clip_seconds = 0\.64 s .* median 2\.880 .* time base is fixed", notes), notes
    with pytest.raises(DataError, match=r"clip_seconds=0\.5: the W-TALC layout has a fixed 16/25 s time base"):
        load_dataset_report("thumos14", write_wtalc(tmp_path / "ok"), clip_seconds=0.5)
