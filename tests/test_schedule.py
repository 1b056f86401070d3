from emmil.config import resolve_config
from emmil.schedule import plan_epoch, schedule_table


def _steps(cfg, variant="full"):
    return "".join(p.step[0] for p in schedule_table(cfg.train, variant))


def test_paper_thumos_schedule_table():
    t = resolve_config("thumos14")
    # 1-10 M (all-positive), 11-20 E, 21-30 M, then lr x4 and E/M each epoch from 31 (E) to 65 (E)
    assert _steps(t) == "M" * 10 + "E" * 10 + "M" * 10 + "EM" * 17 + "E"
    table = schedule_table(t.train)
    assert [p.lr_scale for p in table] == [1.0] * 30 + [4.0] * 35
    assert [p.all_positive for p in table] == [True] * 10 + [False] * 55
    assert table[30].stage == "alternate" and table[29].stage == "cycle"


def test_released_schedule_boosts_lr_from_epoch_21():
    t = resolve_config("thumos14", overrides={"train.schedule": "released"})
    assert _steps(t) == _steps(resolve_config("thumos14"))
    assert [p.lr_scale for p in schedule_table(t.train)] == [1.0] * 20 + [4.0] * 45


def test_anet_cycle_5_constant_lr():
    a = resolve_config("anet12")
    assert _steps(a)[:30] == "MMMMMEEEEE" * 3 and _steps(a)[30:32] == "MM"[:0] + "ME"
    assert {p.lr_scale for p in schedule_table(a.train)} == {1.0}


def test_non_alternating_variants():
    t = resolve_config("thumos14").train
    assert all(plan_epoch(e, t, "joint").step == "joint" for e in range(1, 66))
    assert plan_epoch(1, t, "joint").all_positive and not plan_epoch(11, t, "joint").all_positive
    assert not plan_epoch(1, t, "attention-mil").all_positive
    assert not plan_epoch(1, t, "no-pseudo-label").all_positive  # no pseudo-labels at all
    assert plan_epoch(31, t, "attention-mil").lr_scale == 4.0


def test_reference_variants_schedule():
    t = resolve_config("thumos14").train
    # oracle-key alternates exactly like full, but its labels are ground truth: no all-positive block
    assert [plan_epoch(e, t, "oracle-key").step for e in range(1, 66)] == [plan_epoch(e, t, "full").step
                                                                          for e in range(1, 66)]
    assert not any(plan_epoch(e, t, "oracle-key").all_positive for e in range(1, 66))
    assert all(plan_epoch(e, t, "supervised").step == "joint" for e in range(1, 66))
    assert not plan_epoch(1, t, "supervised").all_positive
    assert all(plan_epoch(e, t, "whole-video").step == "none" for e in range(1, 66))  # only the gate trains
