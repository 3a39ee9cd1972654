"""The ``bench`` command line: thin typed commands over the library; errors become one line.

Usage errors (bad flags, bad spec keys or values, unknown names, missing files) print
``bench: error: ...`` lines and exit 2 without a traceback and without writing anything.
Each command module imports the library inside its commands, so ``bench --help`` and
``bench report`` never load torch or the generators.
"""

from __future__ import annotations

import sys
from typing import Annotated

import click
import typer

from genbench.cli import evaluate, report, run, speed
from genbench.core.allocator import keep_freed_memory
from genbench.core.errors import GenbenchError

app = typer.Typer(
    name="bench",
    help="Benchmark image generative models: train, sample, time, evaluate, report.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"bench (genbench) {version('genbench')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="print genbench's version and exit",
        ),
    ] = False,
) -> None:
    """Benchmark image generative models: train, sample, time, evaluate, report."""


app.command("run")(run.run_cmd)
app.command("resume")(run.resume_cmd)
app.command("list")(run.list_cmd)
app.command("env")(run.env_cmd)
app.command("report")(report.report_cmd)
app.command("eval")(evaluate.eval_cmd)
app.command("stats")(evaluate.stats_cmd)
app.command("eval-speed")(evaluate.eval_speed_cmd)
app.command("speed")(speed.speed_cmd)
app.command("compare")(speed.compare_cmd)


# Recent typer vendors its own click; accept either flavour of click's exceptions.
_EXIT = (typer.Exit, click.exceptions.Exit)
_ABORT = (typer.Abort, click.exceptions.Abort)
_USAGE = (getattr(typer, "TyperException", click.ClickException), click.ClickException)


INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def _say(text: str, label: str = "error: ") -> None:
    for line in text.splitlines() or [""]:
        typer.echo(f"bench: {label}{line}", err=True)


def _os_error(exc: OSError) -> str:
    """One line for a failed file operation: the path and what the system said."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bench`` console script; returns the exit status.

    The one place where exceptions become messages and exit codes: usage and input errors
    print one line per problem and return their code (2, or 1 for a regression or failed
    models), Ctrl-C returns 130, and failures of the system (a full disk, a read-only
    folder, memory) print one line instead of a traceback.
    """
    keep_freed_memory()  # CPU work runs up to 1.5x faster (see genbench.core.allocator)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="bench", standalone_mode=False)
    except _EXIT as exc:
        return getattr(exc, "exit_code", 0)
    except _ABORT:
        _say("aborted", label="")
        return INTERRUPTED
    except _USAGE as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `bench` or `bench stats` alone
            typer.echo(exc.format_message(), err=True)  # the help, as the user asked for it
            return 2
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _say(f"{exc.format_message()}{hint}")
        return getattr(exc, "exit_code", 2)
    except GenbenchError as exc:
        _say(str(exc), exc.label)
        return exc.exit_code
    except KeyboardInterrupt:
        _say("interrupted", label="")
        return INTERRUPTED
    except OSError as exc:
        _say(_os_error(exc))
        return 1
    except MemoryError:
        _say("out of memory; lower a batch size or the number of samples")
        return 1
    except RecursionError:
        _say("input nested too deeply to read")
        return 2
    if code == INTERRUPTED:  # typer turns a Ctrl-C outside a run into Exit(130) and returns it
        _say("interrupted", label="")
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
