"""What `emmil ablate` and `emmil sweep` share: the results layout, the parent run, resume bookkeeping,
closing runs after Tune returns, the end-of-run summary and report.

Layout of one ablation/sweep under the results dir:
    <results>/mlflow.db                 default tracking store (created once, by the driver)
    <results>/mlartifacts/              artifacts of runs tracked in a local store
    <results>/optuna.db                 default Optuna storage (sweeps)
    <results>/<name>/harness.json       parent run id, MLflow experiment, stage: what --resume needs
    <results>/<name>/tracking-buffer/   per-trial JSONL buffers of not-yet-delivered tracking calls
    <results>/<name>/trial-state/       per-trial training state, replaced each epoch (what a retry resumes)
    <results>/<name>/<tune experiment>/ Ray Tune experiment dirs (trials, epoch-marker checkpoints, state)
    <results>/<name>/report/            the report (when the reports package is present)
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from emmil.errors import ConfigError
from harness import tracking
from harness.experiments import check_safe_name, inside

STATE_FILE = "harness.json"


@dataclass(frozen=True)
class RunPlace:
    """Where one ablation/sweep lives and is tracked."""

    results: Path  # absolute results dir (checked writable)
    name: str  # safe name: <results>/<name>
    tracking_uri: str  # as given (may contain a password: only used, never logged)
    mlflow_experiment: str  # emmil-<experiment> | emmil-sweep-<study>

    @property
    def root(self) -> Path:
        return inside(self.results, self.name)

    @property
    def buffer_dir(self) -> Path:
        return self.root / "tracking-buffer"

    @property
    def state_dir(self) -> Path:
        """One training-state file per trial (harness.ray_tune.write_trial_state): what a retry resumes."""
        return self.root / "trial-state"


def read_state(place: RunPlace) -> dict | None:
    path = place.root / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: unreadable harness state ({exc}); remove the folder to start over") from None


def write_state(place: RunPlace, state: Mapping[str, Any]) -> None:
    path = place.root / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(state), indent=1, sort_keys=True))
    os.replace(tmp, path)


def check_place(place: RunPlace, *, resume: bool) -> dict | None:
    """The cheap checks of `open_parent`, done before anything starts: a fresh start on a folder that
    already holds a run is refused (nothing is overwritten); a resume without one is refused too."""
    check_safe_name(place.name, "run name")
    state = read_state(place)
    if state is not None and not resume:
        raise ConfigError(
            f"{place.root} already holds the {state.get('kind', 'run')} with parent run {state.get('parent_run_id')} "
            f"(stage {state.get('stage')}); pass --resume to finish it, or choose another --results directory"
        )
    if state is None and resume:
        raise ConfigError(f"--resume: nothing to resume at {place.root} (no {STATE_FILE})")
    return state


def prewarm_tracking(uri: str):
    """Import MLflow and open (for a new SQLite file: create) the tracking store in a background thread,
    so that those 4-8 s overlap data loading and Ray's start. MLflow caches the store per URI. Join the
    returned thread before any other MLflow call (two threads must not create one store)."""
    import threading

    def warm() -> None:
        try:
            tracking.client(uri).search_experiments(max_results=1)
        except Exception:  # noqa: BLE001 - open_parent reports a store problem with its own message
            pass

    thread = threading.Thread(target=warm, name="mlflow-prewarm", daemon=True)
    thread.start()
    return thread


def open_parent(place: RunPlace, *, resume: bool, kind: str, tags: Mapping[str, str],
                params: Mapping[str, Any] = {}) -> tuple[tracking.TrackingTarget, dict]:
    """Create the MLflow experiment and parent run (fresh) or reopen them (--resume).

    A fresh start on a folder that already holds a run is refused (nothing is overwritten); a resume
    without one is refused too. Returns the target that trials log to and the harness state.
    """
    state = check_place(place, resume=resume)
    redacted = tracking.redact_uri(place.tracking_uri)
    if state is not None:
        if state.get("tracking_uri") != redacted:
            raise ConfigError(
                f"--resume: {place.root} was tracked at {state.get('tracking_uri')}, not {redacted}; "
                "pass the same --tracking-uri"
            )
        experiment_id = tracking.prepare_store(place.tracking_uri, place.mlflow_experiment,
                                               place.results / "mlartifacts")
        target = tracking.TrackingTarget(place.tracking_uri, experiment_id, state["parent_run_id"],
                                         place.mlflow_experiment)
        tracking.client(place.tracking_uri).update_run(state["parent_run_id"], status="RUNNING")
        return target, state
    experiment_id = tracking.prepare_store(place.tracking_uri, place.mlflow_experiment, place.results / "mlartifacts")
    parent = tracking.start_parent_run(place.tracking_uri, experiment_id, place.name,
                                       {"emmil.kind": kind, **tags}, params)
    state = {"kind": kind, "parent_run_id": parent, "experiment_id": experiment_id,
             "mlflow_experiment": place.mlflow_experiment, "tracking_uri": redacted, "stage": "started"}
    write_state(place, state)
    return tracking.TrackingTarget(place.tracking_uri, experiment_id, parent, place.mlflow_experiment), state


def close_trial_runs(target: tracking.TrackingTarget, buffer_dir: Path, rows: list[Mapping[str, Any]]) -> dict[str, int]:
    """After Tune returns: deliver buffers the trials could not, and close runs left RUNNING.

    A trial stopped early by ASHA ends without its own termination call: its run is closed KILLED with
    the tag emmil.stopped_early=true; an errored trial's run is closed FAILED.
    Returns counts {"flushed_late": n, "killed": n, "failed": n, "undelivered": n}.
    """
    counts = {"flushed_late": 0, "killed": 0, "failed": 0, "undelivered": 0, "orphaned": 0}
    by_key = {str(r.get("trial_key")): r for r in rows if r.get("trial_key")}
    stems = {_file_stem(k): k for k in by_key}
    if buffer_dir.is_dir():
        for path in sorted(buffer_dir.glob("*.jsonl")):
            run = tracking.TrialRun(target, stems.get(path.stem, path.stem), {}, path)
            if not run.pending:
                continue
            if path.stem not in stems and run.run_id is None:
                # A trial Tune no longer knows (the driver was SIGKILLed before its experiment state listed
                # it) that never created its run: a re-sampled trial replaces it; creating a run here would
                # add a duplicate under a made-up id (found by tests/faults, issue 6).
                counts["orphaned"] += 1
                continue
            counts["flushed_late" if run.flush() else "undelivered"] += 1
    for child in tracking.child_runs(target.uri, target.experiment_id, target.parent_run_id):
        if child.info.status != "RUNNING":
            continue
        key = child.data.tags.get("emmil.trial_id", "")
        row = by_key.get(key, {})
        if key not in by_key:  # an orphaned attempt (see above) that had created its run
            tracking.finish_run(target.uri, child.info.run_id, "KILLED", {"emmil.orphaned": "true"})
            counts["orphaned"] += 1
        elif row.get("error"):
            tracking.finish_run(target.uri, child.info.run_id, "FAILED", {"emmil.error": str(row["error"])[:4000]})
            counts["failed"] += 1
        else:
            tracking.finish_run(target.uri, child.info.run_id, "KILLED", {"emmil.stopped_early": "true"})
            counts["killed"] += 1
    return counts


def tracking_summary(rows: list[Mapping[str, Any]], closed: Mapping[str, int], buffer_dir: Path) -> str:
    """One line for the end-of-run summary: were metrics delayed by a tracking outage, and are they all
    delivered now? rows: per-trial last results (`tracking_delayed_flushes` = failed flush attempts)."""
    attempts = [int(r.get("tracking_delayed_flushes") or 0) for r in rows]
    delayed = sum(1 for a in attempts if a > 0)
    undelivered = int(closed.get("undelivered", 0))
    if not delayed and not undelivered:
        return "tracking:          every metric delivered as it was logged"
    text = (f"tracking:          server unavailable for a while: {delayed} trial(s) buffered their metrics "
            f"({sum(attempts)} failed flush attempt(s)); ")
    if undelivered:
        return text + f"{undelivered} trial buffer(s) still NOT delivered (kept in {buffer_dir}; --resume delivers them)"
    return text + "all buffered metrics delivered, none lost"


def _file_stem(trial_id: str) -> str:
    from harness.ray_tune import _safe_file_name

    return _safe_file_name(trial_id)


def command_line(argv: list[str] | None = None) -> str:
    """`emmil ...` as typed, URLs redacted (the emmil.command tag)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith("emmil"):
        argv[0] = "emmil"
    return tracking.redact_command(argv)


def locations(place: RunPlace, target: tracking.TrackingTarget, extra: Mapping[str, str] = {}) -> str:
    lines = [
        f"results dir:       {place.root}",
        f"tracking URI:      {tracking.redact_uri(place.tracking_uri)}",
        f"MLflow experiment: {target.experiment_name} (id {target.experiment_id})",
        f"parent run id:     {target.parent_run_id}",
    ]
    lines += [f"{k + ':':<19}{v}" for k, v in extra.items()]
    lines.append(f"browse:            mlflow ui --backend-store-uri '{tracking.redact_uri(place.tracking_uri)}'")
    return "\n".join(lines)


def build_report(place: RunPlace, target: tracking.TrackingTarget, **extra: Any) -> str:
    """Write <root>/report with reports.build.build_report when that module exists; returns a note."""
    try:
        from reports.build import build_report as _build  # another engineer's module
    except ImportError:
        return "report: skipped (the reports package has no build module in this installation)"
    import inspect

    out = place.root / "report"
    accepted = inspect.signature(_build).parameters
    if not {"parent_run_id", "out_dir"} <= set(accepted):
        return "report: skipped (reports.build.build_report has an unexpected signature)"
    extra = {k: v for k, v in extra.items() if k in accepted}
    try:
        _build(target.uri, parent_run_id=target.parent_run_id, out_dir=out, **extra)
    except Exception as exc:  # noqa: BLE001 - the runs are done; a report failure must not hide that
        return f"report: FAILED ({type(exc).__name__}: {exc}); build it later with `emmil report`"
    return f"report:            {out}"


def load_once(loader: Callable[[], Any], check: Callable[[Any], None] | None = None
              ) -> tuple[Callable[[], Any], dict[str, Any]]:
    """(callable that returns the loaded dataset ONCE and forgets it, metadata read from it now).

    The driver keeps only the metadata; the one reference goes to Ray (`tune.with_parameters` puts
    it into the object store) and the driver's copy is freed with it.
    """
    data = loader()
    if check is not None:
        check(data)
    meta = {"name": data.name, "source": data.source, "videos": len(data.videos),
            "feature_bytes": int(data.features.nbytes), "path": data.path}
    holder = [data]
    del data

    def take() -> Any:
        if not holder:
            raise RuntimeError("the dataset was already handed to Ray")
        return holder.pop()

    return take, meta
