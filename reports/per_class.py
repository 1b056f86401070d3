"""Per-class AP tables: pure functions of the run table and the runs' per_class_ap.json artifacts.

A trial run (and `emmil train --out`) writes per_class_ap.json beside metrics.json
(emmil.train.TestOutcome.per_class_document):
    {"tiou": [0.1, ..., 0.7], "per_class_AP": {"<class>": [AP or null per tIoU], ...}}
AP as fractions; null where undefined (a class without a test segment).

Layout (a readable report for 20 THUMOS14 or 100 ActivityNet1.2 classes and many variants):
  - one overview table per (dataset, data_source, protocol) block: rows = classes, one column per row
    group (variant / config, as in the other tables) holding the class's AP averaged over the tIoU
    thresholds, mean ± std over seeds;
  - one full table per block and row group: rows = classes, columns = each tIoU and the average, for the
    appendix and for a paper (tables/per_class_tiou_*.csv / .tex).
Statistics: per run, a class's avg AP = mean over the tIoU thresholds of its AP (undefined when any is);
each cell = mean and sample std over the runs of the row group that define it (reports.stats.mean_std).
Runs without the artifact (logged before it existed) are named in a note, never silently left out.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Mapping

import pandas as pd

from emmil.errors import DataError
from reports import tables
from reports.document import Table
from reports.stats import mean_std

ARTIFACT = "per_class_ap.json"


@dataclass(frozen=True)
class PerClassAP:
    tiou: tuple[float, ...]  # (K,) thresholds
    ap: Mapping[str, tuple[float | None, ...]]  # class -> (K,) AP as fractions, None where undefined


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def parse_per_class(doc, where: str) -> PerClassAP:
    """A per_class_ap.json document, checked; DataError naming `where` (run + artifact) and the key."""
    if not isinstance(doc, dict):
        raise DataError(f"{where}: expected a JSON object with 'tiou' and 'per_class_AP', got {type(doc).__name__}")
    tiou = doc.get("tiou")
    if not isinstance(tiou, list) or not tiou or not all(_is_number(t) and 0 < t <= 1 for t in tiou):
        raise DataError(f"{where}: 'tiou' must be a non-empty list of thresholds in (0, 1], got {tiou!r}")
    per_class = doc.get("per_class_AP")
    if not isinstance(per_class, dict):
        raise DataError(f"{where}: 'per_class_AP' must be an object {{class: [AP per tIoU]}}")
    out = {}
    for label, values in per_class.items():
        if not isinstance(values, list) or len(values) != len(tiou):
            raise DataError(f"{where}: per_class_AP[{label!r}] must be a list of {len(tiou)} values (one per "
                            f"tIoU), got {values!r}")
        for k, x in enumerate(values):
            if x is not None and not (_is_number(x) and 0 <= x <= 1):
                raise DataError(f"{where}: per_class_AP[{label!r}][{k}] = {x!r} is not an AP in [0, 1] or null")
        out[str(label)] = tuple(None if x is None else float(x) for x in values)
    return PerClassAP(tuple(round(float(t), 6) for t in tiou), out)


# ---------------------------------------------------------------- statistics
def _class_values(docs: list[PerClassAP], label: str, k: int | None) -> list[float]:
    """AP of class `label` at tIoU index k (k None: its mean over the tIoU) in each run defining it."""
    out = []
    for d in docs:
        ap = d.ap.get(label)
        if ap is None:
            continue
        if k is not None:
            if ap[k] is not None:
                out.append(ap[k])
        elif all(x is not None for x in ap):
            out.append(sum(ap) / len(ap))
    return out


def _cell(values: list[float], runs: int) -> str:
    """'30.5 ± 0.8' (percent); '(n=k)' appended when fewer than the column's `runs` define it; '' when none."""
    text = tables.pct_mean_std(values)
    if text and len(values) != runs:
        text += f" (n={len(values)})"
    return text


def _tiou_text(tiou: tuple[float, ...]) -> str:
    return f"{tiou[0]:g}:{tiou[-1]:g}" if len(tiou) > 1 else f"{tiou[0]:g}"


def _missing_text(group: pd.DataFrame) -> str:
    return ", ".join(f"seed {r.seed} (run {str(r.run_id)[:8]})" for r in group.sort_values("seed").itertuples())


@dataclass(frozen=True)
class PerClassTables:
    overview: Table | None  # None when no run of the block has the artifact
    details: tuple[Table, ...]  # one per row group with the artifact
    notes: tuple[str, ...]  # for the section when there is no overview table


def per_class_tables(key: tuple[str, str, str], block: pd.DataFrame,
                     docs: Mapping[str, PerClassAP | None]) -> PerClassTables:
    """The per-class tables of one block. `docs`: run_id -> its parsed per_class_ap.json, None when the run
    has none (each run of `block` must be a key)."""
    dataset, data_source, protocol = key
    name = f"{tables.DATASET_TITLES[dataset]}, {data_source}, protocol {protocol}"
    groups = tables.row_groups(block)
    labels = tables.row_labels(block)
    show_stage = tables._needs_stage_column(block)
    present = {rkey: [docs[r] for r in g["run_id"] if docs[r] is not None] for rkey, g in groups}
    all_docs = [d for ds in present.values() for d in ds]

    missing_notes = []
    for rkey, g in groups:
        lacking = g[[docs[r] is None for r in g["run_id"]]]
        if lacking.empty:
            continue
        where = labels[rkey] + (f" ({rkey[0]})" if show_stage else "")
        if len(lacking) == len(g):
            missing_notes.append(f"{where}: no column, none of its {len(g)} run(s) has a {ARTIFACT} artifact "
                                 f"({_missing_text(lacking)}).")
        else:
            missing_notes.append(f"{where}: {len(lacking)} of {len(g)} run(s) have no {ARTIFACT} artifact "
                                 f"({_missing_text(lacking)}); its column covers the other {len(g) - len(lacking)}.")
    if missing_notes:
        missing_notes.append(f"Runs without {ARTIFACT} were logged before emmil-bench recorded per-class AP (or "
                             "by another tool); re-run those trials to add them.")
    if not all_docs:
        return PerClassTables(None, (), (f"{name}: no run has a {ARTIFACT} artifact, so no per-class table. "
                                         + " ".join(missing_notes),))
    tious = {d.tiou for d in all_docs}
    if len(tious) > 1:
        by = {t: [r for r in block["run_id"] if docs[r] is not None and docs[r].tiou == t][:3] for t in tious}
        raise DataError(f"{name}: the runs' {ARTIFACT} use different tIoU thresholds: "
                        + "; ".join(f"{list(t)} (runs {', '.join(ids)})" for t, ids in sorted(by.items())))
    [tiou] = tious
    seen = sorted({c for d in all_docs for c in d.ap})
    classes = [c for c in seen if any(_class_values(all_docs, c, k) for k in range(len(tiou)))]
    undefined = [c for c in seen if c not in classes]

    def header(rkey) -> str:
        return labels[rkey] + (f" · {rkey[0]}" if show_stage else "")

    cols = [rkey for rkey, _ in groups if present[rkey]]
    avg_note = (f"Cells: a class's AP (%) averaged over tIoU {_tiou_text(tiou)} in each run, then mean ± sample "
                "std over the runs (seeds) of the column; '(n=k)' where fewer runs define that class; empty where "
                "none does.")
    common = [f"{name}. Read from each run's {ARTIFACT} artifact (test split)."]
    if undefined:
        common.append(f"No AP in any run (no test segment of the class): {', '.join(undefined)}.")
    rows, data = [], []
    for c in classes:
        cells = [c]
        for rkey in cols:
            values = _class_values(present[rkey], c, None)
            cells.append(_cell(values, len(present[rkey])))
            group = dict(groups)[rkey]
            ms = mean_std(values)
            data.append({"class": c, "variant": labels[rkey], "role": tables.row_role(group),
                         "config_variant": tables.config_variant(group), "data": data_source, "stage": rkey[0],
                         "n": ms.n, "AP_avg": ms.mean, "AP_avg_std": ms.std})
        rows.append(tuple(cells))
    overview = Table(
        key=tables.block_key("per_class", key),
        title=f"Per-class AP (%) averaged over tIoU {_tiou_text(tiou)}, per variant ({tables.DATASET_TITLES[dataset]}, "
              f"{data_source})",
        columns=("Class",) + tuple(f"{header(r)} (n={len(present[r])})" for r in cols),
        rows=tuple(rows), data=tables.table_frame(data),
        notes=tuple(common + [avg_note, "Per-tIoU values: the appendix 'Per-class AP by tIoU' (one table per "
                              "variant) and its CSVs tables/per_class_tiou_*.csv."] + missing_notes),
    )

    details = []
    for rkey in cols:
        group = dict(groups)[rkey]
        runs = present[rkey]
        rows, data = [], []
        for c in classes:
            per_t = [_class_values(runs, c, k) for k in range(len(tiou))]
            avg = _class_values(runs, c, None)
            rows.append((c, str(len(avg))) + tuple(_cell(v, len(runs)) for v in per_t + [avg]))
            record = {"class": c, "variant": labels[rkey], "role": tables.row_role(group), "data": data_source,
                      "stage": rkey[0], "n": len(avg)}
            for t, values in zip(tiou, per_t):
                ms = mean_std(values)
                record.update({f"AP_{t:.2f}": ms.mean, f"AP_{t:.2f}_std": ms.std, f"AP_{t:.2f}_n": ms.n})
            ms = mean_std(avg)
            record.update({"AP_avg": ms.mean, "AP_avg_std": ms.std})
            data.append(record)
        digest = hashlib.sha1("\x00".join(key + rkey).encode()).hexdigest()[:8]
        details.append(Table(
            key=tables.file_key("per_class_tiou", dataset, digest, labels[rkey]),
            title=f"Per-class AP (%) by tIoU: {header(rkey)}, {len(runs)} run(s) ({tables.DATASET_TITLES[dataset]}, "
                  f"{data_source})",
            columns=("Class", "n") + tuple(f"{t:g}" for t in tiou) + (f"avg {_tiou_text(tiou)}",),
            rows=tuple(rows), data=tables.table_frame(data),
            notes=tuple(common + [f"Cells: AP (%), mean ± sample std over the runs (seeds) that define it; n: runs "
                                  "defining the class at every tIoU (its avg column); '(n=k)' where a cell has "
                                  "another count."]),
        ))
    return PerClassTables(overview, tuple(details), ())
