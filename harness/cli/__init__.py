"""`emmil` console script: a thin dispatcher.

Each subcommand lives in its own module of this package with two functions:
    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> int          # exit code
Modules are imported only when their subcommand runs, so `emmil data info` never pays for
importing Ray or MLflow. A user-facing error (emmil.errors.EmmilError) prints `error: <message>`
and exits 2 without a traceback; Ctrl-C exits 130, SIGTERM of ablate/sweep 143.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command words, module under harness.cli, one-line help)
COMMANDS = [
    (("data", "info"), "data_info", "load a dataset and print a summary and any problem found"),
    (("data", "synth"), "data_synth", "write a semi-synthetic dataset in the W-TALC layout"),
    (("data", "gt"), "data_gt", "write a dataset's ground truth as ActivityNet JSON"),
    (("eval",), "evaluate", "detection mAP of a predictions JSON against a ground-truth JSON"),
    (("train",), "train", "train and evaluate one EM-MIL run"),
    (("predict",), "predict", "score videos with a trained model.pt, write ActivityNet results JSON"),
    (("ablate",), "ablate", "run an experiment from ablations/ on Ray Tune, tracked in MLflow"),
    (("sweep",), "sweep", "Optuna search through Ray Tune, then retrain the best config on test"),
    (("report",), "report", "build a benchmark report from tracked runs"),
    (("tracking", "flush"), "tracking_flush", "deliver metrics buffered while the tracking server was down"),
]


def _version_line() -> str:
    """`emmil-bench 0.1.0 (git <sha>)`: what a bug report or a results folder should name."""
    from importlib.metadata import PackageNotFoundError, version

    from harness.tracking import git_commit  # stdlib-only at import (MLflow is imported lazily there)

    try:
        number = version("emmil-bench")
    except PackageNotFoundError:  # run from a checkout that was never pip-installed
        number = "unknown"
    return f"emmil-bench {number} (git {git_commit()[:12]})"


def _build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emmil", description="EM-MIL bench: train, sweep, evaluate, report.")
    parser.add_argument("--version", action="version", version=_version_line(),
                        help="print the package version and the git commit of this checkout, then exit")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, module, help_text in COMMANDS:
        if len(words) == 1:
            sub = top.add_parser(words[0], help=help_text, description=help_text)
        else:
            if words[0] not in groups:
                group = top.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = group.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
            sub = groups[words[0]].add_parser(words[1], help=help_text, description=help_text)
        sub.set_defaults(_module=module)
        # Only import the module whose arguments are needed (or all, for --help listings).
        wanted = list(words) == argv[: len(words)]
        if wanted:
            importlib.import_module(f"harness.cli.{module}").add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from emmil.errors import EmmilError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = _build_parser(argv)
        args = parser.parse_args(argv)
        module = importlib.import_module(f"harness.cli.{args._module}")
        return int(module.run(args) or 0)
    except EmmilError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through harness.stop_signals: 128 + the signal number
        from harness import stop_signals

        print("interrupted", file=sys.stderr)
        return stop_signals.exit_code()


if __name__ == "__main__":
    sys.exit(main())
