"""`emmil tracking flush --results DIR`: deliver the metrics that trials buffered while the tracking
server was down, after the driver ended (issue 13).

Every trial writes its MLflow calls to a JSONL buffer first (<results>/<run>/tracking-buffer/*.jsonl,
harness.tracking.TrialRun); the driver delivers what the trials could not, but when the server is still
down when the driver ends they stay on disk. This replays them into their runs (each buffer names its
run id) and closes a parent run that harness.json says is over but MLflow still shows RUNNING. A
buffer whose run was never created is left for `--resume` (only the trial knows its tags). Safe to run
twice: a delivered operation leaves its buffer, and a replayed epoch is never logged twice.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from emmil.errors import ConfigError

# harness.json `stage` -> the status of a parent run the driver could not close
PARENT_STATUS = {"done": "FINISHED", "interrupted": "KILLED", "incomplete": "FAILED", "final-incomplete": "FAILED"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", help="results directory of the ablations/sweeps")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<results>/mlflow.db)")


def flush_run_folder(root: Path, uri: str) -> dict[str, int]:
    """Deliver one run folder's buffers; counts {"buffers", "delivered", "metrics", "left", "no_run"}."""
    from harness import runner, tracking

    place = runner.RunPlace(root.parent, root.name, uri, "")
    state = runner.read_state(place)
    redacted = tracking.redact_uri(uri)
    if state.get("tracking_uri") != redacted:
        raise ConfigError(f"{root}: tracked at {state.get('tracking_uri')}, not {redacted}; pass that --tracking-uri")
    target = tracking.TrackingTarget(uri, state["experiment_id"], state["parent_run_id"], state["mlflow_experiment"])
    counts = {"buffers": 0, "delivered": 0, "metrics": 0, "left": 0, "no_run": 0}
    for path in sorted(place.buffer_dir.glob("*.jsonl")) if place.buffer_dir.is_dir() else []:
        run = tracking.TrialRun(target, path.stem, {}, path, delivered_by="driver")
        if not run.pending:
            continue
        counts["buffers"] += 1
        if run.run_id is None:
            counts["no_run"] += 1
            continue
        # the run's own trial id: the file name is a sanitised one, and flush() re-applies the tag
        try:
            run.trial_id = run.tags["emmil.trial_id"] = tracking.client(uri).get_run(run.run_id).data.tags.get(
                "emmil.trial_id", path.stem)
        except Exception as exc:  # noqa: BLE001 - the server is still down: say so, keep the buffer
            raise ConfigError(f"tracking server {redacted} unreachable ({type(exc).__name__}: {str(exc)[:200]}); "
                              f"the buffers in {place.buffer_dir} are kept: run this again when it is up") from None
        metrics = run.pending_metric_values()
        if run.flush():
            counts["delivered"] += 1
            counts["metrics"] += metrics
        else:
            counts["left"] += 1
    status = PARENT_STATUS.get(str(state.get("stage")))
    if status and tracking.client(uri).get_run(target.parent_run_id).info.status == "RUNNING":
        tracking.finish_run(uri, target.parent_run_id, status, {"emmil.closed_by": "emmil tracking flush"})
    return counts


def run(args: argparse.Namespace) -> int:
    from harness import runner, tracking

    results = Path(args.results).expanduser().resolve()
    if not results.is_dir():
        raise ConfigError(f"--results {results}: no such directory")
    folders = sorted(p.parent for p in results.glob(f"*/{runner.STATE_FILE}"))
    if not folders:
        raise ConfigError(f"--results {results}: no ablation or sweep folder (no */{runner.STATE_FILE})")
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri(results)
    from harness.preflight import check_tracking_uri

    check_tracking_uri(uri)
    left = 0
    for root in folders:
        runner.refuse_symlinks(root)
        c = flush_run_folder(root, uri)
        left += c["left"] + c["no_run"]
        print(f"{root.name}: {c['buffers']} buffer(s) with undelivered calls; {c['delivered']} delivered "
              f"({c['metrics']} metric values), {c['left']} still failing"
              + (f", {c['no_run']} whose run was never created (the run's --resume delivers them)" if c["no_run"] else ""))
    return 0 if left == 0 else 1
