"""Ray Tune adapter: the trainable that runs one EM-MIL trial, resources, checkpoints, resume.

The trial calls the core in three places only (`resolve_config`, `fit`, `evaluate_test`, plus
`choose_device`), all in `emmil_trial`. One trial = one training run:
  - the dataset comes from the object store (`tune.with_parameters`), read zero-copy;
  - resources are declared per trial (`tune.with_resources`: cpu, fractional gpu); the core's device
    choice follows the CUDA_VISIBLE_DEVICES that Ray sets for the trial;
  - every epoch: metrics buffered to MLflow (harness.tracking.TrialRun), then `EpochResult.state()`,
    the MLflow run id and the report written atomically to the trial's state file
    (<results>/<name>/trial-state/<trial>.pt, one per trial, replaced each epoch), then one
    `tune.report` with a small marker checkpoint. A retried trial (FailureConfig.max_failures) or a
    resumed experiment (a fresh Tune experiment, see below) continues from the state file, in the same MLflow run.
    Why not the state inside Tune's checkpoints: Tune prunes a trial's old checkpoints
    (CheckpointConfig.num_to_keep) as soon as a newer one is registered, but saves its experiment
    snapshot, which names the checkpoint to restore, only afterwards; a driver killed in between left a
    snapshot naming a deleted checkpoint, and the resumed trial failed every retry ("Could not recover
    from checkpoint as it does not exist on storage anymore"; found by tests/faults/test_driver_kill.py
    on CI). Marker checkpoints are a few bytes and never pruned, so the one any snapshot names exists;
    the state file is the only large file per trial, as one kept checkpoint was before;
  - the last epoch also evaluates the test split when the stage allows it (never in a search).
A resumed experiment is never `Tuner.restore`d (Tune's state is pickled: issue 15.1); harness.runner
starts a fresh Tune experiment with the unfinished trials, which continue from their state files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping


# Set before Ray starts so that every worker inherits them (DESIGN.md section 10).
RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # A trial that asks for 0 GPUs must not see every GPU of the node.
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no tensorboard/csv/json loggers per trial
    "RAY_AIR_NEW_OUTPUT": "0",
    # Ctrl-C / SIGTERM are ours (harness.stop_signals): Tune's handler would replace it during fit()
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
}
# A trial must not hang minutes on a dead tracking server (MLflow's default is 7 retries, 120 s).
TRIAL_MLFLOW_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
MARKER_FILE = "epoch.json"  # in each Tune checkpoint: {"epoch": k}; the state is in the state file
# Per-epoch metrics go to the trial's JSONL buffer at once (durable) and to MLflow at most this often,
# and always at the end: one SQLite/HTTP round trip per few seconds instead of per epoch.
FLUSH_EVERY_S = 5.0


def set_ray_env() -> None:
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


set_ray_env()  # before the first `import ray` of this process

from ray import tune  # noqa: E402

from emmil.errors import ConfigError  # noqa: E402


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
                object_store_memory: int | None = None) -> Iterator[bool]:
    """Join `address` (or $RAY_ADDRESS), or start a private local instance and stop it at the end.

    Yields True when this call started Ray. An already initialised Ray (tests) is used as is.
    """
    set_ray_env()
    import ray

    if ray.is_initialized():
        yield False
        return
    where = "--address" if address else "$RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":  # Ray's keyword for "start a new local instance"
        address = None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": True, "logging_level": "ERROR"}
    if address:
        # The cluster's processes did not inherit our environment: pass what the trials need.
        env = {k: os.environ[k] for k in ("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO",) if k in os.environ}
        try:
            ray.init(address=address, runtime_env={"env_vars": {**env, **TRIAL_MLFLOW_ENV}}, **kwargs)
        except ConnectionError as exc:  # "auto" with no cluster started on this machine
            raise ConfigError(f"{where} {address}: no running Ray cluster found ({str(exc)[:200]}); start one "
                              "with `ray start --head`, or unset it for a private local instance") from None
    else:
        # address="local": a private instance even if a stale /tmp/ray/ray_current_cluster exists.
        with loopback_only():
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                     object_store_memory=object_store_memory, **kwargs)
    from harness import stop_signals

    stop_signals.reinstall()  # ray.init replaced the SIGTERM handler with its own
    try:
        yield True
    finally:
        ray.shutdown()


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """A private instance listens on 127.0.0.1 only (issue 13), like the MLflow server the tests start.

    Ray has no public switch: `_node_ip_address="127.0.0.1"` is rewritten to the machine's reachable
    address (services.resolve_ip_for_localhost), and GCS, raylet and workers then listen on every
    interface. Ray takes the loopback address when its cluster support is off
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, its macOS/Windows default): the variable reaches the processes
    ray.init starts, and the constant this process read at import time is switched for the start.
    Only for an instance we start: a driver joining a cluster (--address) must be reachable by it.
    tests/faults/test_interrupt.py lists the listening sockets to check it."""
    from ray._private import ray_constants

    variable = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    before_env, before_const = os.environ.get(variable), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[variable] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_const
        if before_env is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before_env


def _safe_file_name(trial_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", trial_id)


def trial_state_file(state_dir: str | os.PathLike, trial_id: str) -> Path:
    return Path(state_dir) / f"{_safe_file_name(trial_id)}.pt"


def marker_epoch(checkpoint) -> int:
    """The epoch a Tune marker checkpoint records; 0 without one (a trial Tune starts afresh)."""
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as d:
        path = Path(d) / MARKER_FILE
        if not path.is_file():  # a checkpoint of an experiment started before state files existed
            raise ConfigError(f"{d}: a Tune checkpoint without {MARKER_FILE}: this experiment was started by an "
                              "older emmil-bench whose checkpoints cannot be resumed; start it again in a new "
                              "--results directory")
        return int(json.loads(path.read_text())["epoch"])


def read_trial_state(path: Path, at_least_epoch: int) -> dict:
    """The trial's last saved {"state", "run_id", "report"}; {} when it has none yet.

    The state file is written before each epoch's report, so it is never older than the epoch Tune
    restores (`at_least_epoch`), and may be one or more epochs newer (a worker or driver killed after
    the write): training then continues from the newer one, with identical results. Older or missing
    when Tune knows a later epoch means the file was lost: a clear error, not a silent restart.
    """
    import torch

    if not path.is_file():
        if at_least_epoch:
            raise ConfigError(f"{path}: missing, but Tune restored this trial at epoch {at_least_epoch}; "
                              "the trial-state folder was removed while the run was unfinished")
        return {}
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
        epoch = int(blob["state"]["epoch"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise ConfigError(f"{path}: unreadable trial state ({type(exc).__name__}: {str(exc)[:200]})") from None
    if epoch < at_least_epoch:
        raise ConfigError(f"{path}: holds epoch {epoch}, older than the epoch {at_least_epoch} Tune restored")
    return blob


def write_trial_state(path: Path, blob: Mapping[str, Any]) -> None:
    """Replace the trial's state file atomically: a kill mid-write leaves the previous epoch's intact."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(dict(blob), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
        tmp.unlink(missing_ok=True)  # the previous epoch's file is intact; leave no half-written one
        raise OSError(f"disk full or unwritable at {path.parent}: the trial state was not saved "
                      f"({type(exc).__name__}: {str(exc)[:200]})") from exc


def eval_protocol(exclude_ambiguous: bool) -> str:
    """The `emmil.eval_protocol` tag: which detection protocol the test numbers used."""
    return "ambiguous=removed" if exclude_ambiguous else "ambiguous=kept"  # as emmil.train.train_run


def _maybe_fail(hook: Mapping[str, Any] | None, trial_id: str, epoch: int) -> None:
    """Test hook: raise at epoch k on the FIRST attempt only (a marker file remembers the attempt).

    hook = {"epoch": k, "marker_dir": path, "trial": trial_id or None (every trial)}.
    """
    if not hook or int(hook["epoch"]) != epoch or hook.get("trial") not in (None, trial_id):
        return
    marker = Path(hook["marker_dir"]) / f"{_safe_file_name(trial_id)}.failed"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(epoch))
        raise RuntimeError(f"injected failure at epoch {epoch} of trial {trial_id}")


# What a trial reports to Tune of its epoch metrics: the searched objective (ASHA and Optuna read it
# every epoch) and the progress keys; the last report adds the test metrics and the bookkeeping the
# driver's summaries read. Every other metric goes to MLflow only: Tune keeps windows and statistics of
# every numeric key a trial ever reported (Trial.run_metadata: metric_n_steps, metric_analysis) for the
# whole experiment, so each key costs driver memory per trial (issue 13's long sweep).
EPOCH_REPORT_KEYS = ("val_avg_mAP", "loss", "epoch", "total_epochs")


def epoch_report(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The EPOCH_REPORT_KEYS of one epoch's metrics (val_avg_mAP only on epochs that validate)."""
    return {k: metrics[k] for k in EPOCH_REPORT_KEYS if k in metrics}


# A trial on another node than the driver's cannot leave its undelivered buffer behind: without a shared
# filesystem the driver never sees that node's results folder (issue 13). It retries delivery for up to
# this long before it reports done, then fails (Tune retries it from its checkpoint; nothing is lost).
DELIVER_TIMEOUT_ENV = "EMMIL_TRACKING_DELIVER_TIMEOUT_S"
DELIVER_TIMEOUT_S = 600.0


class TrackingUndelivered(RuntimeError):
    """A remote trial could not deliver its buffered tracking calls before its deadline."""


def deliver_before_done(tracker, node: str, timeout_s: float | None = None, out=print) -> None:
    """Flush `tracker` until nothing is pending, at most `timeout_s` (default $EMMIL_TRACKING_DELIVER_TIMEOUT_S
    or 600 s), saying what it waits for; raise TrackingUndelivered naming the node and buffer when it ends."""
    if timeout_s is None:
        timeout_s = float(os.environ.get(DELIVER_TIMEOUT_ENV) or DELIVER_TIMEOUT_S)
    t0 = time.monotonic()
    wait = 2.0
    while not tracker.flush():
        waited = time.monotonic() - t0
        if waited >= timeout_s:
            raise TrackingUndelivered(
                f"trial {tracker.trial_id}: tracking server unreachable for {waited:.0f} s "
                f"({tracker.last_error}); {tracker.pending_metric_values()} metric values stay buffered at "
                f"{tracker.buffer_path} on node {node}, which the driver may not reach; raise "
                f"${DELIVER_TIMEOUT_ENV} or deliver them there with `emmil tracking flush`")
        out(f"emmil trial {tracker.trial_id} (node {node}): tracking server unreachable ({tracker.last_error[:120]}); "
            f"{tracker.pending_metric_values()} metric values buffered on this node; retrying before reporting done "
            f"({waited:.0f} of {timeout_s:.0f} s)", flush=True)
        time.sleep(min(wait, max(timeout_s - waited, 0.0)))
        wait = min(wait * 2, 30.0)


def _epoch_metrics(result) -> dict[str, float]:
    from harness.tracking import metric_items

    return metric_items(result.metrics())  # losses, val_* (when evaluated), lr, epoch_seconds


def shared_features(data, device):
    """The dataset tensor on `device`, without a host copy: the object store's read-only buffer.

    torch warns on non-writable arrays; the core never writes features, so the view is safe.
    On a GPU the one host->device copy is unavoidable.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        host = torch.from_numpy(data.features)  # (sum T_i, D) float32, zero-copy
    return host.to(device)


KEEP_MODELS = ("all", "best", "none")


def keeps_model(policy: str, stage: str) -> bool:
    """--keep-models: `all` every trial writes model.pt; `best` only the trials that train the chosen
    configuration (an ablation's every trial, a sweep's final-test retrain, not its search trials);
    `none` no trial does."""
    return policy == "all" or (policy == "best" and stage != "search")


def _write_artifacts(out_dir: Path, cfg, metrics: Mapping[str, float], outcome, model=None, data=None) -> Path:
    """The trial's artifact folder, logged to its MLflow run: config.yaml, and, when it evaluated on test,
    predictions.json, timelines.json, per_class_ap.json; model.pt (emmil.model_file) when `model` is given;
    metrics.json last (as `emmil train` writes its run directory)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(cfg.to_yaml())
    from emmil.train import finite_or_null

    if outcome is not None:
        (out_dir / "predictions.json").write_text(json.dumps(outcome.predictions))
        (out_dir / "timelines.json").write_text(json.dumps(outcome.timelines))
        (out_dir / "per_class_ap.json").write_text(json.dumps(outcome.per_class_document(), allow_nan=False))
    if model is not None:
        from emmil.model_file import MODEL_FILE, save_model
        from emmil.train import localized_config

        save_model(out_dir / MODEL_FILE, cfg, model, data.classes, clip_seconds=data.clip_seconds,
                   localize=localized_config(cfg, dict(metrics)).localize)
    (out_dir / "metrics.json").write_text(json.dumps(finite_or_null(dict(metrics)), indent=1, sort_keys=True,
                                                     allow_nan=False))  # strict JSON: NaN -> null (issue 13)
    return out_dir


def emmil_trial(config: dict, data=None) -> None:
    """Ray Tune function trainable: one EM-MIL training run (see module doc).

    config = {"trial": {trial_id, name, variant, seed, overrides}, "run": {dataset, preset, stage,
    eval_test, experiment, tracking, tags, buffer_dir, fail_once}, plus, in a search, the sampled
    values under their dotted config keys ("train.gamma": 0.2, ...); optional run["share_training"]
    (default True, or $EMMIL_SHARE_TRAINING=0): trials that differ only in inference-only keys train
    once (harness.shared_training) and each replays that training with its own localiser.
    """
    for key, value in TRIAL_MLFLOW_ENV.items():
        os.environ.setdefault(key, value)
    from emmil import train as core
    from emmil.config import config_hash, resolve_config
    from harness import shared_training
    from harness.tracking import TrackingTarget, TrialRun, trial_uri

    from harness.optuna_search import search_params

    spec, run = config["trial"], config["run"]
    search = search_params(config)
    ctx = tune.get_context()
    import ray

    node = ray.get_runtime_context().get_node_id()
    remote = node != run.get("driver_node_id", node)  # see deliver_before_done
    trial_id = spec.get("trial_id") or f"{run['id_prefix']}/{ctx.get_trial_id()}"
    cfg = resolve_config(run["dataset"], preset=run["preset"], seed=int(spec["seed"]),
                         overrides={**spec["overrides"], **search})
    device = core.choose_device(cfg.device)

    state_file = trial_state_file(run["state_dir"], trial_id)
    blob = read_trial_state(state_file, marker_epoch(tune.get_checkpoint()))
    state, run_id, last_report = blob.get("state"), blob.get("run_id"), blob.get("report")
    done_epoch = int(state["epoch"]) if state is not None else 0

    # Score once, localise per variant (harness.shared_training, issue 14.10): a trial whose config
    # differs from another's only in inference-only keys (localize.*, train.exclude_ambiguous) reuses
    # that trial's training (REPLAY), waiting for it when it is still running; the first one TRAINs and
    # saves it under <results>/<name>/shared-training/. A replay recomputes its own val_* per epoch and
    # its test metrics from the saved weights: == what training it again would give.
    shared = shared_training.for_trial(Path(run["state_dir"]).parent, cfg, data, device, trial_id)
    claim = shared_training.Claim(shared_training.ALONE, str(blob.get("trained_by") or trial_id))
    if done_epoch < cfg.train.epochs and shared_training.enabled(run):
        claim = shared.claim()
    resume = state if state is not None and "model" in state else None  # a replay's state holds no model
    # a trial that replayed epochs 1..k and must now train (the shared training vanished) trains them
    # again without reporting or logging them twice
    skip_through = done_epoch if resume is None and claim.mode != shared_training.REPLAY else 0

    gpu_ids = ",".join(str(g) for g in ray.get_gpu_ids())
    tags = {
        **run["tags"],
        "emmil.variant": spec.get("variant", cfg.variant),
        "emmil.seed": cfg.seed,
        "emmil.eval_protocol": eval_protocol(cfg.train.exclude_ambiguous),
        "emmil.data_source": data.source,
        "emmil.device": str(device),
        "emmil.gpu_ids": gpu_ids or "none",
        "emmil.config_hash": config_hash(cfg),
        "emmil.stage": run["stage"],
        "emmil.training_key": shared.key,  # equal for trials that train the same weights
        "emmil.trained_by": claim.trained_by,  # the trial that trained them (this one unless it replayed)
    }
    buffer = Path(run["buffer_dir"]) / f"{_safe_file_name(trial_id)}.jsonl"
    target = TrackingTarget(**{**run["tracking"], "uri": trial_uri(run["tracking"]["uri"])})
    tracker = TrialRun(target, trial_id, tags, buffer, run_id=run_id)
    if state is None:
        tracker.log_params(cfg.to_flat_dict())
    tracker.flush()
    # epochs after the checkpoint that a previous attempt already logged are not logged twice
    logged_through = tracker.logged_through("loss") if state is not None else 0

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    trial_dir = Path(ctx.get_trial_dir())
    features = shared_features(data, device)
    # 1.0 when the trial trains on the object store's buffer itself (CPU): no private copy of the data
    zero_copy = float(features.data_ptr() == data.features.ctypes.data)
    if done_epoch >= cfg.train.epochs:
        epochs = iter(())  # finished before: see below
    elif claim.mode == shared_training.REPLAY:
        epochs = core.replay(cfg, data, claim.records, shared.weights, device=device, features=features,
                             start=done_epoch + 1)
    else:
        epochs = core.fit(cfg, data, device=device, resume=resume, features=features)
    training = claim.mode == shared_training.TRAIN
    yielded = False
    try:
        for result in epochs:
            _maybe_fail(run.get("fail_once"), trial_id, result.epoch)
            last = result.epoch >= result.total_epochs
            if training:  # before this epoch's state file: a resumed trainer finds epochs <= its state saved
                shared.record_epoch(core.epoch_record(result),
                                    result.model.state_dict if result.val or last else None)
                if last:
                    shared.finish(result.total_epochs)  # done.json, lock released: the others go on now
            if result.epoch <= skip_through:
                continue
            yielded = True
            metrics = _epoch_metrics(result)
            if result.epoch > logged_through:
                tracker.log_metrics(metrics, step=result.epoch)
            report: dict[str, Any] = epoch_report(
                {**metrics, "epoch": result.epoch, "total_epochs": result.total_epochs})
            if last:
                outcome = None
                final: dict[str, float] = dict(metrics)
                if run["eval_test"]:
                    outcome = core.evaluate_test(cfg, data, result.model, device=device, features=features)
                    final = {k: float(v) for k, v in outcome.metrics.items()}
                    tracker.log_metrics(final, step=result.epoch)
                    report.update(final)
                model = result.model if keeps_model(run.get("keep_models", "all"), run["stage"]) else None
                tracker.log_artifacts(_write_artifacts(trial_dir / "artifacts", cfg, final, outcome, model, data))
                tracker.terminate("FINISHED")
                delivered = tracker.flush_with_retries()
                if not delivered and remote:
                    deliver_before_done(tracker, node)
                    delivered = True
            else:
                # a search trial can be stopped by the scheduler at any report: deliver every epoch
                delivered = tracker.maybe_flush(0.0 if run["stage"] == "search" else FLUSH_EVERY_S)
            report.update({"tracking_ok": float(delivered), "tracking_delayed_flushes": tracker.failed_flushes,
                           "mlflow_run_id": tracker.run_id or "", "trial_key": trial_id,
                           "variant": tags["emmil.variant"], "seed": cfg.seed,
                           "cuda_visible_devices": visible, "gpu_ids": gpu_ids, "device": str(device),
                           "features_zero_copy": zero_copy, "trained_by": claim.trained_by,
                           "shared_training": claim.mode, "shared_wait_seconds": shared.waited_s})
            write_trial_state(state_file, {"state": result.state(), "run_id": tracker.run_id, "report": report,
                                           "trained_by": claim.trained_by})
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / MARKER_FILE).write_text(json.dumps({"epoch": result.epoch}, allow_nan=False))
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))
    finally:
        shared.release()  # a crash or a stop (Tune ends the thread at a report) never keeps the lock
    if not yielded and last_report is not None:
        # Restored from the checkpoint of its LAST epoch (the driver died before recording the trial as
        # finished): nothing is left to train; report the final result again so Tune has it.
        if not tracker.flush_with_retries() and remote:
            deliver_before_done(tracker, node)
        tune.report(last_report)


# ---------------------------------------------------------------------------------------------
# Driver side


@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None  # None: as many as the resources allow

    def as_dict(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


class TrialProgress(tune.Callback):
    """One line per finished/failed trial on stdout (Tune itself runs with verbose=0), and a heartbeat
    line per running trial at most every `heartbeat_s` seconds: a paper-preset trial on a CPU runs for
    tens of minutes, and a driver silent that long looks hung."""

    def __init__(self, total: int, label: str = "trial", heartbeat_s: float = 60.0):
        self.total, self.label, self.done, self.start = total, label, 0, time.time()
        self.heartbeat_s = heartbeat_s
        self.last_beat: dict[str, float] = {}  # trial_id -> time of its last heartbeat line
        self.started: dict[str, float] = {}  # trial_id -> when this driver first saw it start

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.setdefault(trial.trial_id, time.time())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = time.time()
        if now - self.last_beat.setdefault(trial.trial_id, self.start) >= self.heartbeat_s:
            self.last_beat[trial.trial_id] = now
            self._line(trial, "running", result)

    def _line(self, trial, word: str, result: Mapping | None) -> None:
        result = result or {}
        name = result.get("trial_key") or trial.config.get("trial", {}).get("name") or trial.trial_id
        now = time.time()
        # the trial's own duration (issue 14.9: time since the driver started read as a trial's), then the total
        took = now - self.started.get(trial.trial_id, self.start)
        bits = [f"[{self.done}/{self.total or '?'}] {self.label} {name} {word}",
                f"trial {took:6.1f}s (total {now - self.start:.0f}s)"]
        if "epoch" in result:
            bits.append(f"epoch {result['epoch']}/{result.get('total_epochs', '?')}")
        for key in ("test_avg_mAP", "test_mAP_0.50", "val_avg_mAP"):
            if isinstance(result.get(key), float):
                bits.append(f"{key}={result[key]:.4f}")
        print("  ".join(bits), flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        last = trial.last_result or {}
        early = last.get("epoch", 0) < last.get("total_epochs", 0)
        self._line(trial, "stopped early" if early else "done", last)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        self._line(trial, "FAILED", trial.last_result)

    def on_trial_recover(self, iteration, trials, trial, **info):
        print(f"  {self.label} {trial.trial_id}: failed, retrying from its last checkpoint", flush=True)


class StopOnSignalOrFullDisk(tune.Stopper):
    """Stops the whole Tune experiment once harness.stop_signals recorded Ctrl-C or SIGTERM, or the disk
    of `storage` (the run folder) is full: Tune asks `stop_all` on every step of its loop, so running
    trials stop within about a second, and a full disk stops the run instead of burning every trial's
    retries on writes that cannot succeed (issue 15.7). The disk is looked at once a second at most."""

    def __init__(self, storage: Path):
        self.storage, self.checked, self.full = Path(storage), 0.0, False

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        from harness import runner, stop_signals

        now = time.monotonic()
        if not self.full and now - self.checked >= 1.0:
            self.checked, self.full = now, runner.disk_full(self.storage)
        return self.full or stop_signals.requested() is not None


def check_resources(resources: Resources) -> None:
    """Refuse a per-trial request that no live node of the Ray cluster can meet: Tune would keep such a
    trial PENDING forever, silently (found with --gpus-per-trial 0.25 on a machine without a GPU)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    need_cpu, need_gpu = resources.cpus_per_trial, resources.gpus_per_trial
    if any(n.get("CPU", 0) >= need_cpu and n.get("GPU", 0) >= need_gpu for n in nodes):
        return
    have = ", ".join(f"{n.get('CPU', 0):g} CPUs + {n.get('GPU', 0):g} GPUs" for n in nodes) or "none alive"
    raise ConfigError(f"--cpus-per-trial {need_cpu:g} --gpus-per-trial {need_gpu:g}: no node of the Ray cluster "
                      f"can run one trial (nodes: {have}); lower the request"
                      + (" (--gpus-per-trial 0 on a machine without a GPU)" if need_gpu and
                         not any(n.get("GPU", 0) for n in nodes) else ""))


def put_dataset(take: Callable[[], Any]):
    """ray.put the dataset ONCE; the driver's copy is dropped right after (only the ObjectRef stays).

    Trials get it through `tune.with_parameters(data=ref)` (an ObjectRef is used as is) and read the
    feature array zero-copy from the node's shared-memory object store.
    """
    import ray

    return ray.put(take())


def tune_trials(
    data,
    *,
    name: str,
    storage: Path,
    param_space: Mapping[str, Any] | None,
    resources: Resources,
    max_failures: int = 2,
    num_samples: int = 1,
    metric: str | None = None,
    mode: str | None = None,
    search_alg=None,
    scheduler=None,
    progress_total: int = 0,
    progress_label: str = "trial",
    trainable_fn: Callable[..., None] | None = None,
):
    """Run one fresh Tune experiment at storage/name (never a restored one: see the module doc); ResultGrid.

    `data`: the dataset's ObjectRef from `put_dataset` (an object would be put again per call).
    `trainable_fn`: emmil_trial (default) or harness.packed_trials.emmil_pack_trial.
    """
    trainable = tune.with_parameters(tune.with_resources(trainable_fn or emmil_trial, resources.as_dict()), data=data)
    param_space = dict(param_space or {})
    if isinstance(param_space.get("run"), Mapping):  # trials on other nodes deliver before done (emmil_trial)
        import ray

        param_space["run"] = {**param_space["run"], "driver_node_id": ray.get_runtime_context().get_node_id()}
    tune_config = tune.TuneConfig(
        metric=metric, mode=mode, search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
        max_concurrent_trials=resources.max_concurrent, reuse_actors=True,
    )
    run_config = tune.RunConfig(
        name=name,
        storage_path=str(storage),
        verbose=0,
        failure_config=tune.FailureConfig(max_failures=max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # never pruned: see the module doc
        callbacks=[TrialProgress(progress_total, progress_label)],
        stop=StopOnSignalOrFullDisk(storage),
        log_to_file=True,
    )
    tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                       run_config=run_config)
    return tuner.fit()


def result_rows(grid) -> list[dict[str, Any]]:
    """One dict per trial: its last reported metrics, status and error (for summaries)."""
    rows = []
    for result in grid:
        metrics = dict(result.metrics or {})
        metrics["error"] = repr(result.error) if result.error else ""
        from harness.optuna_search import search_params

        metrics["search"] = search_params(result.config or {})
        metrics.setdefault("trial_key", ((result.config or {}).get("trial") or {}).get("trial_id") or "")
        rows.append(metrics)
    return rows
