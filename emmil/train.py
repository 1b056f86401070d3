"""Training (EM alternation, the ablation variants), validation, test evaluation, run directories.

`fit(config, dataset)` yields one EpochResult per epoch; it trains as a pack of one
(emmil.packed.PackedFit, which trains K configs of one variant together, each to its run alone's
results). The whole dataset is ONE tensor on the device; a step packs `train.batch_videos` whole
videos (see emmil.model.Packing; the paper preset takes one, as the release) and every loss weighs
each video alike; `variant_losses` is a step's loss algebra, over one model or a pack member.
Freezing is by which optimiser steps: phi (key heads), theta (classification heads) and the gating
classifier each have their own Adam; pseudo-labels always come from an eval-mode (no dropout),
no_grad forward, so they are a deterministic function of the parameters in every variant. The gate
trains in the first `train.gate_epochs` epochs only (its own schedule, like the release's separate
UntrimmedNet).

Variants (config.variant), sharing everything but the loss and which branch trains:
  full             E: Eq. 3 labels from frozen p_theta, Eq. 4 on q_phi; M: Eq. 5 labels (all-positive in
                   the first M block) from frozen q_phi, Eq. 6 on p_theta.
  no-pseudo-label  same alternation, loss = softmax attention-MIL (attention from q_phi, all classes,
                   positive and negative videos alike) on the trained branch.
  joint            Eq. 3/5 labels from the current (detached) outputs, both branches every step.
  attention-mil    attention-MIL loss, both branches every step (no EM).
Reference rows (issue 10; they read the ground-truth clip labels of the TRAINING videos):
  supervised       ceiling: both heads trained every step on ground-truth clip labels (key head: clip
                   inside any segment; classification head: clip overlaps a segment of class c).
  oracle-key       alternation of `full` with ground-truth key instances in place of Eq. 3 / Eq. 5.
  whole-video      floor: no head trains; one proposal per gated class spanning the video.
`replay(config, dataset, records, weights)` yields the EpochResults of a training done elsewhere for a
config that differs only in localiser / evaluation keys, with its own validation metrics (the harness
trains once for such variants: harness/shared_training.py).
After training, `evaluate_test` chooses the localiser's lam and gate threshold on the held-out
training videos (select_localizer), the same grid for every variant, then scores the test split.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from emmil.config import RunConfig
from emmil.data.dataset import Dataset, Video
from emmil.errors import ConfigError, DataError
from emmil.losses import attention_mil_loss, pseudo_label_bce, video_classifier_loss
from emmil.model import EMMIL, STREAMS, LinearMeanGate, Packing, make_packing
from emmil.pseudo_labels import all_positive_labels, e_step_labels, m_step_labels
from emmil.schedule import EpochPlan

STATE_VERSION = 1


def choose_device(requested: str = "auto") -> torch.device:
    """"auto" -> CUDA when available (under Ray: the GPU it assigned via CUDA_VISIBLE_DEVICES), else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device' = 'cuda' but no CUDA device is available")
    if requested not in ("cpu", "cuda"):
        raise ConfigError(f"config key 'device': unknown device {requested!r}; expected auto, cpu or cuda")
    return torch.device(requested)


# ---------------------------------------------------------------------------------------------- data


def split_validation(dataset: Dataset, fraction: float, seed: int) -> tuple[tuple[Video, ...], tuple[Video, ...]]:
    """(train, val) from the TRAINING subset: a seeded, class-stratified held-out slice.

    Videos are grouped by their first (sorted) label; each group gives round(fraction * size) videos
    (at least 1 when fraction > 0 and the group has >= 2) chosen by a numpy Generator(seed).
    """
    videos = dataset.in_subset(dataset.train_subset)
    if not videos:
        raise DataError(f"{dataset.name}: no videos in the training subset {dataset.train_subset!r}")
    if fraction <= 0:
        return videos, ()
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, v in enumerate(videos):
        groups.setdefault(v.labels[0] if v.labels else "", []).append(i)
    held: set[int] = set()
    for key in sorted(groups):
        members = groups[key]
        k = int(round(fraction * len(members)))
        if k == 0 and len(members) >= 2:
            k = 1
        k = min(k, len(members) - 1) if len(members) > 1 else 0
        held.update(int(members[j]) for j in rng.permutation(len(members))[:k])
    train = tuple(v for i, v in enumerate(videos) if i not in held)
    val = tuple(v for i, v in enumerate(videos) if i in held)
    return train, val


def _usable(videos: tuple[Video, ...], where: str) -> tuple[Video, ...]:
    for v in videos:
        if v.num_clips < 1:
            raise DataError(f"video {v.name!r} ({where}) has no feature clips; drop it when loading (min_clips)")
    return videos


def gather_rows(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Row indices into the dataset tensor for videos (start_i, T_i) packed in order: (sum T_i,)."""
    offsets = torch.cumsum(lengths, 0) - lengths  # (B,) first packed row of each video
    base = torch.repeat_interleave(starts - offsets, lengths)  # (N,)
    return base + torch.arange(base.numel(), device=base.device)


@dataclass
class _DeviceData:
    features: torch.Tensor  # (sum_i T_i, D) the whole dataset on the device
    starts: torch.Tensor  # (V,) long, per training video
    lengths: torch.Tensor  # (V,) long
    labels: torch.Tensor  # (V, C) float
    clip_targets: torch.Tensor | None  # (sum_i T_i, C) uint8 ground-truth clip labels (reference variants only)


GROUND_TRUTH_VARIANTS = ("supervised", "oracle-key")  # the only variants that read clip-level ground truth


def ground_truth_rows(dataset: Dataset, videos: tuple[Video, ...]) -> np.ndarray:
    """(rows of the dataset array, C) uint8: emmil.pseudo_labels.clip_labels of `videos` at their rows,
    0 elsewhere (uint8: ActivityNet1.2 is 1.3M clips x 100 classes)."""
    from emmil.data.dataset import seconds_to_clip
    from emmil.pseudo_labels import clip_labels

    out = np.zeros((dataset.features.shape[0], len(dataset.classes)), dtype=np.uint8)
    cidx = dataset.class_index
    for v in videos:
        segs = [tuple(float(x) for x in seconds_to_clip(np.asarray(seg, dtype=np.float64), dataset.clip_seconds))
                for seg in v.segments]
        out[v.start: v.start + v.num_clips] = clip_labels(
            segs, [cidx[lab] for lab in v.segment_labels], v.num_clips, len(dataset.classes))
    return out


def _device_data(dataset: Dataset, videos: tuple[Video, ...], features: torch.Tensor, variant: str,
                 clip_targets: torch.Tensor | None = None) -> _DeviceData:
    """`clip_targets`: ground-truth rows already on the device covering at least `videos` (a pack's
    members share one built over the whole training subset); built here when None and needed."""
    dev = features.device
    targets = clip_targets
    if variant in GROUND_TRUTH_VARIANTS and targets is None:
        targets = torch.from_numpy(ground_truth_rows(dataset, videos)).to(dev)
    return _DeviceData(
        features=features,
        starts=torch.tensor([v.start for v in videos], dtype=torch.long, device=dev),
        lengths=torch.tensor([v.num_clips for v in videos], dtype=torch.long, device=dev),
        labels=torch.from_numpy(dataset.label_matrix(videos)).to(dev),
        clip_targets=targets,
    )


# ---------------------------------------------------------------------------------------------- steps


def _set_mode(model: EMMIL, train_key: bool, train_cls: bool, train_gate: bool) -> None:
    model.key.train(train_key)
    model.cls.train(train_cls)
    model.gate.train(train_gate)


@torch.no_grad()
def _frozen_logits(model: EMMIL, x: torch.Tensor, packing: Packing, stream: str, head: str) -> torch.Tensor:
    """Logits of `head` ("key" | "cls") in eval mode (no dropout) without gradient, mode restored after:
    pseudo-labels are a deterministic function of the parameters for every variant alike."""
    module = model.key if head == "key" else model.cls
    was = module.training
    module.eval()
    out = model.key_logits(x, packing, stream) if head == "key" else model.cls_logits(x, packing, stream)
    module.train(was)
    return out


def step_losses(
    model: EMMIL, x: torch.Tensor, y: torch.Tensor, packing: Packing, plan: EpochPlan, variant: str, gamma: float,
    *, clip_targets: torch.Tensor | None = None, train_gate: bool = True,
) -> dict[str, torch.Tensor]:
    """Loss terms of one packed batch (sum over streams + gate = `loss`), for the epoch's plan and variant.

    x (N, D) packed clips, y (B, C) video labels, clip_targets (N, C) ground-truth clip labels (only
    the reference variants `supervised` and `oracle-key` read them). Every BCE is per video, then
    averaged over videos (emmil.losses). Returns {"loss", "loss_rgb", "loss_flow"} and "loss_gate"
    when the gate trains.
    """
    return variant_losses(ModelForward(model, x, packing), y, packing, plan, variant, gamma,
                          clip_targets=clip_targets, train_gate=train_gate)


class ModelForward:
    """The network outputs `variant_losses` asks for, from one EMMIL on one packed batch x (N, D).
    emmil.packed gives the same outputs of one member of a pack, computed for every member at once."""

    def __init__(self, model: EMMIL, x: torch.Tensor, packing: Packing):
        self.model, self.x, self.packing, self.dtype = model, x, packing, x.dtype

    def logits(self, head: str, stream: str) -> torch.Tensor:
        """Logits of head "key" (N,) or "cls" (N, C) in the modules' current mode, with gradient."""
        if head == "key":
            return self.model.key_logits(self.x, self.packing, stream)
        return self.model.cls_logits(self.x, self.packing, stream)

    def frozen(self, head: str, stream: str) -> torch.Tensor:
        """The same logits in eval mode without gradient (_frozen_logits)."""
        return _frozen_logits(self.model, self.x, self.packing, stream, head)

    def gate(self) -> torch.Tensor:
        """The gate's video logits (B, C)."""
        return self.model.gate(self.x, self.packing)


def variant_losses(
    fwd: ModelForward, y: torch.Tensor, packing: Packing, plan: EpochPlan, variant: str, gamma: float,
    *, clip_targets: torch.Tensor | None = None, train_gate: bool = True,
) -> dict[str, torch.Tensor]:
    """step_losses with the network outputs read from `fwd` (a ModelForward or a pack member's view,
    emmil.packed): y (B, C), packing and clip_targets (N, C) are that model's own batch. The order in
    which outputs are asked for is the order of dropout draws, the same for every model."""
    seg = packing.seg
    out: dict[str, torch.Tensor] = {}
    pseudo = variant in ("full", "joint")
    if variant in ("supervised", "oracle-key") and clip_targets is None:
        raise ValueError(f"step_losses: variant {variant!r} needs the ground-truth clip_targets")
    for s in STREAMS:
        if plan.step == "none":  # whole-video: no head trains
            break
        if variant == "supervised":  # ceiling: both heads on ground truth, every step
            key_target = (clip_targets.sum(dim=1) > 0).to(fwd.dtype)  # (N,) clip inside any segment
            loss = pseudo_label_bce(fwd.logits("key", s), key_target, packing) + pseudo_label_bce(
                fwd.logits("cls", s), clip_targets, packing)
        elif variant == "oracle-key":  # Eq. 4 / Eq. 6 with ground-truth key instances for z_hat and Eq. 5
            key_target = (clip_targets.sum(dim=1) > 0).to(fwd.dtype)  # (N,)
            if plan.step == "E":
                loss = pseudo_label_bce(fwd.logits("key", s), key_target, packing)
            else:
                loss = pseudo_label_bce(fwd.logits("cls", s), key_target.unsqueeze(1) * y[seg], packing)
        elif plan.step == "E":  # train q_phi; p_theta frozen
            cls_logits = fwd.frozen("cls", s)
            key_logits = fwd.logits("key", s)
            if pseudo:
                loss = pseudo_label_bce(key_logits, e_step_labels(torch.sigmoid(cls_logits), y, seg), packing)  # Eq. 3, 4
            else:
                loss = attention_mil_loss(key_logits, cls_logits, y, packing)
        elif plan.step == "M":  # train p_theta; q_phi frozen
            cls_logits = fwd.logits("cls", s)
            if pseudo:
                if plan.all_positive:
                    target = all_positive_labels(y, seg)  # initial M step (paper 3.4)
                else:
                    q = torch.sigmoid(fwd.frozen("key", s))
                    target = m_step_labels(q, y, seg, gamma)  # Eq. 5
                loss = pseudo_label_bce(cls_logits, target, packing)  # Eq. 6
            else:
                loss = attention_mil_loss(fwd.frozen("key", s), cls_logits, y, packing)
        else:  # joint: both branches
            key_logits = fwd.logits("key", s)
            cls_logits = fwd.logits("cls", s)
            if pseudo:
                # labels from an eval-mode forward, as `full` computes them from its frozen branch
                z = e_step_labels(torch.sigmoid(fwd.frozen("cls", s)), y, seg)
                if plan.all_positive:
                    target = all_positive_labels(y, seg)
                else:
                    target = m_step_labels(torch.sigmoid(fwd.frozen("key", s)), y, seg, gamma)
                loss = pseudo_label_bce(key_logits, z, packing) + pseudo_label_bce(cls_logits, target, packing)
            else:
                loss = attention_mil_loss(key_logits, cls_logits, y, packing)
        out[f"loss_{s}"] = loss
    total = sum(out.values()) if out else torch.zeros((), dtype=fwd.dtype, device=y.device)
    if train_gate:
        out["loss_gate"] = video_classifier_loss(fwd.gate(), y)
        total = total + out["loss_gate"]
    out["loss"] = total
    return out


# ---------------------------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # 1-based
    total_epochs: int
    step: str  # "E" | "M" | "joint"
    lr: float  # lr of the EM branches this epoch
    losses: dict  # mean over the epoch's batches: loss, loss_rgb, loss_flow, loss_gate
    val: dict  # validation metrics (empty when not evaluated this epoch)
    seconds: float  # wall time of the epoch (training + validation)
    model: EMMIL = field(repr=False, compare=False)
    _state_fn: Callable[[], dict] = field(repr=False, compare=False)

    def state(self) -> dict:
        """The full training state after this epoch (torch.save-able); `fit(..., resume=state)` continues.

        Must be called before the fit iterator advances (the model is trained in place).
        """
        return self._state_fn()

    def metrics(self) -> dict[str, float]:
        """Flat per-epoch metrics (losses, lr, seconds, val_*) for tracking."""
        return {**self.losses, **self.val, "lr": self.lr, "epoch_seconds": self.seconds}


def _rng_get(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _rng_set(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def fit_linear_mean_gate(gate: LinearMeanGate, means: torch.Tensor, y: torch.Tensor, l2: float, *,
                         standardise: bool = True) -> float:
    """Fit `gate` in place on training videos' mean features `means` (V, D) and multi-hot labels y (V, C):
    standardise with their mean / std, then minimise video_classifier_loss + l2 * ||W||^2 (convex) by
    full-batch L-BFGS from W = 0, b = 0. Deterministic (no random draw). Returns the loss at the fitted W, b.
    standardise=False keeps the raw scale (mu = 0, sd = 1; bench/gate_cv.py's comparison row)."""
    with torch.no_grad():
        gate.mu.copy_(means.mean(0) if standardise else torch.zeros_like(gate.mu))
        gate.sd.copy_(means.std(0).clamp_min(1e-6) if standardise and means.shape[0] > 1 else torch.ones_like(gate.sd))
        gate.fc.weight.zero_()
        gate.fc.bias.zero_()
    z = ((means - gate.mu) / gate.sd).detach()
    opt = torch.optim.LBFGS(gate.fc.parameters(), max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        return video_classifier_loss(gate.fc(z), y) + l2 * gate.fc.weight.pow(2).sum()

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(objective())


def prepare_gate(model: EMMIL, config: RunConfig, dataset: Dataset, train_videos: tuple[Video, ...],
                 features: torch.Tensor) -> float | None:
    """Fit the `linear-mean` gate (model.gate) once on the training videos (never the held-out ones);
    returns its fitted loss. The `attention` gate trains inside the epochs instead (None)."""
    if config.model.gate != "linear-mean":
        return None
    means = torch.stack([features[v.start:v.start + v.num_clips].mean(0) for v in train_videos])  # (V, D)
    y = torch.from_numpy(dataset.label_matrix(train_videos)).to(features.device, features.dtype)  # (V, C)
    return fit_linear_mean_gate(model.gate, means, y, config.train.gate_l2)


def build_model(config: RunConfig, dataset: Dataset, device: torch.device) -> EMMIL:
    torch.manual_seed(config.seed)
    model = EMMIL.from_config(config.model, dataset.rgb_dim, dataset.flow_dim, len(dataset.classes))
    return model.to(device)


def _optimizers(model: EMMIL, config: RunConfig) -> dict[str, torch.optim.Optimizer]:
    t = config.train
    kw = {"weight_decay": t.weight_decay, "fused": True}  # fused: one kernel per step, not ~10 passes
    return {
        "phi": torch.optim.Adam(model.phi_parameters(), lr=t.lr, **kw),
        "theta": torch.optim.Adam(model.theta_parameters(), lr=t.lr, **kw),
        "gate": torch.optim.Adam(model.gate_parameters(), lr=t.cls_lr, **kw),
    }


def dataset_tensor(dataset: Dataset, device: torch.device) -> torch.Tensor:
    """The whole feature array as one tensor on `device` (zero-copy on CPU)."""
    feats = dataset.features
    if feats.dtype != np.float32:
        raise DataError(f"{dataset.path or dataset.name}: features must be float32, got {feats.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(feats)) if feats.flags.writeable else torch.from_numpy(feats.copy())
    return tensor.to(device)


def fit(
    config: RunConfig,
    dataset: Dataset,
    *,
    device: torch.device | str | None = None,
    resume: dict | None = None,
    features: torch.Tensor | None = None,
) -> Iterator[EpochResult]:
    """Train `config` on `dataset`'s training subset; yield one EpochResult per epoch.

    `features`: the dataset tensor already on the device (else it is copied there once).
    `resume`: an `EpochResult.state()`; training continues after its epoch with identical results.
    Trains as a pack of one (emmil.packed.PackedFit: one training loop for runs alone and packed).

    What a run does (seeds): split_validation(seed) holds out the validation videos; the init draws
    from torch.manual_seed(seed) (build_model); batch order from a CPU Generator(seed + 1); dropout
    from the global RNG seeded seed + 2, its state saved per epoch in state()["rng"].
    """
    from emmil.packed import PackedFit  # emmil.packed builds on this module

    for (result,) in PackedFit([config], dataset, device=device, resumes=[resume], features=features):
        yield result


def restore_state(resume: dict, model: EMMIL, opts: dict[str, torch.optim.Optimizer],
                  shuffle: torch.Generator) -> tuple[dict, int]:
    """Load an EpochResult.state() into a freshly built model, its optimisers and shuffle generator;
    returns (the dropout RNG state, the first epoch to train)."""
    if resume.get("version") != STATE_VERSION or resume.get("config_hash") is None:
        raise ConfigError("resume: not an emmil training state (missing version/config_hash)")
    model.load_state_dict(resume["model"])
    for name, opt in opts.items():
        # a copy: Optimizer.load_state_dict keeps the given tensors (same device and dtype), and training
        # would then update the caller's state in place (a second resume from it would start elsewhere)
        opt.load_state_dict(_clone(resume["optimizers"][name]))
    shuffle.set_state(resume["shuffle_rng"])
    return resume["rng"], int(resume["epoch"]) + 1


def training_state(config: RunConfig, epoch: int, model: EMMIL, opts: dict[str, torch.optim.Optimizer],
                   shuffle: torch.Generator, rng: dict) -> dict:
    """EpochResult.state(): copies of everything training reads next (the format restore_state loads)."""
    return {
        "version": STATE_VERSION,
        "config_hash": _hash(config),
        "epoch": epoch,
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizers": {k: _clone(o.state_dict()) for k, o in opts.items()},
        "shuffle_rng": shuffle.get_state(),
        "rng": {k: v.clone() for k, v in rng.items()},
    }


def validation_videos(config: RunConfig, dataset: Dataset) -> tuple[Video, ...]:
    """The held-out training videos `fit` validates on (the seeded split of train.val_fraction)."""
    return split_validation(dataset, config.train.val_fraction, config.seed)[1]


def evaluates_at(config: RunConfig, epoch: int, val_videos: tuple[Video, ...]) -> bool:
    """Whether `fit` computes validation metrics after `epoch` (every train.eval_every and the last)."""
    return bool(val_videos) and (epoch % config.train.eval_every == 0 or epoch == config.train.epochs)


def validation_metrics(config: RunConfig, dataset: Dataset, model: EMMIL, val_videos: tuple[Video, ...],
                       features: torch.Tensor) -> dict[str, float]:
    """EpochResult.val: val_mAP_*, val_avg_mAP, val_cls_mAP, val_coverage of `model` on `val_videos`,
    localised with `config.localize`."""
    return evaluate_videos(config, dataset, model, val_videos, features, prefix="val")[0]


def epoch_record(result: EpochResult) -> dict[str, Any]:
    """Plain data (JSON) of a trained epoch: what `replay` needs besides the weights."""
    return {"epoch": result.epoch, "total_epochs": result.total_epochs, "step": result.step, "lr": result.lr,
            "losses": dict(result.losses), "seconds": result.seconds, "evaluated": bool(result.val)}


def replay(
    config: RunConfig,
    dataset: Dataset,
    records: list[dict] | tuple[dict, ...],
    weights: Callable[[int], dict],
    *,
    device: torch.device | str | None = None,
    features: torch.Tensor | None = None,
    start: int = 1,
) -> Iterator[EpochResult]:
    """The EpochResults of a training done elsewhere, as `fit(config, ...)` would yield them, from epoch
    `start` on: `records` are `epoch_record`s of that training (every epoch, in order) and `weights(e)`
    its state dict after epoch e, needed for every evaluated epoch and the last. The training must be
    `config`'s but for the localiser / evaluation keys (harness.shared_training): losses, lr and seconds
    are the recorded ones; validation metrics are recomputed with `config`, and the last result's model
    holds the final weights (for evaluate_test). state() is a small marker {version, config_hash, epoch,
    replayed: True} (no model: a resumed replay starts again from the records)."""
    if config.dataset != dataset.name:
        raise ConfigError(f"config key 'dataset' is {config.dataset!r} but the data is {dataset.name!r}")
    if len(records) != config.train.epochs or [int(r["epoch"]) for r in records] != list(range(1, len(records) + 1)):
        raise ValueError(f"replay: records of epochs {[r.get('epoch') for r in records]} for a "
                         f"{config.train.epochs}-epoch config")
    dev = choose_device(config.device) if device is None else torch.device(device)
    feats = dataset_tensor(dataset, dev) if features is None else features
    model = build_model(config, dataset, dev)
    val_videos = validation_videos(config, dataset)
    for record in records[max(start, 1) - 1:]:
        epoch = int(record["epoch"])
        last = epoch == config.train.epochs
        if bool(record["evaluated"]) != evaluates_at(config, epoch, val_videos):
            raise ValueError(f"replay: epoch {epoch} was {'' if record['evaluated'] else 'not '}validated, "
                             "which this config would not do: another training")
        if record["evaluated"] or last:
            model.load_state_dict(weights(epoch))
        val = validation_metrics(config, dataset, model, val_videos, feats) if record["evaluated"] else {}
        snapshot = {"version": STATE_VERSION, "config_hash": _hash(config), "epoch": epoch, "replayed": True}
        yield EpochResult(
            epoch=epoch, total_epochs=config.train.epochs, step=str(record["step"]), lr=float(record["lr"]),
            losses={k: float(v) for k, v in record["losses"].items()}, val=val,
            seconds=float(record["seconds"]),  # the training's time for the epoch (its validation included)
            model=model, _state_fn=lambda _s=snapshot: dict(_s),
        )


def _hash(config: RunConfig) -> str:
    from emmil.config import config_hash

    return config_hash(config)


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------- inference


SCORE_ROWS = 16384  # clips per scoring pass (predict_scores' max_rows)


def score_batches(videos: tuple[Video, ...], max_rows: int = SCORE_ROWS) -> list[tuple[Video, ...]]:
    """The consecutive groups of `videos` that predict_scores scores in one pass: at most `max_rows`
    clips each (a longer video alone)."""
    out, i = [], 0
    while i < len(videos):
        j, rows = i, 0
        while j < len(videos) and (j == i or rows + videos[j].num_clips <= max_rows):
            rows += videos[j].num_clips
            j += 1
        out.append(tuple(videos[i:j]))
        i = j
    return out


def batch_input(batch: tuple[Video, ...], features: torch.Tensor) -> tuple[torch.Tensor, Packing]:
    """(x (N, D) the gathered clips of `batch`, their packing) for a scoring pass."""
    dev = features.device
    lengths = torch.tensor([v.num_clips for v in batch], dtype=torch.long, device=dev)
    starts = torch.tensor([v.start for v in batch], dtype=torch.long, device=dev)
    return features[gather_rows(starts, lengths)], make_packing(lengths, dev)


def video_scores(scores: dict[str, torch.Tensor], batch: tuple[Video, ...]) -> list[dict[str, np.ndarray]]:
    """EMMIL.scores of one pass over `batch` -> predict_scores' per-video float64 numpy dicts."""
    cpu = {k: v.double().cpu().numpy() for k, v in scores.items()}
    out, offset = [], 0
    for b, v in enumerate(batch):
        sl = slice(offset, offset + v.num_clips)
        out.append({
            "q_rgb": cpu["q_rgb"][sl], "q_flow": cpu["q_flow"][sl],
            "p_rgb": cpu["p_rgb"][sl], "p_flow": cpu["p_flow"][sl], "video": cpu["video"][b],
        })
        offset += v.num_clips
    return out


# (id(model), id(features), video names) -> (model, features, scores): scores computed elsewhere (a
# pack scores all its members in one pass, emmil.packed) that predict_scores returns instead of
# running the network, so the ordinary evaluate_test / validation_metrics run on them unchanged.
_GIVEN_SCORES: contextvars.ContextVar[dict | None] = contextvars.ContextVar("emmil_given_scores", default=None)


@contextlib.contextmanager
def given_scores(entries: list[tuple[EMMIL, torch.Tensor, tuple[Video, ...], list[dict]]]) -> Iterator[None]:
    """Within the block, predict_scores(model, videos, features) (default max_rows) returns the given
    scores of each (model, features, videos, scores) entry; anything else is scored as usual. The
    scores must be predict_scores' own for that model (emmil.packed.packed_scores computes them so)."""
    table = {(id(m), id(f), tuple(v.name for v in vs)): (m, f, sc) for m, f, vs, sc in entries}
    token = _GIVEN_SCORES.set(table)
    try:
        yield
    finally:
        _GIVEN_SCORES.reset(token)


@torch.no_grad()
def predict_scores(
    model: EMMIL, videos: tuple[Video, ...], features: torch.Tensor, *, max_rows: int = SCORE_ROWS
) -> list[dict[str, np.ndarray]]:
    """Per video: q_rgb, q_flow (T,), p_rgb, p_flow (T, C), video (C,) as float64 numpy arrays.

    Videos are scored in packs of at most `max_rows` clips: the gathered pack is a transient copy
    (16384 x 2048 float32 = 128 MiB at I3D width), kept small so a trial's peak stays near its
    training footprint. Inside given_scores, given scores are returned without a forward."""
    model.eval()
    given = _GIVEN_SCORES.get()
    if given is not None and max_rows == SCORE_ROWS:
        hit = given.get((id(model), id(features), tuple(v.name for v in videos)))
        if hit is not None:
            return list(hit[2])
    out: list[dict[str, np.ndarray]] = []
    for batch in score_batches(videos, max_rows):
        x, packing = batch_input(batch, features)
        out.extend(video_scores(model.scores(x, packing), batch))
    return out


def localize_params(config: RunConfig):
    from emmil.localize import LocalizeParams

    values = dataclasses.asdict(config.localize)
    values.pop("select_on_val")  # how values are chosen, not a localiser value
    return LocalizeParams(**values)


def localize_all(config: RunConfig, dataset: Dataset, videos: tuple[Video, ...], scores: list[dict]) -> dict:
    """ActivityNet results JSON {"results": {video: [...]}} for `videos` from their scores.
    `whole-video` (the floor) proposes each gated class over the whole video instead."""
    from emmil.localize import localize_video, results_json, whole_video_proposals

    params = localize_params(config)
    per_video = {}
    for v, s in zip(videos, scores):
        if config.variant == "whole-video":
            per_video[v.name] = whole_video_proposals(
                s["video"], v.num_clips, gate=params.gate, clip_seconds=dataset.clip_seconds, duration=v.duration)
            continue
        per_video[v.name] = localize_video(
            s["q_rgb"], s["q_flow"], s["p_rgb"], s["p_flow"], s["video"], params=params,
            clip_seconds=dataset.clip_seconds, duration=v.duration,
        )
    return results_json(per_video, dataset.classes)


# The localiser values chosen per run on the held-out training videos (localize.select_on_val): the
# same grid for every variant, so no variant gets a larger tuning budget. lam: Eq. 9 weight; gate:
# threshold on the gate's softmax over classes (the release: 0.15).
SELECTION_GRID = {"lam": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), "gate": (0.02, 0.05, 0.1, 0.15, 0.25)}


def selection_videos(config: RunConfig, dataset: Dataset) -> tuple[Video, ...]:
    """The held-out training videos select_localizer scores for `config` (none without selection)."""
    if not config.localize.select_on_val:
        return ()
    _, val = split_validation(dataset, config.train.val_fraction, config.seed)
    return tuple(v for v in val if v.num_clips >= 1)


def usable_test_videos(dataset: Dataset) -> tuple[Video, ...]:
    """The test split's videos, each with at least one clip (DataError naming one without)."""
    return _usable(dataset.in_subset(dataset.test_subset), dataset.test_subset)


def selection_candidates(config: RunConfig) -> list[RunConfig]:
    """`config` at every (lam, gate) of SELECTION_GRID, in the order select_localizer tries them: gate
    outer, lam inner, the configured values first (a tie keeps the earlier). `whole-video` (the floor)
    uses no L, so only its gate threshold varies."""
    loc = config.localize
    lams = (loc.lam,) + tuple(x for x in SELECTION_GRID["lam"] if x != loc.lam)
    gates = (loc.gate,) + tuple(x for x in SELECTION_GRID["gate"] if x != loc.gate)
    if config.variant == "whole-video":
        lams = (loc.lam,)
    return [dataclasses.replace(config, localize=dataclasses.replace(loc, lam=lam, gate=gate))
            for gate in gates for lam in lams]


def localizer_map(config: RunConfig, dataset: Dataset, videos: tuple[Video, ...], scores: list[dict], gt: dict):
    """emmil.evaluate.detection_map of `config`'s localiser on `videos` given their predict_scores. A
    small held-out slice lacks some classes: that EvaluationWarning is expected here and silenced."""
    from emmil.evaluate import TIOU, EvaluationWarning, detection_map

    ambiguous = dataset.ambiguous if config.train.exclude_ambiguous else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        return detection_map(gt, localize_all(config, dataset, videos, scores), TIOU[dataset.name], ambiguous=ambiguous)


def held_out_values(
    config: RunConfig, dataset: Dataset, model: EMMIL, features: torch.Tensor, videos: tuple[Video, ...],
) -> list[tuple[float, RunConfig]]:
    """(avg mAP on the held-out `videos`, candidate) for every selection_candidates(config), in order;
    an undefined mAP (no ground truth among them) counts as -1."""
    scores = predict_scores(model, videos, features)
    gt = ground_truth_of(dataset, videos)
    out = []
    for candidate in selection_candidates(config):
        value = float(localizer_map(candidate, dataset, videos, scores, gt).average_mAP)
        out.append((value if np.isfinite(value) else -1.0, candidate))
    return out


def select_localizer(
    config: RunConfig, dataset: Dataset, model: EMMIL, features: torch.Tensor,
) -> tuple[RunConfig, dict[str, float]]:
    """(config with the chosen localize.lam / localize.gate, selection metrics) from the held-out
    slice of the TRAINING videos (the seeded split of `fit`). The best validation avg mAP wins; ties
    keep the earlier grid point, and the configured values are tried first. Without held-out videos
    or with select_on_val off: (config, {})."""
    val_videos = selection_videos(config, dataset)
    if not val_videos:
        return config, {}
    best = None
    for value, trial in held_out_values(config, dataset, model, features, val_videos):
        if best is None or value > best[0]:
            best = (value, trial)
    value, chosen = best
    return chosen, {"selected_lam": chosen.localize.lam, "selected_gate": chosen.localize.gate,
                    "val_selected_avg_mAP": value, "selected_on_videos": float(len(val_videos))}


def ground_truth_of(dataset: Dataset, videos: tuple[Video, ...]) -> dict:
    """The ground-truth segments of `videos` (emmil.evaluate's form)."""
    return dataset.select([v.name for v in videos]).ground_truth()


def evaluate_videos(
    config: RunConfig, dataset: Dataset, model: EMMIL, videos: tuple[Video, ...], features: torch.Tensor,
    *, prefix: str,
) -> tuple[dict[str, float], dict, list[dict], dict[str, list[float | None]]]:
    """(metrics with `prefix`_ keys, predictions JSON, per-video scores, per-class AP) for `videos`.

    Per-class AP: every class of the dataset, in its order -> AP per tIoU of TIOU[dataset] (fractions);
    None where undefined: a class without a ground-truth segment among `videos` has no AP (and is not
    in the mAP), so its list is all None."""
    from emmil.evaluate import TIOU, classification_map, detection_map, segment_coverage

    was_training = model.training
    scores = predict_scores(model, videos, features)
    predictions = localize_all(config, dataset, videos, scores)
    gt = ground_truth_of(dataset, videos)
    ambiguous = dataset.ambiguous if config.train.exclude_ambiguous else None
    result = detection_map(gt, predictions, TIOU[dataset.name], ambiguous=ambiguous)
    metrics: dict[str, float] = {}
    for thr, value in zip(result.tiou, result.mAP):
        metrics[f"{prefix}_mAP_{thr:.2f}"] = float(value)
    metrics[f"{prefix}_avg_mAP"] = float(result.average_mAP)
    video_scores = np.stack([s["video"] for s in scores]) if scores else np.zeros((0, len(dataset.classes)))
    metrics[f"{prefix}_cls_mAP"] = float(classification_map(video_scores, dataset.label_matrix(videos)))
    metrics[f"{prefix}_coverage"] = float(segment_coverage(gt, predictions))
    undefined = [None] * len(result.tiou)
    per_class = {c: [float(x) if np.isfinite(x) else None for x in result.per_class_AP[c]]
                 if c in result.per_class_AP else list(undefined) for c in dataset.classes}
    model.train(was_training)
    return metrics, predictions, scores, per_class


@dataclass(frozen=True)
class TestOutcome:
    # test_mAP_0.10 ..., test_avg_mAP, test_cls_mAP (the gate's classification mAP), test_coverage, and
    # with localize.select_on_val: selected_lam, selected_gate, val_selected_avg_mAP, selected_on_videos
    metrics: dict
    predictions: dict  # {"results": {video: [{label, segment, score}]}}
    timelines: dict  # docs/CONTRACTS.md timelines.json layout
    tiou: tuple[float, ...]  # the test tIoU thresholds (emmil.evaluate.TIOU[dataset])
    # class -> test AP per tIoU of `tiou` (fractions); None where undefined (a class with no test segment)
    per_class_AP: dict[str, list[float | None]]

    def per_class_document(self) -> dict:
        """per_class_ap.json: {"tiou": [...], "per_class_AP": {class: [AP or null per tIoU]}} plus, when a
        class has no AP, "per_class_AP_reason": {class: why}; strict JSON (`emmil report` reads it)."""
        doc: dict = {"tiou": list(self.tiou), "per_class_AP": self.per_class_AP}
        absent = [c for c, ap in self.per_class_AP.items() if all(x is None for x in ap)]
        if absent:
            doc["per_class_AP_reason"] = dict.fromkeys(absent, "no ground-truth segment of this class in the test "
                                                       "subset: AP undefined, not counted in the mAP")
        return doc


def evaluate_test(
    config: RunConfig, dataset: Dataset, model: EMMIL, *, device: torch.device | str | None = None,
    features: torch.Tensor | None = None, timeline_videos: int = 4,
) -> TestOutcome:
    """Score the test subset: metrics, predictions JSON and timelines of a few test videos."""
    dev = choose_device(config.device) if device is None else torch.device(device)
    feats = dataset_tensor(dataset, dev) if features is None else features
    videos = usable_test_videos(dataset)
    if not videos:
        raise DataError(f"{dataset.name}: no videos in the test subset {dataset.test_subset!r}")
    config, selection = select_localizer(config, dataset, model, feats)  # held-out training videos only
    metrics, predictions, scores, per_class = evaluate_videos(config, dataset, model, videos, feats, prefix="test")
    metrics.update(selection)
    timelines = build_timelines(config, dataset, videos, scores, predictions, timeline_videos)
    from emmil.evaluate import TIOU

    return TestOutcome(metrics=metrics, predictions=predictions, timelines=timelines,
                       tiou=tuple(round(float(t), 6) for t in TIOU[dataset.name]), per_class_AP=per_class)


def build_timelines(
    config: RunConfig, dataset: Dataset, videos: tuple[Video, ...], scores: list[dict], predictions: dict, count: int
) -> dict:
    """Eq. 9 fused score L_t of the top ground-truth class, its Eq. 5-style threshold, predicted and GT
    segments, for the first `count` test videos that have ground truth."""
    loc = config.localize
    cidx = dataset.class_index
    chosen = [(v, s) for v, s in zip(videos, scores) if v.segments][:count]
    out: dict[str, Any] = {"clip_seconds": dataset.clip_seconds, "videos": {}}
    for v, s in chosen:
        gt_labels = sorted(set(v.segment_labels))
        top = max(gt_labels, key=lambda lab: s["video"][cidx[lab]])
        c = cidx[top]
        q = loc.rgb_weight * s["q_rgb"] + (1 - loc.rgb_weight) * s["q_flow"]  # (T,)
        p = loc.rgb_weight * s["p_rgb"][:, c] + (1 - loc.rgb_weight) * s["p_flow"][:, c]  # (T,)
        fused = loc.lam * q + (1 - loc.lam) * p  # Eq. 9
        threshold = float(fused.mean() + loc.gamma * (fused.max() - fused.min()))  # Eq. 5 scheme
        segs = [
            [float(p_["segment"][0]), float(p_["segment"][1]), float(p_["score"])]
            for p_ in predictions["results"].get(v.name, [])
            if p_["label"] == top
        ]
        out["videos"][v.name] = {
            "duration": v.duration,
            "ground_truth": [{"label": lab, "segment": [a, b]} for (a, b), lab in zip(v.segments, v.segment_labels)],
            "tracks": [{
                "label": top, "L": [float(x) for x in fused], "threshold": threshold, "segments": segs,
                "Q": [float(x) for x in q], "P": [float(x) for x in p],
            }],
        }
    return out


# ---------------------------------------------------------------------------------------------- runs


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def localized_config(config: RunConfig, metrics: dict) -> RunConfig:
    """`config` with the localiser values the run used on its test videos: select_localizer's choice,
    recorded in the test metrics as selected_lam / selected_gate (unchanged when nothing was chosen)."""
    if "selected_lam" not in metrics:
        return config
    loc = dataclasses.replace(config.localize, lam=float(metrics["selected_lam"]),
                              gate=float(metrics["selected_gate"]))
    return dataclasses.replace(config, localize=loc)


def _save_run_model(out: Path, config: RunConfig, model: EMMIL, dataset: Dataset, metrics: dict) -> None:
    """RUN/model.pt (emmil.model_file): state dict, resolved config, classes, widths, test localiser."""
    from emmil.model_file import MODEL_FILE, save_model

    save_model(out / MODEL_FILE, config, model, dataset.classes, clip_seconds=dataset.clip_seconds,
               localize=localized_config(config, metrics).localize)


def prediction_timelines(
    config: RunConfig, dataset: Dataset, videos: tuple[Video, ...], scores: list[dict], predictions: dict
) -> dict:
    """docs/CONTRACTS.md timelines.json layout for every video of `videos` (no ground truth needed):
    one track per class with a proposal (the top gate-scored class when none), with per-clip Q, P
    and the Eq. 9 fused L (T floats each) and the Eq. 5-form threshold of `config.localize`."""
    loc = config.localize
    cidx = dataset.class_index
    out: dict[str, Any] = {"clip_seconds": dataset.clip_seconds, "videos": {}}
    for v, s in zip(videos, scores):
        props = predictions["results"].get(v.name, [])
        labels = sorted({p_["label"] for p_ in props}, key=lambda lab: cidx[lab])
        if not labels:
            labels = [dataset.classes[int(np.argmax(s["video"]))]]
        q = loc.rgb_weight * s["q_rgb"] + (1 - loc.rgb_weight) * s["q_flow"]  # (T,)
        tracks = []
        for lab in labels:
            c = cidx[lab]
            p = loc.rgb_weight * s["p_rgb"][:, c] + (1 - loc.rgb_weight) * s["p_flow"][:, c]  # (T,)
            fused = loc.lam * q + (1 - loc.lam) * p  # Eq. 9
            tracks.append({
                "label": lab, "L": [float(x) for x in fused],
                "threshold": float(fused.mean() + loc.gamma * (fused.max() - fused.min())),  # Eq. 5 scheme
                "segments": [[float(p_["segment"][0]), float(p_["segment"][1]), float(p_["score"])]
                             for p_ in props if p_["label"] == lab],
                "Q": [float(x) for x in q], "P": [float(x) for x in p],
            })
        out["videos"][v.name] = {
            "duration": v.duration,
            "ground_truth": [{"label": lab, "segment": [a, b]} for (a, b), lab in zip(v.segments, v.segment_labels)],
            "tracks": tracks,
        }
    return out


def train_run(
    config: RunConfig, dataset: Dataset, out_dir: str | Path, *, progress: bool = True,
    device: torch.device | str | None = None, on_epoch: Callable[[EpochResult], None] | None = None,
) -> dict:
    """Fit to the end, evaluate on test, write config.yaml, predictions.json, timelines.json,
    per_class_ap.json (TestOutcome.per_class_document), model.pt (emmil.model_file) and, LAST and
    atomically, metrics.json (its presence marks the run finished).
    Returns the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    finished = out / "metrics.json"
    if finished.exists():
        finished.unlink()  # a rerun into the same directory is unfinished until it ends
    stale_model = out / "model.pt"
    if stale_model.exists():
        stale_model.unlink()  # never leave an earlier run's model beside this run's config.yaml
    _write_atomic(out / "config.yaml", config.to_yaml())
    dev = choose_device(config.device) if device is None else torch.device(device)
    t0 = time.perf_counter()
    feats = dataset_tensor(dataset, dev)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.train.epochs, desc=f"{config.variant} seed {config.seed}", unit="epoch")
    history: list[dict] = []
    epoch_seconds: list[float] = []
    model = None
    for result in fit(config, dataset, device=dev, features=feats):
        model = result.model
        history.append({"epoch": result.epoch, "step": result.step, "lr": result.lr, **result.losses, **result.val})
        epoch_seconds.append(result.seconds)
        if on_epoch is not None:
            on_epoch(result)
        if bar is not None:
            bar.set_postfix(step=result.step, loss=f"{result.losses.get('loss', float('nan')):.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - t0
    outcome = evaluate_test(config, dataset, model, device=dev, features=feats)
    _write_atomic(out / "predictions.json", json.dumps(outcome.predictions))
    _write_atomic(out / "timelines.json", json.dumps(outcome.timelines))
    _write_atomic(out / "per_class_ap.json", json.dumps(outcome.per_class_document(), allow_nan=False))
    _save_run_model(out, config, model, dataset, outcome.metrics)  # before metrics.json marks it finished
    val_last = {k: v for row in history for k, v in row.items() if k.startswith("val_")}
    metrics = {
        **outcome.metrics,
        **val_last,
        # timing: the only keys that differ between two runs of the same seed on the same device
        "timing": {"train_seconds": train_seconds, "wall_seconds": time.perf_counter() - t0,
                   "epoch_seconds": epoch_seconds},
        "eval_protocol": "ambiguous=removed" if config.train.exclude_ambiguous else "ambiguous=kept",
        "data_source": dataset.source,
        "device": str(dev),
        "history": history,
    }
    _write_atomic(finished, json.dumps(finite_or_null(metrics), indent=1, allow_nan=False))
    return metrics


UNDEFINED_KEY = "undefined_metrics"


def finite_or_null(metrics: dict) -> dict:
    """`metrics` for a strict JSON file (issue 13): every NaN/inf number, at any depth, becomes null and
    its dotted key is listed under `undefined_metrics` with why it can happen. Sources: an mAP on a
    split without ground-truth segments, a coverage with no segment to cover, losses of a run that
    diverged. The in-memory metrics (MLflow, Tune) keep the NaN."""
    undefined: list[str] = []

    def clean(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: clean(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, float) and not math.isfinite(value):
            undefined.append(key)
            return None
        return value

    out = clean(metrics, "")
    if undefined:
        out[UNDEFINED_KEY] = {"keys": undefined, "reason": "not a finite number: undefined on this data (e.g. "
                              "no ground-truth segment in the split) or a diverged loss"}
    return out
