"""GitHub-flavoured markdown report: the comparison tables and the notes needed to read them.

Plots and sample grids live in the HTML report; the markdown one is for terminals, pull
requests and papers, so it is text only.
"""

from __future__ import annotations

from genbench.reports.model import Cell, Report, Table
from genbench.reports.tables import run_summary

READING_GUIDE = (
    "Each row is one model of one run. FID and KID compare generated images with real "
    "ones in the feature space of the evaluation network (lower is better); IS, precision "
    "and recall: higher is better. NFE is the number of network evaluations per generated "
    "image; images/s and s per 50k measure sampling speed, train time the training cost. "
    "Values are comparable only under the same evaluation protocol and timing setup: the "
    "notes below the table say which protocol each value was measured under."
)
DIGITS_NOTE = (
    "The digits data set is evaluated with genbench's small digits classifier, so these "
    "FID/IS values are only comparable with other digits runs, never with published "
    "CIFAR-10 figures."
)


def escape(text: str) -> str:
    """Keep a cell inside its table cell and free of raw HTML (GitHub renders inline HTML)."""
    return (
        text.replace("\\", "\\\\")
        .replace("|", "\\|")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("\r", " ")
        .replace("\n", " ")
    )


def _cell(cell: Cell) -> str:
    return escape(cell.text) + "".join(f" [{escape(m)}]" for m in cell.marks)


def table_markdown(table: Table) -> str:
    """The table and its notes (a bullet list under it)."""
    lines = [
        "| " + " | ".join(escape(c.header) for c in table.columns) + " |",
        "|" + "|".join("---:" if c.numeric else "---" for c in table.columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    if table.notes:
        lines.append("")
        lines += [f"- {escape(note)}" for note in table.notes]
    return "\n".join(lines)


def markdown_report(report: Report, html_name: str | None = "report.html") -> str:
    """The whole markdown report."""
    inputs = report.inputs
    parts = ["# genbench report", ""]
    sources = f"{len(inputs.runs)} run(s)"
    if inputs.speed:
        sources += f" and {len(inputs.speed)} speed measurement(s)"
    parts.append(f"Generated {report.generated} from {sources}.")
    parts.append("")
    parts += [f"- {escape(run_summary(run))}" for run in inputs.runs]
    parts += [f"- {escape(s.speed_id)}: `bench speed` results" for s in inputs.speed]
    if inputs.runs:
        parts += ["", "## Results", "", READING_GUIDE]
        if any(m.metrics.dataset == "digits" for m in inputs.models):
            parts += ["", DIGITS_NOTE]
        parts.append("")
        if inputs.models:
            parts.append(table_markdown(report.results))
        else:
            parts.append("_No model of these runs has finished yet._")
    if report.repeats is not None:
        parts += ["", "## Repeated runs", "", table_markdown(report.repeats)]
    if inputs.runs:
        parts += ["", "## Published figures (reported by their authors, not measured here)", ""]
        if report.published is not None:
            parts.append(table_markdown(report.published))
        if report.published_note:
            parts += ["", escape(report.published_note)]
    if report.speed is not None:
        parts += ["", "## Sampling speed (`bench speed`)", "", table_markdown(report.speed)]
    where = html_name or "`bench report --format html --out DIR` (HTML report)"
    parts += [
        "",
        "Plots (FID against sampling time with its Pareto front, FID against NFE, FID "
        "against training time, throughput, training losses, speed history), sample "
        f"grids and the diffusion models' denoising trajectories: {where}.",
    ]
    return "\n".join(parts).replace("\n\n\n", "\n\n") + "\n"
