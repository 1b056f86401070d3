"""The bad-input corpus through the command line (issue 6): one table of (how to build the input,
the `emmil` arguments, the expected exit code, the fragments the message must contain).

Every case runs `harness.cli.main(argv)` in-process: the exit code is what the console script returns
(argparse usage errors exit 2 through SystemExit), stderr must start with `error:` (or argparse's
usage line) and must not contain a Python traceback. The existing corpus, counted in
docs/reliability.md, lives in tests/test_data_errors.py (24 loader cases through `emmil data info`),
tests/test_evaluate*.py, tests/test_config.py, tests/harness/test_harness_experiments.py and
tests/test_safe_pickle.py; this table adds what they do not cover through the CLI.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from data_fixtures import CLASSES, NAMES, default_features, object_array, write_per_video, write_wtalc
from harness.cli import main

ANN = "Thumos14reduced-Annotations"
FEAT = "Thumos14reduced-I3D-JOINTFeatures.npy"
INFO = ["data", "info", "--dataset", "thumos14", "--data-dir"]


# ------------------------------------------------------------------------------------------------
# Input builders: (tmp dir, small synthetic W-TALC dir) -> argv


class _Marker:
    """Unpickling this would run `touch <path>`: the restricted unpickler must refuse it first."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


def _crafted_npy(path: Path, marker: Path, n: int) -> None:
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": (n,)})
        fh.write(pickle.dumps(object_array([_Marker(marker)] * n), protocol=3))


def info(tmp: Path, **kw) -> list[str]:
    return INFO + [str(write_wtalc(tmp, **kw))]


def wtalc_then(post: Callable[[Path], None], **kw) -> Callable:
    def build(tmp: Path, synth: Path) -> list[str]:
        root = write_wtalc(tmp, **kw)
        post(root)
        return INFO + [str(root)]

    return build


def per_video(**kw) -> Callable:
    def build(tmp: Path, synth: Path) -> list[str]:
        d, j = write_per_video(tmp, **kw)
        return INFO + [str(d), "--annotations", str(j)]

    return build


def per_video_then(post: Callable[[Path, Path], None], **kw) -> Callable:
    def build(tmp: Path, synth: Path) -> list[str]:
        d, j = write_per_video(tmp, **kw)
        post(d, j)
        return INFO + [str(d), "--annotations", str(j)]

    return build


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _feats(i: int, arr) -> list:
    f = default_features()
    f[i] = arr
    return f


def _inf_per_video(d: Path, j: Path) -> None:
    arr = np.load(d / f"{NAMES[3]}.npy")
    arr[2, 5] = np.inf  # video_test_0000002, clip 2, column 5
    np.save(d / f"{NAMES[3]}.npy", arr)


def _json_no_database(d: Path, j: Path) -> None:
    j.write_text(json.dumps({"version": "1.3", "taxonomy": []}))


def _json_bad_segment(d: Path, j: Path) -> None:
    db = json.loads(j.read_text())["database"]
    db[NAMES[0]]["annotations"][0]["segment"] = [1.0]
    j.write_text(json.dumps({"database": db}))


def _pickled_per_video_feature(tmp: Path, synth: Path) -> list[str]:
    d, j = write_per_video(tmp)
    _crafted_npy(d / f"{NAMES[1]}.npy", tmp / "pwned", 3)
    return INFO + [str(d), "--annotations", str(j)]


def _crafted_feature_file(tmp: Path, synth: Path) -> list[str]:
    root = write_wtalc(tmp)
    _crafted_npy(root / FEAT, tmp / "pwned", 4)
    return INFO + [str(root)]


def _write(tmp: Path, name: str, content) -> str:
    path = tmp / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


GT = {"database": {"v1": {"subset": "test", "annotations": [{"label": "A", "segment": [0, 10]}]}}}


def evaluate(pred, gt=GT, extra=()) -> Callable:
    def build(tmp: Path, synth: Path) -> list[str]:
        return ["eval", _write(tmp, "gt.json", gt), _write(tmp, "pred.json", pred), *extra]

    return build


def train(*extra: str, config: str | None = None) -> Callable:
    def build(tmp: Path, synth: Path) -> list[str]:
        argv = ["train", "--dataset", "thumos14", "--data-dir", str(synth), "--out", str(tmp / "run"),
                "--preset", "quick", *extra]
        if config is not None:
            argv += ["--config", _write(tmp, "cfg.yaml", config)]
        return argv

    return build


EXPERIMENT = {"name": "exp", "seeds": 1, "variants": [{"name": "full", "overrides": {"variant": "full"}}]}


def ablate(*extra: str, experiment: dict | str | None = None, results: str | None = None) -> Callable:
    def build(tmp: Path, synth: Path) -> list[str]:
        exp = experiment if experiment is not None else EXPERIMENT
        if isinstance(exp, dict):
            import yaml

            exp = _write(tmp, "exp.yaml", yaml.safe_dump(exp))
        res = results.format(tmp=tmp) if results else str(tmp / "results")
        return ["ablate", exp, "--dataset", "thumos14", "--data-dir", str(synth), "--preset", "quick",
                "--results", res, "--no-report", *extra]

    return build


def sweep(space: dict, *extra: str) -> Callable:
    def build(tmp: Path, synth: Path) -> list[str]:
        import yaml

        path = _write(tmp, "space.yaml", yaml.safe_dump(space))
        return ["sweep", "--space", path, "--trials", "2", "--dataset", "thumos14", "--data-dir", str(synth),
                "--preset", "quick", "--results", str(tmp / "results"), "--no-report", *extra]

    return build


def _space(param: dict) -> dict:
    return {"name": "space", "fixed": {"train.val_fraction": 0.2}, "params": {"train.gamma": param}}


def _file_in_the_way(tmp: Path, synth: Path) -> list[str]:
    (tmp / "afile").write_text("not a folder")
    return ablate(results=str(tmp / "afile" / "results"))(tmp, synth)



def _not_a_database(tmp: Path) -> str:
    (tmp / "notes.txt").write_text("not a database\n")
    return f"sqlite:///{tmp / 'notes.txt'}"


def _train_out_is_a_file(tmp: Path, synth: Path) -> list[str]:
    (tmp / "run").write_text("a file where the run folder goes")
    return train()(tmp, synth)


def _report_out_is_a_file(tmp: Path, synth: Path) -> list[str]:
    import mlflow

    mlflow.MlflowClient(f"sqlite:///{tmp / 'm.db'}").search_experiments()  # an empty, valid store
    (tmp / "rep").write_text("a file where the report folder goes")
    return ["report", "--tracking-uri", f"sqlite:///{tmp / 'm.db'}", "--out", str(tmp / "rep")]


def _ablate_tracking_not_a_database(tmp: Path, synth: Path) -> list[str]:
    return ablate("--tracking-uri", _not_a_database(tmp))(tmp, synth)


def _report_tracking_not_a_database(tmp: Path, synth: Path) -> list[str]:
    return ["report", "--tracking-uri", _not_a_database(tmp), "--out", str(tmp / "rep")]


def _sweep_storage_not_a_database(tmp: Path, synth: Path) -> list[str]:
    return sweep(_space({"distribution": "uniform", "low": 0.0, "high": 0.3}), "--storage", _not_a_database(tmp))(
        tmp, synth)


# issue 15 (items 3, 6, 8): memory bombs, non-finite values, huge seeds, tracebacks
ALIAS_BOMB = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9 if i else ["x"] * 9) + "]\n" for i in range(9))
ALIAS_BOMB += "train:\n  gamma: *l8\n"  # 9**9 = 387M leaves if expanded (or repr'd in the message)


def _eval_json_into_dir(tmp: Path, synth: Path) -> list[str]:
    (tmp / "outdir").mkdir()
    return evaluate({"results": {}}, extra=["--json", str(tmp / "outdir")])(tmp, synth)


def _config_not_utf8(tmp: Path, synth: Path) -> list[str]:
    (tmp / "latin1.yaml").write_bytes(b"train:\n  gamma: 0.1 # caf\xe9\n")
    return train()(tmp, synth) + ["--config", str(tmp / "latin1.yaml")]


# ------------------------------------------------------------------------------------------------
# The table: id -> (builder, expected exit code, fragments of the message (regex))

SEG_STR = object_array([[[1.0, 3.0], [5.0, 6.5]], "oops", [[0.0, 2.0], [4.0, 7.5]], [[1.0, 2.0]]])
LAB_SHORT = object_array([["A"], ["C"], ["A", "A"], ["B"]])  # video 0 has 2 segments, 1 label
CASES: dict[str, tuple[Callable, int, list[str]]] = {
    # --- data files (W-TALC layout) ---
    "truncated-annotation-npy": (wtalc_then(lambda r: _truncate(r / ANN / "segments.npy", 160)), 2,
                                 [r"segments\.npy: annotation 'segments' file is truncated or corrupt"]),
    "not-an-npy-file": (wtalc_then(lambda r: (r / ANN / "duration.npy").write_text("10.0\n8.0\n")), 2,
                        [r"duration\.npy: not a valid \.npy file \(annotation 'duration'\)"]),
    "duration-wrong-dtype": (lambda t, s: info(t, duration=np.array([b"10", b"8", b"6", b"5"])), 2,
                             [r"duration\.npy: duration has dtype \|S2, expected numbers"]),
    "segments-entry-not-a-list": (lambda t, s: info(t, segments=SEG_STR), 2,
                                  [r"video 'video_validation_0000002' field 'segments'", r"\[start, end\] pairs"]),
    "labels-not-object-array": (lambda t, s: info(t, labels=np.arange(4)), 2,
                                [r"labels\.npy: annotation 'labels' must be a 1-D object array"]),
    "segment-label-count-mismatch": (lambda t, s: info(t, labels=LAB_SHORT), 2,
                                     [r"video 'video_validation_0000001': 2 segments but 1 segment labels"]),
    "duplicated-class-name": (lambda t, s: info(t, classlist=np.array([b"A", b"B", b"A"])), 2,
                              [r"classlist\.npy: class 'A' appears more than once"]),
    "inf-in-features": (lambda t, s: info(t, features=_feats(0, np.full((15, 8), np.inf, np.float32))), 2,
                        [r"video 'video_validation_0000001': features contain NaN/inf \(first at clip 0, column 0\)"]),
    "features-3d": (lambda t, s: info(t, features=_feats(2, np.zeros((10, 8, 1), np.float32))), 2,
                    [r"video 'video_test_0000001': features have shape \(10, 8, 1\), expected \(T, D\)"]),
    "odd-feature-width": (lambda t, s: info(t, features=[np.zeros((n, 7), np.float32) for n in (15, 12, 10, 7)]), 2,
                          [r"video 'video_validation_0000001': feature width 7 is not an even number"]),
    "crafted-pickle-in-feature-file": (_crafted_feature_file, 2,
                                       [rf"{FEAT}: refused to unpickle global (posix|os)\.system", "nothing was executed"]),
    "ambiguous-line-malformed": (lambda t, s: info(t, ambiguous="video_test_0000001 1.0\n"), 2,
                                 [r"Ambiguous_test\.txt:1: expected 'video start end'"]),
    "ambiguous-end-before-start": (lambda t, s: info(t, ambiguous="video_test_0000001  3.0 1.0\n"), 2,
                                   [r"Ambiguous_test\.txt:1 \(video video_test_0000001\)", "ends before it starts"]),
    # handled on purpose (exit 0), but counted and printed, never skipped silently:
    "segments-past-duration-counted": (lambda t, s: info(t), 0,
                                       [r"1  segments_clipped_to_duration", r"video_test_0000001 \[4\.0, 7\.5\]"]),
    "empty-video-dropped-counted": (lambda t, s: info(t, features=_feats(3, np.zeros((0, 8), np.float32))), 0,
                                    [r"1  videos_dropped_min_clips", r"video_test_0000002 \(0 clips\)"]),
    # --- data files (per-video layout) ---
    "per-video-inf": (per_video_then(_inf_per_video), 2,
                      [r"video 'video_test_0000002': features contain NaN/inf \(first at clip 2, column 5\)"]),
    "per-video-odd-width": (per_video(features=[np.zeros((n, 5), np.float32) for n in (15, 12, 10, 7)]), 2,
                            [r"feature width 5 is not even"]),
    "per-video-width-differs": (per_video(features=_feats(2, np.zeros((10, 6), np.float32))), 2,
                                [r"video_test_0000001\.npy: video 'video_test_0000001': feature width is 6, expected 8"]),
    "per-video-pickled-features": (_pickled_per_video_feature, 2,
                                   [r"video 'video_validation_0000002': features are a pickled object array"]),
    "per-video-json-without-database": (per_video_then(_json_no_database), 2,
                                        [r"annotations\.json: field 'database'", "is missing"]),
    "per-video-json-bad-segment": (per_video_then(_json_bad_segment), 2,
                                   [r"annotations\.json: video 'video_validation_0000001': annotation 0 field 'segment'"]),
    "unknown-dataset-name": (lambda t, s: ["data", "info", "--dataset", "thumos15", "--data-dir", str(t)], 2,
                             [r"argument --dataset: invalid choice: 'thumos15'"]),
    # --- evaluator inputs ---
    "predictions-missing-score": (evaluate({"results": {"v1": [{"label": "A", "segment": [0, 1]}]}}), 2,
                                  [r"pred\.json: video 'v1' prediction 0: missing field 'score'"]),
    "predictions-missing-label": (evaluate({"results": {"v1": [{"segment": [0, 1], "score": 0.5}]}}), 2,
                                  [r"pred\.json: video 'v1' prediction 0", "missing field 'label'"]),
    "predictions-infinite-score": (evaluate('{"results": {"v1": [{"label": "A", "segment": [0, 1], "score": Infinity}]}}'),
                                   2, [r"pred\.json: video 'v1' prediction 0 field 'score'"]),
    "predictions-without-results": (evaluate({"res": {}}), 2, [r"pred\.json: missing field 'results'"]),
    "ground-truth-without-database": (evaluate({"results": {}}, gt={"db": {}}), 2,
                                      [r"gt\.json: missing field 'database'"]),
    "ground-truth-not-json": (evaluate({"results": {}}, gt="database: {}"), 2, [r"gt\.json: malformed JSON at line 1"]),
    "tiou-grid-empty": (evaluate({"results": {}}, extra=["--tiou", "0.5:0.1:0.1"]), 2,
                        [r"--tiou: expected START:STOP:STEP or a comma list, got '0\.5:0\.1:0\.1'"]),
    # --- config values, keys and names (emmil train: all checked before the data is read) ---
    "unknown-variant-set": (train("--set", "variant=em-mil"), 2, [r"config key 'variant'", r"unknown variant 'em-mil'"]),
    "unknown-variant-flag": (train("--variant", "em-mil"), 2, [r"argument --variant: invalid choice: 'em-mil'"]),
    "unknown-config-key": (train("--set", "train.gama=0.1"), 2,
                           [r"--set: unknown config key 'train\.gama'", r"train has \[.*'gamma'"]),
    "config-value-out-of-range": (train("--set", "localize.lam=1.5"), 2,
                                  [r"config key 'localize\.lam' = 1\.5: must be in \[0, 1\]"]),
    "config-value-unparsable": (train("--set", "train.lr=fast"), 2,
                                [r"config key 'train\.lr': cannot parse 'fast' as float"]),
    "set-without-equals": (train("--set", "train.lr"), 2, [r"--set 'train\.lr': expected key=value"]),
    "config-file-unknown-key": (train(config="train:\n  gamma: 0.1\n  warmup: 3\n"), 2,
                                [r"cfg\.yaml: unknown config key 'train\.warmup'"]),
    "config-file-not-a-mapping": (train(config="- 1\n- 2\n"), 2, [r"cfg\.yaml: a config file must be a mapping"]),
    # --- experiments and search spaces ---
    "unknown-experiment": (lambda t, s: ["ablate", "table4", "--data-dir", str(s), "--results", str(t / "r")], 2,
                           [r"unknown experiment 'table4'", "known: .*table3"]),
    "experiment-unknown-variant": (ablate(experiment={**EXPERIMENT, "variants": [
        {"name": "bogus", "overrides": {"variant": "bogus"}}]}), 2,
        [r"exp\.yaml: variant 'bogus'", r"unknown variant 'bogus'"]),
    "experiment-unknown-key": (ablate(experiment={**EXPERIMENT, "seed": 3}), 2,
                               [r"exp\.yaml: unknown key\(s\) \['seed'\]"]),
    "experiment-invalid-set": (ablate("--set", "train.epochs=0"), 2, [r"variant 'full'", r"'train\.epochs' = 0: must be >= 1"]),
    "space-empty-range": (sweep(_space({"distribution": "uniform", "low": 0.3, "high": 0.3})), 2,
                          [r"space\.yaml: params\.train\.gamma: empty range: low=0\.3 must be below high=0\.3"]),
    "space-empty-choices": (sweep(_space({"distribution": "categorical", "choices": []})), 2,
                            [r"space\.yaml: params\.train\.gamma: 'choices' must be a non-empty list \(empty range\)"]),
    "space-unknown-config-key": (sweep({**_space({"distribution": "uniform", "low": 0, "high": 1}),
                                        "params": {"train.gama": {"distribution": "uniform", "low": 0, "high": 1}}}), 2,
                                 [r"space\.yaml", r"unknown config key 'train\.gama'"]),
    # --- where trials run and are tracked: refused in seconds, before any work ---
    "unreachable-ray-address": (ablate("--address", "127.0.0.1:1"), 2,
                                [r"--address 127\.0\.0\.1:1: Ray cluster unreachable"]),
    "malformed-ray-address": (ablate("--address", "head-node"), 2, [r"--address 'head-node': expected HOST:PORT"]),
    "unreachable-tracking-uri": (ablate("--tracking-uri", "http://bob:hunter2@127.0.0.1:1"), 2,
                                 [r"--tracking-uri http://bob:\*\*\*@127\.0\.0\.1:1: tracking server unreachable"]),
    "tracking-sqlite-folder-missing": (ablate("--tracking-uri", "sqlite:////nonexistent-emmil/mlflow.db"), 2,
                                       [r"--tracking-uri sqlite:////nonexistent-emmil/mlflow\.db: folder of the SQLite file"]),
    "results-dir-under-a-file": (_file_in_the_way, 2, [r"--results .*afile/results: cannot create the results directory"]),
    "results-dir-unwritable": (ablate(results="/proc/emmil-results"), 2, [r"--results /proc/emmil-results: cannot create"]),
    "missing-data-dir": (lambda t, s: ablate()(t, t / "no-such-data"), 2, [r"no-such-data: data directory not found"]),
    # --- issue 15: memory bombs, non-finite values, huge seeds, tracebacks that reached the user ---
    "tiou-grid-too-many-thresholds": (evaluate({"results": {}}, extra=["--tiou", "0:1:1e-7"]), 2,
                                      [r"--tiou 0:1:1e-7: 10000001 thresholds, at most 100 are allowed"]),
    "json-nested-100k-deep": (evaluate({"results": {}}, gt="[" * 100000 + "]" * 100000), 2,
                              [r"gt\.json: JSON nested more than 32 levels deep"]),
    "json-duplicate-key": (evaluate('{"results": {"v1": [], "v1": []}}'), 2,
                           [r"pred\.json: duplicate key 'v1' in one JSON object"]),
    "eval-json-out-is-a-directory": (_eval_json_into_dir, 2, [r"--json .*outdir: is a directory, expected a file path"]),
    "config-yaml-alias-bomb": (train(config=ALIAS_BOMB), 2, [r"cfg\.yaml: not valid YAML \(alias \*l0 refused"]),
    "config-yaml-not-utf8": (_config_not_utf8, 2, [r"latin1\.yaml: config file is not UTF-8 text \(invalid byte 0xe9"]),
    "set-lr-inf": (train("--set", "train.lr=inf"), 2, [r"config key 'train\.lr': 'inf' is not a finite number"]),
    "set-lr-overflows-to-inf": (train("--set", "train.lr=1e309"), 2,
                                [r"config key 'train\.lr': '1e309' is not a finite number"]),
    "set-gamma-nan": (train("--set", "train.gamma=nan"), 2, [r"config key 'train\.gamma': 'nan' is not a finite number"]),
    "config-file-gamma-inf": (train(config="train:\n  gamma: .inf\n"), 2,
                              [r"config key 'train\.gamma': inf is not a finite number"]),
    "seed-23-digits": (train("--seed", "12345678901234567890123"), 2,
                       [r"config key 'seed': 12345678901234567890123 is too large"]),
    "seed-above-numpy-range": (train("--seed", str(2**32)), 2,
                               [r"config key 'seed' = 4294967296: must be in \[0, 4294967295\]"]),
    "experiment-too-many-seeds": (ablate("--seeds", "10000000000"), 2, [r"--seeds must be in \[1, 1000\], got 10000000000"]),
    # issue 15.8: tracebacks that reached the user
    "train-out-is-a-file": (_train_out_is_a_file, 2, [r"--out .*run: is a file, expected a run directory"]),
    "report-out-is-a-file": (_report_out_is_a_file, 2, [r"--out .*rep: is a file, expected a report directory"]),
    "ablate-tracking-uri-not-a-database": (_ablate_tracking_not_a_database, 2,
                                           [r"--tracking-uri sqlite:///.*notes\.txt: .*notes\.txt is not a SQLite database"]),
    "report-tracking-uri-not-a-database": (_report_tracking_not_a_database, 2,
                                           [r"--tracking-uri sqlite:///.*notes\.txt: .*notes\.txt is not a SQLite database"]),
    "sweep-storage-garbage": (sweep(_space({"distribution": "uniform", "low": 0.0, "high": 0.3}), "--storage", "garbage"),
                              2, [r"--storage garbage: not a database URL"]),
    "sweep-storage-not-a-database": (_sweep_storage_not_a_database, 2,
                                     [r"--storage sqlite:///.*notes\.txt: .*notes\.txt is not a SQLite database"]),
    # --- issue 13: hostile config files and --set values (each message names the file or flag and the key) ---
    "config-yaml-python-object-tag": (train(config="train: !!python/object/apply:os.system ['touch pwned']\n"), 2,
                                      [r"cfg\.yaml: not valid YAML \(tag '!!python/object/apply:os\.system' refused",
                                       r"at line 1 column 8\)$"]),
    "config-yaml-python-object-top": (train(config="!!python/object:os.system {}\n"), 2,
                                      [r"cfg\.yaml: not valid YAML \(tag '!!python/object:os\.system' refused"]),
    "config-file-a-scalar": (train(config="42\n"), 2,
                             [r"cfg\.yaml: a config file must be a mapping of keys to values, got 42 \(type int\)"]),
    "config-file-a-string": (train(config="train.lr\n"), 2, [r"cfg\.yaml: a config file must be a mapping"]),
    "config-file-int-key": (train(config="1: x\n"), 2, [r"cfg\.yaml: config key 1 is not a string"]),
    "config-file-null-key": (train(config="null: 3\n"), 2, [r"cfg\.yaml: config key None is not a string"]),
    "config-file-list-key": (train(config="[a]: b\n"), 2,
                             [r"cfg\.yaml: not valid YAML \(while constructing a mapping; found unhashable key at line 1"]),
    "config-file-nested-int-key": (train(config="train:\n  1: x\n"), 2,
                                   [r"cfg\.yaml: section 'train': config key 1 is not a string"]),
    "config-file-duplicate-key": (train(config="train:\n  lr: 0.1\n  lr: 0.2\n"), 2,
                                  [r"cfg\.yaml: not valid YAML \(duplicate key 'lr'"]),
    "config-file-lr-nan": (train(config="train:\n  lr: .nan\n"), 2,
                           [r"cfg\.yaml: config key 'train\.lr': nan is not a finite number"]),
    "config-file-epochs-zero": (train(config="train:\n  epochs: 0\n"), 2,
                                [r"cfg\.yaml: config key 'train\.epochs' = 0: must be >= 1"]),
    "config-file-preset-contradicts-flag": (train(config="preset: paper\n"), 2,
                                            [r"cfg\.yaml: config key 'preset' is 'paper' but the run asks for 'quick'"]),
    "set-lr-nan": (train("--set", "train.lr=nan"), 2, [r"--set: config key 'train\.lr': 'nan' is not a finite number"]),
    "set-lr-minus-inf": (train("--set", "train.lr=-inf"), 2, [r"config key 'train\.lr': '-inf' is not a finite number"]),
    "set-lr-negative": (train("--set", "train.lr=-1"), 2, [r"--set: config key 'train\.lr' = -1\.0: must be > 0"]),
    "set-epochs-negative": (train("--set", "train.epochs=-1"), 2, [r"--set: config key 'train\.epochs' = -1: must be >= 1"]),
    "set-epochs-nan": (train("--set", "train.epochs=nan"), 2, [r"config key 'train\.epochs': cannot parse 'nan' as int"]),
    "set-epochs-1e309": (train("--set", "train.epochs=1e309"), 2,
                         [r"config key 'train\.epochs': cannot parse '1e309' as int"]),
    "set-lr-a-list": (train("--set", "train.lr=[1,2]"), 2, [r"config key 'train\.lr': cannot parse '\[1,2\]' as float"]),
    "set-epochs-a-list": (train("--set", "train.epochs=[1,2]"), 2,
                          [r"config key 'train\.epochs': cannot parse '\[1,2\]' as int"]),
    "train-without-dataset-or-config": (lambda t, s: ["train", "--data-dir", str(s), "--out", str(t / "run")], 2,
                                        [r"config key 'dataset': not given; pass --dataset"]),
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A valid, tiny semi-synthetic W-TALC folder (dim 4 per stream, 2+2 videos)."""
    from emmil.data.synth import write_synthetic

    return write_synthetic("thumos14", tmp_path_factory.mktemp("synth") / "data", dim=4, seed=0, max_videos=2)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage error
        code = exc.code
    out, err = capsys.readouterr()
    return int(code), out, err


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exit_code_and_message(case, tmp_path, synth, capsys):
    build, code, fragments = CASES[case]
    argv = build(tmp_path, synth)
    got, out, err = run_cli(argv, capsys)
    text = err if code else out
    assert got == code, f"exit {got}, expected {code}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err and "Traceback" not in out
    if code:  # an `error:` (or argparse `usage:`) line; a line at the start of stderr in the console script
        assert re.search(r"^(error|usage): ", err, re.M), err
    for fragment in fragments:
        assert re.search(fragment, text), f"{fragment!r} not in:\n{text}"
    assert not (tmp_path / "pwned").exists()  # no crafted pickle ran
    assert not (tmp_path / "results" / "exp").exists()  # refused before any run folder was made


def test_corpus_size():
    # issue 6: at least 25 malformed inputs in total; this table alone holds 64 (+24 in test_data_errors.py)
    assert len(CASES) >= 64


def test_console_script_exit_code_in_a_subprocess(tmp_path, synth):
    # the real console script (not main() in-process): exit 2, one error line, no traceback
    exe = Path(sys.executable).parent / "emmil"
    argv = ablate("--address", "127.0.0.1:1")(tmp_path, synth)
    r = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("error: --address 127.0.0.1:1: Ray cluster unreachable") and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
