"""Separate processes for the kill and interrupt tests, started without re-importing torch.

A fresh ``python -m genbench`` spends about 10 s of a 2-core machine importing torch and
diffusers before it does anything, and the kill tests start a dozen of them. Here one
forkserver process imports genbench once; each test process is forked from it (before any
torch computation ran in it, so no thread pool crosses the fork) and runs the same entry
points a fresh interpreter would: ``genbench.cli.main`` or a test worker's ``main``. It is
a real process: SIGKILL and SIGINT reach it as they would reach ``bench``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(
    ["torch", "diffusers", "genbench.cli", "genbench.benchmarks.runner", "tests.resume_worker"]
)


def _child(
    target: Callable[..., Any],
    args: Sequence[Any],
    env: dict[str, str],
    cwd: str,
    err_path: str,
    threads: int | None,
) -> None:
    os.environ.clear()
    os.environ.update(env)  # this test's environment (its cache folder), not the server's
    os.chdir(cwd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(err, 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (the process's own stdio)
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    code = target(*args)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code or 0)


def _bench(argv: list[str]) -> int:
    from genbench.cli import main

    return main(argv)


class Spawned:
    """A started process: ``poll``, ``wait``, ``send_signal`` and its stderr, like Popen."""

    def __init__(
        self, target: Callable[..., Any], args: Sequence[Any], threads: int | None = None
    ) -> None:
        if threads is None:  # as many as this process uses, so that results compare
            import torch

            threads = torch.get_num_threads()
        fd, self._err = tempfile.mkstemp(suffix=".stderr")
        os.close(fd)
        self._proc = _CONTEXT.Process(
            target=_child,
            args=(target, list(args), dict(os.environ), os.getcwd(), self._err, threads),
        )
        self._proc.start()
        self.pid = self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self._proc.exitcode

    def wait(self) -> int:
        self._proc.join()
        assert self._proc.exitcode is not None
        return self._proc.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self._proc.pid, sig)

    def stderr(self) -> str:
        """What it wrote to stderr so far (all of it once it ended)."""
        return Path(self._err).read_text(errors="replace")


def bench(*argv: str) -> Spawned:
    """``bench ARGV...`` in its own process (see the module docstring)."""
    return Spawned(_bench, [list(argv)])


def call(target: Callable[..., Any], *args: Any, threads: int | None = None) -> Spawned:
    """``target(*args)`` in its own process, with ``threads`` torch threads if given."""
    return Spawned(target, args, threads)
