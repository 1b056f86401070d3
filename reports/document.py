"""The report as data (sections of paragraphs, tables and figures); render.py writes it out."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True, eq=False)
class Table:
    key: str  # file-safe id: the CSV file name and the LaTeX label
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]  # formatted cells, len(columns) each
    notes: tuple[str, ...] = ()  # printed under the table
    rule_before: tuple[int, ...] = ()  # row indices with a horizontal rule above (published block)
    data: pd.DataFrame | None = None  # full-precision numbers behind the cells (written as CSV)

    def __post_init__(self):
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"table {self.key}: row {i} has {len(row)} cells, expected {len(self.columns)}")


@dataclass(frozen=True)
class Figure:
    key: str  # file-safe id: figures/<key>.png
    caption: str
    png: bytes


@dataclass(frozen=True)
class Section:
    title: str
    paragraphs: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()
    figures: tuple[Figure, ...] = ()


@dataclass(frozen=True)
class Report:
    title: str
    intro: tuple[str, ...]
    sections: tuple[Section, ...] = field(default_factory=tuple)
