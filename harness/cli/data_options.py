"""The data options every command that loads a dataset takes (issue 14.3): one argument group, one
translation to `emmil.data.loading.load_dataset` keywords. Imports nothing heavy."""

from __future__ import annotations

import argparse

LAYOUTS = ("auto", "wtalc", "per-video")  # as emmil.data.loading.LAYOUTS


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--layout, --annotations, --clip-seconds, --real-features (--dataset/--data-dir stay with each
    command: some require them, some read them from a file)."""
    group = parser.add_argument_group("data options")
    group.add_argument("--layout", default="auto", choices=LAYOUTS,
                       help="feature layout (default: detected from the folder)")
    group.add_argument("--annotations", default=None, metavar="JSON",
                       help="ActivityNet-style annotation JSON for the per-video layout (THUMOS14: the shipped "
                            "one by default)")
    group.add_argument("--clip-seconds", type=float, default=None, metavar="S",
                       help="seconds of video per feature clip (default 16/25 = 0.64); checked against the "
                            "annotated durations")
    group.add_argument("--real-features", action="store_true",
                       help="declare the features real I3D features (reports label them so); without it they "
                            "are 'user-provided features (unverified)' unless SYNTHETIC.json marks them synthetic")


def data_kwargs(args: argparse.Namespace) -> dict:
    """load_dataset keywords from the parsed data options."""
    return {"annotations": args.annotations, "clip_seconds": args.clip_seconds,
            "real_features": args.real_features}
