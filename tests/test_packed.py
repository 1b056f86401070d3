"""Packed training (issue 11): a member of a pack gives its run alone's results.

Tolerance 0 throughout: emmil.packed runs every matmul and every transcendental / reducing op per
member at the shape, position and alignment its run alone has, and only exact ops (adds, copies,
ReLU) over all members' rows at once, so on CPU a packed member is its unpacked run to the bit. That
also settles the thresholds (Eq. 3 / Eq. 5 pseudo-labels, proposals): they see identical inputs.
"""

import dataclasses

import pytest
import torch

from emmil.config import resolve_config
from emmil.errors import ConfigError
from emmil.packed import PackedFit, check_pack, evaluate_test_packed, pack_key
from emmil.train import evaluate_test, fit


@pytest.fixture(scope="module")
def small():
    from emmil.data.synth import make_synthetic

    return make_synthetic("thumos14", dim=32, seed=0, max_videos=24)


def _tiny(seed=0, **extra):
    # 4 epochs: M (all-positive init), E, then the boosted alternation M (Eq. 5 labels), E; 3 videos a
    # step; a quarter of the training videos held out, validated every epoch.
    over = {"train.epochs": 4, "train.cycle": 1, "train.cycle_epochs": 2, "train.batch_videos": 3,
            "train.val_fraction": 0.25, "train.eval_every": 1, "model.hidden": 16, "model.cls_hidden": 16,
            "device": "cpu", **extra}
    return resolve_config("thumos14", preset="quick", seed=seed, overrides=over)


def _three(variant="full", **shape):
    # different seeds and lrs; member 2 also differs in gamma, dropout and lr boost (values only)
    return [_tiny(0, variant=variant, **shape), _tiny(1, variant=variant, **{"train.lr": 3e-3}, **shape),
            _tiny(2, variant=variant, **{"train.lr": 5e-4, "train.gamma": 0.3, "model.dropout": 0.2,
                                         "train.lr_boost": 2.0}, **shape)]


def _record(r):
    return {"epoch": r.epoch, "step": r.step, "lr": r.lr, "losses": r.losses, "val": r.val,
            "modes": [m.training for m in r.model.modules()],
            "weights": {k: v.detach().clone() for k, v in r.model.state_dict().items()}}


def _same(a, b):
    """Two _record lists are equal: everything ==, weights bit for bit."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != "weights"} == {k: v for k, v in y.items() if k != "weights"}
        assert x["weights"].keys() == y["weights"].keys()
        for name in x["weights"]:
            assert torch.equal(x["weights"][name], y["weights"][name]), (x["epoch"], name)


def _alone(config, data, **kw):
    return [_record(r) for r in fit(config, data, **kw)]


def _packed(configs, data, **kw):
    out = [[] for _ in configs]
    for results in PackedFit(configs, data, **kw):
        for i, r in enumerate(results):
            if r is not None:
                out[i].append(_record(r))
    return out


@pytest.mark.parametrize("variant,shape", [("full", {}), ("no-pseudo-label", {}), ("supervised", {}),
                                           ("full", {"model.hidden": 13, "model.kernel_size": 5,
                                                     "train.batch_videos": 1})])
def test_pack_of_three_equals_each_run_alone(small, variant, shape):
    # full: Eq. 3 / 5 labels and the all-positive M block; no-pseudo-label: attention-MIL loss with the
    # frozen branch; supervised: ground-truth clip targets (one table shared by the pack). hidden 13:
    # member rows of the packed buffers start off the 64-byte boundary (13 * 4 bytes a row), where BLAS
    # on the slice itself differs in the last bit (emmil.model.aligned); one video per step as the paper.
    configs = _three(variant, **shape)
    packed = _packed(configs, small)
    for config, member in zip(configs, packed):
        _same(_alone(config, small), member)  # fit: a pack of one (val metrics, modes included)
        _same_training(_reference(config, small)[0], member)  # the plain one-model run
    assert [r["step"] for r in packed[0]] == (["joint"] * 4 if variant == "supervised" else ["M", "E", "M", "E"])
    assert "val_avg_mAP" in packed[0][-1]["val"]
    # the members really differ (different seeds and lrs): a pack that trained one model K times fails here
    assert packed[0][-1]["losses"] != packed[1][-1]["losses"]
    # member 2's lr: train.lr 5e-4 x lr_boost 2 in the alternating epochs 3-4
    assert [r["lr"] for r in packed[2]] == [5e-4, 5e-4, 1e-3, 1e-3]


def _reference(config, data):
    """The unpacked run, written out: one EMMIL (packed_conv1d), step_losses (nn.Dropout drawing from
    the global RNG), fit's seeds and optimisers; no validation (it draws nothing and trains nothing).
    This is emmil.train.fit's loop before fit became a pack of one. Returns (per-epoch losses and
    weights, the final model, optimisers, shuffle generator)."""
    from emmil.model import make_packing
    from emmil.schedule import plan_epoch
    from emmil.train import (_device_data, _optimizers, _set_mode, build_model, dataset_tensor, gather_rows,
                             split_validation, step_losses)

    t, dev = config.train, torch.device("cpu")
    train_videos, _ = split_validation(data, t.val_fraction, config.seed)
    d = _device_data(data, train_videos, dataset_tensor(data, dev), config.variant)
    model = build_model(config, data, dev)
    opts = _optimizers(model, config)
    shuffle = torch.Generator().manual_seed(config.seed + 1)
    torch.manual_seed(config.seed + 2)
    epochs = []
    for epoch in range(1, t.epochs + 1):
        plan = plan_epoch(epoch, t, config.variant)
        for name in ("phi", "theta"):
            for group in opts[name].param_groups:
                group["lr"] = t.lr * plan.lr_scale
        train_gate = epoch <= t.gate_epochs
        trains = {"E": ("phi",), "M": ("theta",), "joint": ("phi", "theta"), "none": ()}[plan.step]
        trains += ("gate",) if train_gate else ()
        _set_mode(model, "phi" in trains, "theta" in trains, train_gate)
        order = torch.randperm(len(train_videos), generator=shuffle)
        sums, batches = {}, 0
        for b0 in range(0, len(train_videos) if trains else 0, t.batch_videos):
            idx = order[b0 : b0 + t.batch_videos]
            lengths = d.lengths[idx]
            rows = gather_rows(d.starts[idx], lengths)
            x = d.features[rows]
            targets = None if d.clip_targets is None else d.clip_targets[rows].to(x.dtype)
            terms = step_losses(model, x, d.labels[idx], make_packing(lengths, dev), plan, config.variant, t.gamma,
                                clip_targets=targets, train_gate=train_gate)
            for opt in opts.values():
                opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            for name in trains:
                opts[name].step()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            batches += 1
        epochs.append({"losses": {k: v / max(batches, 1) for k, v in sums.items()},
                       "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}})
    return epochs, model, opts, shuffle


def _same_training(reference, records):
    """Per-epoch losses == and weights bit for bit (what training alone determines)."""
    assert len(reference) == len(records)
    for ref, rec in zip(reference, records):
        assert ref["losses"] == rec["losses"]
        assert all(torch.equal(ref["weights"][k], rec["weights"][k]) for k in ref["weights"])


def test_fit_is_the_unpacked_run_state_included(small):
    # fit trains as a pack of one: it must be the plain one-model run to the bit, and its state() must
    # hold exactly that run's optimiser, batch-order and dropout RNG states.
    config = _tiny(7)
    records, last_state = [], None
    for r in fit(config, small):
        records.append(_record(r))
        last_state = r.state()
    reference, model, opts, shuffle = _reference(config, small)
    _same_training(reference, records)
    assert last_state["epoch"] == 4
    assert set(last_state) == {"version", "config_hash", "epoch", "model", "optimizers", "shuffle_rng", "rng"}
    assert torch.equal(last_state["shuffle_rng"], shuffle.get_state())
    assert torch.equal(last_state["rng"]["cpu"], torch.get_rng_state())  # the reference's dropout stream
    for name, opt in opts.items():
        ref, got = opt.state_dict()["state"], last_state["optimizers"][name]["state"]
        assert ref.keys() == got.keys() and all(torch.equal(ref[i][k], got[i][k]) for i in ref for k in ref[i])


def test_resume_mid_pack_by_pack_and_by_fit(small):
    configs = _three()
    whole = [[] for _ in configs]
    states = None
    for results in PackedFit(configs, small):
        for i, r in enumerate(results):
            whole[i].append(_record(r))
        if results[0].epoch == 2:
            states = [r.state() for r in results]
    # the pack resumed from its epoch-2 states continues identically (epochs 3 and 4)
    resumed = _packed(configs, small, resumes=states)
    for i in range(3):
        assert [r["epoch"] for r in resumed[i]] == [3, 4]
        _same(whole[i][2:], resumed[i])
    # one member's pack state resumed by plain fit alone continues identically
    _same(whole[1][2:], _alone(configs[1], small, resume=states[1]))
    # and fit's own states resume a pack
    fit_states = []
    for config in configs:
        for r in fit(config, small):
            if r.epoch == 2:
                fit_states.append(r.state())
                break
    for i, member in enumerate(_packed(configs, small, resumes=fit_states)):
        _same(whole[i][2:], member)
    # resumes after different epochs (member 1 not resumed = after epoch 0) are refused
    with pytest.raises(ConfigError, match=r"resume after epochs \[2, 0, 2\]"):
        PackedFit(configs, small, resumes=[states[0], None, states[2]])


def test_stop_leaves_the_others_unchanged(small):
    configs = _three()
    full = _packed(configs, small)
    pack = PackedFit(configs, small)
    seen = [[] for _ in configs]
    first_state = None
    for results in pack:
        for i, r in enumerate(results):
            seen[i].append(None if r is None else _record(r))
        if results[0].epoch == 1:
            first_state = results[1].state
            pack.stop(1)
    assert seen[1][1:] == [None, None, None]
    _same(full[1][:1], seen[1][:1])
    _same(full[0], seen[0])
    _same(full[2], seen[2])
    assert first_state()["epoch"] == 1  # a stopped member's last state stays valid: it never moved on
    # a pack whose members are all stopped ends
    pack = PackedFit(configs, small)
    epochs = []
    for results in pack:
        epochs.append(results[0].epoch)
        for i in range(3):
            pack.stop(i)
    assert epochs == [1]
    with pytest.raises(IndexError, match=r"members 0\.\.2"):
        pack.stop(3)


def test_pack_keys_refuse_shapes_and_accept_values():
    base = _tiny(0)
    # values only: seed, lr, gamma, dropout, weight decay, cls_lr, lr boost / schedule, localiser keys
    same = _tiny(5, **{"train.lr": 1e-2, "train.gamma": 0.5, "model.dropout": 0.0, "train.weight_decay": 1e-4,
                       "train.cls_lr": 5e-3, "train.lr_boost": 1.0, "train.schedule": "released",
                       "train.eval_every": 2, "localize.lam": 0.3, "localize.rgb_weight": 0.7,
                       "localize.select_on_val": False})
    assert pack_key(same) == pack_key(base)
    check_pack([base, same])
    for key, value in [("model.hidden", 24), ("model.kernel_size", 5), ("train.batch_videos", 2),
                       ("train.epochs", 5), ("train.cycle", 2), ("train.val_fraction", 0.1),
                       ("train.gate_epochs", 1), ("model.cls_hidden", 8)]:
        other = _tiny(0, **{key: value})
        old = base.to_flat_dict()[key]
        with pytest.raises(ConfigError, match=rf"'{key}' is {old!r} for member 0 but {value!r} for member 2"):
            check_pack([base, same, other])
    with pytest.raises(ConfigError, match=r"'variant' is 'full' for member 0 but 'joint' for member 1"):
        check_pack([base, _tiny(0, variant="joint")])
    with pytest.raises(ConfigError, match="no configs"):
        check_pack([])


def test_evaluate_test_packed_equals_evaluate_test_with_one_forward(small, monkeypatch):
    # member 1 keeps its configured localiser (no selection on held-out videos: no scoring pass there)
    configs = _three()
    configs[1] = dataclasses.replace(configs[1], localize=dataclasses.replace(configs[1].localize, select_on_val=False))
    models = None
    for results in PackedFit(configs, small):
        models = [r.model for r in results]
    for model in models:
        model.train()
    expected = [evaluate_test(c, small, m) for c, m in zip(configs, models)]
    modes = [[m.training for m in model.modules()] for model in models]
    assert modes[1] == [True] * len(modes[1]) and modes[0] == [False] * len(modes[0])
    for model in models:
        model.train()
    from emmil.model import EMMIL

    def no_forward(self, *args, **kwargs):  # every score must come from the packed scoring passes
        raise AssertionError("evaluate_test_packed ran a member's network on its own")

    monkeypatch.setattr(EMMIL, "scores", no_forward)
    got = evaluate_test_packed(configs, small, models)
    assert got == expected  # every TestOutcome field: metrics, predictions, timelines, ...
    assert [[m.training for m in model.modules()] for model in models] == modes  # as evaluate_test leaves them
    assert "selected_lam" in got[0].metrics and "selected_lam" not in got[1].metrics


def test_packed_scores_are_each_models_own(small):
    # Scoring passes of three models packed together (two on the test videos, one on other videos) give
    # predict_scores' arrays exactly; hidden 13 puts member rows off the 64-byte boundary.
    import numpy as np

    from emmil.packed import packed_scores
    from emmil.train import build_model, dataset_tensor, predict_scores

    configs = _three(**{"model.hidden": 13})
    models = [build_model(c, small, torch.device("cpu")) for c in configs]
    feats = dataset_tensor(small, torch.device("cpu"))
    test = small.in_subset(small.test_subset)
    lists = [test, small.in_subset(small.train_subset)[:7], test]
    got = packed_scores(models, lists, feats)
    for model, videos, scores in zip(models, lists, got):
        expected = predict_scores(model, videos, feats)
        assert len(scores) == len(expected) == len(videos)
        for a, b in zip(expected, scores):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
