"""Score once, localise per variant (issue 14.10): trials whose configs differ only in inference-only
keys train once and each evaluate with their own localiser.

Why sharing is exact. `emmil.train.fit` never reads `localize.*` or `train.exclude_ambiguous`: the
losses, pseudo-labels, schedule, optimisers, batch order and dropout streams depend on `model.*`,
`train.*` (but exclude_ambiguous), `variant`, `seed`, `device` and the data only. Those two keys reach
(a) the per-epoch validation metrics `val_*` (emmil.train.validation_metrics: localiser + mAP on the
held-out training videos), which select nothing inside `fit` (no early stopping, no checkpoint pick;
the validation runs after the epoch's RNG state is saved and `_set_mode` resets every module's mode
at the next epoch, so it leaves no trace in training), and (b) the test evaluation after training,
including `localize.select_on_val`'s choice of lam/gate (done on the final weights, with the run's
own grid). A scheduler (ASHA in a sweep) reads `val_*`, so those are redone per trial, not shared:
the trainer saves the weights of every evaluated epoch, and a trial that reuses the training
recomputes its own `val_*` from them (emmil.train.replay). tests/harness/test_shared_training.py
checks both: `fit` gives equal weights and losses when only those keys differ, and an ablation that
shares gives test and per-epoch metrics == the same variants trained separately.

Layout, per training under the run folder: <results>/<name>/shared-training/<key>/
    lock            flock(2) target: the trial holding it trains; the kernel drops it when that process
                    dies (even SIGKILL), so a crash never blocks the others
    trainer.json    who holds the lock: {trial_id, config_hash, pid}
    history.json    emmil.train.epoch_record of every epoch trained so far (replaced each epoch)
    model-EEEE.pt   weights after epoch E, for every evaluated epoch and the last (torch.save of
                    tensors; read with weights_only=True)
    done.json       written LAST, atomically, once every epoch and weight file is in place: the
                    training is complete and may be reused. Without it nothing is reused.
`<key>` hashes the config without the inference-only keys, the data (emmil_trial's dataset:
annotations in full, a sample of feature rows) and the device (type, GPU model, torch version, CPU
threads: the numbers are identical only on the same kind of device).

Who trains (SharedTraining.claim):
  - done.json exists: REPLAY it (the trial reuses the training), unless it was trained by a trial with
    the SAME full config that is not this one: identical configs are replicates (the fault tests'
    twin trials, a determinism check), so such a trial trains on its own (ALONE, no cache writes);
  - else take the lock without waiting: TRAIN (and write the cache); if a trial with the same full
    config holds it, ALONE; otherwise wait for the holder (polling) and decide again: after it wrote
    done.json, REPLAY; after it crashed (lock free, no done.json), this trial trains.
A cache write that fails (full disk) only stops the sharing of that training (no done.json): the
trial itself goes on. Without a shared filesystem between nodes every node trains its own copy:
correct, only slower. The core never imports this module (it imports no harness code).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

FORMAT = 1  # of done.json / history.json / model files; another value is not reused
SHARED_DIR = "shared-training"  # under <results>/<name>/
ENV_SWITCH = "EMMIL_SHARE_TRAINING"  # "0" disables sharing in every trial (the run setting share_training too)

# Config keys that do not change the trained weights (see the module doc): everything in `localize`
# (Eq. 9 lam, thresholds, gate, proposal scoring, NMS, select_on_val) and the evaluation protocol.
INFERENCE_ONLY_SECTIONS = ("localize",)
INFERENCE_ONLY_KEYS = ("train.exclude_ambiguous",)

TRAIN, REPLAY, ALONE = "train", "replay", "alone"


def is_inference_only(key: str) -> bool:
    """True for a dotted config key that only the evaluation reads ('localize.lam', ...)."""
    return key in INFERENCE_ONLY_KEYS or key.split(".", 1)[0] in INFERENCE_ONLY_SECTIONS


def training_fields(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A flat config (RunConfig.to_flat_dict() or dotted overrides) without its inference-only keys."""
    return {k: v for k, v in flat.items() if not is_inference_only(k)}


def training_group(overrides: Mapping[str, Any]) -> str:
    """The training part of a trial's overrides, as text: trials of one experiment with equal groups (and
    seeds) train the same weights. Used to order trials (harness.experiments.expand_trials); the cache
    itself is keyed by the resolved config (training_key)."""
    return json.dumps(training_fields(overrides), sort_keys=True, default=str)


def _sha(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def data_signature(data) -> str:
    """sha256 of what training reads from an emmil Dataset: name, classes, every video's fields (labels,
    segments: the reference variants train on them), widths, and 1024 evenly spaced feature rows plus
    the array's shape (hashing every row would take seconds per trial at ActivityNet's 10 GB)."""
    import numpy as np

    feats = data.features
    rows = np.unique(np.linspace(0, max(feats.shape[0] - 1, 0), num=min(1024, feats.shape[0])).astype(np.int64))
    h = hashlib.sha256()
    h.update(json.dumps([data.name, list(data.classes), data.rgb_dim, data.flow_dim, data.clip_seconds,
                         list(feats.shape), str(feats.dtype)]).encode())
    h.update(repr(data.videos).encode())
    if rows.size:
        h.update(np.ascontiguousarray(feats[rows]).tobytes())
    return h.hexdigest()


def device_signature(device) -> dict[str, Any]:
    """What else decides the exact numbers: the device kind and model, torch, CPU threads."""
    import torch

    sig: dict[str, Any] = {"type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        sig["gpu"] = torch.cuda.get_device_name(device)
    return sig


def training_key(flat_config: Mapping[str, Any], data_sig: str, device_sig: Mapping[str, Any]) -> str:
    """24 hex chars naming one training: config without inference-only keys + data + device."""
    return _sha({"format": FORMAT, "config": training_fields(flat_config), "data": data_sig,
                 "device": dict(device_sig)})[:24]


def enabled(run: Mapping[str, Any]) -> bool:
    """Sharing is on unless the run settings say share_training=False or $EMMIL_SHARE_TRAINING is 0."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return bool(run.get("share_training", True))


@dataclass(frozen=True)
class Claim:
    mode: str  # TRAIN | REPLAY | ALONE
    trained_by: str  # the trial whose training this trial reports (itself unless REPLAY)
    records: tuple = ()  # REPLAY: done.json's epoch records


def _write_atomic(path: Path, write: Callable[[Any], None], binary: bool) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class SharedTraining:
    """One trial's view of the shared training of its key (see the module doc)."""

    def __init__(self, root: str | os.PathLike, key: str, config_hash: str, trial_id: str, *,
                 poll_s: float = 0.2):
        self.folder = Path(root) / SHARED_DIR / key
        self.key, self.config_hash, self.trial_id, self.poll_s = key, config_hash, trial_id, poll_s
        self.fd: int | None = None
        self.broken = ""  # why this trainer stopped writing the cache ("" = it writes)
        self.records: dict[int, dict] = {}
        self.waited_s = 0.0

    # -- deciding --------------------------------------------------------------------------------
    def claim(self) -> Claim:
        """Decide who trains (module doc); may wait for the trial holding the lock."""
        self.folder.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            while True:
                done = self.read_done()
                if done is not None:
                    if done["config_hash"] == self.config_hash and done["trained_by"] != self.trial_id:
                        return Claim(ALONE, self.trial_id)  # a replicate of the trainer: trains on its own
                    return Claim(REPLAY, str(done["trained_by"]), tuple(done["epochs"]))
                if self._try_lock():
                    if self.read_done() is not None:  # the holder finished between the two looks
                        self.release()
                        continue
                    self._write_json("trainer.json", {"trial_id": self.trial_id, "config_hash": self.config_hash,
                                                      "pid": os.getpid(), "since": time.time()})
                    self.records = self._read_history()
                    return Claim(TRAIN, self.trial_id)
                holder = self._read_json("trainer.json") or {}
                if holder.get("config_hash") == self.config_hash and holder.get("trial_id") != self.trial_id:
                    return Claim(ALONE, self.trial_id)
                time.sleep(self.poll_s)
        finally:
            self.waited_s = time.monotonic() - t0

    def _try_lock(self) -> bool:
        import fcntl

        fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # drops the flock
            self.fd = None

    # -- reading ---------------------------------------------------------------------------------
    def _read_json(self, name: str) -> dict | None:
        path = self.folder / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            with os.fdopen(fd) as f:
                value = json.load(f)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def read_done(self) -> dict | None:
        """done.json when it is complete and of this key and format; else None (not reused)."""
        done = self._read_json("done.json")
        if not done or done.get("format") != FORMAT or done.get("key") != self.key:
            return None
        epochs = done.get("epochs")
        if not isinstance(epochs, list) or [r.get("epoch") for r in epochs] != list(range(1, len(epochs) + 1)):
            return None
        if not all((self.folder / self._model_name(r["epoch"])).is_file() for r in epochs if r.get("weights")):
            return None
        return done

    def _read_history(self) -> dict[int, dict]:
        history = self._read_json("history.json") or {}
        if history.get("format") != FORMAT or history.get("key") != self.key:
            return {}
        return {int(r["epoch"]): r for r in history.get("epochs", [])}

    @staticmethod
    def _model_name(epoch: int) -> str:
        return f"model-{int(epoch):04d}.pt"

    def weights(self, epoch: int) -> dict:
        """The state dict saved after `epoch` (tensors only: torch.load(weights_only=True))."""
        import torch

        path = self.folder / self._model_name(epoch)
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") != self.key or int(blob.get("epoch", -1)) != int(epoch):
            raise ValueError(f"{path}: not the weights of epoch {epoch} of training {self.key}")
        return blob["model"]

    # -- writing (TRAIN) ---------------------------------------------------------------------------
    def _write_json(self, name: str, value: Mapping[str, Any]) -> None:
        _write_atomic(self.folder / name, lambda f: json.dump(dict(value), f), binary=False)

    def _give_up(self, what: str, exc: BaseException) -> None:
        self.broken = f"{what}: {type(exc).__name__}: {str(exc)[:200]}"
        print(f"emmil: training {self.key} is not shared ({self.broken}); the trial goes on", file=sys.stderr)

    def record_epoch(self, record: Mapping[str, Any], model_state: Callable[[], Mapping[str, Any]] | None) -> None:
        """Save one trained epoch (its record, and the weights when `model_state` is given). Never raises
        for a failed write: the training is then just not shared."""
        if self.broken or self.fd is None:
            return
        import torch

        epoch = int(record["epoch"])
        try:
            if model_state is not None:
                state = {k: v.detach().to("cpu", copy=True) for k, v in model_state().items()}
                blob = {"format": FORMAT, "key": self.key, "epoch": epoch, "model": state}
                _write_atomic(self.folder / self._model_name(epoch), lambda f: torch.save(blob, f), binary=True)
            self.records[epoch] = {**dict(record), "weights": model_state is not None}
            self._write_json("history.json", {"format": FORMAT, "key": self.key,
                                              "epochs": [self.records[e] for e in sorted(self.records)]})
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
            self._give_up(f"epoch {epoch} not saved", exc)

    def finish(self, total_epochs: int) -> bool:
        """Write done.json when every epoch 1..total_epochs is recorded, then release the lock: waiting
        trials reuse the training from now on. False when the training is not shareable."""
        try:
            if self.broken or self.fd is None:
                return False
            epochs = [self.records.get(e) for e in range(1, total_epochs + 1)]
            if any(r is None for r in epochs) or not epochs[-1]["weights"]:
                self._give_up("epochs missing from the record", RuntimeError(f"have {sorted(self.records)}"))
                return False
            if not all((self.folder / self._model_name(r["epoch"])).is_file() for r in epochs if r["weights"]):
                self._give_up("a weight file is missing", RuntimeError(str(self.folder)))
                return False
            try:
                self._write_json("done.json", {"format": FORMAT, "key": self.key, "trained_by": self.trial_id,
                                               "config_hash": self.config_hash, "total_epochs": total_epochs,
                                               "epochs": epochs})
            except OSError as exc:
                self._give_up("done.json not written", exc)
                return False
            return True
        finally:
            self.release()


def for_trial(results_root: str | os.PathLike, cfg, data, device, trial_id: str) -> SharedTraining:
    """The SharedTraining of a trial's resolved config, data and device."""
    from emmil.config import config_hash

    key = training_key(cfg.to_flat_dict(), data_signature(data), device_signature(device))
    return SharedTraining(results_root, key, config_hash(cfg), trial_id)

