"""The report as data: tables of cells (display text, sort keys, footnote marks) and the
groups that give each evaluation protocol or timing setup its mark.

Markdown and HTML render the same ``Table`` objects, so both say the same thing;
``genbench.reports.tables`` builds them from the results store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from genbench.reports import fmt
from genbench.reports.load import ReportInputs


@dataclass
class Cell:
    """One table cell: plain display text (renderers escape it), a sort key, marks."""

    text: str
    sort: float | str | None = None
    marks: tuple[str, ...] = ()

    @classmethod
    def text_of(cls, value: Any) -> Cell:
        """Plain text, sorted as text; a missing value shows as ``fmt.MISSING``."""
        text = fmt.MISSING if value is None or value == "" else str(value)
        return cls(text, text if text != fmt.MISSING else None)

    @classmethod
    def number(cls, text: str, value: Any, marks: tuple[str, ...] = ()) -> Cell:
        """``text`` sorted by the number ``value``; marks only when there is a value."""
        v = fmt.number(value)
        return cls(text, v, marks if v is not None else ())


@dataclass
class Column:
    """A column header; ``help`` explains it (HTML tooltip, markdown legend)."""

    header: str
    help: str = ""
    numeric: bool = False


@dataclass
class Table:
    """Columns, rows of cells and the notes that must be read with them."""

    columns: list[Column]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"reference": {"split": "train"}}`` -> ``{"reference.split": "train"}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt.short_hash(v)}" for k, v in values.items()) or "(none recorded)"


class Groups:
    """Assigns a short label to each distinct setting (a dict) in order of appearance:
    letters ``a, b, ...`` without a prefix, else ``<prefix>1, <prefix>2, ...``."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.labels: dict[str, str] = {}
        self.settings: dict[str, dict[str, Any]] = {}

    def label(self, setting: dict[str, Any]) -> str:
        key = json.dumps(setting, sort_keys=True, default=str)
        if key not in self.labels:
            n = len(self.labels)
            if self.prefix:
                name = f"{self.prefix}{n + 1}"
            else:
                name = chr(ord("a") + n % 26) + (str(n // 26) if n >= 26 else "")
            self.labels[key] = name
            self.settings[name] = setting
        return self.labels[key]

    @property
    def several(self) -> bool:
        return len(self.labels) > 1

    def marks(self, setting: dict[str, Any]) -> tuple[str, ...]:
        """The mark for ``setting`` when marks are needed (several settings), else none."""
        label = self.label(setting)
        return (label,) if self.several else ()

    def split(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """(settings shared by every group, per label the settings that differ)."""
        flat = {name: flatten(s) for name, s in self.settings.items()}
        keys = sorted({k for f in flat.values() for k in f})
        shared = {}
        for k in keys:
            values = {json.dumps(f.get(k, "(absent)"), default=str) for f in flat.values()}
            if len(values) == 1 and all(k in f for f in flat.values()):
                shared[k] = next(iter(flat.values()))[k]
        differing = {
            name: {k: f.get(k, "(absent)") for k in keys if k not in shared}
            for name, f in flat.items()
        }
        return shared, differing


@dataclass
class Report:
    """Every table and label of one report, built once and rendered as markdown or HTML."""

    inputs: ReportInputs
    labels: list[str]
    protocols: Groups
    timings: Groups
    results: Table
    repeats: Table | None
    speed: Table | None
    published: Table | None
    published_note: str
    published_figures: list[Any]
    generated: str
