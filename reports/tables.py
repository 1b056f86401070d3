"""The paper's tables rebuilt from tracked runs: pure functions of the run table (reports/runs.py).

Units: runs log mAP as fractions in [0, 1]; tables print percent with one decimal (like the paper),
the CSVs keep the fractions. Every table covers ONE block = (dataset, data_source, eval_protocol):
rows measured on different datasets or on different feature sources are never merged, and the
data source is printed in every row beside the published rows ("paper, real I3D features").

Rows are method rows (the config variants in emmil.config.METHOD_VARIANTS, and any other) followed by
the block's reference rows (REFERENCE_VARIANTS), labelled with their role: `ceiling: supervised`,
`oracle: oracle-key`, `floor: whole-video`. A row's role comes from its CONFIG variant (the run's
param `variant`), not from its label (tag emmil.variant, an experiment's variant name such as lam-0.8).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pandas as pd
import yaml

from emmil.config import REFERENCE_VARIANTS
from emmil.errors import DataError
from reports.document import Table
from reports.stats import mean_std, paired_difference

PUBLISHED_PATH = Path(__file__).with_name("published.yaml")
BLOCK_KEYS = ("dataset", "data_source", "eval_protocol")
ROW_KEYS = ("stage", "variant", "config_group")
BASELINE_VARIANT = "full"
ATTENTION_VARIANTS = ("attention-mil", "no-pseudo-label")  # attention-based baselines (Figure 5 beside full)
# Reference rows by config variant, in print order: what this architecture reaches with ground-truth clip
# labels (ceiling), the EM-MIL M step with ground-truth key instances (oracle), one proposal per gated class
# spanning the whole video (floor).
REFERENCE_ROLES = {"supervised": "ceiling", "oracle-key": "oracle", "whole-video": "floor"}
assert tuple(REFERENCE_ROLES) == REFERENCE_VARIANTS, "reports/tables.py: REFERENCE_ROLES out of date"
METHOD_ROLE = "method"
CEILING_VARIANT = "supervised"
CONFIG_VARIANT_PARAM = "param:variant"  # the resolved config's `variant` (runs.py logs params as param:<key>)
CEILING_METRIC = "test_avg_mAP"  # fraction of ceiling = row mean / ceiling mean of this metric
CLS_METRIC = "test_cls_mAP"  # the video-level gate's classification mAP
NO_REFERENCE_NOTE = ("no reference rows on this data: run `emmil ablate references` (ceiling = supervised, "
                     "oracle = oracle-key, floor = whole-video) on the same dataset and data source, and build "
                     "the report over its runs too.")

# (published.yaml key, column header, metric key): Table 1 (THUMOS14) and Table 2 (ActivityNet1.2) columns.
MAP_COLUMNS = {
    "thumos14": tuple((f"{t:.1f}", f"{t:.1f}", f"test_mAP_{t:.2f}") for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7))
    + (("avg", "avg 0.1:0.7", "test_avg_mAP"),),
    "anet12": (("0.5", "0.5", "test_mAP_0.50"), ("0.7", "0.7", "test_mAP_0.70"), ("0.75", "0.75", "test_mAP_0.75"),
               ("0.9", "0.9", "test_mAP_0.90"), ("0.95", "0.95", "test_mAP_0.95"),
               ("avg", "avg 0.5:0.95", "test_avg_mAP")),
}
DATASET_TITLES = {"thumos14": "THUMOS14", "anet12": "ActivityNet1.2"}
TABLE_NUMBER = {"thumos14": 1, "anet12": 2}
# Headline metrics of the paired comparison and the high-tIoU columns of the completeness table.
PAIRED_METRICS = (("mAP@0.5", "test_mAP_0.50"), ("avg mAP", "test_avg_mAP"))
HIGH_TIOU = {"thumos14": (0.5, 0.6, 0.7), "anet12": (0.75, 0.9, 0.95)}


# ---------------------------------------------------------------- published numbers
@dataclass(frozen=True)
class PublishedRow:
    method: str
    dataset: str  # "thumos14" | "anet12"
    values: Mapping[str, float]  # published.yaml key ("0.1", ..., "avg") -> percent
    source: str  # paper + table
    is_emmil: bool


@dataclass(frozen=True)
class Published:
    data_label: str  # "paper, real I3D features"
    rows: tuple[PublishedRow, ...]
    ablation: Mapping[str, float]  # variant -> Table 3 mAP@0.5 (percent)
    ablation_names: Mapping[str, str]  # variant -> the paper's row name
    ablation_source: str


def load_published(path: Path | str = PUBLISHED_PATH) -> Published:
    """Parse reports/published.yaml; a malformed entry raises DataError naming the file and key."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot read published results: {exc}") from None
    if not isinstance(doc, dict) or "methods" not in doc or "data_label" not in doc:
        raise DataError(f"{path}: expected top-level keys 'data_label' and 'methods'")
    rows, ablation, names, abl_source = [], {}, {}, ""
    for i, m in enumerate(doc["methods"]):
        where = f"{path}: methods[{i}]"
        if not isinstance(m, dict) or "name" not in m:
            raise DataError(f"{where}: missing 'name'")
        for dataset in MAP_COLUMNS:
            if dataset not in m:
                continue
            entry = m[dataset]
            allowed = {k for k, _, _ in MAP_COLUMNS[dataset]}
            if not isinstance(entry, dict) or not entry.get("source") or not isinstance(entry.get("map"), dict):
                raise DataError(f"{where} ({m['name']}).{dataset}: needs 'source' (paper + table) and 'map'")
            values = {}
            for key, value in entry["map"].items():
                if str(key) not in allowed:
                    raise DataError(f"{where} ({m['name']}).{dataset}.map: unknown tIoU key {key!r}; "
                                    f"expected one of {sorted(allowed)}")
                if not isinstance(value, (int, float)) or not 0 <= value <= 100:
                    raise DataError(f"{where} ({m['name']}).{dataset}.map[{key}]: {value!r} is not a percent")
                values[str(key)] = float(value)
            rows.append(PublishedRow(m["name"], dataset, values, entry["source"], bool(m.get("is_emmil"))))
        if "ablation" in m:
            ablation = {str(k): float(v) for k, v in m["ablation"]["map_at_0.5"].items()}
            names = dict(m["ablation"].get("paper_names", {}))
            abl_source = m["ablation"]["source"]
    return Published(doc["data_label"], tuple(rows), ablation, names, abl_source)


# ---------------------------------------------------------------- formatting
def pct(value: float) -> str:
    """Fraction -> percent with one decimal; '' for a missing value."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def pct_mean_std(values) -> str:
    """'30.5 ± 0.8' (percent) from fractions; just the mean when n == 1; '' when none."""
    ms = mean_std(values)
    if ms.n == 0:
        return ""
    if ms.n == 1:
        return pct(ms.mean)
    return f"{pct(ms.mean)} ± {pct(ms.std)}"


def signed_pct(value: float) -> str:
    return f"{100 * value:+.1f}"


PARAM_DIGITS = 4  # significant digits of a logged numeric param in a table cell (runs.csv keeps the full text)


def param_text(value) -> str:
    """A logged param as a table cell. MLflow keeps params as str(value), so an Optuna-sampled learning rate
    arrives as '0.000305123456789': a non-integer number is printed to PARAM_DIGITS significant digits
    ('0.0003051'); an integer, a word or a list stays as logged; a missing param is ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number) or text.lstrip("+-").isdecimal():
        return text
    return f"{number:.{PARAM_DIGITS}g}"


def block_key(prefix: str, key: tuple[str, str, str]) -> str:
    """File-safe id of a per-block table/figure: prefix_dataset_sourceword_hash6 (hash of the whole key)."""
    dataset, data_source, _ = key
    word = "semi-synthetic" if data_source.startswith("semi-synthetic") else data_source.split(" ")[0] or "unknown"
    digest = hashlib.sha1("\x00".join(key).encode()).hexdigest()[:6]
    return file_key(prefix, dataset, word, digest)


def file_key(*parts: str) -> str:
    text = "_".join(parts).lower()
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")[:80]


# ---------------------------------------------------------------- grouping
STAGE_SEPARATOR = " · "  # between experiment and stage in a row key when a block mixes experiments


def blocks(runs: pd.DataFrame) -> list[tuple[tuple[str, str, str], pd.DataFrame]]:
    """The runs split by (dataset, data_source, eval_protocol), in a stable order. A block holding runs of
    several sources (column `source`, reports/runs.py: the experiments of `emmil report` over every emmil-*
    experiment or several --experiment, or `<experiment>@<parent>` of several --run-id; the experiment when
    a table has no `source` column) qualifies each stage by its source (`table3 · ablation`): rows, baselines
    and pairs then stay inside one source, and two `full` rows of two sources are never merged nor compared
    with each other (issue 14.6); they sit side by side, e.g. a quick- and a paper-preset ablation."""
    if runs.empty:
        return []
    column = "source" if "source" in runs else "experiment"
    out = []
    for key, df in runs.groupby(list(BLOCK_KEYS), sort=True):
        if column in df and df[column].nunique() > 1:
            names = [str(e).removeprefix("emmil-") for e in df[column]]
            df = df.assign(stage=[f"{e}{STAGE_SEPARATOR}{st}" for e, st in zip(names, df["stage"])])
        out.append((key, df))
    return out


def stage_kind(stage: str) -> str:
    """`ablation` / `search` / `final-test` of a (possibly experiment-qualified) stage."""
    return stage.rsplit(STAGE_SEPARATOR, 1)[-1]


def config_variant(group: pd.DataFrame) -> str:
    """The config variant the runs of one row group trained (param `variant`); the row label (tag
    emmil.variant) for runs without that param."""
    if CONFIG_VARIANT_PARAM in group:
        values = sorted({str(v) for v in group[CONFIG_VARIANT_PARAM] if not pd.isna(v) and str(v)})
        if len(values) > 1:
            raise DataError(f"runs {list(group['run_id'])} of one row have different params 'variant' {values}")
        if values:
            return values[0]
    return str(group["variant"].iloc[0])


def row_role(group: pd.DataFrame) -> str:
    """'method', or the reference role ('ceiling' / 'oracle' / 'floor') of the row's config variant."""
    return REFERENCE_ROLES.get(config_variant(group), METHOD_ROLE)


def _role_order(role: str) -> int:
    return 0 if role == METHOD_ROLE else 1 + list(REFERENCE_ROLES.values()).index(role)


def row_groups(block: pd.DataFrame) -> list[tuple[tuple[str, str, str], pd.DataFrame]]:
    """The rows of one block: (stage, variant, config_group). Method rows first (`full` first inside a
    stage), then the reference rows: ceiling, oracle, floor."""
    groups = list(block.groupby(list(ROW_KEYS), sort=True))
    roles = {k: row_role(g) for k, g in groups}
    return sorted(groups, key=lambda g: (roles[g[0]] != METHOD_ROLE, g[0][0], _role_order(roles[g[0]]),
                                         g[0][1] != BASELINE_VARIANT, g[0][1], g[0][2]))


def row_labels(block: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """Display label per row group: the variant, plus the config hash when a variant has several configs;
    reference rows prefixed with their role (`ceiling: supervised`), plus the config variant when the
    label differs from it."""
    groups = row_groups(block)
    keys = [k for k, _ in groups]
    labels = {}
    for (stage, variant, cfg), group in groups:
        same = [g for g in keys if g[0] == stage and g[1] == variant]
        label = variant if len(same) == 1 else f"{variant} [cfg {cfg}]"
        role = row_role(group)
        if role != METHOD_ROLE:
            cv = config_variant(group)
            label = f"{role}: {label}" + ("" if cv == variant else f" [variant {cv}]")
        labels[(stage, variant, cfg)] = label
    return labels


def reference_rule(block: pd.DataFrame) -> int | None:
    """Index (among row_groups) of the first reference row, or None when the block has none."""
    for i, (_, group) in enumerate(row_groups(block)):
        if row_role(group) != METHOD_ROLE:
            return i
    return None


def metric_values(group: pd.DataFrame, metric: str) -> list[float]:
    if metric not in group:
        return []
    return [float(v) for v in group[metric] if not pd.isna(v)]


def seed_map(group: pd.DataFrame, metric: str) -> dict[int, float]:
    """seed -> metric for one row group (a config has one run per seed)."""
    out = {}
    for seed, value in zip(group["seed"], group[metric] if metric in group else [math.nan] * len(group)):
        if pd.isna(value):
            continue
        if int(seed) in out:
            dup = group[group["seed"] == seed]
            raise DataError(
                f"two finished runs with seed {seed} in one configuration (variant {group['variant'].iloc[0]}, "
                f"runs {list(dup['run_id'])}, parent runs {sorted(set(dup['parent_run_id']))}): report one "
                "ablation/sweep at a time with --run-id PARENT, or compare them side by side with one --run-id "
                "per parent")
        out[int(seed)] = float(value)
    return out


def mean_std_columns(group: pd.DataFrame, metrics) -> dict[str, float]:
    """The CSV columns of a row's metrics: `<metric>` = mean over seeds and `<metric>_std` = sample std
    (nan, an empty CSV cell, when n < 2): the numbers behind a 'mean ± std' cell, both of them."""
    out = {}
    for metric in metrics:
        ms = mean_std(metric_values(group, metric))
        out[metric], out[f"{metric}_std"] = ms.mean, ms.std
    return out


def table_frame(records: list[dict]) -> pd.DataFrame:
    """A table's CSV data; its `n` column as integers (nullable: a published row has no n), so a CSV says
    3, not 3.0."""
    df = pd.DataFrame(records)
    if "n" in df:
        df["n"] = df["n"].astype("Int64")
    return df


def check_one_run_per_seed(runs: pd.DataFrame) -> None:
    """Every (block, row, seed) has one finished run: means and pairs over seeds need it."""
    for _, block in blocks(runs):
        for _, group in row_groups(block):
            seed_map(group, "test_avg_mAP")


def summary_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Full-precision summary: one row per (block, stage, variant, config_group); mean/std/n per test metric."""
    metrics = sorted(c for c in runs.columns if c.startswith("test_")) if not runs.empty else []
    out = []
    for key, block in blocks(runs):
        for rkey, group in row_groups(block):
            row = dict(zip(BLOCK_KEYS + ROW_KEYS, key + rkey))
            row["role"], row["config_variant"] = row_role(group), config_variant(group)
            row["n"] = len(group)
            row["seeds"] = " ".join(str(s) for s in sorted(group["seed"]))
            for m in metrics:
                ms = mean_std(metric_values(group, m))
                row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_n"] = ms.mean, ms.std, ms.n
            out.append(row)
    return pd.DataFrame(out)


def _needs_stage_column(runs: pd.DataFrame) -> bool:
    """Whether a table needs its Stage column: some row is not a plain ablation trial (a sweep's stage, or
    a stage qualified by its experiment)."""
    return bool((runs["stage"] != "ablation").any())


def _synthetic_note(data_source: str, data_label: str) -> tuple[str, ...]:
    if data_source.startswith("real"):
        return (f"This bench's rows: {data_source}.",)
    if not data_source.startswith("semi-synthetic"):
        return (
            f"This bench's rows were measured on: {data_source}: neither declared real I3D features "
            "(--real-features) nor marked semi-synthetic; the rows marked "
            f"'{data_label}' are published numbers, comparable only if these are the same features.",
        )
    return (
        f"This bench's rows were measured on: {data_source}. They are NOT a reproduction of the paper; "
        f"the rows marked '{data_label}' are published numbers on the real features, shown for context.",
    )


# ---------------------------------------------------------------- reference rows
@dataclass(frozen=True)
class Ceiling:
    key: tuple[str, str, str] | None  # (stage, variant, config_group) of the `supervised` rows used
    mean: float  # their mean test_avg_mAP; nan when none
    note: str  # which ceiling, when there was a choice; '' otherwise


def choose_ceiling(block: pd.DataFrame, stage: str) -> Ceiling:
    """The ceiling (config variant `supervised`) for the rows of one stage: the stage's own ceiling rows,
    else the block's; with several configs, the one with most seeds (stated in the note)."""
    groups = row_groups(block)
    ceilings = [(k, g) for k, g in groups if config_variant(g) == CEILING_VARIANT]
    if not ceilings:
        return Ceiling(None, math.nan, "")
    pool = [kg for kg in ceilings if kg[0][0] == stage] or ceilings
    best_key, best = max(pool, key=lambda kg: len(kg[1]))  # the first of the largest, in row order
    label = row_labels(block)[best_key]
    notes = []
    if len(pool) > 1:
        notes.append(f"{len(pool)} ceiling configurations; fraction of ceiling uses '{label}' (stage "
                     f"{best_key[0]}, most seeds, n={len(best)})")
    elif best_key[0] != stage:
        notes.append(f"stage {stage} has no ceiling run: fraction of ceiling uses '{label}' of stage {best_key[0]}")
    return Ceiling(best_key, mean_std(metric_values(best, CEILING_METRIC)).mean, "; ".join(notes))


def fraction_of_ceiling(group: pd.DataFrame, ceiling: Ceiling) -> float:
    """Mean test_avg_mAP of the row / that of the ceiling; nan with no ceiling, a ceiling of 0 or no value."""
    mean = mean_std(metric_values(group, CEILING_METRIC)).mean
    if ceiling.key is None or not ceiling.mean > 0 or math.isnan(mean):
        return math.nan
    return mean / ceiling.mean


def fraction_text(value: float) -> str:
    """Two decimals ('0.43'); '' when missing."""
    return "" if math.isnan(value) else f"{value:.2f}"


def row_fractions(block: pd.DataFrame) -> tuple[dict[tuple[str, str, str], float], tuple[str, ...]]:
    """Fraction of ceiling per row group, and the notes saying which ceiling was used (or why blank)."""
    out, notes = {}, []
    ceilings = {stage: choose_ceiling(block, stage) for stage in sorted(set(block["stage"]))}
    for rkey, group in row_groups(block):
        out[rkey] = fraction_of_ceiling(group, ceilings[rkey[0]])
    labels = row_labels(block)
    used = {c.key for c in ceilings.values() if c.key is not None}
    if not used:
        if reference_rule(block) is not None:
            notes.append("no ceiling (`supervised`) rows on this data: the fraction-of-ceiling column is blank.")
        return out, tuple(notes)
    notes += [c.note for c in ceilings.values() if c.note]
    for c in sorted({(c.key, c.mean) for c in ceilings.values() if c.key is not None}):
        key, mean = c
        notes.append(f"Fraction of ceiling = mean {CEILING_METRIC} of the row / that of '{labels[key]}' "
                     f"({pct(mean)}%)" + ("; the ceiling is 0, so the column is blank." if not mean > 0 else "."))
    return out, tuple(dict.fromkeys(notes))


def reference_notes(block: pd.DataFrame) -> tuple[str, ...]:
    """What the reference rows are, or that the block has none (NO_REFERENCE_NOTE)."""
    if reference_rule(block) is None:
        return (NO_REFERENCE_NOTE,)
    return ("Reference rows (after the methods, not methods): ceiling = `supervised` (the same heads trained "
            "with ground-truth clip labels), oracle = `oracle-key` (the EM-MIL M step with ground-truth key "
            "instances), floor = `whole-video` (one proposal per gated class spanning the video).",)


# ---------------------------------------------------------------- Table 1 / Table 2
def map_table(key: tuple[str, str, str], block: pd.DataFrame, published: Published) -> Table:
    """Table 1 (THUMOS14) or Table 2 (ActivityNet1.2) style: mAP (%) per tIoU, mean ± std over seeds,
    the fraction of ceiling and the gate's classification mAP; reference rows after the methods."""
    dataset, data_source, protocol = key
    spec = MAP_COLUMNS[dataset]
    show_stage = _needs_stage_column(block)
    columns = (("Method", "Data") + (("Stage",) if show_stage else ()) + ("n",) + tuple(h for _, h, _ in spec)
               + ("fraction of ceiling", "gate cls mAP"))
    labels = row_labels(block)
    fractions, fraction_notes = row_fractions(block)
    rows, data = [], []
    for rkey, group in row_groups(block):
        cells = [labels[rkey], data_source] + ([rkey[0]] if show_stage else []) + [str(len(group))]
        cells += [pct_mean_std(metric_values(group, m)) for _, _, m in spec]
        cells += [fraction_text(fractions[rkey]), pct_mean_std(metric_values(group, CLS_METRIC))]
        rows.append(tuple(cells))
        data.append({"method": labels[rkey], "role": row_role(group), "config_variant": config_variant(group),
                     "data": data_source, "stage": rkey[0], "n": len(group),
                     **mean_std_columns(group, [m for _, _, m in spec]),
                     "fraction_of_ceiling": fractions[rkey], **mean_std_columns(group, [CLS_METRIC])})
    ref_rule = reference_rule(block)
    rule = len(rows)
    for p in (p for p in published.rows if p.dataset == dataset):
        cells = [p.method, published.data_label] + ([""] if show_stage else []) + [""]
        cells += [f"{p.values[k]:.1f}" if k in p.values else "" for k, _, _ in spec] + ["", ""]
        rows.append(tuple(cells))
        data.append({"method": p.method, "role": "published", "config_variant": "", "data": published.data_label,
                     "stage": "", "n": math.nan,
                     **{c: v for k, _, m in spec for c, v in ((m, p.values.get(k, math.nan) / 100),
                                                              (f"{m}_std", math.nan))},
                     "fraction_of_ceiling": math.nan, CLS_METRIC: math.nan, f"{CLS_METRIC}_std": math.nan})
    notes = _synthetic_note(data_source, published.data_label) + (
        f"Evaluation protocol: {protocol}. Cells: mean ± sample std over seeds (n runs), mAP in percent; "
        "an empty published cell was not reported by that paper.",
        "gate cls mAP: the video-level gate's classification mAP (test_cls_mAP, %, mean ± std over seeds); a "
        "class the gate misses cannot be localised. Published rows have no fraction of ceiling or gate column.",
    ) + reference_notes(block) + fraction_notes + (
        "Published sources: " + "; ".join(f"{p.method}: {p.source}" for p in published.rows if p.dataset == dataset),
    )
    n = TABLE_NUMBER[dataset]
    return Table(
        key=block_key(f"table{n}", key),
        title=f"Table {n} style: {DATASET_TITLES[dataset]} detection mAP (%) by tIoU, this bench on {data_source}",
        columns=columns, rows=tuple(rows), notes=notes,
        rule_before=tuple(r for r in (ref_rule, rule) if r is not None), data=table_frame(data),
    )


# ---------------------------------------------------------------- paired differences vs full
@dataclass(frozen=True)
class BaselineChoice:
    key: tuple[str, str, str] | None  # (stage, variant, config_group) of the `full` rows compared against
    note: str


def choose_baseline(block: pd.DataFrame, stage: str, baseline: str = BASELINE_VARIANT) -> BaselineChoice:
    """The `baseline` row group of a stage (a variant as tagged, `full` by default; `emmil report
    --baseline`); with several configs, the one with most seeds (stated)."""
    fulls = [(k, g) for k, g in row_groups(block) if k[0] == stage and k[1] == baseline]
    if not fulls:
        return BaselineChoice(None, f"stage {stage}: no '{baseline}' runs, so no paired differences")
    best = max(fulls, key=lambda kg: len(kg[1]))
    note = "" if len(fulls) == 1 else (
        f"stage {stage}: {len(fulls)} '{baseline}' configurations; compared against cfg {best[0][2]} "
        f"(most seeds, n={len(best[1])})")
    return BaselineChoice(best[0], note)


def paired_table(key: tuple[str, str, str], block: pd.DataFrame, baseline: str = BASELINE_VARIANT) -> Table:
    """Each row group (reference rows too, after the methods) minus the `baseline` variant of its stage
    (`full` by default), paired by seed: mean difference (points) and 95% t-interval."""
    dataset, data_source, protocol = key
    labels = row_labels(block)
    groups = dict(row_groups(block))
    rows, data, notes, roles = [], [], [], []
    for stage in sorted({k[0] for k in groups}):
        choice = choose_baseline(block, stage, baseline)
        if choice.note:
            notes.append(choice.note)
        if choice.key is None:
            continue
        base = groups[choice.key]
        for rkey, group in groups.items():
            if rkey[0] != stage or rkey == choice.key:
                continue
            for metric_name, metric in PAIRED_METRICS:
                d = paired_difference(seed_map(group, metric), seed_map(base, metric))
                if d.n == 0:
                    ci, verdict = "no seeds in common", "n/a"
                elif not d.has_ci:
                    ci, verdict = f"no CI (n={d.n} < 2)", "undetermined"
                else:
                    ci = f"[{signed_pct(d.low)}, {signed_pct(d.high)}]"
                    verdict = "better" if d.low > 0 else "worse" if d.high < 0 else "not distinguishable"
                rows.append((labels[rkey], f"{labels[choice.key]}", data_source, metric_name, str(d.n),
                             "" if d.n == 0 else signed_pct(d.mean), ci, verdict))
                roles.append(row_role(group))
                data.append({"variant": labels[rkey], "role": roles[-1], "baseline": labels[choice.key],
                             "data": data_source, "stage": stage, "metric": metric, "n": d.n,
                             "seeds": " ".join(map(str, d.seeds)),
                             "mean_diff": d.mean, "std_diff": d.std, "ci_low": d.low, "ci_high": d.high})
    if not rows and not notes:
        notes.append(f"only '{baseline}' runs in this block: nothing to compare against it.")
    # rows were added stage by stage: put the reference rows after every method row (stable inside each)
    order = sorted(range(len(rows)), key=lambda i: roles[i] != METHOD_ROLE)
    rows, data, roles = [rows[i] for i in order], [data[i] for i in order], [roles[i] for i in order]
    first_ref = next((i for i, r in enumerate(roles) if r != METHOD_ROLE), None)
    notes = [
        f"{DATASET_TITLES[dataset]}, {data_source}, protocol {protocol}. Difference = variant - baseline in mAP "
        "points, paired by seed (only seeds present in both); 95% Student-t interval on the mean difference "
        "(t_{0.975, n-1} * sd / sqrt(n)). 'better' / 'worse' only when the interval excludes 0; n < 2 gives no "
        "interval.",
    ] + notes + list(reference_notes(block))
    if first_ref is not None:
        notes.append("A reference row's difference is a distance, not a verdict on a method: how far "
                     f"'{baseline}' is below the ceiling / oracle, how far above the floor.")
    return Table(
        key=block_key("paired", key),
        title=f"Paired differences vs '{baseline}' ({DATASET_TITLES[dataset]}, {data_source})",
        columns=("Variant", "Baseline", "Data", "Metric", "n pairs", "Mean diff (pts)", "95% CI (pts)", "Verdict"),
        rows=tuple(rows), notes=tuple(notes), rule_before=() if first_ref is None else (first_ref,),
        data=table_frame(data),
    )


# ---------------------------------------------------------------- Table 3 (ablation)
def ablation_table(key: tuple[str, str, str], block: pd.DataFrame, published: Published,
                   baseline: str = BASELINE_VARIANT) -> Table:
    """Table 3 style: mAP@0.5 per variant, the paper's 24.5 / 26.8 / 30.5 (THUMOS14, real I3D) beside the
    ablation trials of those variants (not beside a sweep's tuned configuration); the difference to the
    `baseline` variant of the same stage, the fraction of ceiling and the gate's classification mAP;
    reference rows after the methods; a Stage column when rows come from several stages or experiments."""
    dataset, data_source, protocol = key
    show_stage = _needs_stage_column(block)
    labels = row_labels(block)
    groups = dict(row_groups(block))
    fractions, fraction_notes = row_fractions(block)
    rows, data = [], []
    for rkey, group in groups.items():
        variant = rkey[1]
        role = row_role(group)
        # the paper's number only beside an ablation trial of the paper's variant: a sweep's tuned config
        # tagged `full` is not the paper's Full Model, and reference rows have no paper number
        is_paper_row = (dataset == "thumos14" and role == METHOD_ROLE and stage_kind(rkey[0]) == "ablation"
                        and config_variant(group) == variant)
        paper = published.ablation.get(variant) if is_paper_row else None
        choice = choose_baseline(block, rkey[0], baseline)
        diff = ""
        if choice.key is not None and rkey != choice.key:
            d = paired_difference(seed_map(group, "test_mAP_0.50"), seed_map(groups[choice.key], "test_mAP_0.50"))
            diff = (f"{signed_pct(d.mean)} [{signed_pct(d.low)}, {signed_pct(d.high)}] (n={d.n})" if d.has_ci
                    else "" if d.n == 0 else f"{signed_pct(d.mean)} (n={d.n}, no CI)")
        rows.append((labels[rkey], published.ablation_names.get(variant, "") if is_paper_row else "",
                     data_source, *([rkey[0]] if show_stage else []), str(len(group)),
                     pct_mean_std(metric_values(group, "test_mAP_0.50")), diff,
                     "" if paper is None else f"{paper:.1f}", fraction_text(fractions[rkey]),
                     pct_mean_std(metric_values(group, CLS_METRIC))))
        data.append({"variant": labels[rkey], "role": role, "config_variant": config_variant(group),
                     "data": data_source, "stage": rkey[0], "n": len(group),
                     **mean_std_columns(group, ["test_mAP_0.50"]),
                     "paper_mAP_0.50": math.nan if paper is None else paper / 100,
                     "fraction_of_ceiling": fractions[rkey], **mean_std_columns(group, [CLS_METRIC])})
    paper_col = f"Paper mAP@0.5 ({published.data_label})"
    notes = _synthetic_note(data_source, published.data_label) + (
        f"Paper column: {published.ablation_source}; only THUMOS14 has published ablation numbers, shown only "
        "beside ablation trials of the paper's variants (never beside a sweep's tuned configuration).",
        f"vs {baseline}: paired by seed against the '{baseline}' row of the same stage.",
        "Fraction of ceiling is on avg mAP (not mAP@0.5); gate cls mAP: test_cls_mAP (%), mean ± std over seeds.",
    ) + reference_notes(block) + fraction_notes
    ref_rule = reference_rule(block)
    return Table(
        key=block_key("table3", key),
        title=f"Table 3 style ablation: {DATASET_TITLES[dataset]} mAP@0.5 (%) per variant, this bench on {data_source}",
        columns=("Variant", "Paper row", "Data", *(("Stage",) if show_stage else ()), "n", "mAP@0.5 (this bench)",
                 f"vs {baseline}: diff [95% CI]", paper_col,
                 "fraction of ceiling", "gate cls mAP"),
        rows=tuple(rows), notes=notes, rule_before=() if ref_rule is None else (ref_rule,), data=table_frame(data),
    )


# ---------------------------------------------------------------- completeness
def completeness_table(key: tuple[str, str, str], block: pd.DataFrame) -> Table:
    """The paper's completeness claim: mean test_coverage and mAP at high tIoU per variant."""
    dataset, data_source, protocol = key
    labels = row_labels(block)
    high = HIGH_TIOU[dataset]
    rows, data = [], []
    for rkey, group in row_groups(block):
        cov = metric_values(group, "test_coverage")
        cells = [labels[rkey], data_source, str(len(group)), pct_mean_std(cov)]
        cells += [pct_mean_std(metric_values(group, f"test_mAP_{t:.2f}")) for t in high]
        rows.append(tuple(cells))
        data.append({"variant": labels[rkey], "role": row_role(group), "data": data_source, "n": len(group),
                     **mean_std_columns(group, ["test_coverage"] + [f"test_mAP_{t:.2f}" for t in high])})
    return Table(
        key=block_key("completeness", key),
        title=f"Completeness: ground-truth coverage and high-tIoU mAP ({DATASET_TITLES[dataset]}, {data_source})",
        columns=("Variant", "Data", "n", "Coverage (%)") + tuple(f"mAP@{t:g}" for t in high),
        rows=tuple(rows),
        notes=("Coverage: mean over ground-truth segments of the fraction covered by the best-overlapping "
               "same-class prediction (emmil.evaluate.segment_coverage), mean ± std over seeds. The paper "
               "argues EM-MIL's proposals are more complete: higher coverage and higher mAP at high tIoU.",)
        + reference_notes(block),
        rule_before=() if reference_rule(block) is None else (reference_rule(block),),
        data=table_frame(data),
    )


# ---------------------------------------------------------------- provenance
def _uniq(values) -> str:
    vals = sorted({str(v) for v in values if str(v)})
    return "; ".join(vals) if vals else "(not tagged)"


def provenance_table(runs: pd.DataFrame) -> Table:
    """Command, config hash, git commit, dataset, data source and eval protocol behind every row."""
    rows, data = [], []
    for key, block in blocks(runs):
        labels = row_labels(block)
        for rkey, group in row_groups(block):
            cells = (labels[rkey], rkey[0], key[0], key[1], key[2], _uniq(group["command"]),
                     _uniq(group["config_hash"]), _uniq(group["git_commit"]),
                     " ".join(sorted(r[:8] for r in group["run_id"])))
            rows.append(cells)
            data.append(dict(zip(("variant", "stage", "dataset", "data_source", "eval_protocol", "commands",
                                  "config_hashes", "git_commits", "run_ids"),
                                 cells[:8] + (" ".join(sorted(group["run_id"])),))))
    return Table(
        key="provenance",
        title="Provenance of every row",
        columns=("Variant", "Stage", "Dataset", "Data", "Protocol", "Command", "Config hash(es)", "Git commit(s)",
                 "Runs (id prefix)"),
        rows=tuple(rows), data=pd.DataFrame(data),
        notes=("From the runs' tags (emmil.command, emmil.config_hash, emmil.git_commit, emmil.dataset, "
               "emmil.data_source, emmil.eval_protocol). Config hashes differ between seeds when the seed is "
               "part of the hashed config; rows group runs by their params without seed/device.",),
    )


def excluded_table(excluded: pd.DataFrame) -> Table:
    rows = tuple((r.run_id, r.experiment, str(r.variant), str(r.seed), str(r.stage), r.reason)
                 for r in excluded.itertuples())
    return Table(key="excluded", title="Trial runs not in the tables",
                 columns=("Run", "Experiment", "Variant", "Seed", "Stage", "Reason"), rows=rows, data=excluded)
