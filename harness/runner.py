"""What `emmil ablate` and `emmil sweep` share: the results layout, the parent run, resume bookkeeping,
closing runs after Tune returns, the end-of-run summary and report.

Layout of one ablation/sweep under the results dir:
    <results>/mlflow.db                 default tracking store (created once, by the driver)
    <results>/mlartifacts/              artifacts of runs tracked in a local store
    <results>/optuna.db                 default Optuna storage (sweeps)
    <results>/<name>/harness.json       parent run id, MLflow experiment, stage: what --resume needs
    <results>/<name>/tracking-buffer/   per-trial JSONL buffers of not-yet-delivered tracking calls
    <results>/<name>/trial-state/       per-trial training state, replaced each epoch (what a retry resumes)
    <results>/<name>/<tune experiment>/ Ray Tune experiment dirs, one per launch (ablation, ablation-resume1, ...)
    <results>/<name>/report/            the report (when the reports package is present)

Resume never restores Ray Tune's own experiment state: Tune keeps it in pickles (tuner.pkl and pickled
fields of experiment_state-*.json), and unpickling a file from the results tree on --resume would run
whatever code a crafted file holds (issue 15.1). The plan is ours instead, in harness.json as plain JSON:
the run-wide settings (`signature`) and one config hash per trial (`plan`). A resume checks both
against what the command asks for now (a changed setting or trial config is refused by name, a new
trial is added), takes every finished trial from its state file (torch weights_only: tensors and plain
data) and starts a fresh Tune experiment with the unfinished ones only, each continuing from its
state file. Tune's pickles are written but never read.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from emmil.errors import ConfigError
from harness import tracking
from harness.experiments import check_safe_name, inside

STATE_FILE = "harness.json"
RESUME_FORMAT = 2  # harness.json with `signature` and `plan`; older folders cannot be resumed safely


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
    refuse_symlinks(place.root)
    state = read_state(place)
    if state is not None and not resume:
        raise ConfigError(
            f"{place.root} already holds the {state.get('kind', 'run')} with parent run {state.get('parent_run_id')} "
            f"(stage {state.get('stage')}); pass --resume to finish it, or choose another --results directory"
        )
    if state is None and resume:
        raise ConfigError(f"--resume: nothing to resume at {place.root} (no {STATE_FILE})")
    return state


def refuse_symlinks(root: Path) -> None:
    """No symbolic link anywhere below a run folder: a resume writes harness.json, state files, buffers
    and the report there, and a planted link (report/report.md -> a file elsewhere) would be written
    through (issue 15.4). Checked before anything is written; the message names the link."""
    if not root.exists():
        return
    if root.is_symlink():
        raise ConfigError(f"{root}: the run folder is a symbolic link; refusing to write through it")
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in (*dirs, *files):
            path = Path(folder) / name
            if path.is_symlink():
                raise ConfigError(f"{path}: a symbolic link inside the run folder {root} (to {os.readlink(path)}); "
                                  "refusing to write below it: remove the link")


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
                params: Mapping[str, Any] = {}, plan: Mapping[str, Any] = {}) -> tuple[tracking.TrackingTarget, dict]:
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
             "mlflow_experiment": place.mlflow_experiment, "tracking_uri": redacted, "stage": "started",
             "format": RESUME_FORMAT, **plan}
    write_state(place, state)
    return tracking.TrackingTarget(place.tracking_uri, experiment_id, parent, place.mlflow_experiment), state


def check_resume(state: Mapping[str, Any], place: RunPlace, signature: Mapping[str, Any],
                 plan: Mapping[str, str]) -> None:
    """Refuse a --resume that would mix configurations: a run-wide setting (`signature`: dataset, data,
    preset, --set, ...) or the config of a trial present in both plans changed. New trials (more seeds,
    more search trials) are fine: they are added. The message names what changed."""
    if state.get("format") != RESUME_FORMAT:
        raise ConfigError(f"--resume: {place.root} was started by an older emmil-bench (harness.json without a "
                          "resume plan); it cannot be resumed safely: start again in another --results directory")
    # both as harness.json stores them: a tuple reads back as a list and is the same setting
    old, signature = (json.loads(json.dumps(s, default=str)) for s in (state.get("signature") or {}, signature))
    changed = [k for k in sorted(set(old) | set(signature)) if old.get(k) != signature.get(k)]
    if changed:
        what = "; ".join(_changed(k, old.get(k), signature.get(k)) for k in changed)
        raise ConfigError(f"--resume: {place.root} was started with other settings ({what}). A resume finishes the "
                          "same run; a changed setting is a new run: use another --results directory")
    old_plan = state.get("plan") or {}
    differ = [t for t in plan if t in old_plan and old_plan[t] != plan[t]]
    if differ:
        shown = ", ".join(f"{t} (config {old_plan[t]} -> {plan[t]})" for t in differ[:5])
        more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
        raise ConfigError(f"--resume: the configuration of {len(differ)} trial(s) changed since {place.root} was "
                          f"started: {shown}{more} (the experiment file or the preset's defaults changed); "
                          "use another --results directory")


def _changed(name: str, old: Any, new: Any) -> str:
    """`name: was X, now Y`, down to the keys that differ when both are mappings (a space file's param)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return "; ".join(_changed(f"{name}.{k}", old.get(k), new.get(k))
                         for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
    return f"{name}: was {_short(old)}, now {_short(new)}"


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def finished_trials(place: RunPlace, trial_ids, *, need_test: bool) -> dict[str, dict]:
    """{trial_id: its final report} for the trials whose state file records the last epoch (and the test
    metrics when the stage evaluates on test): what a resume keeps instead of running again."""
    from harness.ray_tune import read_trial_state, trial_state_file

    done = {}
    for trial_id in trial_ids:
        report = read_trial_state(trial_state_file(place.state_dir, trial_id), 0).get("report") or {}
        last = report.get("epoch") is not None and report.get("epoch") == report.get("total_epochs")
        if last and (not need_test or "test_avg_mAP" in report):
            done[trial_id] = {**report, "error": "", "search": {}, "trial_key": trial_id}
    return done


def tune_dir_name(place: RunPlace, base: str) -> str:
    """A fresh Tune experiment folder per launch: `base`, then `base`-resume1, -resume2, ... (Tune's state
    of an earlier launch is kept for inspection, never restored: see the module doc)."""
    if not (place.root / base).exists():
        return base
    k = 1
    while (place.root / f"{base}-resume{k}").exists():
        k += 1
    return f"{base}-resume{k}"


def close_trial_runs(target: tracking.TrackingTarget, buffer_dir: Path, rows: list[Mapping[str, Any]],
                     interrupted: str = "") -> dict[str, int]:
    """After Tune returns: deliver buffers the trials could not, and close runs left RUNNING.

    A trial stopped early by ASHA ends without its own termination call: its run is closed KILLED with
    the tag emmil.stopped_early=true; an errored trial's run is closed FAILED. After Ctrl-C / SIGTERM
    (`interrupted`: the signal's name) every run still RUNNING is closed KILLED with the tag
    emmil.interrupted=<signal> instead: its trial did not end, --resume continues it in the same run.
    Returns counts {"flushed_late": n, "killed": n, "failed": n, "undelivered": n, "orphaned": n,
    "interrupted": n}.
    """
    counts = {"flushed_late": 0, "killed": 0, "failed": 0, "undelivered": 0, "undelivered_metrics": 0,
              "orphaned": 0, "interrupted": 0}
    by_key = {str(r.get("trial_key")): r for r in rows if r.get("trial_key")}
    stems = {_file_stem(k): k for k in by_key}
    if buffer_dir.is_dir():
        for path in sorted(buffer_dir.glob("*.jsonl")):
            run = tracking.TrialRun(target, stems.get(path.stem, path.stem), {}, path, delivered_by="driver")
            if not run.pending:
                continue
            if path.stem not in stems and run.run_id is None:
                # A trial Tune no longer knows (the driver was SIGKILLed before its experiment state listed
                # it) that never created its run: a re-sampled trial replaces it; creating a run here would
                # add a duplicate under a made-up id (found by tests/faults, issue 6).
                counts["orphaned"] += 1
                continue
            metrics = run.pending_metric_values()
            if run.flush():
                counts["flushed_late"] += 1
            else:
                counts["undelivered"] += 1
                counts["undelivered_metrics"] += metrics
    try:
        children = tracking.child_runs(target.uri, target.experiment_id, target.parent_run_id)
    except Exception:  # noqa: BLE001 - the server is down at the end: the runs stay open, the buffers on disk
        counts["tracking_down"] = 1
        return counts
    for child in children:
        if child.info.status != "RUNNING":
            continue
        key = child.data.tags.get("emmil.trial_id", "")
        row = by_key.get(key, {})
        if interrupted:  # stopped by the user or a scheduler: neither failed nor stopped by ASHA
            tracking.finish_run(target.uri, child.info.run_id, "KILLED", {"emmil.interrupted": interrupted})
            counts["interrupted"] += 1
        elif key not in by_key:  # an orphaned attempt (see above) that had created its run
            tracking.finish_run(target.uri, child.info.run_id, "KILLED", {"emmil.orphaned": "true"})
            counts["orphaned"] += 1
        elif row.get("error"):
            tracking.finish_run(target.uri, child.info.run_id, "FAILED", {"emmil.error": str(row["error"])[:4000]})
            counts["failed"] += 1
        else:
            tracking.finish_run(target.uri, child.info.run_id, "KILLED", {"emmil.stopped_early": "true"})
            counts["killed"] += 1
    return counts


def finish_parent(target: tracking.TrackingTarget, place: RunPlace, status: str, tags: Mapping[str, str],
                  metrics: Mapping[str, float], out) -> None:
    """Close the parent run; with the tracking server down at the very end, say what is left and how
    to deliver it (harness.json records the outcome, `emmil tracking flush` closes the run later)
    instead of a traceback (issue 13)."""
    try:
        tracking.finish_run(target.uri, target.parent_run_id, status, tags, metrics)
    except Exception as exc:  # noqa: BLE001 - the trials are done; the message says what to do
        out(f"tracking:          server unreachable at the end ({type(exc).__name__}: {str(exc)[:160]}): the "
            f"parent run {target.parent_run_id} is still RUNNING in MLflow; when the server is up, run "
            f"`emmil tracking flush --results {place.results}` to deliver the buffers and close it as {status}")


def tracking_summary(rows: list[Mapping[str, Any]], closed: Mapping[str, int], buffer_dir: Path) -> str:
    """One line for the end-of-run summary: were metrics delayed by a tracking outage, and are they all
    delivered now? rows: per-trial last results (`tracking_delayed_flushes` = failed flush attempts)."""
    attempts = [int(r.get("tracking_delayed_flushes") or 0) for r in rows]
    delayed = sum(1 for a in attempts if a > 0)
    undelivered = int(closed.get("undelivered", 0))
    if closed.get("tracking_down"):
        return (f"tracking:          server unreachable when the driver ended: runs still RUNNING there are "
                f"closed, and the buffers in {buffer_dir} delivered, by `emmil tracking flush --results "
                f"{buffer_dir.parent.parent}` once it is up")
    if not delayed and not undelivered:
        return "tracking:          every metric delivered as it was logged"
    text = (f"tracking:          server unavailable for a while: {delayed} trial(s) buffered their metrics "
            f"({sum(attempts)} failed flush attempt(s)); ")
    if undelivered:
        results = buffer_dir.parent.parent
        return text + (f"{undelivered} trial buffer(s) with {closed.get('undelivered_metrics', 0)} metric values still "
                       f"NOT delivered, kept in {buffer_dir}: deliver them with `emmil tracking flush --results "
                       f"{results}` once the server is up (or the run's --resume)")
    return text + "all buffered metrics delivered, none lost"


def _file_stem(trial_id: str) -> str:
    from harness.ray_tune import _safe_file_name

    return _safe_file_name(trial_id)


def resume_command(command: str) -> str:
    """The command that finishes an interrupted run: the same one with --resume."""
    return command if "--resume" in command.split() else command + " --resume"


# Below this much free space under the results dir a run stops (harness.ray_tune.StopOnSignalOrFullDisk):
# a trial's state file alone is a few MB at the paper's sizes, and the start needs 200 MiB (check_results_dir).
DISK_FULL_BYTES = 16 * 2**20


def disk_full(path: Path) -> bool:
    import shutil

    try:
        return shutil.disk_usage(path).free < DISK_FULL_BYTES
    except OSError:  # the folder vanished: not a full disk
        return False


def stop_reason(results: Path, signum: int | None) -> str:
    """Why an unfinished run stopped: the signal's name, `disk full at PATH`, or "" (trials failed)."""
    from harness import stop_signals

    if signum:
        return stop_signals.name(signum)
    return f"disk full at {results}" if disk_full(results) else ""


def disk_full_message(results: Path, command: str) -> str:
    import shutil

    free = shutil.disk_usage(results).free / 2**20
    return (f"disk full at {results} ({free:.1f} MiB free): the run stopped. Finished trials and every trial's "
            f"state file are kept (written atomically); free some space and finish the run with:\n  "
            f"{resume_command(command)}")


@contextlib.contextmanager
def stop_on_full_disk(results: Path, command: str) -> Iterator[None]:
    """A write that failed because the disk is full, anywhere in the driver (MLflow's SQLite store,
    harness.json, Tune's files), becomes one `error: disk full at PATH` with the resume command, not a
    traceback (issue 15.7). Any other error passes through unchanged."""
    import errno

    try:
        yield
    except ConfigError:
        raise
    except Exception as exc:
        enospc = any(getattr(e, "errno", None) == errno.ENOSPC or "disk is full" in str(e) or
                     "No space left" in str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None)
        if enospc or disk_full(results):
            raise ConfigError(disk_full_message(results, command) +
                              f"\n(the failed write: {type(exc).__name__}: {str(exc)[:300]})") from None
        raise


LOCK_FILE = ".emmil-driver.lock"


@contextlib.contextmanager
def driver_lock(results: Path, command: str) -> Iterator[Path]:
    """One driver per results directory (issue 13): a second `emmil ablate` / `emmil sweep` on it is
    refused at once, naming the lock and the process holding it.

    Two drivers would share the SQLite stores (two creating mlflow.db at once race its schema
    migration) and, on one experiment, run one trial twice. The lock is flock(2) on
    <results>/.emmil-driver.lock: the kernel drops it when the holder dies, even by SIGKILL, so a stale
    file never blocks a --resume (the pid written in it is only for the message). Local to one
    machine: drivers on two machines sharing a network results dir are not excluded (docs/harness.md)."""
    import fcntl

    path = results / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open the driver lock ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            raise ConfigError(f"another emmil driver is running on {results} ({holder}; lock {path}): two drivers "
                              "on one results directory would share its stores and could run a trial twice. "
                              "Wait for it to end, or use another --results directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": command, "since": time.time()},
                                allow_nan=False).encode())
        yield path
    finally:
        os.close(fd)  # releases the flock


def _lock_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {int(info['pid'])}, `{str(info['command'])[:200]}`, since {since}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"


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
    try:  # the parent run carries its report: `mlflow ui` shows it beside the runs it was built from
        tracking.client(target.uri).log_artifacts(target.parent_run_id, str(out), artifact_path="report")
    except Exception as exc:  # noqa: BLE001 - the report is on disk; the upload is a convenience
        return f"report:            {out} (not attached to the parent run: {type(exc).__name__}: {str(exc)[:200]})"
    return f"report:            {out} (also the parent run's artifact report/)"


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
