"""bench/calibrate_synth.py: the objective, the grid, and its --quick smoke mode end to end (semi-synthetic)."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import calibrate_synth as cal  # noqa: E402
from emmil.data.synth import V2_PARAMS, SynthParams  # noqa: E402


def test_objective_is_the_stpn_distance_plus_the_supervised_shortfall():
    # attention-mil exactly STPN, supervised avg 60 >= 45.1 + 10: nothing to pay
    assert cal.objective(cal.STPN, 60.0) == (0.0, 0.0, 0.0)
    # every mAP 5 points off STPN (either side) and supervised avg 5 below the floor 45.14 + 10 = 55.14
    floor = sum(cal.TALNET) / 7 + 10
    total, distance, penalty = cal.objective([v + 5 if i % 2 else v - 5 for i, v in enumerate(cal.STPN)], floor - 5)
    assert distance == pytest.approx(5.0) and penalty == pytest.approx(5.0) and total == pytest.approx(10.0)
    # TAL-Net's average is 45.1 (Luo et al. ECCV 2020 Table 1): the floor is 55.1
    assert sum(cal.TALNET) / 7 == pytest.approx(45.143, abs=1e-3)


def test_grids_are_small_products_over_synth_params_fields():
    fields = {f.name for f in dataclasses.fields(SynthParams)}
    for name, grid in cal.GRIDS.items():
        assert set(grid) <= fields, name
        assert 1 <= len(cal.grid_points(grid)) <= 12, name
    assert cal.grid_points({"a": (1.0, 2.0), "b": (3.0,)}) == [{"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 3.0}]
    assert len(cal.grid_points(cal.GRIDS["quick"])) == 2
    assert "oracle-key" not in cal.REFERENCE_ROWS and not set(cal.REFERENCE_ROWS) & {"full", "joint",
                                                                                       "no-pseudo-label"}


def test_param_axes_parse_and_refuse_unknown_fields(capsys):
    args = cal.parse_args(["--param", "action_amplitude=6,8", "--param", "context_amplitude=1"])
    assert args.custom == {"action_amplitude": (6.0, 8.0), "context_amplitude": (1.0,)}
    with pytest.raises(SystemExit):
        cal.parse_args(["--param", "amplitude=6"])
    assert "unknown SynthParams field 'amplitude'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cal.parse_args(["--param", "action_amplitude=six"])
    assert "expected NAME=number" in capsys.readouterr().err
    # an invalid value is refused before anything trains
    assert cal.main(["--param", "action_boundary_level=0.5,2", "--out", "/nonexistent/never-written"]) == 2
    assert "SynthParams.action_boundary_level = 2.0" in capsys.readouterr().err


def test_quick_smoke_run_writes_labelled_json_and_table(tmp_path, capsys):
    out = tmp_path / "cal"
    assert cal.main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "calibration.json").read_text())
    assert record["quick"] and record["rows"] == ["attention-mil", "supervised"]
    assert len(record["points"]) == 2 and record["chosen"] in (0, 1)
    assert record["targets"]["STPN"] == list(cal.STPN) and "real I3D features" in record["targets"]["source"]
    for point in record["points"]:
        assert point["data"].startswith("semi-synthetic (emmil synth v2, dim=64")
        assert set(point["rows"]) == {"attention-mil", "supervised"}
        assert len(point["rows"]["attention-mil"]["mAP"]) == 7
        assert set(point["stats"]) == {"zero_fraction", "near_zero_fraction", "between_within_ratio",
                                       "action_coverage"}
        total, _, _ = cal.objective(point["rows"]["attention-mil"]["mAP"], point["rows"]["supervised"]["test_avg_mAP"])
        assert point["objective"] == pytest.approx(total, abs=1e-3)
    table = (out / "calibration.md").read_text()
    assert "SEMI-SYNTHETIC" in table and "paper, real I3D features" in table and "**chosen**" in table
    # the chosen parameters are printed as Python that rebuilds them
    code = printed[printed.index("V2_PARAMS = SynthParams("):]
    scope: dict = {"SynthParams": SynthParams}
    exec(code, scope)
    chosen = record["points"][record["chosen"]]["point"]
    assert scope["V2_PARAMS"] == dataclasses.replace(V2_PARAMS, **chosen)


def test_average_cell_shows_the_seed_spread():
    assert cal._avg({"test_avg_mAP": 36.24, "avg_mAP_std": None}) == "36.2"
    assert cal._avg({"test_avg_mAP": 36.24, "avg_mAP_std": 13.93}) == "36.2 ± 13.9"
