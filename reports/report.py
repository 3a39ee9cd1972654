"""Build a report from stored results and write it as markdown and/or self-contained HTML."""

from __future__ import annotations

import csv
import datetime as _dt
import io as stdio
from pathlib import Path

from genbench.core import io
from genbench.core.errors import GenbenchError
from genbench.reports.html import render_html
from genbench.reports.load import ReportInputs, load_inputs
from genbench.reports.markdown import markdown_report
from genbench.reports.model import Cell, Groups, Report, Table
from genbench.reports.plots import Plot, all_plots
from genbench.reports.published import (
    PublishedFigure,
    load_published,
    published_table,
    with_users_figures,
)
from genbench.reports.tables import model_labels, repeats_table, results_table, speed_table
from genbench.store import files
from genbench.store.records import RunStatus

# Where `bench speed` appends its history by default (relative to the working directory).
DEFAULT_HISTORY = Path("runs") / "speed_history.jsonl"


def build_report(inputs: ReportInputs, published: list[PublishedFigure] | None = None) -> Report:
    """Every table of the report, computed once for both output formats."""
    figures = load_published() if published is None else published
    labels = model_labels(inputs.models)
    protocols, timings = Groups(), Groups("t")
    results = results_table(inputs.models, labels, protocols, timings)
    pub, pub_note = published_table(figures, inputs.models)
    return Report(
        inputs=inputs,
        labels=labels,
        protocols=protocols,
        timings=timings,
        results=results,
        repeats=repeats_table(inputs.models, protocols, timings),
        speed=speed_table(inputs),
        published=pub,
        published_note=pub_note,
        published_figures=figures,
        generated=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def load_report(
    paths: list[Path], history: Path | None = None, published: list[Path] | None = None
) -> Report:
    """Read run/speed directories (and a speed history file) and build their report, with
    the user's published figures (``published``: TOML files) beside the shipped ones."""
    figures = with_users_figures(published) if published else None
    return build_report(load_inputs(paths, history), figures)


def write_run_reports(
    run_dir: Path, history: Path | None = None, status: RunStatus | None = None
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into a run directory (atomically).

    ``history`` is used when the file exists. An unreadable history file only removes the
    history plot (the report says why): it must not fail a run that has finished.
    ``status``: the run's status as the report should state it (the harness writes the
    reports of a complete run before it marks the run complete on disk).
    """
    history = history if history is not None and Path(history).is_file() else None
    inputs = load_inputs([run_dir])
    if status is not None:
        inputs.runs[0].status = status
    if history is not None:
        try:
            inputs.history, inputs.history_path = load_inputs([], history).history, history
        except GenbenchError as exc:
            inputs.history_error = str(exc)
    report = build_report(inputs)
    md = files.write_text(Path(run_dir) / "report.md", markdown_report(report))
    html = files.write_text(Path(run_dir) / "report.html", render_html(report))
    return md, html


FORMATS = ("md", "html", "both")
_SUFFIXES = {"md": (".md", ".markdown"), "html": (".html", ".htm")}
_NAMES = {"md": "report.md", "html": "report.html"}


def output_paths(fmt: str, out: Path | None) -> dict[str, Path]:
    """Where each format goes: ``{}`` means print markdown; checked before anything is read."""
    if fmt not in FORMATS:
        raise GenbenchError(f"--format: unknown format {fmt!r}; valid choices: md, html, both")
    if out is None:
        if fmt == "md":
            return {}
        raise GenbenchError(f"--format {fmt}: give --out PATH (a directory, or an .html file)")
    kinds = ["md", "html"] if fmt == "both" else [fmt]
    if fmt == "both" or out.is_dir() or (not out.exists() and not out.suffix):
        if out.exists() and not out.is_dir():
            raise GenbenchError(
                f"--out {out}: --format both writes report.md and report.html into a "
                "directory, but this is a file; give a directory"
            )
        return {kind: out / _NAMES[kind] for kind in kinds}
    if out.suffix.lower() not in _SUFFIXES[fmt]:
        raise GenbenchError(
            f"--out {out}: a {fmt} report is written to a file ending in "
            f"{_SUFFIXES[fmt][0]}, or into a directory; rename it"
        )
    return {fmt: out}


def resolve_history(history: Path | None) -> Path | None:
    """An explicit --history must exist; by default runs/speed_history.jsonl if present."""
    if history is not None:
        if not Path(history).is_file():
            raise GenbenchError(f"--history {history}: no such file")
        return Path(history)
    return DEFAULT_HISTORY if DEFAULT_HISTORY.is_file() else None


def emit_report(
    paths: list[Path],
    fmt: str = "md",
    out: Path | None = None,
    history: Path | None = None,
    published: list[Path] | None = None,
) -> str:
    """``bench report``: render and write; returns what to print (markdown or written paths).

    Every input is read and every output path checked before the first file is written,
    so a bad argument never leaves a half-written report behind.
    """
    targets = output_paths(fmt, out)
    report = load_report(paths, resolve_history(history), published)
    if not targets:
        return markdown_report(report, html_name=None)
    html_name = targets["html"].name if "html" in targets else None
    figures = all_plots(report) if "html" in targets else []
    rendered = {
        kind: markdown_report(report, html_name=html_name)
        if kind == "md"
        else render_html(report, figures)
        for kind in targets
    }
    written = []
    for kind, path in targets.items():
        written.append(files.write_text(path, rendered[kind]))
    first = next(iter(targets.values()))
    if report.inputs.runs:
        table = first.with_name(f"{first.stem}-results.csv")
        written.append(io.write_text_atomic(table, results_csv(report.results)))
    lines = [f"wrote {path}" for path in written]
    plots = [f for f in figures if isinstance(f, Plot)]
    if plots:
        folder = targets["html"].with_name(f"{targets['html'].stem}-figures")
        for plot in plots:
            io.write_bytes_atomic(folder / f"{plot.key}.png", plot.png)
            io.write_bytes_atomic(folder / f"{plot.key}.svg", plot.svg())
        lines.append(f"wrote {folder}/ ({len(plots)} figures, each as .png and .svg)")
    return "".join(f"{line}\n" for line in lines)


def results_csv(table: Table) -> str:
    """The results table as CSV for analysis: one header row, then the rows; numeric
    columns hold the numbers themselves (unrounded, no marks), others their full text (the
    run column: the whole run id)."""
    buffer = stdio.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(c.header for c in table.columns)
    for row in table.rows:
        writer.writerow(
            _csv_number(cell.sort) if column.numeric else _csv_text(cell)
            for column, cell in zip(table.columns, row, strict=True)
        )
    return buffer.getvalue()


def _csv_number(value: float | str | None) -> str:
    if value is None:
        return ""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def _csv_text(cell: Cell) -> str:
    # A text cell's sort key is its full value (the run column shows only the run's tag).
    return cell.sort if isinstance(cell.sort, str) else cell.text
