"""`emmil predict MODEL --data-dir DIR --out PRED.json`: score videos with a trained model file.

MODEL is a run directory of `emmil train` (its model.pt), a model.pt path (emmil.model_file), or an
MLflow run: `runs:/<run_id>` (tracking URI from --tracking-uri, else $MLFLOW_TRACKING_URI) or a bare
run id with --tracking-uri. Of an MLflow run only its model.pt artifact is downloaded (what a harness
trial logs when --keep-models keeps it), into a temporary folder, and read like a local file. The
dataset name, class list, feature widths, clip length and the localiser values come from the model
file; data whose widths or classes differ is refused. Writes ActivityNet results JSON
{"results": {video: [{label, segment, score}]}}; `--timelines FILE` adds per-clip Q/P/L per video.

Videos: W-TALC layout (or per-video with --annotations): the dataset's test subset by default,
or --subset S / --videos. Per-video layout without --annotations: features only, every
<video>.npy (or rgb/ + flow/) in DIR, or --videos; durations are then T x clip seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from emmil.errors import ConfigError, DataError
from harness.cli.evaluate import check_out, strict_json, write_out

RUNS_PREFIX = "runs:/"  # MLflow's run-relative artifact URI: runs:/<run_id>[/<artifact path>]
MODEL_ARTIFACT = "model.pt"  # emmil.model_file.MODEL_FILE, logged at the root of a trial's artifacts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="run directory of `emmil train`, a model.pt file, or an MLflow run: runs:/RUN_ID, "
                             "or a bare RUN_ID with --tracking-uri")
    parser.add_argument("--tracking-uri", default=None, metavar="URI",
                        help="MLflow tracking URI of the run MODEL names (default for runs:/: $MLFLOW_TRACKING_URI); "
                             "with it, MODEL is a run id")
    parser.add_argument("--data-dir", required=True, metavar="DIR", help="W-TALC release folder or per-video folder")
    parser.add_argument("--layout", default="auto", choices=("auto", "wtalc", "per-video"))
    parser.add_argument("--annotations", metavar="JSON",
                        help="per-video layout: ActivityNet-style JSON giving subsets and durations "
                             "(default: none, features only)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--subset", help="score the videos of this subset (default: the dataset's test subset)")
    which.add_argument("--videos", metavar="LIST", help="comma-separated video names, or @FILE with one per line")
    parser.add_argument("--out", required=True, metavar="PRED.json", help="ActivityNet results JSON to write")
    parser.add_argument("--timelines", metavar="FILE", help="also write per-clip Q/P/L of every scored video")
    parser.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"),
                        help="default: the model config's (results are exact on the training device)")


def mlflow_source(model: str, tracking_uri: str | None) -> tuple[str, str] | None:
    """(run id, artifact path) when MODEL names an MLflow run, None for a local path.

    runs:/<id> -> (id, "model.pt"); runs:/<id>/<path> -> (id, path). With --tracking-uri, MODEL is a
    bare run id: a local path there is refused rather than silently read from disk or from MLflow."""
    if model.startswith(RUNS_PREFIX):
        run_id, _, artifact = model[len(RUNS_PREFIX):].strip("/").partition("/")
        if not run_id:
            raise DataError(f"MODEL {model}: no run id after {RUNS_PREFIX} (expected {RUNS_PREFIX}<run_id>)")
        return run_id, artifact.strip("/") or MODEL_ARTIFACT
    if tracking_uri is None:
        return None
    if "/" in model or os.sep in model or Path(model).exists():
        raise DataError(f"MODEL {model}: with --tracking-uri, MODEL is an MLflow run id (or {RUNS_PREFIX}<run_id>), "
                        "not a path; drop --tracking-uri to read a local model file or run directory")
    return model, MODEL_ARTIFACT


def _no_model_message(run, run_id: str, artifact: str, present: list[str]) -> str:
    """Why an MLflow run has no model.pt, and which --keep-models would have kept it."""
    tags = run.data.tags
    what = ", ".join(x for x in (tags.get("emmil.trial_id"), tags.get("emmil.stage") and
                                 f"stage {tags['emmil.stage']}", run.info.status) if x)
    msg = (f"MLflow run {run_id} ({what}) has no {artifact} artifact (its artifacts: {present or 'none'}). ")
    if tags.get("emmil.role") == "parent":
        return msg + "It is the parent run of an ablation/sweep: pass the run id of one of its trials (child runs)."
    if run.info.status == "RUNNING":
        msg += "The run is still RUNNING: a trial logs model.pt when it finishes. "
    msg += ("A trial logs model.pt when --keep-models keeps it: `all` keeps every trial's; `best` (the "
            "`emmil sweep` default) only the chosen configuration's (every ablation trial, a sweep's "
            "final-test retrain); `none` none.")
    if tags.get("emmil.stage") == "search":
        msg += (" This is a sweep's search trial: its model is kept only with --keep-models all; predict "
                "with the sweep's final-test run instead.")
    return msg


def fetch_run_model(uri: str, run_id: str, artifact: str, dst: Path) -> tuple[Path, str]:
    """Download only the artifact `artifact` (model.pt, or a folder's model.pt) of MLflow run `run_id`
    into the folder `dst` -> (local file, its artifact path). An unknown run, a run without the
    artifact, a store that is not there: DataError/ConfigError naming the run and the tracking URI
    (password redacted)."""
    from urllib.parse import unquote

    from harness.preflight import check_tracking_uri
    from harness.tracking import client, redact_uri

    shown = redact_uri(uri)
    if uri.startswith("sqlite:///") and not Path(unquote(uri[len("sqlite:///"):])).is_file():
        # MLflow would create an empty store there (seconds) only to say the run does not exist
        raise ConfigError(f"--tracking-uri {shown}: no such SQLite file (nothing has been tracked there)")
    check_tracking_uri(uri)  # a server nobody listens on, a file that is not a database: named in seconds
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr keeps our own lines
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        run = c.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise DataError(f"MLflow run {run_id!r}: no such run at {shown}") from None
        raise DataError(f"MLflow run {run_id!r} at {shown}: {_first_line(exc)}") from None
    try:
        folder = artifact.rpartition("/")[0] or None
        entries = {f.path: f for f in c.list_artifacts(run_id, folder)}
        if artifact in entries and entries[artifact].is_dir:  # runs:/<id>/<folder>: its model.pt
            artifact = f"{artifact}/{MODEL_ARTIFACT}"
            entries = {f.path: f for f in c.list_artifacts(run_id, artifact.rpartition("/")[0])}
        if artifact not in entries:
            raise DataError(_no_model_message(run, run_id, artifact, sorted(entries)))
        return Path(c.download_artifacts(run_id, artifact, str(dst))), artifact
    except (MlflowException, OSError) as exc:
        raise DataError(f"MLflow run {run_id}: cannot download {artifact} from its artifact location "
                        f"{redact_uri(run.info.artifact_uri)} ({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def video_names(spec: str) -> list[str]:
    """--videos 'a,b' or '@FILE' (one name a line, blank lines skipped) -> names, order kept."""
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise DataError(f"--videos {spec}: file {path} not found")
        try:
            items = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"--videos {spec}: cannot read {path} ({exc})") from None
    else:
        items = spec.split(",")
    names = [x.strip() for x in items if x.strip()]
    if not names:
        raise DataError(f"--videos {spec!r}: no video name given")
    return names


def read_features_only(data_dir, name: str, classes, clip_seconds: float, names=None):
    """Per-video features without annotations -> (Dataset with unlabelled videos, dropped names).

    emmil.data.per_video needs an annotation JSON (subsets, durations), so this reads the feature
    files alone with the same safe readers and checks: <DIR>/<video>.npy (T, D) or rgb/ + flow/.
    Each video gets subset "" and duration T * clip_seconds; 0-clip videos are dropped."""
    import numpy as np

    from emmil.data import features as F
    from emmil.data.dataset import Dataset, Video
    from emmil.data.problems import ProblemLog
    from emmil.data.per_video import check_video_name
    from emmil.data.safe_pickle import load_npy

    d = Path(data_dir)
    split = (d / "rgb").is_dir() and (d / "flow").is_dir()
    if names is None:
        names = sorted(p.stem for p in (d / "rgb" if split else d).glob("*.npy"))
        if not names:
            raise DataError(f"{d}: no per-video feature files (<video>.npy or rgb/<video>.npy) found")
    log = ProblemLog()
    widths: list = [None, None] if split else [None]
    blocks, lengths = [], []
    for vname in names:
        check_video_name(vname, d)  # a --videos name must not read outside --data-dir
        paths = (d / "rgb" / f"{vname}.npy", d / "flow" / f"{vname}.npy") if split else (d / f"{vname}.npy",)
        parts = []
        for k, p in enumerate(paths):
            arr = load_npy(p, kind=f"features of video {vname!r}")
            where = f"{p}: video {vname!r}"
            if split:  # one stream per file: any width, but the same over videos
                if not isinstance(arr, np.ndarray) or arr.ndim != 2:
                    raise DataError(f"{where}: expected a (T, D) float array of features")
                if widths[k] is not None and arr.shape[1] != widths[k]:
                    raise DataError(f"{where}: feature width is {arr.shape[1]}, expected {widths[k]} "
                                    "(the width of the other videos)")
                widths[k] = arr.shape[1]
            else:
                _, widths[0] = F.check_feature_shape(arr, where, widths[0])
            F.check_feature_dtype(arr, where, log, vname)
            parts.append(arr)
        if split and parts[0].shape[0] != parts[1].shape[0]:
            raise DataError(f"{d}: video {vname!r}: RGB has {parts[0].shape[0]} clips (rgb/{vname}.npy) but "
                            f"flow has {parts[1].shape[0]} (flow/{vname}.npy)")
        block = np.concatenate(parts, axis=1).astype(np.float32, copy=False)  # (T, D_rgb + D_flow)
        F.check_finite(block, f"{d}: video {vname!r}")
        blocks.append(block)
        lengths.append(block.shape[0])
    stubs = [Video(name=n, subset="", duration=t * clip_seconds, start=0, num_clips=t, labels=())
             for n, t in zip(names, lengths)]
    keep = F.keep_by_min_clips(stubs, lengths, 1, log, lambda v: f"{d}: video {v.name!r}")
    if not keep:
        raise DataError(f"{d}: every video has 0 feature clips")
    videos, _ = F.place([stubs[i] for i in keep], [lengths[i] for i in keep])
    rgb_dim, flow_dim = (widths[0], widths[1]) if split else (widths[0] // 2, widths[0] // 2)
    dataset = Dataset(name=name, classes=tuple(classes), videos=tuple(videos),
                      features=np.concatenate([blocks[i] for i in keep], axis=0), rgb_dim=int(rgb_dim),
                      flow_dim=int(flow_dim), clip_seconds=float(clip_seconds),
                      source=F.source_of(d), path=str(d))  # no declaration: "unverified" or synthetic
    kept = set(keep)
    dropped = [v.name for i, v in enumerate(stubs) if i not in kept]
    return dataset, dropped


def _load_data(args, loaded):
    """(Dataset matched to the model, videos to score, whether the videos have annotations)."""
    from emmil.data.loading import detect_layout, load_dataset
    from emmil.model_file import match_data

    name = loaded.config.dataset
    layout = detect_layout(name, args.data_dir) if args.layout == "auto" else args.layout
    names = video_names(args.videos) if args.videos else None
    if layout == "per-video" and args.annotations is None:
        if args.subset:
            raise DataError(f"--subset {args.subset}: per-video features without --annotations carry no "
                            "subsets; pass --annotations JSON or --videos")
        dataset, dropped = read_features_only(args.data_dir, name, loaded.classes, loaded.clip_seconds, names)
        if dropped:
            print(f"note: {len(dropped)} video(s) with 0 clips skipped: {dropped[:5]}", file=sys.stderr)
        dataset = match_data(loaded, dataset)
        return dataset, dataset.videos
    if layout == "wtalc":
        if args.annotations is not None:
            raise DataError(f"--annotations {args.annotations}: the W-TALC layout reads its own annotation folder")
        dataset = load_dataset(name, args.data_dir, "wtalc")
    else:
        dataset = load_dataset(name, args.data_dir, "per-video", annotations=args.annotations,
                               classes=loaded.classes, clip_seconds=loaded.clip_seconds)
    dataset = match_data(loaded, dataset)
    if names is not None:
        known = {v.name for v in dataset.videos}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise DataError(f"{args.data_dir}: --videos names not in the data: {unknown[:10]}")
        wanted = set(names)
        return dataset, tuple(v for v in dataset.videos if v.name in wanted)
    subset = args.subset or dataset.test_subset
    videos = dataset.in_subset(subset)
    if not videos:
        subsets = sorted({v.subset for v in dataset.videos})
        raise DataError(f"{args.data_dir}: no videos in subset {subset!r}; the data has subsets {subsets}")
    return dataset, videos


def run(args: argparse.Namespace) -> int:
    from emmil.model_file import load_model, predict
    from emmil.train import choose_device, prediction_timelines

    out = check_out(args.out, "--out")
    timelines_out = check_out(args.timelines, "--timelines") if args.timelines else None
    source = mlflow_source(args.model, args.tracking_uri)
    if source is None:
        if not Path(args.model).exists() and re.fullmatch(r"[0-9a-f]{32}", args.model):
            raise DataError(f"{args.model}: no such model file or run directory; to read the MLflow run of that "
                            f"id pass runs:/{args.model} or --tracking-uri URI")
        loaded = load_model(args.model)
    else:
        run_id, artifact = source
        uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise ConfigError(f"{args.model}: an MLflow run needs a tracking URI: pass --tracking-uri URI "
                              "(e.g. sqlite:///results/mlflow.db) or set $MLFLOW_TRACKING_URI")
        with tempfile.TemporaryDirectory(prefix="emmil-model-") as tmp:  # the model is in memory after loading
            local, artifact = fetch_run_model(uri, run_id, artifact, Path(tmp))
            loaded = load_model(local, name=f"{RUNS_PREFIX}{run_id}/{artifact}")
    print(f"model: {loaded.describe()}", file=sys.stderr)
    dataset, videos = _load_data(args, loaded)
    device = choose_device(args.device or loaded.config.device)
    predictions, scores = predict(loaded, dataset, videos, device=device)
    # strict JSON: the model file's weights and the features are checked finite, so a NaN here is a bug,
    # refused by name rather than written as a token other JSON readers reject
    write_out(out, strict_json(predictions, "--out", out), "--out")
    count = sum(len(p) for p in predictions["results"].values())
    print(f"wrote {out}: {count} proposals for {len(videos)} videos ({dataset.source}, {device})")
    if timelines_out is not None:
        timelines = prediction_timelines(loaded.predict_config, dataset, videos, scores, predictions)
        write_out(timelines_out, strict_json(timelines, "--timelines", timelines_out), "--timelines")
        print(f"wrote {timelines_out}")
    return 0
