"""Published figures (``vendor/published.toml``) and when they may stand beside measured ones.

A published figure is shown only when some measured model used the same data set and the
same protocol facts that move FID the most: feature extractor, feature size, reference split
and number of generated images. It is always labelled as published, with its citation, the
FID implementation its authors used and whether genbench checked it against the source.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genbench.core.errors import GenbenchError
from genbench.reports import fmt
from genbench.reports.model import Cell, Column, Table
from genbench.store.runs import ModelResult


class PublishedProtocol(BaseModel):
    """How the authors measured the figure."""

    model_config = ConfigDict(extra="forbid")

    num_samples: int
    reference_split: str
    extractor: str
    feature_dim: int
    fid_implementation: str
    notes: str = ""


class PublishedFigure(BaseModel):
    """One published result with its citation and protocol."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str
    model: str
    generator: str | None = None
    dataset: str
    conditional: bool
    fid: float | tuple[float, float]
    is_: float | None = Field(default=None, alias="is")
    sampler: str = Field(min_length=1)
    nfe: int | Literal["not stated"]
    citation: str
    source: str
    verified: bool
    verification: str
    protocol: PublishedProtocol
    origin: str | None = Field(default=None, exclude=True)
    """The user's file it came from (``bench report --published``); None: shipped."""

    def fid_text(self) -> str:
        if isinstance(self.fid, tuple):
            return f"{self.fid[0]:.2f}–{self.fid[1]:.2f}"
        return f"{self.fid:.2f}"


class PublishedFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    figure: list[PublishedFigure]


def default_path() -> Path:
    """The shipped ``vendor/published.toml``."""
    return Path(str(resources.files("genbench.vendor") / "published.toml"))


def load_published(path: Path | None = None) -> list[PublishedFigure]:
    """Parse and validate the published figures; a malformed file is a one-line error."""
    path = path or default_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GenbenchError(f"{path}: cannot read published figures ({exc})") from None
    try:
        figures = PublishedFile.model_validate(data).figure
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise GenbenchError(f"{path}: {where}: {err['msg']}") from None
    ids = [f.id for f in figures]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise GenbenchError(f"{path}: duplicate figure id {duplicates[0]!r}")
    return figures


def with_users_figures(paths: list[Path]) -> list[PublishedFigure]:
    """The shipped figures plus those of the user's files (``bench report --published``),
    each validated as the shipped file is; an id used twice is a one-line error."""
    figures = load_published()
    seen = {f.id: "vendor/published.toml" for f in figures}
    for path in paths:
        if not Path(path).is_file():
            raise GenbenchError(f"--published {path}: no such file")
        for figure in load_published(Path(path)):
            if figure.id in seen:
                raise GenbenchError(
                    f"{path}: figure id {figure.id!r} is already used by {seen[figure.id]}; "
                    "give it another id"
                )
            seen[figure.id] = str(path)
            if figure.origin is None:
                figure = figure.model_copy(update={"origin": Path(path).name})
            figures.append(figure)
    return figures


def matches(figure: PublishedFigure, model: ModelResult) -> bool:
    """Same data set and same protocol facts (extractor, dims, reference split, samples)."""
    proto = model.metrics.protocol
    if proto is None:
        return False
    dims = proto.dims if proto.dims is not None else proto.feature_dim
    split = proto.reference.split if proto.reference is not None else None
    return (
        model.metrics.dataset == figure.dataset
        and proto.extractor == figure.protocol.extractor
        and dims == figure.protocol.feature_dim
        and split == figure.protocol.reference_split
        and proto.num_samples == figure.protocol.num_samples
    )


def published_table(
    figures: list[PublishedFigure], models: list[ModelResult]
) -> tuple[Table | None, str]:
    """The figures that match a measured model's protocol, and a note about the rest."""
    shown = matched(figures, models)
    hidden = len(figures) - len(shown)
    datasets = sorted({f.dataset for f in figures})
    note = ""
    if hidden:
        measured = sorted({str(m.metrics.dataset) for m in models}) or ["none"]
        note = (
            f"{hidden} published figure(s) in vendor/published.toml (data sets: "
            f"{', '.join(datasets)}) are not shown: their data set or protocol (feature "
            "extractor, feature size, reference split, sample count) differs from every "
            f"measured run here (data sets measured: {', '.join(measured)})."
        )
    if not shown:
        return None, note
    columns = [
        Column("model (published)"),
        Column("FID ↓", "as reported by the authors", numeric=True),
        Column("IS ↑", numeric=True),
        Column("sampler"),
        Column("NFE", numeric=True),
        Column("samples", numeric=True),
        Column("reference"),
        Column("FID implementation"),
        Column("notes"),
        Column("citation"),
        Column("checked", "whether genbench checked the number against its source"),
    ]
    rows = []
    for f in shown:
        low = f.fid[0] if isinstance(f.fid, tuple) else f.fid
        rows.append(
            [
                Cell(f"{f.model} [{f.origin}]" if f.origin else f.model, f.model),
                Cell(f.fid_text(), low),
                Cell(fmt.fixed(f.is_, 2), f.is_),
                Cell(f.sampler),
                Cell(str(f.nfe), f.nfe if isinstance(f.nfe, int) else None),
                Cell(f"{f.protocol.num_samples:,}", f.protocol.num_samples),
                Cell(f"{f.dataset} {f.protocol.reference_split}"),
                Cell(f.protocol.fid_implementation),
                Cell(f.protocol.notes or fmt.MISSING),
                Cell(f"{f.citation} ({f.source})"),
                Cell(
                    "yes" if f.verified else "NOT VERIFIED",
                    "yes" if f.verified else "no",
                ),
            ]
        )
    notes = [
        "Published figures are reported by the cited authors, not measured by genbench. "
        "They are listed because a measured run used the same data set, feature extractor, "
        "feature size, reference split and sample count; the FID implementation and other "
        "details may still differ (see the columns)."
    ]
    if any(f.origin for f in shown):
        notes.append(
            "Models marked [file] come from that file of the user's (bench report "
            "--published), not from genbench's vendor/published.toml."
        )
    notes += [f"{f.id}: {f.verification}" for f in shown if not f.verified]
    return Table(columns, rows, notes), note


def matched(figures: list[PublishedFigure], models: list[ModelResult]) -> list[PublishedFigure]:
    """The figures that may stand beside these measured models."""
    return [f for f in figures if any(matches(f, m) for m in models)]
