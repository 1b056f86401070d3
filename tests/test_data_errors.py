"""The bad-input corpus of the data layer: each case raises the right error class with a message
naming the file, video and field, through the API and through `emmil data info` (exit 2, message
on stderr, no traceback)."""

import json
import pickle

import numpy as np
import pytest

from data_fixtures import CLIPS, NAMES, default_features, object_array, write_per_video, write_wtalc
from emmil.data.loading import load_dataset_report
from emmil.errors import DataError, UnsafePickleError
from harness.cli import main

ANN = "Thumos14reduced-Annotations"
FEAT = "Thumos14reduced-I3D-JOINTFeatures.npy"


def _feats(**changes):
    """The default features with video index -> replacement array."""
    f = default_features()
    for i, arr in changes.items():
        f[int(i[1:])] = arr
    return f


def _nan():
    f = default_features()
    f[1][3, 0] = np.nan  # video 1 = video_validation_0000002, clip 3, column 0
    return f


def _truncated(root):
    data = (root / FEAT).read_bytes()
    (root / FEAT).write_bytes(data[: len(data) - 40])


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


def _poisoned(root):
    with open(root / ANN / "labels.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": (4,)})
        fh.write(pickle.dumps(object_array([[_Marker(root / "pwned")]] * 4), protocol=3))


def _split_mismatch(tmp):
    feats = [(f[:, :4], f[:, 4:]) for f in default_features()]
    feats[2] = (feats[2][0], feats[2][1][:9])  # video_test_0000001: RGB 10 clips, flow 9
    return write_per_video(tmp, split_streams=True, features=feats)


def _json_missing_field(tmp):
    d, j = write_per_video(tmp)
    db = json.loads(j.read_text())["database"]
    del db[NAMES[1]]["duration"]
    j.write_text(json.dumps({"database": db}))
    return d, j


def _json_edit(edit):
    """Per-video folder under <tmp>/data whose JSON database goes through `edit(db)` first."""

    def build(tmp):
        d, j = write_per_video(tmp / "data")
        db = json.loads(j.read_text())["database"]
        edit(db)
        j.write_text(json.dumps({"database": db}))
        return d, j

    return build


def _json_text(edit):
    """Per-video folder whose JSON text goes through `edit(text)` (for what json.dumps cannot write)."""

    def build(tmp):
        d, j = write_per_video(tmp / "data")
        j.write_text(edit(j.read_text()))
        return d, j

    return build


def _ann(video: int, field: str, value):
    """Edit: annotation 0 of video NAMES[video] gets field = value."""
    return lambda db: db[NAMES[video]]["annotations"][0].__setitem__(field, value)


def _rename(new_name: str):
    """Edit: video NAMES[0] renamed to new_name (its annotations kept)."""

    def edit(db):
        db[new_name] = db.pop(NAMES[0])

    return edit


def _escaping(name_of):
    """A video whose name points outside <tmp>/data, with a readable .npy there (it must stay unread)."""

    def build(tmp):
        outside = tmp / "outside"
        outside.mkdir()
        np.save(outside / "x.npy", default_features()[0])
        return _json_edit(_rename(name_of(tmp)))(tmp)

    return build


def _duplicate_video(text: str) -> str:
    # the first video listed twice: json's default would keep only the second one's annotations
    first = text.index(f'"{NAMES[0]}"')
    entry_end = text.index(f'"{NAMES[1]}"')
    return text[:entry_end] + text[first:entry_end] + text[entry_end:]


def _duplicate_field(text: str) -> str:
    i = text.index(f'"{NAMES[3]}": {{') + len(f'"{NAMES[3]}": {{')
    return text[:i] + '"annotations": [], ' + text[i:]


def _huge_header(tmp):
    d, j = write_per_video(tmp)
    with open(d / f"{NAMES[1]}.npy", "wb") as fh:  # claims 10**12 x 8 float32 = 32 TB, holds 40 bytes
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 8)})
        fh.write(np.zeros(10, np.float32).tobytes())
    return d, j


def _wtalc(**kw):
    post = kw.pop("post", None)

    def build(tmp):
        root = write_wtalc(tmp, **kw)
        if post:
            post(root)
        return root, None

    return build


# id -> (builder(tmp) -> (data_dir, json or None), extra CLI args, error class, message regex)
CASES = {
    "missing-feature-file": (_wtalc(post=lambda r: (r / FEAT).unlink()), ["--layout", "wtalc"], DataError,
                             rf"{FEAT}: features file not found"),
    "missing-annotation-file": (_wtalc(post=lambda r: (r / ANN / "labels.npy").unlink()), [], DataError,
                                r"labels\.npy: annotation 'labels' file not found"),
    "annotation-lengths-differ": (_wtalc(segments=object_array([[[1.0, 2.0]]] * 3)), [], DataError,
                                  r"segments\.npy: annotation 'segments' has 3 entries but videoname\.npy has 4"),
    "feature-count-differs": (_wtalc(features=default_features()[:3]), [], DataError,
                              r"3 feature arrays but .*videoname\.npy lists 4 videos"),
    "wrong-feature-width": (_wtalc(features=_feats(v1=np.zeros((12, 6), np.float32))), [], DataError,
                            r"video 'video_validation_0000002': feature width is 6, expected 8"),
    "nan-features": (_wtalc(features=_nan()), [], DataError,
                     r"video 'video_validation_0000002': features contain NaN/inf \(first at clip 3, column 0\)"),
    "segment-end-before-start": (
        _wtalc(segments=object_array([[[1.0, 3.0], [5.0, 6.5]], [[4.0, 2.0]], [[0.0, 2.0], [4.0, 7.5]], [[1.0, 2.0]]])),
        [], DataError, r"video 'video_validation_0000002': segment \[4\.0, 2\.0\] ends before it starts"),
    "negative-time": (
        _wtalc(segments=object_array([[[-1.0, 3.0], [5.0, 6.5]], [[2.0, 4.0]], [[0.0, 2.0], [4.0, 7.5]], [[1.0, 2.0]]])),
        [], DataError, r"video 'video_validation_0000001': segment \[-1\.0, 3\.0\] has a negative time"),
    "label-not-in-classes": (_wtalc(labels=object_array([["A", "B"], ["Z"], ["A", "A"], ["B"]])), [], DataError,
                             r"video 'video_validation_0000002': segment label 'Z' is not in the class list"),
    "labels-all-not-in-classes": (_wtalc(labels_all=object_array([["A", "B"], ["C"], ["Q"], []])), [], DataError,
                                  r"video 'video_test_0000001': field 'labels_all' has label 'Q'"),
    "empty-video-min-clips-0": (_wtalc(features=_feats(v3=np.zeros((0, 8), np.float32))), ["--min-clips", "0"],
                                DataError, r"video 'video_test_0000002': video has 0 feature clips"),
    "truncated-npy": (_wtalc(post=_truncated), [], DataError, rf"{FEAT}: features file is truncated or corrupt"),
    "int-features": (_wtalc(features=[np.ones((t, 8), np.int64) for t in CLIPS]), [], DataError,
                     r"video 'video_validation_0000001': features have dtype int64, expected float32"),
    "dict-instead-of-list": (_wtalc(features=np.array({"video": np.ones((3, 8))}, dtype=object)), [], DataError,
                             rf"{FEAT}: expected a 1-D object array of per-video \(T, D\) arrays, found dtype object shape \(\)"),
    "string-instead-of-array": (_wtalc(features=_feats(v2="oops")), [], DataError,
                                r"video 'video_test_0000001': expected a \(T, D\) float array of features, found str"),
    "duplicated-video": (_wtalc(videoname=np.array([n.encode() for n in NAMES[:3] + NAMES[:1]])), [], DataError,
                         r"videoname\.npy: video 'video_validation_0000001' appears more than once"),
    "empty-after-filtering": (_wtalc(), ["--min-clips", "100"], DataError,
                              r"no video left after filtering \(min_clips=100, 4 videos"),
    "unknown-subset": (_wtalc(subset=np.array([b"validation", b"train", b"test", b"test"])), [], DataError,
                       r"video 'video_validation_0000002': field 'subset' is 'train'"),
    "synthetic-json-without-description": (_wtalc(synthetic={"seed": 1}), [], DataError,
                                           r"SYNTHETIC\.json: field 'description' \(a string\) is missing"),
    "crafted-annotation-pickle": (_wtalc(post=_poisoned), [], UnsafePickleError,
                                  r"labels\.npy: refused to unpickle global (posix|os)\.system"),
    "rgb-flow-length-mismatch": (_split_mismatch, [], DataError,
                                 r"video 'video_test_0000001': RGB has 10 clips \(rgb/video_test_0000001\.npy\) but flow has 9"),
    "per-video-missing-file": (lambda t: write_per_video(t, features=_feats(v2=None)), [], DataError,
                               r"video_test_0000001\.npy: features of video 'video_test_0000001' file not found"),
    "malformed-json": (lambda t: write_per_video(t, json_text='{"database": {'), [], DataError,
                       r"annotations\.json: malformed JSON"),
    "json-missing-field": (_json_missing_field, [], DataError,
                           r"annotations\.json: video 'video_validation_0000002': field 'duration' is missing"),
    # issue 15.5: what json + float()/str() used to misread silently, one case each
    "json-segment-string": (_json_edit(_ann(0, "segment", "37")), [], DataError,  # was [3.0, 7.0]
                            r"annotations\.json: video 'video_validation_0000001': annotation 0 field 'segment' is "
                            r"'37', expected \[start, end\]"),
    "json-segment-booleans": (_json_edit(_ann(0, "segment", [True, True])), [], DataError,  # was [1.0, 1.0]
                              r"annotations\.json: video 'video_validation_0000001': annotation 0 field 'segment': "
                              r"expected a number, got True"),
    "json-segment-nan": (_json_edit(_ann(2, "segment", [float("nan"), 2.0])), [], DataError,
                         r"annotations\.json: video 'video_test_0000001': annotation 0 field 'segment': expected a "
                         r"finite number, got nan"),
    "json-label-number": (_json_edit(_ann(1, "label", 7)), [], DataError,  # was the class "7"
                          r"annotations\.json: video 'video_validation_0000002': annotation 0 field 'label' is 7, "
                          r"expected a class name \(a string\)"),
    "json-duration-string": (_json_edit(lambda db: db[NAMES[2]].__setitem__("duration", "1e3")), [], DataError,
                             r"annotations\.json: video 'video_test_0000001' field 'duration': expected a number, "
                             r"got '1e3'"),
    "json-subset-number": (_json_edit(lambda db: db[NAMES[3]].__setitem__("subset", 1)), [], DataError,
                           r"annotations\.json: video 'video_test_0000002': field 'subset' is 1, expected a subset"),
    "json-duplicate-video": (_json_text(_duplicate_video), [], DataError,  # the first entry used to vanish
                             r"annotations\.json: duplicate key 'video_validation_0000001' in one JSON object "
                             r"\(at \['database'\]"),
    "json-duplicate-field": (_json_text(_duplicate_field), [], DataError,
                             r"annotations\.json: duplicate key 'annotations' in one JSON object "
                             r"\(at \['database'\]\['video_test_0000002'\]"),
    "json-video-name-parent": (_escaping(lambda tmp: "../outside/x"), [], DataError,  # read <tmp>/outside/x.npy
                               r"annotations\.json: video '\.\./outside/x': the video name must be a plain file "
                               r"name .* leaves --data-dir"),
    "json-video-name-absolute": (_escaping(lambda tmp: str(tmp / "outside" / "x")), [], DataError,
                                 r"annotations\.json: video '/.*/outside/x': the video name must be a plain file name"),
    # issue 15.3: a header claiming more than the file holds is refused before any allocation
    "npy-header-larger-than-file": (_huge_header, [], DataError,
                                    r"video_validation_0000002\.npy: features of video 'video_validation_0000002' file "
                                    r"is truncated or corrupt: its header says shape \(1000000000000, 8\) of float32 "
                                    r"\(32000000000000 bytes\) but only 40 bytes follow the header"),
}


def _args(tmp_path, build, extra):
    data_dir, json_path = build(tmp_path)
    argv = ["data", "info", "--dataset", "thumos14", "--data-dir", str(data_dir)] + list(extra)
    if json_path is not None:
        argv += ["--annotations", str(json_path)]
    kw = {"annotations": json_path}
    if "--min-clips" in extra:
        kw["min_clips"] = int(extra[extra.index("--min-clips") + 1])
    layout = extra[extra.index("--layout") + 1] if "--layout" in extra else "auto"
    return data_dir, layout, kw, argv


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_raises_error_naming_the_culprit(tmp_path, case, capsys):
    build, extra, exc, pattern = CASES[case]
    data_dir, layout, kw, argv = _args(tmp_path, build, extra)
    with pytest.raises(exc, match=pattern):
        load_dataset_report("thumos14", data_dir, layout, **kw)
    # the same through the CLI: exit 2, `error: <message>` on stderr, no traceback
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert __import__("re").search(pattern, err), err
    assert not (tmp_path / "pwned").exists()


def test_data_info_prints_summary_and_problems(tmp_path, capsys):
    root = write_wtalc(tmp_path, ambiguous="video_test_0000001  1.0 2.0\n")
    assert main(["data", "info", "--dataset", "thumos14", "--data-dir", str(root), "--min-clips", "8"]) == 0
    out = capsys.readouterr().out
    assert "videos       3   clips 37   classes 3" in out  # 15 + 12 + 10 (the 7-clip video dropped)
    assert "RGB width 4, flow width 4" in out and "0.6400 s per clip" in out
    assert "source       user-provided features (unverified)" in out  # not declared real (issue 14.4)
    assert "      1  videos_dropped_min_clips" in out and "      1  segments_clipped_to_duration" in out
    assert "ambiguous    1 segments in 1 videos" in out


def test_data_info_subprocess_exit_code(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())", "data", "info", "--dataset", "thumos14",
                        "--data-dir", str(tmp_path / "absent")], capture_output=True, text=True)
    assert r.returncode == 2 and "absent: data directory not found" in r.stderr and "Traceback" not in r.stderr
