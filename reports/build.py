r"""build_report: tracked runs (MLflow, optionally an Optuna study) -> a report directory.

    out_dir/report.md      Markdown (figures referenced from figures/)
    out_dir/report.html    one self-contained page (figures embedded as base64 PNG)
    out_dir/report.tex     LaTeX: \input's tables/*.tex, figures from figures/
    out_dir/tables/*.tex   each table as a booktabs fragment (no preamble) a paper can \input
    out_dir/runs.csv       the raw per-run table (every trial run: tags, metrics, params)
    out_dir/tables/*.csv   the numbers behind each table, as fractions: mean, <metric>_std, integer n
    out_dir/figures/*.png  the figures (with md or tex)

Reads the tracking store and, for sweeps, the Optuna storage; never a live Ray cluster.
"""

from __future__ import annotations

import datetime as _dt
import math
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import matplotlib
import pandas as pd

from emmil.errors import ConfigError
from reports import per_class, plots, tables
from reports.document import Figure, Report, Section, Table
from reports.render import FORMATS, write_report
from reports.runs import RunSet, load_json_artifact, load_runs, metric_histories, redact
from reports.stats import mean_std

VAL_METRIC = "val_avg_mAP"
TIMELINE_VIDEOS = 3  # Figure-5 timelines drawn per block
SEARCH_ROWS = 20  # search trials listed in the sweep section
TIOUS = {"thumos14": tuple(round(0.1 * i, 2) for i in range(1, 8)),
         "anet12": tuple(round(0.5 + 0.05 * i, 2) for i in range(10))}


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """'md,html' or ('md', 'html') -> ('md', 'html'); unknown names raise ConfigError."""
    items = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise ConfigError(f"--format: unknown or empty format(s) {bad or items}; choose from {','.join(FORMATS)}")
    return tuple(dict.fromkeys(items))


def _block_name(key: tuple[str, str, str]) -> str:
    return f"{tables.DATASET_TITLES[key[0]]} / {key[1]} / protocol {key[2]}"


# ---------------------------------------------------------------- figures
def map_vs_tiou_figure(key, block: pd.DataFrame, published: tables.Published) -> Figure:
    dataset = key[0]
    tious = TIOUS[dataset]
    labels = tables.row_labels(block)
    curves = []
    for rkey, group in tables.row_groups(block):
        stats = [mean_std(tables.metric_values(group, f"test_mAP_{t:.2f}")) for t in tious]
        curves.append(plots.Curve(labels[rkey], tious, tuple(100 * s.mean for s in stats),
                                  tuple(100 * s.std for s in stats), len(group)))
    ref = None
    emmil = [p for p in published.rows if p.is_emmil and p.dataset == dataset]
    if emmil:
        vals = emmil[0].values
        xs = tuple(t for t in tious if f"{t:g}" in vals)
        ref = plots.Curve(f"EM-MIL ({published.data_label})", xs, tuple(vals[f"{t:g}"] for t in xs),
                          plots.nan_list(len(xs)), 0)
    png = plots.curves_plot(curves, reference=ref, xlabel="tIoU threshold", ylabel="test mAP (%)",
                            title=f"mAP vs tIoU, mean ± std over seeds: {_block_name(key)}")
    return Figure(tables.block_key("map_vs_tiou", key),
                  f"mAP vs tIoU per variant (band: mean ± std over seeds) on {key[1]}; dashed: the paper's "
                  f"EM-MIL ({published.data_label}).", png)


def val_curve_figure(key, block: pd.DataFrame, tracking_uri: str) -> Figure | None:
    histories = metric_histories(tracking_uri, list(block["run_id"]), VAL_METRIC)
    if not any(histories.values()):
        return None
    labels = tables.row_labels(block)
    curves = []
    for rkey, group in tables.row_groups(block):
        per_epoch: dict[int, list[float]] = {}
        for run_id in group["run_id"]:
            for step, value in histories[run_id]:
                per_epoch.setdefault(step, []).append(value)
        if not per_epoch:
            continue
        epochs = tuple(sorted(per_epoch))
        stats = [mean_std(per_epoch[e]) for e in epochs]
        curves.append(plots.Curve(labels[rkey], epochs, tuple(100 * s.mean for s in stats),
                                  tuple(100 * s.std for s in stats), len(group)))
    png = plots.curves_plot(curves, xlabel="epoch", ylabel=f"{VAL_METRIC} (%)", integer_x=True,
                            title=f"Validation curves (held-out training videos): {_block_name(key)}")
    return Figure(tables.block_key("val_curves", key),
                  f"Per-epoch {VAL_METRIC} (MLflow metric history), mean ± std over seeds, on {key[1]}.", png)


def timeline_figure(key, block: pd.DataFrame, tracking_uri: str, tmp: str) -> tuple[Figure | None, list[str]]:
    """Figure-5 style timelines of `full` and the attention baselines, one seed each (the lowest)."""
    notes = []
    wanted = [tables.BASELINE_VARIANT] + list(tables.ATTENTION_VARIANTS)
    per_variant = {}
    for variant in wanted:
        rows = block[block["variant"] == variant].sort_values(["stage", "seed"])
        if rows.empty:
            continue
        run = rows.iloc[0]
        doc = load_json_artifact(tracking_uri, run["run_id"], "timelines.json", tmp)
        if doc is None:
            notes.append(f"run {run['run_id']} ({variant}, seed {run['seed']}) has no timelines.json artifact.")
            continue
        per_variant[f"{variant} (seed {run['seed']})"] = plots.parse_timelines(
            doc, f"run {run['run_id']} artifact timelines.json")
    if not per_variant:
        return None, notes or [f"no {', '.join(wanted)} runs in this block."]
    common = sorted(set.intersection(*(set(v) for v in per_variant.values())))
    if not common:
        notes.append("the runs' timelines.json files share no video: nothing to compare.")
        return None, notes
    videos = common[:TIMELINE_VIDEOS]
    png = plots.timelines_plot(per_variant, videos, title=f"Timelines (Figure 5 style): {_block_name(key)}")
    caption = (f"Fused score L_t (Eq. 9, blue), threshold (dashed), predicted segments (blue bars) and ground truth "
               f"(red bars) for test videos {', '.join(videos)}; variants {', '.join(per_variant)}; {key[1]}.")
    return Figure(tables.block_key("timelines", key), caption, png), notes


# ---------------------------------------------------------------- per-class AP
def per_class_docs(tracking_uri: str, run_ids, tmp: str) -> dict[str, per_class.PerClassAP | None]:
    """run_id -> its parsed per_class_ap.json, None when the run has none (an older run)."""
    out = {}
    for run_id in run_ids:
        doc = load_json_artifact(tracking_uri, run_id, per_class.ARTIFACT, tmp)
        out[run_id] = None if doc is None else per_class.parse_per_class(
            doc, f"run {run_id} artifact {per_class.ARTIFACT}")
    return out


def per_class_sections(blist, docs: Mapping[str, per_class.PerClassAP | None]) -> tuple[Section, Section | None]:
    """The 'Per-class AP' section (one overview table per block: classes x variants at the tIoU-averaged AP)
    and the appendix (one classes x tIoU table per block and variant), None when no run has the artifact."""
    overviews, details, notes = [], [], []
    for key, block in blist:
        t = per_class.per_class_tables(key, block, docs)
        if t.overview is not None:
            overviews.append(t.overview)
        details += t.details
        notes += t.notes
    intro = ("Test AP of each class, from each run's per_class_ap.json artifact: which classes a variant gains "
             "or loses on. One table per dataset / data source / protocol; one column per variant (the AP "
             "averaged over the tIoU thresholds); the per-tIoU tables are in the appendix.",)
    main = Section("Per-class AP", intro + tuple(notes), tables=tuple(overviews))
    appendix = Section("Appendix: per-class AP by tIoU", tables=tuple(details)) if details else None
    return main, appendix


# ---------------------------------------------------------------- sweeps
def _search_trials(rs: RunSet) -> pd.DataFrame:
    return rs.trials[rs.trials["stage"] == "search"] if not rs.trials.empty else rs.trials


def search_table(search: pd.DataFrame) -> Table:
    """Search trials by their last validation metric (the honest objective), best first."""
    params = [c for c in search.columns if c.startswith("param:") and c not in ("param:seed", "param:device")
              and search[c].nunique(dropna=True) > 1]
    df = search.copy()
    df["_val"] = df[VAL_METRIC] if VAL_METRIC in df else math.nan
    df = df.sort_values("_val", ascending=False, na_position="last")
    rows = []
    for r in df.head(SEARCH_ROWS).to_dict("records"):
        rows.append((str(r.get("trial_id") or ""), str(r["run_id"])[:8], str(r["status"]), str(r["variant"]),
                     tables.pct(r["_val"]), tables.pct(r.get("test_avg_mAP", math.nan)))
                    + tuple(tables.param_text(r[p]) for p in params))
    df_named = df.rename(columns={"_val": VAL_METRIC + "_last"})
    data = df_named[["run_id", "trial_id", "status", "variant", VAL_METRIC + "_last"] + params]
    return Table(
        key="search_trials", title=f"Search trials by last {VAL_METRIC} (held-out training videos), best first",
        columns=("Trial", "Run", "Status", "Variant", f"{VAL_METRIC} (%)", "test avg mAP (%)")
        + tuple(p[len("param:"):] for p in params),
        rows=tuple(rows), data=data.reset_index(drop=True),
        notes=(f"{len(search)} search trials, the best {min(SEARCH_ROWS, len(search))} shown (all in runs.csv). "
               "Configurations were selected on validation; test numbers of search trials, when logged, are not "
               "used for selection.",),
    )


def optuna_figures(storage: str, study_name: str, explicit: bool) -> tuple[list[Figure], list[str]]:
    """Optimisation history (optuna.visualization.matplotlib) and parameter importances (bar plot)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception as exc:  # noqa: BLE001 - any storage/name failure is reported, with its cause
        msg = f"cannot open Optuna study {study_name!r} at {redact(storage)}: {type(exc).__name__}: {redact(str(exc))}"
        if explicit:
            raise ConfigError(msg) from None
        return [], [msg]
    figures, notes = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from optuna.visualization.matplotlib import plot_optimization_history

        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            return [], [f"Optuna study {study_name!r} has no completed trial."]
        with matplotlib.rc_context():  # Optuna switches the global style to ggplot: keep that local
            ax = plot_optimization_history(study)
            png = plots.axes_png(ax, title=f"Optuna study {study_name}")
        figures.append(Figure("optuna_history", f"Optimisation history of study {study_name!r} "
                              f"({len(complete)} completed trials; Optuna's own plot).", png))
        try:
            imp = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as exc:
            notes.append(f"parameter importances unavailable: {exc}")
            imp = {}
        if imp:
            names = list(imp)
            figures.append(Figure("optuna_importances",
                                  f"Parameter importances of study {study_name!r} "
                                  "(optuna.importance.get_param_importances, Optuna's default evaluator).",
                                  plots.bar_plot(names, [imp[n] for n in names], xlabel="importance (normalised)",
                                                 title=f"Parameter importances: {study_name}")))
    return figures, notes


# ---------------------------------------------------------------- the report
PARTIAL_ADVICE = ("; the tables below cover only the finished trials. Finish the run with `--resume` and rebuild "
                  "the report.")


def finished_trial_count(trials: pd.DataFrame, parent_run_id: str) -> int:
    """Trial runs of one parent that ended as planned: FINISHED, or a search trial the scheduler stopped
    early (KILLED with emmil.stopped_early=true; a sweep plans its search trials too)."""
    if trials.empty:
        return 0
    ended = (trials["status"] == "FINISHED")
    if "stopped_early" in trials:
        ended |= (trials["status"] == "KILLED") & trials["stopped_early"].astype(bool)
    return int(((trials["parent_run_id"] == parent_run_id) & ended).sum())


def partial_notice(run_id: str, experiment: str, status: str, planned_tag: str, finished: int) -> str | None:
    """The intro's notice for a parent run whose tables are partial, None when it is complete.

    Partial: the parent is not FINISHED (RUNNING, FAILED, KILLED), or fewer trials FINISHED than the
    parent's tag emmil.planned_trials (`planned_tag`, its text; '' on runs older than the tag, which are
    judged by their status only)."""
    who = f"the parent run {run_id} ({experiment})"
    text = str(planned_tag or "").strip()
    planned = int(text) if text.isdecimal() else None
    if status == "FINISHED":
        if planned is not None and finished < planned:
            return f"Partial results: {who} is FINISHED but only {finished} of {planned} planned trials finished" \
                + PARTIAL_ADVICE
        if text and planned is None:  # the status says complete, the tag cannot confirm it: say so, not skip it
            return (f"WARNING: {who} has tag emmil.planned_trials={text!r}, not a trial count: whether every "
                    f"planned trial finished is unknown ({finished} did).")
        return None
    done = f"{finished} trial{'' if finished == 1 else 's'} finished"
    if planned is not None:
        count = f"{finished} of {planned} planned trials finished"
    elif text:
        count = f"{done} (its tag emmil.planned_trials={text!r} is not a trial count)"
    else:
        count = f"{done} (the run has no emmil.planned_trials tag: how many were planned is unknown)"
    return f"Partial results: {who} is {status} and {count}" + PARTIAL_ADVICE


def partial_notices(rs: RunSet) -> tuple[str, ...]:
    """One notice per parent run whose trials the tables cover only in part (reports/build.partial_notice)."""
    notices = (partial_notice(p.run_id, p.experiment, p.status, p.planned_trials,
                              finished_trial_count(rs.trials, p.run_id)) for p in rs.parents.itertuples())
    return tuple(n for n in notices if n)


def _intro(rs: RunSet, command: str | None) -> tuple[str, ...]:
    runs = rs.runs
    sources = sorted(set(runs["data_source"])) if not runs.empty else []
    lines = list(partial_notices(rs)) + [  # first: a reader must know the tables are partial before reading them
        f"Generated {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from MLflow "
        f"{redact(rs.tracking_uri)}, experiment(s) {', '.join(rs.experiments)}: {len(runs)} finished trial runs in the "
        f"tables, {len(rs.excluded)} other trial runs listed under Provenance"
        + (f", {len(_search_trials(rs))} search trials." if not _search_trials(rs).empty else "."),
        "Data sources measured here: " + ("; ".join(sources) if sources else "(none)") + ". Each table covers one "
        "dataset, one data source and one evaluation protocol; rows from different ones are never merged.",
    ]
    if any(s.startswith("semi-synthetic") for s in sources):
        lines.append("WARNING: rows measured on semi-synthetic features are a benchmark of the method on "
                     "generated data, not a reproduction of the paper's numbers (which are marked 'paper, real "
                     "I3D features').")
    if any(not s.startswith(("real", "semi-synthetic")) for s in sources):
        lines.append("WARNING: some rows were measured on features of unverified origin (not declared real with "
                     "--real-features, not marked synthetic by a SYNTHETIC.json): what they measure depends on "
                     "what those features are; compare them with the paper's numbers only once you know.")
    if len(rs.sources) > 1:
        lines.append("Compared side by side: " + "; ".join(f"'{label}' = {what}" for label, what in rs.sources.items())
                     + ". Where a table holds rows of several sources, each row's stage names its source "
                     "(`<source> · <stage>`): rows, baselines and pairs of one source are never merged with or "
                     "compared against another's.")
    if command:
        lines.append(f"Report command: {redact(command)}")
    return tuple(lines)


def build_sections(rs: RunSet, published: tables.Published, *, optuna_storage: str | None = None,
                   study_name: str | None = None, baseline: str = tables.BASELINE_VARIANT) -> list[Section]:
    runs = rs.runs
    tables.check_one_run_per_seed(runs)
    blist = tables.blocks(runs)
    sections = []
    for dataset, number in (("thumos14", 1), ("anet12", 2)):
        ts = [tables.map_table(k, b, published) for k, b in blist if k[0] == dataset]
        if ts:
            title = f"Table {number}: {tables.DATASET_TITLES[dataset]} detection mAP"
            sections.append(Section(title, tables=tuple(ts)))
    if not blist:
        sections.append(Section("Table 1: detection mAP", ("No finished trial run with test metrics.",)))
    sections.append(Section("Table 3: ablation (mAP@0.5)", tables=tuple(tables.ablation_table(k, b, published, baseline)
                                                                      for k, b in blist)))
    sections.append(Section(
        f"Paired differences vs {baseline}",
        (f"Is a variant better than '{baseline}' (of the same stage and experiment)? Per seed s, d_s = "
         f"variant_s - {baseline}_s; mean and 95% t-interval. Reference rows (ceiling, oracle, floor) are paired "
         f"too: their difference measures {baseline}'s distance to them.",),
        tables=tuple(tables.paired_table(k, b, baseline) for k, b in blist)))
    sections.append(Section("Completeness", tables=tuple(tables.completeness_table(k, b) for k, b in blist)))
    appendix = None
    if blist:
        with tempfile.TemporaryDirectory(prefix="emmil-report-") as tmp:
            docs = per_class_docs(rs.tracking_uri, [r for _, b in blist for r in b["run_id"]], tmp)
        per_class_section, appendix = per_class_sections(blist, docs)
        sections.append(per_class_section)

    figs = [map_vs_tiou_figure(k, b, published) for k, b in blist]
    sections.append(Section("mAP vs tIoU", figures=tuple(figs)))
    figs, notes = [], []
    for k, b in blist:
        f = val_curve_figure(k, b, rs.tracking_uri)
        if f is None:
            notes.append(f"{_block_name(k)}: no {VAL_METRIC} history logged (validation runs only when "
                         "train.val_fraction > 0).")
        else:
            figs.append(f)
    sections.append(Section("Validation curves", tuple(notes), figures=tuple(figs)))
    figs, notes = [], []
    with tempfile.TemporaryDirectory(prefix="emmil-report-") as tmp:
        for k, b in blist:
            f, n = timeline_figure(k, b, rs.tracking_uri, tmp)
            notes += [f"{_block_name(k)}: {x}" for x in n]
            if f is not None:
                figs.append(f)
    sections.append(Section("Timelines (Figure 5 style)", tuple(notes), figures=tuple(figs)))

    sweep_parents = rs.parents[rs.parents["kind"] == "sweep"] if not rs.parents.empty else rs.parents
    search = _search_trials(rs)
    if not sweep_parents.empty or not search.empty or optuna_storage:
        paragraphs, figs, stables = [], [], []
        if not search.empty:
            stables.append(search_table(search))
        storage, name, explicit = optuna_storage, study_name, optuna_storage is not None
        tags = next(iter(rs.parent_tags[p] for p in sweep_parents["run_id"]), {}) if not sweep_parents.empty else {}
        storage = storage or tags.get("emmil.optuna_storage")
        name = name or tags.get("emmil.study") or tags.get("emmil.study_name")  # the sweep tags emmil.study
        if name is None and len(rs.experiments) == 1 and rs.experiments[0].startswith("emmil-sweep-"):
            name = rs.experiments[0][len("emmil-sweep-"):]
        if storage and name:
            figs, notes = optuna_figures(storage, name, explicit)
            paragraphs += notes
        else:
            paragraphs.append("Optuna plots need the study's storage URL and name: pass --optuna-storage URL "
                              "[--study NAME] (or tag the parent run emmil.optuna_storage / emmil.study).")
        sections.append(Section("Sweep", tuple(paragraphs), tables=tuple(stables), figures=tuple(figs)))

    prov = [tables.provenance_table(runs)] if not runs.empty else []
    if not rs.excluded.empty:
        prov.append(tables.excluded_table(rs.excluded))
    parents = tuple(f"Parent run {p.run_id} ({p.kind or 'untagged kind'}, experiment {p.experiment}, "
                    f"status {p.status}): command {redact(p.command) or '(not tagged)'}; "
                    f"git {p.git_commit or '(not tagged)'}."
                    for p in rs.parents.itertuples())
    sections.append(Section("Provenance", parents, tables=tuple(prov)))
    if appendix is not None:
        sections.append(appendix)
    return sections


def build_report(tracking_uri: str, *, experiment: str | Sequence[str] | None = None,
                 parent_run_id: str | Sequence[str] | None = None,
                 out_dir, formats: Sequence[str] | str = FORMATS, optuna_storage: str | None = None,
                 study_name: str | None = None, command: str | None = None,
                 baseline: str = tables.BASELINE_VARIANT) -> Path:
    """Build the report of one or several experiments / parent runs, or (neither) every emmil-* experiment.
    Several: their rows side by side in each table, each source's stage qualified by its name (reports/runs.py
    `source`), data sources still apart.

    Returns out_dir. User errors (unknown experiment or run, bad format, a finished run missing schema
    tags, an unreadable artifact) raise emmil.errors.ConfigError / DataError naming the run and key.
    """
    fmts = parse_formats(formats)
    rs = load_runs(tracking_uri, experiment=experiment, parent_run_id=parent_run_id)
    published = tables.load_published()
    variants = sorted(set(rs.runs["variant"])) if not rs.runs.empty else []
    if baseline != tables.BASELINE_VARIANT and baseline not in variants:
        raise ConfigError(f"--baseline {baseline!r}: no finished trial run of that variant in {', '.join(rs.experiments)}"
                          f" (variants: {', '.join(variants) or 'none'})")
    sections = build_sections(rs, published, optuna_storage=optuna_storage, study_name=study_name,
                              baseline=baseline)
    if isinstance(parent_run_id, str) or (parent_run_id and len(parent_run_id) == 1):
        what = f"parent run {parent_run_id if isinstance(parent_run_id, str) else parent_run_id[0]}"
    elif parent_run_id:
        what = "parent runs " + ", ".join(rs.sources)
    else:
        what = ", ".join(rs.experiments)
    report = Report(f"EM-MIL bench report: {what}", _intro(rs, command), tuple(sections))
    out = Path(out_dir)
    write_report(report, out, fmts, rs.trials)
    return out

