"""`emmil sweep --pack K` packs the Optuna search (issue 11, harness/packed_search.py): K Optuna trials per
Ray trial, asked at once, each told COMPLETE / PRUNED on its own; the sweep's early-stopping rule stops
members, not packs, and is the rule Ray's scheduler applies to lone trials."""

from __future__ import annotations

import json
import math
import random

import pytest

from emmil.errors import ConfigError
from harness import tracking
from harness.cli.ablate import Launch
from harness.experiments import parse_space
from harness.packed_search import MemberPruning, pack_shape_params

from conftest import TINY, fresh_results


def test_asha_on_members_by_hand():
    # max 8 epochs, grace 2, rf 2: rungs at 2, 4, 8 (int(log2(8 / 2)) + 1 = 3 rungs);
    # a member is stopped at a rung when below the median (rf 2: the 50th percentile) of the values
    # recorded there before it
    rule = MemberPruning("asha", max_epochs=8, grace=2)
    assert not rule.decide("a", 1, 0.0)  # before the first rung: nothing recorded
    assert not rule.decide("a", 2, 0.5)  # first at rung 2: nothing to compare with
    assert rule.decide("b", 2, 0.3)  # 0.3 < percentile50([0.5]) = 0.5
    assert not rule.decide("c", 2, 0.6)  # percentile50([0.5, 0.3]) = 0.4
    assert rule.decide("d", 2, 0.4)  # percentile50([0.3, 0.5, 0.6]) = 0.5
    assert not rule.decide("e", 2, None)  # not validated this epoch: decides and records nothing
    assert rule.decide("e", 2, 0.44)  # percentile50([0.3, 0.4, 0.5, 0.6]) = 0.45
    assert not rule.decide("a", 3, 0.0)  # a was recorded at rung 2 already; rung 4 not reached
    assert not rule.decide("a", 4, 0.7)
    assert rule.decide("c", 4, 0.65)  # 0.65 < 0.7
    assert rule.decide("b", 2, 0.99)  # asked again (a retried pack): the first answer
    assert not rule.decide("c", 8, 0.0)  # a last epoch only records (the member has finished)
    assert rule.decide_many(4, {"f": 0.1, "g": 0.9}) == ["f"]  # f: below median([0.7, 0.65]) = 0.675


def test_median_rule_on_members_by_hand():
    # grace 2, 3 other members needed: stop when the member's best so far is below the median of the
    # others' means over epochs 2..t, among the others whose last result is at or past t
    rule = MemberPruning("median", max_epochs=10, grace=2, min_samples=3)
    assert not rule.decide("a", 1, 0.9)  # before grace (epoch 1 counts for a's best, not for its mean)
    for member, value in (("a", 0.5), ("b", 0.4), ("c", 0.2)):
        assert not rule.decide(member, 2, value)  # 0, 1, 2 others: too few
    assert rule.decide("d", 2, 0.35)  # median of the means 0.5 0.4 0.2 = 0.4 > d's best 0.35
    assert rule.decide("e", 2, 0.1)  # means 0.5 0.4 0.2 0.35: median 0.375 > 0.1
    assert not rule.decide("a", 3, 0.0)  # no other has reached epoch 3: too few
    assert not rule.decide("f", 1, 0.95)
    # others a (its mean over epochs 2..2: 0.5), b, c, d, e: median 0.35, but f's best so far is 0.95
    assert not rule.decide("f", 2, 0.1)


def _ray_decisions(kind: str, events, max_epochs: int) -> dict:
    """What Ray's own scheduler decides for `events` [(trial, epoch, value or None)], fed as Tune feeds
    it (on_trial_add, on_trial_result per report, on_trial_complete after the last epoch; a stopped
    trial reports no more): {(trial, epoch): stop}."""
    from ray.tune.schedulers import TrialScheduler

    from harness.optuna_search import make_scheduler

    class FakeTrial:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    class FakeController:
        def get_live_trials(self):
            return []

    sched = make_scheduler(kind, max_epochs)
    sched.set_search_properties("val", "max")
    trials, stopped, out = {}, set(), {}
    for name, epoch, value in events:
        if name in stopped:
            continue
        if name not in trials:
            trials[name] = FakeTrial(name)
            sched.on_trial_add(FakeController(), trials[name])
        result = {"epoch": epoch, **({} if value is None else {"val": value})}
        action = sched.on_trial_result(FakeController(), trials[name], result)
        if epoch >= max_epochs:
            if kind == "asha":  # Ray's median rule appends the last result twice (here too): leave it out
                sched.on_trial_complete(FakeController(), trials[name], result)
            continue
        out[(name, epoch)] = action == TrialScheduler.STOP
        if action == TrialScheduler.STOP:
            stopped.add(name)
    return out


@pytest.mark.parametrize("kind", ["asha", "median"])
def test_member_pruning_decides_what_rays_scheduler_decides_for_lone_trials(kind):
    rng = random.Random(7)
    max_epochs = 12
    for trial in range(5):  # five random searches of 14 asynchronous trials
        progress = {f"t{i}": 0 for i in range(14)}
        events = []
        while progress:
            name = rng.choice(sorted(progress))
            progress[name] += 1
            epoch = progress[name]
            value = None if epoch % 3 == 2 else round(rng.random(), 3)  # some epochs not validated
            events.append((name, epoch, value))
            if epoch == max_epochs:
                del progress[name]
        want = _ray_decisions(kind, events, max_epochs)
        rule, stopped, got = MemberPruning(kind, max_epochs, grace=3), set(), {}  # scheduler_settings(.., 12)
        for name, epoch, value in events:
            if name in stopped:
                continue
            stop = rule.decide(name, epoch, value)
            if epoch < max_epochs:
                got[(name, epoch)] = stop
            if stop:
                stopped.add(name)
        assert got == want, kind
        assert any(want.values()), "the random searches stop some trials"


def test_the_parameters_a_pack_shares_are_those_that_change_shapes_or_steps():
    from harness.experiments import load_space

    # the shipped space: hidden (conv shapes) and cycle (the E/M step of each epoch) are per pack
    assert pack_shape_params(load_space("thumos14"), "thumos14", "paper", {}) == ["train.cycle", "model.hidden"]
    values = parse_space({"name": "v", "fixed": {"train.val_fraction": 0.3},
                          "params": {"train.lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-3},
                                     "localize.lam": {"distribution": "uniform", "low": 0.0, "high": 1.0},
                                     "model.kernel_size": {"distribution": "categorical", "choices": [3, 5]}}},
                         "v.yaml")
    assert pack_shape_params(values, "thumos14", "quick", TINY) == ["model.kernel_size"]


def test_members_of_a_suggested_pack_share_its_shape_parameters(tmp_path):
    import optuna

    from harness.packed_search import PackedOptunaSearch

    space = parse_space({"name": "s", "fixed": {"train.val_fraction": 0.3},
                         "params": {"train.lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-3},
                                    "model.hidden": {"distribution": "categorical", "choices": [8, 16, 32, 64]}}},
                        "s.yaml")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = PackedOptunaSearch(space, storage, "s", 0, pack=3, trials=7, prefix="s/search",
                                  member_base={"variant": "full", "overrides": {"x": 1}},
                                  shape_params=["model.hidden"])
    packs = [searcher.suggest(f"tune{i}") for i in range(4)]
    assert packs[3] == searcher.FINISHED  # 3 + 3 + 1 members: 7 trials asked in all
    sizes = [len(p["trial"]["members"]) for p in packs[:3]]
    assert sizes == [3, 3, 1]
    for p in packs[:3]:
        members = p["trial"]["members"]
        assert len({m["overrides"]["model.hidden"] for m in members}) == 1  # one shape per pack
        assert all(m["overrides"]["x"] == 1 and m["search"] == {k: m["overrides"][k] for k in m["search"]}
                   for m in members)
        assert len({m["overrides"]["train.lr"] for m in members}) == len(members)  # values sampled per member
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.user_attrs["trial_id"] for t in study.trials] == [f"s/search/t{n}" for n in range(7)]
    assert {t.state.name for t in study.trials} == {"RUNNING"}
    # the pack's reports: values per epoch, a member stopped at epoch 2, the others' final reports
    first = [m["trial_id"] for m in packs[0]["trial"]["members"]]
    searcher.on_trial_result("tune0", {"epoch": 1, "pack_values": json.dumps({i: 0.1 * k for k, i in enumerate(first)})})
    searcher.on_trial_result("tune0", {"epoch": 2, "pack_values": json.dumps({first[0]: 0.5, first[1]: None}),
                                       "pack_stopped": json.dumps({first[0]: {"epoch": 2, "total_epochs": 3,
                                                                             "mlflow_run_id": "r0"}})})
    finals = {first[1]: {"epoch": 3, "total_epochs": 3, "val_avg_mAP": 0.7, "mlflow_run_id": "r1"},
              first[2]: {"epoch": 3, "total_epochs": 3, "val_avg_mAP": float("nan")}}
    searcher.on_trial_complete("tune0", {"pack_members": json.dumps(finals).replace("NaN", "null")})
    searcher.on_trial_complete("tune1", None, error=True)  # a pack that failed: its members FAIL
    by_id = {t.user_attrs["trial_id"]: t for t in optuna.load_study(study_name="s", storage=storage).trials}
    t0, t1, t2 = (by_id[i] for i in first)
    assert t0.state.name == "PRUNED" and t0.intermediate_values == {1: 0.0, 2: 0.5} and t0.user_attrs["mlflow_run_id"] == "r0"
    assert t1.state.name == "COMPLETE" and t1.value == 0.7 and t1.intermediate_values == {1: 0.1}
    assert t2.state.name == "FAIL"  # ran every epoch without a finite objective
    assert [by_id[m["trial_id"]].state.name for m in packs[1]["trial"]["members"]] == ["FAIL"] * 3
    assert by_id[packs[2]["trial"]["members"][0]["trial_id"]].state.name == "RUNNING"  # its pack still runs


@pytest.fixture(scope="module")
def val_data():
    from emmil.data.synth import make_synthetic

    return make_synthetic("thumos14", dim=8, seed=0, max_videos=20)


def test_packed_search_tells_each_member_and_prunes_members_not_packs(ray_cluster, val_data, tmp_path_factory,
                                                                      template_store):
    import optuna

    from harness.cli.sweep import run_sweep

    results = fresh_results(tmp_path_factory, template_store, "psearch")
    # gate 0 keeps every class: a barely trained tiny gate passes none (every val mAP 0, nothing to rank)
    space = parse_space({
        "name": "pss", "fixed": {"train.val_fraction": 0.3, "train.eval_every": 1, "localize.gate": 0.0,
                                 "localize.select_on_val": False},
        "params": {"train.lr": {"distribution": "loguniform", "low": 1e-5, "high": 3e-2}}}, "pss.yaml")
    lines: list[str] = []
    # one pack at a time: the arrival order of results is then known, and the pruning replayable below;
    # every pack crashes once at epoch 2 and continues from its state file
    launch = Launch(results=results, overrides=TINY, report=False, pack=2, max_concurrent=1,
                    fail_once={"epoch": 2, "marker_dir": str(results / "markers"), "trial": None})
    outcome = run_sweep(space, dataset="thumos14", preset="quick", trials=5, scheduler="asha", study="pss",
                        storage=None, sampler_seed=0, final_seeds=0, launch=launch,
                        load_data=lambda: val_data, command="emmil sweep --pack 2", out=lines.append)
    assert outcome.exit_code == 0, "\n".join(lines)
    assert any(line.startswith("packing: 5 search trials in 3 pack(s) of up to 2") for line in lines)

    study = optuna.load_study(study_name="pss", storage=f"sqlite:///{results / 'optuna.db'}")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == 5 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    c = tracking.client(outcome.tracking_uri)
    exp = c.get_run(outcome.parent_run_id).info.experiment_id
    runs = {r.data.tags["emmil.trial_id"]: c.get_run(r.info.run_id)
            for r in tracking.child_runs(outcome.tracking_uri, exp, outcome.parent_run_id)}
    assert sorted(runs) == sorted(f"pss/search/t{t.number}" for t in trials)  # one run per Optuna trial
    packs: dict[str, list[int]] = {}
    events = []  # (member, epoch, objective) in the order the pruning actor got them
    for t in trials:
        run = runs[t.user_attrs["trial_id"]]
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        tags = run.data.tags
        packs.setdefault(tags["emmil.pack"], []).append(t.number)
        val = {m.step: m.value for m in c.get_metric_history(run.info.run_id, "val_avg_mAP")}
        loss_steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "loss"))
        assert loss_steps == sorted(val) == list(range(1, len(val) + 1))  # every epoch once, after the crash too
        assert t.intermediate_values == val  # the study has each member's own objective per epoch
        assert float(run.data.params["train.lr"]) == pytest.approx(t.params["train.lr"], rel=1e-12)
        if t.state.name == "COMPLETE":
            assert run.info.status == "FINISHED" and len(val) == 3 and t.value == val[3]
        else:  # stopped early: the run ends as the unpacked search's runs stopped by ASHA do
            assert run.info.status == "KILLED" and tags["emmil.stopped_early"] == "true"
            assert int(tags["emmil.stopped_at_epoch"]) == len(val) < 3
    assert sorted(packs.values()) == [[0, 1], [2, 3], [4]]  # asked 2 at a time, in order
    # every pack that reached epoch 2 crashed there once (a pack whose members were all stopped after
    # epoch 1 never did)
    reached_2 = {p for p, ns in packs.items() if any(len(trials[n].intermediate_values) >= 2 for n in ns)}
    crashed = {f.stem for f in (results / "markers").glob("*.failed")}
    assert crashed == {p.replace("/", "_") for p in reached_2} and reached_2
    # the members' decisions are the sweep's ASHA rule over their values in the order they arrived
    # (packs one after the other; in a pack, epoch by epoch, members in order)
    rule, pruned = MemberPruning("asha", max_epochs=3, grace=1), {}
    for numbers in sorted(packs.values()):
        for epoch in (1, 2):
            for n in numbers:
                if n not in pruned and rule.decide(str(n), epoch, trials[n].intermediate_values[epoch]):
                    pruned[n] = epoch
    assert {t.number: len(t.intermediate_values) for t in trials if t.state.name == "PRUNED"} == pruned
    assert pruned and len(pruned) < 5  # this search prunes some members and not all (lrs 1e-5..3e-2)
    # stopping a member did not stop its pack: a pack mate trained epochs after the member's last
    epochs = {t.number: len(t.intermediate_values) for t in trials}
    assert any(epochs[m] > epochs[n] for ns in packs.values() for n in ns if n in pruned for m in ns), (pruned, packs)
    assert math.isfinite(study.best_value)

    # a resume finds the 5 trials in the study and searches no more
    again = run_sweep(space, dataset="thumos14", preset="quick", trials=5, scheduler="asha", study="pss",
                      storage=None, sampler_seed=0, final_seeds=0,
                      launch=Launch(results=results, overrides=TINY, report=False, pack=2, resume=True),
                      load_data=lambda: val_data, command="emmil sweep --pack 2 --resume", out=lines.append)
    assert again.exit_code == 0
    assert len(optuna.load_study(study_name="pss", storage=f"sqlite:///{results / 'optuna.db'}").trials) == 5
