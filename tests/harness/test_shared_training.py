"""Score once, localise per variant (issue 14.10, harness/shared_training.py): variants that differ only
in inference-only keys train once per seed, and every one of them gets exactly the numbers it would
get trained on its own."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time

import pytest
import torch

from emmil import train as core
from emmil.config import resolve_config
from harness import shared_training as st
from harness import tracking
from harness.cli.ablate import Launch, run_ablation
from harness.experiments import expand_trials, parse_experiment

from conftest import TINY, fresh_results

# Held-out videos validated at epoch 2 and 3 (not 1): replays recompute val_* from saved weights
VAL = {"train.val_fraction": 0.3, "train.eval_every": 2}


@pytest.fixture(scope="module")
def val_data():
    """20 videos per subset: 15 train + 5 held out (tiny_data's 6 leave none to validate on)."""
    from emmil.data.synth import make_synthetic

    return make_synthetic("thumos14", dim=8, seed=0, max_videos=20)


def _cfg(seed: int = 0, **overrides):
    return resolve_config("thumos14", preset="quick", seed=seed, overrides={**TINY, **VAL, **overrides})


def _key(cfg, data_sig: str = "d", device_sig=None) -> str:
    return st.training_key(cfg.to_flat_dict(), data_sig, device_sig or {"type": "cpu"})


# ------------------------------------------------------------------------------------------ the key


def test_training_key_ignores_inference_only_keys_and_nothing_else():
    base = _key(_cfg())
    # every localiser key and the evaluation protocol: the same training
    for over in ({"localize.lam": 0.2}, {"localize.select_on_val": False}, {"localize.gate": 0.05},
                 {"localize.thresholds": "0.1:0.9:0.1", "localize.nms_iou": 0.5}, {"localize.score": "mean"},
                 {"train.exclude_ambiguous": True}):
        assert _key(_cfg(**over)) == base, over
    # anything training reads: another training
    for over in ({"train.lr": 2e-3}, {"train.epochs": 4}, {"train.gamma": 0.2}, {"variant": "joint"},
                 {"model.hidden": 16}, {"train.val_fraction": 0.2}, {"train.eval_every": 1}, {"model.dropout": 0.0}):
        assert _key(_cfg(**over)) != base, over
    assert _key(_cfg(seed=1)) != base
    assert _key(_cfg(), data_sig="other data") != base
    assert _key(_cfg(), device_sig={"type": "cuda", "gpu": "H100"}) != base
    assert len(base) == 24 and all(ch in "0123456789abcdef" for ch in base)


def test_data_signature_sees_features_and_annotations(tiny_data):
    sig = st.data_signature(tiny_data)
    assert st.data_signature(tiny_data) == sig  # deterministic
    feats = tiny_data.features.copy()
    feats[0, 0] += 1.0  # row 0 is always sampled
    assert st.data_signature(dataclasses.replace(tiny_data, features=feats)) != sig
    v0 = dataclasses.replace(tiny_data.videos[0], labels=("other",))
    assert st.data_signature(dataclasses.replace(tiny_data, videos=(v0,) + tiny_data.videos[1:])) != sig


def test_trial_order_puts_the_trainings_first():
    exp = parse_experiment({"name": "lam", "overrides": {"localize.select_on_val": False}, "variants": [
        {"name": "a", "overrides": {"localize.lam": 0.0}}, {"name": "b", "overrides": {"localize.lam": 1.0}},
        {"name": "c", "overrides": {"localize.lam": 0.0}},  # a's replicate: it trains on its own
        {"name": "d", "overrides": {"variant": "joint"}}]}, "lam")
    names = [t.name for t in expand_trials(exp, 2)]
    assert names == ["a-s0", "c-s0", "d-s0", "a-s1", "c-s1", "d-s1", "b-s0", "b-s1"]


# ------------------------------------------------------------------------------------------ the core


def test_fit_trains_identical_weights_when_only_inference_keys_differ(val_data):
    # The fact sharing rests on (harness/shared_training.py module doc): fit never reads them.
    a = _cfg()
    b = _cfg(**{"localize.lam": 0.0, "localize.gate": 0.5, "localize.gamma": 0.4, "localize.score": "mean",
                "localize.thresholds": "0.2,0.6", "localize.nms_iou": 0.3, "localize.min_clips": 2,
                "localize.outer_margin": 1.0, "localize.rgb_weight": 0.9, "localize.select_on_val": False,
                "train.exclude_ambiguous": True})
    ra = [(r.losses, r.lr, r.step, bool(r.val)) for r in core.fit(a, val_data)]
    results = list(core.fit(b, val_data))
    assert [(r.losses, r.lr, r.step, bool(r.val)) for r in results] == ra
    assert [bool(r.val) for r in results] == [False, True, True]
    wa = list(core.fit(a, val_data))[-1].model.state_dict()
    wb = results[-1].model.state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_replay_equals_training_again(val_data):
    # trained with lam 0.8; replayed for lam 0.0: its val_* per epoch and its test metrics are those of
    # training the lam-0.0 config itself
    trained, other = _cfg(), _cfg(**{"localize.lam": 0.0, "localize.select_on_val": False, "localize.gate": 0.0})
    records, weights = [], {}
    for r in core.fit(trained, val_data):
        records.append(core.epoch_record(r))
        if r.val or r.epoch == r.total_epochs:
            weights[r.epoch] = {k: v.clone() for k, v in r.model.state_dict().items()}
    loaded = []
    replayed = list(core.replay(other, val_data, records, lambda e: (loaded.append(e), weights[e])[1]))
    direct = list(core.fit(other, val_data))
    assert loaded == [2, 3]  # only the evaluated epochs' weights are read
    for rep, ref in zip(replayed, direct, strict=True):
        assert (rep.epoch, rep.step, rep.lr, rep.losses, rep.val) == (ref.epoch, ref.step, ref.lr, ref.losses, ref.val)
    assert replayed[1].val["val_avg_mAP"] == direct[1].val["val_avg_mAP"] > 0
    assert replayed[1].val != list(core.fit(trained, val_data))[1].val  # not the trainer's own val_*
    assert core.evaluate_test(other, val_data, replayed[-1].model).metrics == \
        core.evaluate_test(other, val_data, direct[-1].model).metrics
    assert replayed[-1].state() == {"version": core.STATE_VERSION, "config_hash": replayed[-1].state()["config_hash"],
                                    "epoch": 3, "replayed": True}
    # from a later epoch (a resumed replay), and a record list of another length is refused
    assert [r.epoch for r in core.replay(other, val_data, records, weights.__getitem__, start=3)] == [3]
    with pytest.raises(ValueError, match="records of epochs"):
        list(core.replay(other, val_data, records[:2], weights.__getitem__))


# ------------------------------------------------------------------------------------------ the claim


def _shared(root, trial: str, config_hash: str = "c1", key: str = "k" * 24) -> st.SharedTraining:
    return st.SharedTraining(root, key, config_hash, trial, poll_s=0.02)


def _train(shared: st.SharedTraining, epochs: int = 2) -> None:
    for e in range(1, epochs + 1):
        shared.record_epoch({"epoch": e, "total_epochs": epochs, "step": "M", "lr": 1e-3, "losses": {"loss": 1.0 / e},
                             "seconds": 0.1, "evaluated": e == epochs},
                            (lambda: {"w": torch.full((2,), float(e))}) if e == epochs else None)
    assert shared.finish(epochs)


def test_claim_trains_once_and_the_others_replay(tmp_path):
    first = _shared(tmp_path, "x/a")
    assert first.claim().mode == st.TRAIN
    # while a trains: a trial with the SAME full config is its replicate and trains alone; another waits
    assert _shared(tmp_path, "x/twin").claim() == st.Claim(st.ALONE, "x/twin")
    waiting: list = []
    other = _shared(tmp_path, "x/b", config_hash="c2")
    thread = threading.Thread(target=lambda: waiting.append(other.claim()))
    thread.start()
    time.sleep(0.3)
    assert not waiting and thread.is_alive()  # blocked on the lock
    _train(first)
    thread.join(5)
    (claim,) = waiting
    assert claim.mode == st.REPLAY and claim.trained_by == "x/a" and [r["epoch"] for r in claim.records] == [1, 2]
    assert other.waited_s >= 0.3
    assert torch.equal(other.weights(2)["w"], torch.full((2,), 2.0))
    # after it: a replicate still trains alone; the trainer itself (a retry) replays its own training
    assert _shared(tmp_path, "x/twin").claim().mode == st.ALONE
    assert _shared(tmp_path, "x/a").claim() == st.Claim(st.REPLAY, "x/a", claim.records)


def test_a_crashed_trainer_leaves_nothing_to_reuse(tmp_path):
    crashed = _shared(tmp_path, "x/a")
    assert crashed.claim().mode == st.TRAIN
    crashed.record_epoch({"epoch": 1, "total_epochs": 2, "step": "M", "lr": 1.0, "losses": {}, "seconds": 0.0,
                          "evaluated": False}, None)
    crashed.release()  # what the kernel does when the process dies: no done.json was written
    assert not (crashed.folder / "done.json").exists()
    retry = _shared(tmp_path, "x/b", config_hash="c2")
    assert retry.claim().mode == st.TRAIN  # no wait, no reuse: it trains
    assert sorted(retry.records) == [1]  # a resumed trainer continues the epoch records
    retry.release()
    # a write that fails only stops the sharing: no done.json, the trial goes on
    broken = _shared(tmp_path, "x/c", config_hash="c3")
    assert broken.claim().mode == st.TRAIN
    shutil.rmtree(broken.folder)
    broken.record_epoch({"epoch": 1, "total_epochs": 1, "step": "M", "lr": 1.0, "losses": {}, "seconds": 0.0,
                         "evaluated": False}, lambda: {"w": torch.zeros(1)})
    assert broken.broken and not broken.finish(1) and broken.fd is None
    assert not list(tmp_path.rglob(".*.tmp"))
    # done.json that names a missing weight file is not reused
    good = _shared(tmp_path, "x/d", key="d" * 24)
    assert good.claim().mode == st.TRAIN
    _train(good)
    (good.folder / "model-0002.pt").unlink()
    assert good.read_done() is None


# ------------------------------------------------------------------------------------------ end to end

# gate 0 keeps every class: the barely trained tiny gate passes none at 0.15, and val_* would be 0 for both
LAMBDA = parse_experiment({
    "name": "lam", "overrides": {"localize.select_on_val": False, "localize.gate": 0.0, **VAL},
    "variants": [{"name": "lam-0.0", "overrides": {"localize.lam": 0.0}},
                 {"name": "lam-1.0", "overrides": {"localize.lam": 1.0}}]}, "lam")


def _runs(outcome) -> dict:
    c = tracking.client(outcome.tracking_uri)
    exp = c.get_run(outcome.parent_run_id).info.experiment_id
    runs = {r.data.tags["emmil.trial_id"].split("/")[1]: c.get_run(r.info.run_id)
            for r in tracking.child_runs(outcome.tracking_uri, exp, outcome.parent_run_id)}
    history = {name: {key: [(m.step, m.value) for m in sorted(c.get_metric_history(run.info.run_id, key),
                                                               key=lambda m: m.step)]
                      for key in run.data.metrics if key != "epoch_seconds"}
               for name, run in runs.items()}
    return runs, history


def test_lambda_ablation_trains_once_per_seed_with_the_numbers_of_separate_trainings(
        ray_cluster, val_data, tmp_path_factory, template_store):
    results = fresh_results(tmp_path_factory, template_store, "shared")
    # the trainer of seed 0 crashes once at epoch 2: its retry or the waiting lam-1.0-s0 finishes the
    # training, the other replays it; the numbers do not depend on which
    launch = Launch(results=results, overrides=TINY, report=False,
                    fail_once={"epoch": 2, "marker_dir": str(results / "markers"), "trial": "lam/lam-0.0-s0"})
    shared = run_ablation(LAMBDA, dataset="thumos14", preset="quick", seeds=2, launch=launch,
                          load_data=lambda: val_data, command="emmil ablate lam")
    assert shared.exit_code == 0
    runs, history = _runs(shared)
    assert sorted(runs) == ["lam-0.0-s0", "lam-0.0-s1", "lam-1.0-s0", "lam-1.0-s1"]
    for seed in (0, 1):
        a, b = runs[f"lam-0.0-s{seed}"], runs[f"lam-1.0-s{seed}"]
        # one training per seed: both runs name the same trainer, one of the two
        assert a.data.tags["emmil.trained_by"] == b.data.tags["emmil.trained_by"] in (
            f"lam/lam-0.0-s{seed}", f"lam/lam-1.0-s{seed}")
        assert a.data.tags["emmil.training_key"] == b.data.tags["emmil.training_key"]
        assert a.data.tags["emmil.config_hash"] != b.data.tags["emmil.config_hash"]
        assert a.data.params["localize.lam"] == "0.0" and b.data.params["localize.lam"] == "1.0"
    assert runs["lam-0.0-s0"].data.tags["emmil.training_key"] != runs["lam-0.0-s1"].data.tags["emmil.training_key"]
    done = sorted((results / "lam" / "shared-training").glob("*/done.json"))
    assert len(done) == 2  # one complete training per seed
    assert sorted(r["shared_training"] for r in shared.rows).count("replay") >= 2
    # the crashed trial logged every epoch once, whichever way it finished
    assert [s for s, _ in history["lam-0.0-s0"]["loss"]] == [1, 2, 3]

    # the same variants, each trained on its own (one experiment per variant: nothing to share)
    separate_runs, separate_history = {}, {}
    for variant in LAMBDA.variants:
        alone = dataclasses.replace(LAMBDA, name=f"alone-{variant.name}", variants=(variant,))
        outcome = run_ablation(alone, dataset="thumos14", preset="quick", seeds=2,
                               launch=Launch(results=fresh_results(tmp_path_factory, template_store, alone.name),
                                             overrides=TINY, report=False),
                               load_data=lambda: val_data, command=f"emmil ablate {alone.name}")
        assert outcome.exit_code == 0
        r, h = _runs(outcome)
        separate_runs.update(r)
        separate_history.update(h)
    assert sorted(separate_runs) == sorted(runs)
    for name in runs:
        assert separate_runs[name].data.tags["emmil.trained_by"].endswith(name)  # these trained themselves
        test = {k: v for k, v in runs[name].data.metrics.items() if k.startswith(("test_", "selected_"))}
        assert test and test == {k: v for k, v in separate_runs[name].data.metrics.items()
                                 if k.startswith(("test_", "selected_"))}, name
        # every per-epoch curve (loss*, lr, val_* recomputed with the run's own lambda) is the same
        assert history[name] == separate_history[name], name
        assert {"loss", "lr", "val_avg_mAP"} <= set(history[name])
        assert [s for s, _ in history[name]["val_avg_mAP"]] == [2, 3]
        assert runs[name].data.params == separate_runs[name].data.params
    # the two lambdas really localise differently (else the checks above would prove little)
    for seed in (0, 1):
        a, b = f"lam-0.0-s{seed}", f"lam-1.0-s{seed}"
        assert history[a]["val_avg_mAP"] != history[b]["val_avg_mAP"]
        assert runs[a].data.metrics["test_avg_mAP"] != runs[b].data.metrics["test_avg_mAP"]
        assert history[a]["loss"] == history[b]["loss"]  # one training
