"""`emmil report`: build a benchmark report (tables, plots, provenance) from tracked MLflow runs.

    emmil report --experiment table3 --tracking-uri sqlite:///results/demo/mlflow.db --out results/demo/report
    emmil report --run-id QUICK_PARENT --run-id PAPER_PARENT --tracking-uri ... --out compare/   (side by side)
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--experiment", metavar="NAME", action="append",
                       help="experiment to report: NAME, emmil-NAME or emmil-sweep-NAME (default: every emmil-* one); "
                            "repeat it to put several side by side")
    which.add_argument("--run-id", metavar="PARENT", action="append",
                       help="report the trial runs of this parent (ablation/sweep) run; repeat it to compare several "
                            "(e.g. a quick- and a paper-preset ablation) in one set of tables")
    parser.add_argument("--tracking-uri", metavar="URI", default=None,
                        help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})")
    parser.add_argument("--out", metavar="DIR", type=Path, default=None,
                        help="report directory (default: report-<experiment or run id> under the current directory)")
    parser.add_argument("--format", metavar="LIST", default="md,html,tex,csv",
                        help="comma-separated subset of md,html,tex,csv (default: all)")
    parser.add_argument("--optuna-storage", metavar="URL", default=None,
                        help="Optuna RDB storage URL of a sweep's study (optimisation history, importances)")
    parser.add_argument("--study", metavar="NAME", default=None,
                        help="Optuna study name (default: the parent run's tags, or NAME of emmil-sweep-NAME)")
    parser.add_argument("--baseline", metavar="VARIANT", default="full",
                        help="variant the paired differences and Table 3's diff column compare against, inside "
                             "each stage and experiment (default: full)")


def _absolute_uri(uri: str) -> str:
    """sqlite:///relative.db -> sqlite:////abs/relative.db, so the store is the same from any directory."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def _command_line(args: argparse.Namespace, uri: str) -> str:
    """The invocation, rebuilt from the parsed options (for the report's provenance)."""
    parts = ["emmil", "report"]
    for flag, values in (("--experiment", args.experiment), ("--run-id", args.run_id)):
        for value in values or ():
            parts += [flag, shlex.quote(value)]
    for flag, value in (("--tracking-uri", uri), ("--out", args.out), ("--format", args.format),
                        ("--optuna-storage", args.optuna_storage), ("--study", args.study),
                        ("--baseline", None if args.baseline == "full" else args.baseline)):
        if value is not None:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def default_out(experiments: list[str] | None, run_ids: list[str] | None) -> Path:
    """report-<experiment>, report-<run id, 12 hex>, several joined by '+', or report-all."""
    names = experiments or [r[:12] for r in run_ids or ()]
    return Path("report-" + ("+".join(names) if names else "all"))


def run(args: argparse.Namespace) -> int:
    from emmil.errors import ConfigError
    from reports.build import build_report, parse_formats

    formats = parse_formats(args.format)
    uri = _absolute_uri(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ConfigError(f"--tracking-uri {uri}: no such SQLite file (nothing has been tracked there)")
    from harness.preflight import check_tracking_uri

    check_tracking_uri(uri)  # a file that is not a database, a server nobody listens on: named, no traceback
    out = args.out or default_out(args.experiment, args.run_id)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, expected a report directory")
    command = _command_line(args, uri)
    # one --experiment / --run-id passes a string, exactly as before; several, the list
    experiment = args.experiment[0] if args.experiment and len(args.experiment) == 1 else args.experiment
    run_id = args.run_id[0] if args.run_id and len(args.run_id) == 1 else args.run_id
    path = build_report(uri, experiment=experiment, parent_run_id=run_id, out_dir=out, formats=formats,
                        optuna_storage=args.optuna_storage, study_name=args.study, command=command,
                        baseline=args.baseline)
    for name in ("report.md", "report.html", "report.tex", "runs.csv"):
        if (path / name).is_file():
            print(path / name)
    return 0
