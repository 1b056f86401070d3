"""W-TALC layout: the hand-made folder of data_fixtures.py and the real shipped annotations."""


import numpy as np
import pytest

from data_fixtures import CLIPS, NAMES, object_array, write_wtalc
from emmil.data.loading import load_dataset, load_dataset_report, shipped_annotation_dir
from emmil.data.wtalc import load_wtalc, read_annotations, read_wtalc


def test_small_folder_loads_into_one_array(tmp_path):
    rep = read_wtalc(write_wtalc(tmp_path), "thumos14")
    ds = rep.dataset
    # 15 + 12 + 10 + 7 = 44 clips, width 8 -> RGB 4 + flow 4
    assert ds.features.shape == (44, 8) and ds.features.dtype == np.float32 and ds.features.flags.c_contiguous
    assert (ds.rgb_dim, ds.flow_dim) == (4, 4)
    assert [(v.start, v.num_clips) for v in ds.videos] == [(0, 15), (15, 12), (27, 10), (37, 7)]
    # video 2 (video_test_0000001), clip 3 -> 2 + 3/100
    assert ds.features_of(ds.videos[2])[3, 0] == pytest.approx(2.03)
    assert ds.classes == ("A", "B", "C") and ds.source == "user-provided features (unverified)"
    # (N, 1) durations flattened; [4, 7.5] past 6.4 clipped to [4, 6.4]
    assert ds.videos[2].duration == 6.4 and ds.videos[2].segments == ((0.0, 2.0), (4.0, 6.4))
    # empty labels_all -> segment labels (B), counted
    assert ds.videos[3].labels == ("B",)
    assert rep.counts() == {"segments_clipped_to_duration": 1, "labels_all_empty": 1}
    assert rep.notes == ()


def test_labels_all_differing_gives_union_and_is_counted(tmp_path):
    labels_all = object_array([["A", "C"], ["C"], ["A"], ["B"]])  # video 0: segments A,B; labels_all A,C
    rep = read_wtalc(write_wtalc(tmp_path, labels_all=labels_all), "thumos14")
    assert rep.dataset.videos[0].labels == ("A", "B", "C")
    assert rep.problems["labels_all_differs"] == ("video_validation_0000001",)


def test_ambiguous_file_parsed_and_unknown_video_counted(tmp_path):
    amb = "video_test_0000001  1.0 2.5\nvideo_test_0000001  3 4\n\nvideo_test_0001292  78.4 113.2\n"
    ds_rep = read_wtalc(write_wtalc(tmp_path, ambiguous=amb), "thumos14")
    assert ds_rep.dataset.ambiguous == {"video_test_0000001": ((1.0, 2.5), (3.0, 4.0))}
    assert ds_rep.problems["ambiguous_unknown_video"] == ("video_test_0001292 78.4 113.2",)


def test_min_clips_drops_and_counts(tmp_path):
    # clips 15, 12, 10, 7: min_clips=11 drops videos 2 and 3
    rep = read_wtalc(write_wtalc(tmp_path), "thumos14", min_clips=11)
    assert [v.name for v in rep.dataset.videos] == NAMES[:2]
    assert rep.problems["videos_dropped_min_clips"] == ("video_test_0000001 (10 clips)", "video_test_0000002 (7 clips)")
    assert rep.dataset.features.shape == (27, 8)


def test_float64_converted_and_counted_bytes_or_str_names(tmp_path):
    feats = [np.ones((t, 8), np.float64) for t in CLIPS]
    root = write_wtalc(tmp_path, features=feats, videoname=np.array(NAMES), duration=np.array([10.0, 8.0, 6.4, 5.0]))
    rep = read_wtalc(root, "thumos14")
    assert rep.dataset.features.dtype == np.float32 and len(rep.problems["features_float64_converted"]) == 4
    assert rep.dataset.videos[0].name == NAMES[0]


def test_small_stream_width_and_anet_prefix_and_synthetic_source(tmp_path):
    feats = [np.zeros((t, 6), np.float32) for t in CLIPS]  # synthetic width 3 + 3
    subset = np.array([b"training", b"training", b"validation", b"validation"])
    root = write_wtalc(tmp_path, prefix="ActivityNet1.2", features=feats, subset=subset,
                       synthetic={"description": "EM-MIL generator v1, seed 0", "seed": 0})
    ds = load_wtalc(root, "anet12")
    assert (ds.rgb_dim, ds.flow_dim) == (3, 3)
    assert ds.source == "semi-synthetic (EM-MIL generator v1, seed 0)" and ds.is_synthetic
    assert [v.subset for v in ds.in_subset(ds.test_subset)] == ["validation", "validation"]


def test_missing_annotation_folder_falls_back_to_shipped(tmp_path):
    ann = read_annotations(shipped_annotation_dir("thumos14"), "thumos14")
    feats = [np.zeros((1, 2), np.float32) for _ in ann.videos]  # 412 one-clip videos, width 1 + 1
    write_wtalc(tmp_path, features=feats, write_annotations=False)
    rep = load_dataset_report("thumos14", tmp_path)
    assert rep.layout == "wtalc" and len(rep.dataset.videos) == 412
    assert "using the copy shipped in the package" in rep.notes[0]
    assert load_dataset("thumos14", tmp_path, "wtalc").features.shape == (412, 2)


def test_real_thumos14_annotations_counts():
    ann = read_annotations(shipped_annotation_dir("thumos14"), "thumos14")
    assert len(ann.videos) == 412 and len(ann.classes) == 20
    assert sum(v.subset == "validation" for v in ann.videos) == 200
    counts = {k: len(v) for k, v in ann.problems.items()}
    # DESIGN.md section 4: 30 segments past the duration, labels_all differs for 28 videos
    # (27 differing + video_test_0000270 empty), video_test_0001292's 3 Ambiguous lines not in the set
    assert counts == {"segments_clipped_to_duration": 30, "segments_entirely_past_duration": 30,
                      "labels_all_differs": 27, "labels_all_empty": 1, "ambiguous_unknown_video": 3}
    v270 = next(v for v in ann.videos if v.name == "video_test_0000270")
    assert v270.labels == ("HammerThrow",) and max(e for _, e in v270.segments) == pytest.approx(176.2453514)
    # 99 lines in Ambiguous_test.txt, 3 of them for video_test_0001292 -> 96 segments in 36 videos
    assert "video_test_0001292" not in ann.ambiguous and len(ann.ambiguous) == 36
    assert sum(len(s) for s in ann.ambiguous.values()) == 96


def test_real_anet12_annotations_counts():
    ann = read_annotations(shipped_annotation_dir("anet12"), "anet12")
    assert (len(ann.videos), len(ann.classes)) == (7202, 100)
    assert sum(v.subset == "training" for v in ann.videos) == 4819
    assert {k: len(v) for k, v in ann.problems.items()} == {"segments_clipped_to_duration": 185}
    assert ann.ambiguous == {}
