"""MLflow adapter: the tracking schema of docs/CONTRACTS.md, written with batched calls.

Driver side: `prepare_store` creates the store and the experiment ONCE (concurrent trials never race
on it), `start_parent_run` opens the parent run. Trial side: `TrialRun` buffers every operation
(params, per-epoch metrics, tags, artifacts, termination) in memory and in a JSONL file, and flushes
with `MlflowClient.log_batch`. If the tracking server is down, training goes on; the buffer is
flushed when it is back, and the run gets the tag `emmil.tracking_delayed_flushes` (failed flush
attempts). The child run is found again by its `emmil.trial_id` tag (or the run id kept in the
checkpoint), so a retried or resumed trial continues the same run: one child run per trial.

No secrets: URIs are logged with their password replaced by '***', no environment variable is logged.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
_MAX_PARAMS_PER_BATCH = 100  # MLflow log_batch limits
_MAX_METRICS_PER_BATCH = 1000


# ---------------------------------------------------------------------------------------------
# Pure helpers


def sqlite_uri(path: str | os.PathLike) -> str:
    """sqlite:///<absolute path>, percent-escaped: SQLAlchemy reads '?' as the start of a query (a results
    dir 'a?b' put mlflow.db in 'a') and unescapes '%xx' (a dir 'a%20b' became 'a b'); it unescapes what
    this escapes, so every character of a folder name survives."""
    from urllib.parse import quote

    return "sqlite:///" + quote(str(Path(path).resolve()), safe="/")


def default_tracking_uri(results_dir: str | os.PathLike) -> str:
    """sqlite:///<absolute results dir>/mlflow.db (absolute: trials run in throwaway folders)."""
    return sqlite_uri(Path(results_dir) / "mlflow.db")


_QUERY_SECRET = re.compile(r"(?i)((?:password|passwd|pwd|token|secret)=)[^&;\s]*")


def redact_uri(uri: str) -> str:
    """The URI with any password (user:PASSWORD@host, ?password=...) replaced by '***'."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    netloc = parts.netloc
    if "@" not in netloc and not _QUERY_SECRET.search(parts.query):
        return uri  # nothing secret (and sqlite:////abs/path keeps its slashes)
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = _QUERY_SECRET.sub(r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_command(argv: Iterable[str]) -> str:
    """A command line for the `emmil.command` tag, every URL-looking token redacted."""
    out = []
    for token in argv:
        if "://" in token:
            key, sep, value = token.partition("=") if token.startswith("--") else ("", "", token)
            token = f"{key}{sep}{redact_uri(value)}"
        out.append(token)
    return " ".join(out)


# The full tracking URI of a run whose URI carries a secret, for the trial processes (issue 15.2).
TRIAL_URI_ENV = "EMMIL_TRACKING_URI"


def uri_for_trials(uri: str) -> str:
    """The tracking URI as it may go into trial configs, which Ray Tune writes to disk (params.json, its
    experiment state) and the Ray session logs: redacted when it carries a password or token. The full
    URI then reaches the trials by environment only: $EMMIL_TRACKING_URI, set here in the driver before
    Ray starts, so that a private Ray's workers inherit it. On a cluster, set it on every node."""
    shown = redact_uri(uri)
    if shown != uri:
        os.environ[TRIAL_URI_ENV] = uri
    return shown


def trial_uri(uri_in_config: str) -> str:
    """Inverse of `uri_for_trials`, in a trial: the full URI from the environment when the config holds
    a redacted one (it must redact to the same text: a stale variable of another run is not used)."""
    if "***" not in uri_in_config:
        return uri_in_config
    full = os.environ.get(TRIAL_URI_ENV, "")
    if full and redact_uri(full) == uri_in_config:
        return full
    from emmil.errors import ConfigError

    raise ConfigError(f"tracking URI {uri_in_config}: its password is passed to trials only by environment, and "
                      f"${TRIAL_URI_ENV} is {'unset' if not full else 'set for another URI'} in this trial's "
                      f"process; on a Ray cluster set {TRIAL_URI_ENV} to the full URI on every node")


def git_commit(repo: Path = REPO_ROOT) -> str:
    """HEAD of the project checkout, or 'unknown' (installed from a wheel, no git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def metric_items(values: Mapping[str, Any]) -> dict[str, float]:
    """Only the finite-or-nan numeric entries, as floats (MLflow metrics are numbers)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)):
            out[str(key)] = float(value)
        elif hasattr(value, "item") and getattr(value, "size", 2) == 1:  # numpy / torch scalar
            out[str(key)] = float(value.item())
    return out


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "postgresql", "mysql", "mssql", "file:")) or "://" not in uri


# ---------------------------------------------------------------------------------------------
# Driver side


@dataclass(frozen=True)
class TrackingTarget:
    """Everything a trial needs to log into the right place (picklable, goes into trial configs)."""

    uri: str  # absolute tracking URI (may contain a password: never logged, only used)
    experiment_id: str
    parent_run_id: str
    experiment_name: str

    def to_dict(self) -> dict:
        """What goes into the trial configs: the URI redacted (see `uri_for_trials`)."""
        return {**asdict(self), "uri": uri_for_trials(self.uri)}


def client(uri: str):
    # MLflow prints "View run <name> at: <tracking URI>/#/..." when a run ends: with a URI that carries
    # a password that leaks it to stdout and every log (found by tests/faults, issue 6).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def prepare_store(uri: str, experiment_name: str, artifact_root: str | os.PathLike | None) -> str:
    """Create (once, in the driver) the store and the experiment; returns the experiment id.

    For a local database the artifacts go to `artifact_root` (absolute), not to ./mlruns of
    whatever directory a trial happens to run in.
    """
    c = client(uri)
    exp = c.get_experiment_by_name(experiment_name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if artifact_root is not None and _is_local_store(uri):
        location = Path(artifact_root).resolve().as_uri()
    return c.create_experiment(experiment_name, artifact_location=location)


def start_parent_run(target_uri: str, experiment_id: str, name: str, tags: Mapping[str, str],
                     params: Mapping[str, Any] = {}) -> str:
    """Open the parent run of an ablation/sweep with its tags and params; returns its id."""
    from mlflow.entities import Param

    c = client(target_uri)
    tags = {"emmil.role": "parent", **tags}
    if tags.get("emmil.git_commit", "unknown") != "unknown":  # MLflow's own tag: the UI shows the source version
        tags.setdefault("mlflow.source.git.commit", tags["emmil.git_commit"])
    run = c.create_run(experiment_id, tags=tags, run_name=name)
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
        c.log_batch(run.info.run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])
    return run.info.run_id


def set_run_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def finish_run(uri: str, run_id: str, status: str = "FINISHED", tags: Mapping[str, str] = {},
               metrics: Mapping[str, float] = {}) -> None:
    from mlflow.entities import Metric, RunTag

    c = client(uri)
    now = int(time.time() * 1000)
    c.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metric_items(metrics).items()],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    )
    c.set_terminated(run_id, status)


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list:
    """The trial runs under a parent (mlflow Run objects), any status."""
    c = client(uri)
    return c.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=10000
    )


def find_trial_run(uri: str, experiment_id: str, trial_id: str) -> str | None:
    """Run id of the child run tagged emmil.trial_id == trial_id, or None."""
    c = client(uri)
    quoted = trial_id.replace("'", "\\'")
    runs = c.search_runs([experiment_id], filter_string=f"tags.`emmil.trial_id` = '{quoted}'", max_results=2)
    return runs[0].info.run_id if runs else None


# ---------------------------------------------------------------------------------------------
# Trial side


class TrialRun:
    """One child run, written through a buffer that survives tracking outages and trial restarts.

    Operations are appended to `buffer_path` (JSONL) as they are made and the file is rewritten with
    what is still pending after each flush; a restarted trial reloads what it had not flushed.
    """

    def __init__(self, target: TrackingTarget, trial_id: str, tags: Mapping[str, str],
                 buffer_path: str | os.PathLike, run_id: str | None = None, delivered_by: str = "trial"):
        self.target = target
        self.trial_id = trial_id
        # emmil.delivered_by: who sent the run's last buffered operations, "trial" (the trial itself) or
        # "driver" (the driver's or `emmil tracking flush`'s second chance, from the results directory)
        self.tags = {"mlflow.parentRunId": target.parent_run_id, "emmil.role": "trial",
                     "emmil.trial_id": trial_id, **{k: str(v) for k, v in tags.items()},
                     "emmil.delivered_by": delivered_by}
        self.buffer_path = Path(buffer_path)
        self.run_id = run_id
        self.failed_flushes = 0
        self.last_error = ""
        # metric key -> highest step logged: a trial restored from an older checkpoint than its last
        # logged epoch (worker SIGKILLed between logging and checkpointing) replays those epochs;
        # their metrics are not logged twice (issue 6: a contiguous history, each epoch once).
        self.logged_steps: dict[str, int] = {}
        self.pending: list[dict] = self._load_pending()
        self._client = None
        self._last_flush = 0.0

    def maybe_flush(self, every_s: float = 5.0) -> bool:
        """Flush if the last flush is `every_s` old (the JSONL buffer already holds everything: a crash
        loses nothing); True when nothing is pending."""
        if time.monotonic() - self._last_flush < every_s:
            return not self.pending
        return self.flush()

    # -- buffering ------------------------------------------------------------------------
    def _load_pending(self) -> list[dict]:
        if not self.buffer_path.is_file():
            return []
        ops = []
        for line in self.buffer_path.read_text().splitlines():
            if line.strip():
                op = json.loads(line)
                if op.get("op") == "_state":  # bookkeeping line: counts survive a restart
                    self.failed_flushes = int(op.get("failed_flushes", 0))
                    self.run_id = self.run_id or op.get("run_id")
                    self.logged_steps = {k: int(v) for k, v in (op.get("logged_steps") or {}).items()}
                else:
                    ops.append(op)
        return ops

    def _persist(self) -> None:
        self.buffer_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.buffer_path.with_suffix(".tmp")
        lines = [json.dumps({"op": "_state", "failed_flushes": self.failed_flushes, "run_id": self.run_id,
                             "logged_steps": self.logged_steps})]
        lines += [json.dumps(op) for op in self.pending]
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.buffer_path)

    def _add(self, op: dict) -> None:
        self.pending.append(op)
        self._persist()

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._add({"op": "params", "values": {k: str(v)[:6000] for k, v in params.items()}})

    def log_metrics(self, values: Mapping[str, Any], step: int) -> None:
        items = {k: v for k, v in metric_items(values).items() if int(step) > self.logged_steps.get(k, -(2**62))}
        if items:
            self.logged_steps.update({k: int(step) for k in items})
            self._add({"op": "metrics", "step": int(step), "ts": int(time.time() * 1000), "values": items})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._add({"op": "tags", "values": {k: str(v) for k, v in tags.items()}})

    def log_artifacts(self, local_dir: str | os.PathLike) -> None:
        self._add({"op": "artifacts", "dir": str(Path(local_dir).resolve())})

    def terminate(self, status: str = "FINISHED") -> None:
        self._add({"op": "terminate", "status": status})

    def pending_metric_values(self) -> int:
        """How many metric values the buffer still holds (what a user is told is not delivered)."""
        return sum(len(op.get("values", {})) for op in self.pending if op.get("op") == "metrics")

    # -- flushing -------------------------------------------------------------------------
    def _mlflow(self):
        if self._client is None:
            self._client = client(self.target.uri)
        return self._client

    def _ensure_run(self) -> str:
        if self.run_id is None:
            self.run_id = find_trial_run(self.target.uri, self.target.experiment_id, self.trial_id)
        if self.run_id is None:
            run = self._mlflow().create_run(self.target.experiment_id, tags=self.tags, run_name=self.trial_id)
            self.run_id = run.info.run_id
        return self.run_id

    def _apply(self, op: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag

        c, run_id = self._mlflow(), self.run_id
        kind = op["op"]
        if kind == "params":
            items = [Param(k, v) for k, v in op["values"].items()]
            for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
                c.log_batch(run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])
        elif kind == "metrics":
            items = [Metric(k, v, op["ts"], op["step"]) for k, v in op["values"].items()]
            for i in range(0, len(items), _MAX_METRICS_PER_BATCH):
                c.log_batch(run_id, metrics=items[i : i + _MAX_METRICS_PER_BATCH])
        elif kind == "tags":
            c.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["values"].items()])
        elif kind == "artifacts":
            c.log_artifacts(run_id, op["dir"])
        elif kind == "terminate":
            c.set_terminated(run_id, op["status"])
        else:
            raise ValueError(f"{self.buffer_path}: unknown buffered operation {kind!r}")

    def flush(self) -> bool:
        """Send what is pending; True when nothing is left. Never raises for tracking errors."""
        self._last_flush = time.monotonic()
        if not self.pending:
            return True
        try:
            self._ensure_run()
            # Tags first so that a run created long ago (by another attempt) carries the current tags.
            self._apply({"op": "tags", "values": {**self.tags, "emmil.tracking_delayed_flushes": str(self.failed_flushes)}})
            while self.pending:
                self._apply(self.pending[0])
                self.pending.pop(0)
        except Exception as exc:  # noqa: BLE001 - any tracking failure must not stop training
            self.failed_flushes += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            self._client = None
            self._persist()
            return False
        self._persist()
        return True

    def logged_through(self, key: str = "loss") -> int:
        """Largest step of `key` already in the run (0 if none or tracking is down).

        A trial restored from a checkpoint older than its last logged epoch (the driver records
        checkpoints with a lag) retrains those epochs identically; it skips logging them again.
        """
        try:
            self._ensure_run()
            return max((int(m.step) for m in self._mlflow().get_metric_history(self.run_id, key)), default=0)
        except Exception:  # noqa: BLE001 - tracking down: at worst an epoch is logged twice
            self._client = None
            return 0

    def flush_with_retries(self, attempts: int = 3, wait_s: float = 2.0) -> bool:
        for i in range(attempts):
            if self.flush():
                return True
            if i + 1 < attempts:
                time.sleep(wait_s * (i + 1))
        return False


def flush_leftover_buffer(target: TrackingTarget, buffer_path: str | os.PathLike, trial_id: str) -> bool:
    """Driver-side second chance for a trial whose buffer could not be flushed before it ended."""
    run = TrialRun(target, trial_id, {}, buffer_path, delivered_by="driver")
    return run.flush()
