"""Per-video layout: (T, D) files or rgb/ + flow/, plus an ActivityNet-style JSON."""

import json

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
        assert ds.classes == ("A", "B", "C") and ds.source == "real I3D features (per-video release)"
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
    rep = read_per_video(d, "thumos14", j, classes=("C", "B", "A", "D"), clip_seconds=0.5)
    assert rep.dataset.classes == ("C", "B", "A", "D") and rep.dataset.clip_seconds == 0.5
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
