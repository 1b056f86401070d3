"""Packed training (issue 11): K runs ("members") of one variant trained together in one process.

    pack = PackedFit([cfg_seed0, cfg_seed1_lr3e4, ...], dataset)
    for results in pack:            # once per epoch: [EpochResult | None per member] in member order
        ...; pack.stop(i)           # member i trains no more (pruned); the others are unaffected
    outcomes = evaluate_test_packed(configs, dataset, [r.model for r in last])

`emmil.train.fit(config)` is PackedFit([config]): runs alone and packed go through this one loop.
Members may differ in every value that leaves tensor shapes and the step sequence alone: seed, lr,
lr_boost / schedule (only the lr changes), gamma, dropout, weight decay, cls_lr, eval_every,
exclude_ambiguous, localize.* (pack_key names what must agree). Each member keeps everything its run
alone has: its own EMMIL (`EpochResult.model`, a real module), its own three Adam optimisers (so `state()`
is one run's state: a member resumes by `fit(resume=...)` alone or by PackedFit, and back),
its own validation split, batch order (shuffle generator) and dropout stream (the global RNG is set to
the member's state around each of its dropout draws, which happen in its run's order).

What runs once for all members, and what per member. A step concatenates every member's batch into one
packing (member i's videos after member i-1's). Each member's clips are gathered on their own, and
every matmul is the member's own, at the shape its run alone has (emmil.model.grouped_packed_conv1d);
the conv's shifted sums, edge fixes, ReLU and the backward's transposed shifts (adds and copies) run
once over all members' rows. The rest is per member: the Linear layers, dropout, the gate, the losses
and pseudo-labels (emmil.train.variant_losses on the member's slice of the packed outputs), Adam.
Why so, measured here (PyTorch 2.13, MKL, CPU): element-wise exp/log/sigmoid give different last bits
for an element depending on where it falls in the tensor (vectorised body vs scalar tail), and small
BLAS products on an offset slice differ from the same product on a fresh tensor (emmil.model.aligned).
Kept per member, every member's losses, weights, pseudo-labels, validation and test metrics are its run
alone's to the bit on CPU (tests/test_packed.py asserts equality, tolerance 0), so thresholded
pseudo-labels (Eq. 3 / 5) and proposals cannot flip between a packed and an unpacked run. On CUDA,
index_add is not deterministic even for one run: there equality is to float tolerance.

Padding the members' batches to one (K, N_max, D) x (K, D, k*H) bmm was not taken: with one video per
step (the paper preset) THUMOS14 training videos have 14 to 2,202 clips (median 238), so padding to the
longest of K would be most of the work, while K matmuls at the members' own shapes cost what their
runs alone cost. bench/packing.py measures throughput and memory per member.

`EpochResult.seconds` of a member is the pack's wall time for the epoch (every member trains in it).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from emmil.config import RunConfig
from emmil.data.dataset import Dataset, Video
from emmil.errors import ConfigError
from emmil.model import EMMIL, STREAMS, Packing, aligned, grouped_packed_conv1d, make_packing
from emmil.schedule import plan_epoch
from emmil.train import (
    GROUND_TRUTH_VARIANTS,
    EpochResult,
    TestOutcome,
    _device_data,
    _DeviceData,
    _optimizers,
    _rng_get,
    _rng_set,
    _set_mode,
    _usable,
    batch_input,
    build_model,
    choose_device,
    dataset_tensor,
    evaluate_test,
    evaluates_at,
    gather_rows,
    given_scores,
    ground_truth_rows,
    prepare_gate,
    restore_state,
    score_batches,
    selection_videos,
    split_validation,
    training_state,
    usable_test_videos,
    validation_metrics,
    variant_losses,
    video_scores,
)

# What members of one pack must agree on (RunConfig.to_flat_dict keys), and why:
PACK_KEYS = (
    "dataset",  # one dataset tensor
    "variant",  # one loss structure per step
    "device",  # one device
    "model.hidden", "model.kernel_size",  # the heads' conv shapes: one packed conv over all members' rows
    "model.gate",  # whether a gate trains inside the epochs
    "model.cls_hidden",  # kept equal so a pack's members have one architecture (the gate runs per member)
    "train.epochs",  # the pack's epochs
    "train.cycle", "train.cycle_epochs",  # the E / M / joint step of every epoch (train.schedule and
                                          # train.lr_boost change only the lr: they may differ)
    "train.gate_epochs",  # whether the gate trains in an epoch
    "train.batch_videos", "train.val_fraction",  # steps per epoch and videos per step (the held-out
                                                 # count does not depend on the seed)
)


def pack_key(config: RunConfig) -> tuple[tuple[str, object], ...]:
    """((key, value), ...) of PACK_KEYS: configs with equal keys can train in one pack."""
    flat = config.to_flat_dict()
    return tuple((k, flat[k]) for k in PACK_KEYS)


def check_pack(configs: Sequence[RunConfig]) -> None:
    """ConfigError naming the first PACK_KEYS key on which a member differs from member 0."""
    if not configs:
        raise ConfigError("pack: no configs (a pack needs at least one member)")
    first = pack_key(configs[0])
    for i, config in enumerate(configs[1:], 1):
        for (key, a), (_, b) in zip(first, pack_key(config)):
            if a != b:
                raise ConfigError(f"pack: config key {key!r} is {a!r} for member 0 but {b!r} for member {i}; "
                                  f"members of one pack must agree on {', '.join(PACK_KEYS)}")


# ---------------------------------------------------------------------------------------------- forward


class _PackBatch:
    """One packed batch of several members: member i's clips xs[i] (N_i, D) (gathered on their own, as
    its run alone gathers them) and its packing; `packing` packs every member's videos in member order.

    Outputs are computed for all members at once, when the first member asks, and each member reads
    its own: member i's n-th request for an output gets the n-th computation of it, so every member
    draws its dropout masks in the order its run alone draws them. `holders[i].rng` is member i's
    dropout RNG state (fit's format), swapped into the global RNG around its draws; None when no module
    is in training mode (scoring).
    """

    def __init__(self, models: list[EMMIL], xs: list[torch.Tensor], packings: list[Packing],
                 holders: list | None, device: torch.device):
        self.models, self.xs, self.packings, self.holders, self.device = models, xs, packings, holders, device
        self.sizes = [int(x.shape[0]) for x in xs]
        if len(packings) == 1:
            self.packing = packings[0]
        else:
            self.packing = make_packing(torch.cat([p.lengths for p in packings]), device)
        self._done: dict[tuple, list[list[torch.Tensor]]] = {}
        self._asked: list[dict[tuple, int]] = [{} for _ in models]

    def _draw(self, i: int, fn: Callable, *args) -> torch.Tensor:
        """fn(*args) with the global RNG at member i's dropout state (then saved back)."""
        if self.holders is None:
            raise RuntimeError("_PackBatch: a dropout in training mode while scoring")
        holder = self.holders[i]
        _rng_set(holder.rng, self.device)
        out = fn(*args)
        holder.rng = _rng_get(self.device)
        return out

    def heads(self, head: str, stream: str) -> list[torch.Tensor]:
        """Every member's logits of head "key" (N_i,) or "cls" (N_i, C), modules in their current modes."""
        modules = [getattr(m, head)[stream] for m in self.models]
        inputs = [m.stream_input(x, stream) for m, x in zip(self.models, self.xs)]
        hidden = F.relu(grouped_packed_conv1d(inputs, [h.conv.weight for h in modules],
                                              [h.conv.bias for h in modules], self.packing))  # (N, H)
        out = []
        for i, (h, rows) in enumerate(zip(modules, torch.split(hidden, self.sizes))):
            # nn.Dropout in eval mode or with p = 0 returns its input and draws nothing
            dropped = self._draw(i, h.drop, rows) if h.drop.training and h.drop.p > 0 else rows
            logits = h.fc(aligned(dropped))
            out.append(logits.squeeze(1) if head == "key" else logits)
        return out

    @torch.no_grad()
    def frozen(self, head: str, stream: str) -> list[torch.Tensor]:
        """heads() in eval mode without gradient, every member's mode restored (train._frozen_logits)."""
        modules = [getattr(m, head) for m in self.models]
        was = [m.training for m in modules]
        for m in modules:
            m.eval()
        out = self.heads(head, stream)
        for m, w in zip(modules, was):
            m.train(w)
        return out

    def gates(self) -> list[torch.Tensor]:
        """Every member's gate video logits (B_i, C): the member's own module on its own batch."""
        out = []
        for i, (m, x, p) in enumerate(zip(self.models, self.xs, self.packings)):
            drop = getattr(m.gate, "drop", None)  # the linear-mean gate has no dropout
            draws = drop is not None and drop.training and drop.p > 0
            out.append(self._draw(i, m.gate, x, p) if draws else m.gate(x, p))
        return out

    def ask(self, i: int, key: tuple, compute: Callable[[], list[torch.Tensor]]) -> torch.Tensor:
        n = self._asked[i].get(key, 0)
        self._asked[i][key] = n + 1
        done = self._done.setdefault(key, [])
        if len(done) <= n:
            done.append(compute())
        return done[n][i]

    def member(self, i: int) -> "_MemberForward":
        return _MemberForward(self, i)

    @torch.no_grad()
    def scores(self) -> list[dict[str, torch.Tensor]]:
        """EMMIL.scores of every member (modules in eval mode)."""
        out: list[dict[str, torch.Tensor]] = [{} for _ in self.models]
        for s in STREAMS:
            for i, logits in enumerate(self.heads("key", s)):
                out[i][f"q_{s}"] = torch.sigmoid(logits)
            for i, logits in enumerate(self.heads("cls", s)):
                out[i][f"p_{s}"] = torch.sigmoid(logits)
        for i, logits in enumerate(self.gates()):
            out[i]["video"] = torch.softmax(logits, dim=1)
        return out


class _MemberForward:
    """Member i's view of a _PackBatch: what emmil.train.variant_losses reads (as train.ModelForward)."""

    def __init__(self, batch: _PackBatch, i: int):
        self.batch, self.i, self.dtype = batch, i, batch.xs[i].dtype

    def logits(self, head: str, stream: str) -> torch.Tensor:
        return self.batch.ask(self.i, ("logits", head, stream), lambda: self.batch.heads(head, stream))

    def frozen(self, head: str, stream: str) -> torch.Tensor:
        return self.batch.ask(self.i, ("frozen", head, stream), lambda: self.batch.frozen(head, stream))

    def gate(self) -> torch.Tensor:
        return self.batch.ask(self.i, ("gate",), self.batch.gates)


@torch.no_grad()
def packed_scores(models: Sequence[EMMIL], video_lists: Sequence[tuple[Video, ...]],
                  features: torch.Tensor) -> list[list[dict]]:
    """[emmil.train.predict_scores(models[i], video_lists[i], features) for i], every scoring pass of
    all members run as one packed forward. Each member's videos are grouped as predict_scores groups
    them (same clips per pass), so the scores are its own; members scoring the same videos (the test
    split) share one gathered copy of them."""
    for m in models:
        m.eval()
    batches = [score_batches(tuple(v)) for v in video_lists]
    out: list[list[dict]] = [[] for _ in models]
    for r in range(max((len(b) for b in batches), default=0)):
        group = [i for i, b in enumerate(batches) if r < len(b)]
        gathered: dict[tuple[str, ...], tuple[torch.Tensor, Packing]] = {}
        for i in group:
            names = tuple(v.name for v in batches[i][r])
            if names not in gathered:
                gathered[names] = batch_input(batches[i][r], features)
        inputs = [gathered[tuple(v.name for v in batches[i][r])] for i in group]
        batch = _PackBatch([models[i] for i in group], [x for x, _ in inputs], [p for _, p in inputs],
                           None, features.device)
        for i, scores in zip(group, batch.scores()):
            out[i].extend(video_scores(scores, batches[i][r]))
    return out


@contextlib.contextmanager
def _modes_kept(models: Sequence[EMMIL]) -> Iterator[None]:
    """Every module's train/eval mode as it was before the block: packed scoring runs before the
    evaluation that reads its scores, which records and restores the model's mode itself."""
    modes = [(mod, mod.training) for m in models for mod in m.modules()]
    try:
        yield
    finally:
        for mod, flag in modes:
            mod.training = flag


def evaluate_test_packed(
    configs: Sequence[RunConfig], dataset: Dataset, models: Sequence[EMMIL], *,
    device: torch.device | str | None = None, features: torch.Tensor | None = None, timeline_videos: int = 4,
) -> list[TestOutcome]:
    """[emmil.train.evaluate_test(c, dataset, m) for c, m in zip(configs, models)], with the network run
    once for all members: one packed scoring pass over the test videos and one over every member's
    held-out videos (localize.select_on_val); the localiser, its selection and the mAP are per member
    (evaluate_test itself, reading these scores through emmil.train.given_scores)."""
    if len(configs) != len(models) or not configs:
        raise ValueError(f"evaluate_test_packed: {len(configs)} configs for {len(models)} models")
    dev = choose_device(configs[0].device) if device is None else torch.device(device)
    feats = dataset_tensor(dataset, dev) if features is None else features
    test = usable_test_videos(dataset)
    selecting = [(c, m, selection_videos(c, dataset)) for c, m in zip(configs, models)]
    selecting = [(c, m, v) for c, m, v in selecting if v]
    with _modes_kept(models):
        test_scores = packed_scores(models, [test] * len(models), feats)
        val_scores = packed_scores([m for _, m, _ in selecting], [v for _, _, v in selecting], feats)
    entries = [(m, feats, test, sc) for m, sc in zip(models, test_scores)]
    entries += [(m, feats, v, sc) for (_, m, v), sc in zip(selecting, val_scores)]
    with given_scores(entries):
        return [evaluate_test(c, dataset, m, device=dev, features=feats, timeline_videos=timeline_videos)
                for c, m in zip(configs, models)]


# ---------------------------------------------------------------------------------------------- training


@dataclass(eq=False)
class _Member:
    """One run in progress (mutable): everything its training loop carries from step to step."""

    config: RunConfig
    model: EMMIL
    opts: dict[str, torch.optim.Optimizer]
    shuffle: torch.Generator  # batch order
    rng: dict  # dropout RNG state, fit's format (emmil.train._rng_get)
    data: _DeviceData
    val_videos: tuple[Video, ...]
    trained: int = 0  # last epoch trained (a state() of an older epoch is refused)
    stopped: bool = False
    index: int = 0  # position in the pack


class PackedFit:
    """Train K configs of one pack (check_pack) together; iterate for one list per epoch of an
    EpochResult per member (None for a stopped member), each what `emmil.train.fit` yields for that
    config alone. `resumes`: one EpochResult.state() (fit's or a pack's) or None per member, all after
    the same epoch. `features`: the dataset tensor already on the device. Iterate once."""

    def __init__(self, configs: Sequence[RunConfig], dataset: Dataset, *, device: torch.device | str | None = None,
                 resumes: Sequence[dict | None] | None = None, features: torch.Tensor | None = None):
        configs = tuple(configs)
        check_pack(configs)
        if configs[0].dataset != dataset.name:
            raise ConfigError(f"config key 'dataset' is {configs[0].dataset!r} but the data is {dataset.name!r}")
        resumes = [None] * len(configs) if resumes is None else list(resumes)
        if len(resumes) != len(configs):
            raise ConfigError(f"pack: {len(resumes)} resumes for {len(configs)} members (one state or None each)")
        self.configs, self.dataset = configs, dataset
        self.device = dev = choose_device(configs[0].device) if device is None else torch.device(device)
        self.features = feats = dataset_tensor(dataset, dev) if features is None else features
        shared_targets = None  # ground truth of every training video, read at each member's own rows
        if configs[0].variant in GROUND_TRUTH_VARIANTS:
            train_all = dataset.in_subset(dataset.train_subset)
            shared_targets = torch.from_numpy(ground_truth_rows(dataset, train_all)).to(dev)
        self._members: list[_Member] = []
        starts = []
        for i, (config, resume) in enumerate(zip(configs, resumes)):
            t = config.train
            # as emmil.train.fit, in its order (the global RNG seeds the init, then the dropout stream)
            train_videos, val_videos = split_validation(dataset, t.val_fraction, config.seed)  # == validation_videos
            _usable(train_videos, dataset.train_subset)
            data = _device_data(dataset, train_videos, feats, config.variant, clip_targets=shared_targets)
            model = build_model(config, dataset, dev)
            if resume is None:  # a resumed member's gate comes back with its state
                prepare_gate(model, config, dataset, train_videos, feats)
            opts = _optimizers(model, config)
            shuffle = torch.Generator().manual_seed(config.seed + 1)  # batch order (CPU generator: device-independent)
            torch.manual_seed(config.seed + 2)  # dropout stream
            member = _Member(config, model, opts, shuffle, _rng_get(dev), data, val_videos, index=i)
            start = 1
            if resume is not None:
                if "model" not in resume:
                    raise ConfigError(f"pack: resumes[{i}] holds no model (a replayed training's state); "
                                      "start that member again")
                member.rng, start = restore_state(resume, model, opts, shuffle)
                member.trained = start - 1
            starts.append(start)
            self._members.append(member)
        if len(set(starts)) > 1:
            raise ConfigError(f"pack: members resume after epochs {[s - 1 for s in starts]} (0 = not resumed); "
                              "every member of a pack must resume after the same epoch")
        if len({int(m.data.lengths.numel()) for m in self._members}) > 1:
            raise ConfigError("pack: members have different numbers of training videos "
                              f"{[int(m.data.lengths.numel()) for m in self._members]}; they cannot share steps")
        self._start = starts[0]
        self._iterated = False

    @property
    def models(self) -> tuple[EMMIL, ...]:
        """Each member's model, in member order (trained in place)."""
        return tuple(m.model for m in self._members)

    def stop(self, index: int) -> None:
        """Member `index` trains no more from the next epoch on (its last EpochResult and state() stay
        valid); the other members' results do not change. A pack whose members are all stopped ends."""
        if not 0 <= index < len(self._members):
            raise IndexError(f"PackedFit.stop({index}): the pack has members 0..{len(self._members) - 1}")
        self._members[index].stopped = True

    def __iter__(self) -> Iterator[list[EpochResult | None]]:
        if self._iterated:
            raise RuntimeError("PackedFit: iterate a pack once (its members train in place)")
        self._iterated = True
        return self._epochs()

    def _epochs(self) -> Iterator[list[EpochResult | None]]:
        dev = self.device
        t0_cfg = self.configs[0].train  # the pack keys of every member's train config are equal
        n = int(self._members[0].data.lengths.numel())
        for epoch in range(self._start, t0_cfg.epochs + 1):
            active = [m for m in self._members if not m.stopped]
            if not active:
                return
            t0 = time.perf_counter()
            plans = [plan_epoch(epoch, m.config.train, m.config.variant) for m in active]
            step = plans[0].step
            # the attention gate's own schedule (TrainConfig.gate_epochs); the linear-mean gate was fitted before
            train_gate = self.configs[0].model.gate == "attention" and epoch <= t0_cfg.gate_epochs
            trains = {"E": ("phi",), "M": ("theta",), "joint": ("phi", "theta"), "none": ()}[step]
            trains += ("gate",) if train_gate else ()
            lrs = []
            for m, plan in zip(active, plans):
                lr = m.config.train.lr * plan.lr_scale
                lrs.append(lr)
                for name in ("phi", "theta"):
                    for group in m.opts[name].param_groups:
                        group["lr"] = lr
                _set_mode(m.model, "phi" in trains, "theta" in trains, train_gate)
            orders = [torch.randperm(n, generator=m.shuffle).to(dev) for m in active]
            sums: list[dict[str, float]] = [{} for _ in active]
            batches = 0
            bv = t0_cfg.batch_videos
            for b0 in range(0, n if trains else 0, bv):
                xs, packings, ys, targets = [], [], [], []
                for m, order in zip(active, orders):
                    idx = order[b0 : b0 + bv]
                    lengths = m.data.lengths[idx]
                    rows = gather_rows(m.data.starts[idx], lengths)
                    x = m.data.features[rows]  # (N_i, D) member i's packed clips, its own gather
                    xs.append(x)
                    packings.append(make_packing(lengths, dev))
                    ys.append(m.data.labels[idx])
                    targets.append(None if m.data.clip_targets is None else m.data.clip_targets[rows].to(x.dtype))
                batch = _PackBatch([m.model for m in active], xs, packings, active, dev)
                terms = [variant_losses(batch.member(i), ys[i], packings[i], plans[i], m.config.variant,
                                        m.config.train.gamma, clip_targets=targets[i], train_gate=train_gate)
                         for i, m in enumerate(active)]
                for m in active:
                    for opt in m.opts.values():
                        opt.zero_grad(set_to_none=True)
                torch.autograd.backward([term["loss"] for term in terms])  # members' graphs are disjoint
                for m in active:
                    for name in trains:
                        m.opts[name].step()
                keys = list(terms[0])
                values = torch.stack([torch.stack([term[k].detach() for k in keys]) for term in terms]).tolist()
                for s, row in zip(sums, values):
                    for key, value in zip(keys, row):
                        s[key] = s.get(key, 0.0) + value
                batches += 1
            snapshots = [{k: v.clone() for k, v in m.rng.items()} for m in active]
            vals = self._validate(active, epoch)
            seconds = time.perf_counter() - t0
            results: list[EpochResult | None] = [None] * len(self._members)
            for m, plan_lr, s, snap, val in zip(active, lrs, sums, snapshots, vals):
                m.trained = epoch

                def state_fn(_m=m, _epoch=epoch, _rng=snap) -> dict:
                    if _m.trained != _epoch:
                        raise RuntimeError(f"EpochResult.state() of epoch {_epoch} called after training moved on")
                    return training_state(_m.config, _epoch, _m.model, _m.opts, _m.shuffle, _rng)

                results[m.index] = EpochResult(
                    epoch=epoch, total_epochs=m.config.train.epochs, step=step, lr=plan_lr,
                    losses={k: v / max(batches, 1) for k, v in s.items()}, val=val, seconds=seconds,
                    model=m.model, _state_fn=state_fn,
                )
            yield results

    def _validate(self, active: list[_Member], epoch: int) -> list[dict]:
        """Each member's EpochResult.val (emmil.train.validation_metrics), its network run in one
        packed scoring pass over every evaluating member's held-out videos."""
        due = [m for m in active if evaluates_at(m.config, epoch, m.val_videos)]
        if not due:
            return [{} for _ in active]
        with _modes_kept([m.model for m in due]):
            scores = packed_scores([m.model for m in due], [m.val_videos for m in due], self.features)
        entries = [(m.model, self.features, m.val_videos, sc) for m, sc in zip(due, scores)]
        with given_scores(entries):
            done = {m.index: validation_metrics(m.config, self.dataset, m.model, m.val_videos, self.features)
                    for m in due}
        return [done.get(m.index, {}) for m in active]
