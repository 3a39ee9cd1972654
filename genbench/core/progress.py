"""Progress bars for long work (training, sampling, feature extraction), all alike, on
stderr: stdout keeps only results, for pipes and scripts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

_shown = True


def show_progress(shown: bool) -> None:
    """Show (or hide) every progress bar of this process: under several processes only
    rank 0 draws them, so one terminal shows one set of bars."""
    global _shown
    _shown = shown


def progress_bar(shown: bool = True) -> Progress:
    """A rich progress display: description, bar, done/total, time left and a status text
    (each task must be added with a ``status`` field); ``shown=False``: a silent one (work
    inside another bar's task, which reports it in its status)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        transient=False,
        console=Console(stderr=True),
        disable=not (_shown and shown),
    )


@contextmanager
def counting(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A one-task progress bar; yields ``advance(n)``, to be called as n more items are done
    (the ``on_batch`` callbacks of ``eval``)."""
    with progress_bar() as bar:
        task = bar.add_task(description, total=total, status="")
        yield lambda n: bar.advance(task, n)
