"""reports/ pure parts on hand-made cases: seed statistics, published numbers, timelines, renderers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from emmil.errors import ConfigError, DataError
from reports.document import Figure, Report, Section, Table
from reports.render import tex_escape, to_html, to_latex, to_markdown
from reports.stats import mean_std, paired_difference


def test_mean_std_limits():
    assert mean_std([]).n == 0 and math.isnan(mean_std([]).mean)
    one = mean_std([0.3])
    assert (one.mean, one.n) == (0.3, 1) and math.isnan(one.std)  # n=1: no spread
    # 1, 2, 3, 4: mean 2.5, sample var = (2.25+0.25+0.25+2.25)/3 = 5/3
    ms = mean_std([1, 2, 3, 4])
    assert ms.mean == 2.5 and ms.std == pytest.approx(math.sqrt(5 / 3))
    with pytest.raises(ValueError, match="NaN"):
        mean_std([1.0, float("nan")])


def test_paired_difference_pairs_by_seed_and_gives_a_t_interval():
    # seeds 0,1 in both (seed 7 only in the variant): d = 0.1-0.2, 0.4-0.2 -> -0.1, +0.2; mean 0.05
    # sd = sqrt(((-0.15)^2 + 0.15^2) / 1) = 0.2121; t(0.975, 1) = 12.706; half = 12.706*0.2121/sqrt(2) = 1.906
    d = paired_difference({0: 0.1, 1: 0.4, 7: 0.9}, {0: 0.2, 1: 0.2})
    assert d.seeds == (0, 1) and d.n == 2 and d.mean == pytest.approx(0.05)
    assert (d.low, d.high) == pytest.approx((0.05 - 1.9060, 0.05 + 1.9060), abs=1e-3)
    # identical differences: sd 0, the interval is the point itself
    z = paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.5, 2: 0.6})
    assert (z.low, z.high) == pytest.approx((0.1, 0.1)) and z.has_ci
    # one common seed: no interval
    one = paired_difference({0: 0.5}, {0: 0.4, 1: 0.1})
    assert one.n == 1 and not one.has_ci and math.isnan(one.low)
    assert paired_difference({}, {0: 1.0}).n == 0


def test_published_file_has_the_papers_numbers_and_rejects_bad_entries(tmp_path):
    from reports.tables import load_published

    pub = load_published()
    emmil = {p.dataset: p.values for p in pub.rows if p.is_emmil}
    # EM-MIL Table 1 and Table 2 (Luo et al., ECCV 2020)
    assert [emmil["thumos14"][k] for k in ("0.1", "0.5", "0.7", "avg")] == [59.1, 30.5, 16.4, 37.7]
    assert [emmil["anet12"][k] for k in ("0.5", "0.7", "0.9", "avg")] == [37.4, 23.1, 2.0, 20.3]
    assert pub.ablation == {"no-pseudo-label": 24.5, "joint": 26.8, "full": 30.5}
    assert {p.method for p in pub.rows} == {"EM-MIL (paper)", "W-TALC", "3C-Net", "BaS-Net", "CO2-Net", "DELU"}
    assert all(p.source for p in pub.rows) and pub.data_label == "paper, real I3D features"
    bad = tmp_path / "p.yaml"
    bad.write_text("data_label: x\nmethods:\n  - name: M\n    thumos14: {source: s, map: {'0.45': 10}}\n")
    with pytest.raises(DataError, match=r"p.yaml.*\(M\)\.thumos14\.map.*'0.45'"):
        load_published(bad)


def test_timelines_are_validated_naming_the_video_and_key():
    from reports.plots import parse_timelines

    doc = {"clip_seconds": 0.64, "videos": {"v1": {"duration": 3.2, "ground_truth": [
        {"label": "A", "segment": [0.64, 1.92]}], "tracks": [{"label": "A", "L": [0.1, 0.9, 0.9, 0.1, 0.1],
                                                             "threshold": 0.5, "segments": [[0.64, 1.92, 0.8]]}]}}}
    tl = parse_timelines(doc, "run r1 timelines.json")["v1"]
    assert tl.tracks[0].segments == ((0.64, 1.92),) and tl.ground_truth == (("A", 0.64, 1.92),)
    doc["videos"]["v1"]["tracks"][0]["L"] = [0.1, "x"]
    with pytest.raises(DataError, match=r"run r1 timelines.json: videos\['v1'\]\.tracks\[0\]\.L"):
        parse_timelines(doc, "run r1 timelines.json")


def test_renderers_escape_and_embed():
    t = Table("t1", "A & B_1", ("Method", "mAP"), (("full_1", "30.5 ± 1.0"), ("a|b", "")), rule_before=(1,),
              data=pd.DataFrame({"x": [1]}))
    png = b"\x89PNG\r\n\x1a\nfake"
    rep = Report("R", ("intro <b>",), (Section("S", ("p",), (t,), (Figure("f1", "cap", png),)),))
    md = to_markdown(rep)
    assert "| full_1 | 30.5 ± 1.0 |" in md and "| a\\|b |  |" in md and "](figures/f1.png)" in md
    html = to_html(rep)
    assert "intro &lt;b&gt;" in html and "data:image/png;base64,iVBORw0KGgpmYWtl" in html
    assert '<tr class="rule">' in html
    tex = to_latex(rep)
    assert r"A \& B\_1" in tex and r"30.5 $\pm$ 1.0" in tex and r"\midrule" in tex
    assert tex_escape("100%_#") == r"100\%\_\#"
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        Table("bad", "x", ("a", "b"), (("only",),))


def test_format_list_is_checked():
    from reports.build import parse_formats

    assert parse_formats("md, html,md") == ("md", "html")
    with pytest.raises(ConfigError, match="docx"):
        parse_formats("md,docx")
    with pytest.raises(ConfigError):
        parse_formats("")


def test_uris_are_printed_without_passwords():
    from reports.runs import redact

    assert redact("postgresql://bob:s3cr3t@db:5432/optuna") == "postgresql://bob:***@db:5432/optuna"
    assert redact("http://h/api?password=abc&x=1") == "http://h/api?password=***&x=1"
    assert redact("sqlite:////tmp/results/mlflow.db") == "sqlite:////tmp/results/mlflow.db"
