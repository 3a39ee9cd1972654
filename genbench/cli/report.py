"""``bench report``: comparison reports of run and speed directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genbench.cli.options import History


def report_cmd(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN_DIR...",
            help="run directories (`bench run`) and/or speed directories (`bench speed`)",
        ),
    ],
    report_format: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="md|html|both",
            help="markdown tables, a self-contained HTML page with plots, or both",
        ),
    ] = "md",
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="a .md/.html file, or a directory that receives report.md/report.html "
            "(needed for html and both); without it markdown is printed",
        ),
    ] = None,
    history: History = None,
    published: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="FILE.toml",
            help="your own published figures, beside genbench's (vendor/published.toml's "
            "format; repeatable)",
        ),
    ] = None,
) -> None:
    """Compare every model of RUN_DIRS: markdown tables, or an HTML page with plots."""
    # Imported here, as in every command: the CLI loads a library module only when its
    # command runs (reports need no torch; `bench --help` needs nothing).
    from genbench.reports.report import emit_report

    typer.echo(emit_report(run_dirs, report_format, out, history, published), nl=False)
