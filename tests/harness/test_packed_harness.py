"""`emmil ablate --pack K` (issue 11, harness/packed_trials.py): K trials of one variant in one Ray
trial, each member with its own MLflow run, equal to the same trials run alone; a pack that crashes
mid-training resumes every member from the pack's state file."""

from __future__ import annotations

import math

import pytest

from emmil.errors import ConfigError
from harness import tracking
from harness.cli.ablate import Launch, run_ablation
from harness.experiments import parse_experiment
from harness.packed_trials import default_pack, make_packs, pack_id, parse_pack

from conftest import TINY, fresh_results

# gate 0 keeps every class (the barely trained tiny gate passes none at 0.15: every mAP would be 0 and
# the comparison empty); 30 % of 20 training videos held out, validated at epochs 2 and 3
VAL = {"train.val_fraction": 0.3, "train.eval_every": 2}
TWO_VARIANTS = parse_experiment({
    "name": "pk", "overrides": {"localize.select_on_val": False, "localize.gate": 0.0, **VAL},
    "variants": [{"name": "full", "overrides": {"variant": "full"}},
                 {"name": "mil", "overrides": {"variant": "attention-mil"}}]}, "pk")


def _spec(name: str, variant: str, seed: int, **over) -> dict:
    return {"trial_id": f"pk/{name}-s{seed}", "name": f"{name}-s{seed}", "variant": variant, "seed": seed,
            "overrides": {**TINY, "variant": variant, **over}}


def test_packs_group_one_variant_and_shape_at_most_k_each():
    pending = [_spec("full", "full", s) for s in range(5)] + [_spec("mil", "attention-mil", s) for s in range(2)]
    pending.append(_spec("wide", "full", 0, **{"model.hidden": 16}))  # another shape: its own pack
    pending.append(_spec("fast", "full", 9, **{"train.lr": 3e-3}))  # another value only: packs with full
    packs = make_packs(pending, "thumos14", "quick", 2, "pk")
    members = [[m["trial_id"] for m in p["members"]] for p in packs]
    assert members == [["pk/full-s0", "pk/full-s1"], ["pk/full-s2", "pk/full-s3"], ["pk/full-s4", "pk/fast-s9"],
                       ["pk/mil-s0", "pk/mil-s1"], ["pk/wide-s0"]]
    assert all(p["trial_id"] == pack_id("pk", m) for p, m in zip(packs, members))
    assert len({p["trial_id"] for p in packs}) == len(packs)
    # what a resume finds again: the same members give the same pack id, other members another
    assert pack_id("pk", ["pk/a", "pk/b"]) == pack_id("pk", ["pk/a", "pk/b"]) != pack_id("pk", ["pk/a"])


def test_pack_option_values():
    assert parse_pack("auto") == "auto" and parse_pack("4") == 4
    for bad in ("0", "-1", "65", "two", "1.5"):
        with pytest.raises(ConfigError, match="--pack"):
            parse_pack(bad)
    assert default_pack(0.0) == 1 and default_pack(0.25) == 8


@pytest.fixture(scope="module")
def val_data():
    from emmil.data.synth import make_synthetic

    return make_synthetic("thumos14", dim=8, seed=0, max_videos=20)


def _runs(outcome) -> dict:
    c = tracking.client(outcome.tracking_uri)
    exp = c.get_run(outcome.parent_run_id).info.experiment_id
    return {r.data.tags["emmil.trial_id"]: (c.get_run(r.info.run_id), c)
            for r in tracking.child_runs(outcome.tracking_uri, exp, outcome.parent_run_id)}


def _steps(c, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in c.get_metric_history(run_id, key))


def test_packed_ablation_equals_the_same_trials_alone_and_survives_a_crash(ray_cluster, val_data, tmp_path_factory,
                                                                          template_store):
    seeds = 3
    alone_dir = fresh_results(tmp_path_factory, template_store, "alone")
    alone = run_ablation(TWO_VARIANTS, dataset="thumos14", preset="quick", seeds=seeds,
                         launch=Launch(results=alone_dir, overrides=TINY, report=False, pack=1),
                         load_data=lambda: val_data, command="emmil ablate pk")
    assert alone.exit_code == 0
    packed_dir = fresh_results(tmp_path_factory, template_store, "packed")
    # every pack crashes once at epoch 2 (after checkpointing epoch 1): Tune retries it from its state file
    launch = Launch(results=packed_dir, overrides=TINY, report=False, pack=seeds,
                    fail_once={"epoch": 2, "marker_dir": str(packed_dir / "markers"), "trial": None})
    packed = run_ablation(TWO_VARIANTS, dataset="thumos14", preset="quick", seeds=seeds, launch=launch,
                          load_data=lambda: val_data, command="emmil ablate pk --pack 3")
    assert packed.exit_code == 0
    assert len(list((packed_dir / "markers").glob("*.failed"))) == 2  # both packs (full, mil) crashed once
    assert sorted(r["trial_key"] for r in packed.rows) == sorted(r["trial_key"] for r in alone.rows)
    assert all("test_avg_mAP" in r and not r["error"] for r in packed.rows)

    runs_alone, runs_packed = _runs(alone), _runs(packed)
    assert sorted(runs_packed) == sorted(runs_alone) and len(runs_packed) == 2 * seeds  # one run per trial
    packs = {}
    for trial_id, (run, c) in runs_packed.items():
        ref, c_ref = runs_alone[trial_id]
        assert run.info.status == "FINISHED"
        assert _steps(c, run.info.run_id, "loss") == [1, 2, 3]  # every epoch once, after the crash too
        tags = run.data.tags
        packs.setdefault(tags["emmil.pack"], set()).add(int(tags["emmil.pack_member"]))
        assert tags["emmil.pack_size"] == str(seeds)
        assert run.data.params == ref.data.params
        names = {a.path for a in c.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "metrics.json", "model.pt", "predictions.json"} <= names
        test = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
        assert test and set(test) == {k for k in ref.data.metrics if k.startswith("test_")}
        for key, value in test.items():  # packed == alone to float tolerance (tests/test_packed.py: why)
            assert math.isclose(value, ref.data.metrics[key], rel_tol=1e-4, abs_tol=1e-6), (trial_id, key)
        for key in ("loss", "val_avg_mAP"):
            got = [m.value for m in sorted(c.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
            want = [m.value for m in sorted(c_ref.get_metric_history(ref.info.run_id, key), key=lambda m: m.step)]
            assert len(got) == len(want) == {"loss": 3, "val_avg_mAP": 2}[key] and all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
                                                 for a, b in zip(got, want)), (trial_id, key)
    assert len(packs) == 2 and all(m == set(range(seeds)) for m in packs.values())
    assert any(run.data.metrics["test_avg_mAP"] > 0 for run, _ in runs_packed.values())  # not all zero

    # a resume finds every member finished (their own state files) and runs nothing
    again = run_ablation(TWO_VARIANTS, dataset="thumos14", preset="quick", seeds=seeds,
                         launch=Launch(results=packed_dir, overrides=TINY, report=False, pack=seeds, resume=True),
                         load_data=lambda: val_data, command="emmil ablate pk --pack 3 --resume")
    assert again.exit_code == 0 and len(again.rows) == 2 * seeds
    assert sorted(_runs(again)) == sorted(runs_packed)


def test_sweep_packs_its_search_and_its_final_retrain_seeds(ray_cluster, val_data, tmp_path_factory, template_store):
    from harness.cli.sweep import run_sweep
    from harness.experiments import parse_space

    results = fresh_results(tmp_path_factory, template_store, "sweep")
    space = parse_space({
        "name": "pks", "fixed": {"train.val_fraction": 0.3, "train.eval_every": 1},
        "final_overrides": {"train.val_fraction": 0.0},
        "params": {"train.gamma": {"distribution": "uniform", "low": 0.0, "high": 0.4}}}, "pks.yaml")
    lines: list[str] = []
    outcome = run_sweep(space, dataset="thumos14", preset="quick", trials=2, scheduler="none", study="pks",
                        storage=None, sampler_seed=0, final_seeds=2,
                        launch=Launch(results=results, overrides=TINY, report=False, pack=2),
                        load_data=lambda: val_data, command="emmil sweep --pack 2", out=lines.append)
    assert outcome.exit_code == 0, "\n".join(lines)
    assert "packing: 2 trials in 1 pack(s) of up to 2" in lines  # the final retrain
    assert any(line.startswith("packing: 2 search trials in 1 pack(s) of up to 2") for line in lines)
    assert len(outcome.rows) == 2 and all("test_avg_mAP" in r and r["variant"] == "best" for r in outcome.rows)
    finals = [run for run, _ in _runs(outcome).values() if run.data.tags["emmil.stage"] == "final-test"]
    assert len(finals) == 2 and len({r.data.tags["emmil.pack"] for r in finals}) == 1
    assert sorted(r.data.tags["emmil.pack_member"] for r in finals) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in finals)
    searched = [run for run, _ in _runs(outcome).values() if run.data.tags["emmil.stage"] == "search"]
    assert len(searched) == 2 and len({r.data.tags["emmil.pack"] for r in searched}) == 1  # the search: one pack
    assert {r.data.tags["emmil.pack"] for r in searched}.isdisjoint({r.data.tags["emmil.pack"] for r in finals})
