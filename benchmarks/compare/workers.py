"""The driver's side of the per-revision workers (``genbench.benchmarks.speed_worker``):
start one per revision, speak JSON lines to it, interleave the two revisions' repeats, and
pool the samples of several worker pairs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import IO, Any

from genbench.benchmarks.compare.stats import case_key
from genbench.benchmarks.speed_worker import PROTOCOL
from genbench.benchmarks.timing import summarize
from genbench.core.errors import GenbenchError
from genbench.store.files import parse_record
from genbench.store.records import SpeedResult

# The worker must import only its revision's code. An editable install of genbench adds a
# meta-path finder that would fill any module the revision lacks from the installed
# checkout, so the bootstrap drops such finders before importing anything of ours. In a
# checkout the design card's folders (benchmarks/, generators/, ...) sit beside genbench/;
# appending the checkout to genbench.__path__ makes them its subpackages, as the installed
# package-dir mapping does. Revisions from before the genbench package import the old names.
BOOTSTRAP = """\
import os
import sys
sys.meta_path[:] = [
    f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")
]
if os.path.isfile(os.path.join("genbench", "__init__.py")):
    import genbench
    genbench.__path__.append(os.getcwd())
    from genbench.benchmarks.speed_worker import serve
else:
    from benchmarks.speed import serve
serve()
"""

_NO_WORKER = (
    "No module named 'benchmarks.speed'",
    "No module named 'genbench.benchmarks.speed_worker'",
    "cannot import name 'serve'",
    "No module named 'benchmarks'",
)


class WorkerGone(Exception):
    """A worker exited or could not start; ``log`` holds its stderr."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


def _clean_env() -> dict[str, str]:
    # The revision's own sources must win over any PYTHONPATH of the caller.
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


class Worker:
    """One revision's ``speed_worker.serve`` process, spoken to in JSON lines."""

    def __init__(self, label: str, source: Path, log: Path) -> None:
        self.label = label
        self.log_path = log
        self._log: IO[bytes] = open(log, "wb")  # noqa: SIM115 (closed in close())
        env = {**_clean_env(), "PYTHONPATH": str(source)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP],
            cwd=source,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def ask(self, **msg: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None  # pipes
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.proc.wait(timeout=30)
            raise WorkerGone(f"{self.label} worker exited", self.log_tail())
        reply = json.loads(line)
        if not reply.get("ok"):
            raise WorkerGone(f"{self.label}: {reply.get('error')}", self.log_tail())
        return reply

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            with suppress(WorkerGone):
                self.ask(op="quit")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def missing_worker(log: str) -> bool:
    """Whether a worker's log says its revision has no ``bench speed`` worker at all."""
    return any(s in log for s in _NO_WORKER)


def pair_cases(base: list[dict], head: list[dict]) -> list[tuple[int, int]]:
    """(base index, head index) of every case both revisions set up."""
    index = {json.dumps(k, sort_keys=True): i for i, k in enumerate(base)}
    pairs = []
    for j, k in enumerate(head):
        i = index.get(json.dumps(k, sort_keys=True))
        if i is not None:
            pairs.append((i, j))
    return pairs


def interleave(
    wb: Worker,
    wh: Worker,
    pairs: list[tuple[int, int]],
    repeats: int,
    log: Callable[[str], None],
    label: str = "1/1",
) -> None:
    """``repeats`` rounds; each round times every case once per revision, alternating
    which goes first (A B, then B A) so neither always runs on a warmer machine."""
    for r in range(repeats):
        for i, j in pairs:
            order = [(wb, i), (wh, j)]
            for worker, case in order if r % 2 == 0 else reversed(order):
                worker.ask(op="time", case=case, n=1)
    log(f"compare: session {label}: {repeats} rounds done")


Session = tuple[dict, dict, list[tuple[int, int]], list[dict], list[dict]]
"""(base setup, head setup, case pairs, base records, head records)."""


def session(
    sources: tuple[Path, Path],
    setup: dict[str, Any],
    rounds: int,
    tmp: Path,
    log: Callable[[str], None],
    label: str,
    base_label: str,
) -> str | Session:
    """One pair of fresh workers: set both up, time ``rounds`` interleaved rounds, finish.

    Returns why there is nothing to compare, or the ``Session``.
    """
    with ExitStack() as stack:
        wb = stack.enter_context(Worker("base", sources[0], tmp / "base.log"))
        try:
            hello = wb.ask(op="hello")
        except WorkerGone as exc:
            if missing_worker(exc.log):
                return f"base {base_label} has no bench speed worker"
            raise GenbenchError(f"bench compare: base worker failed: {exc.log}") from None
        if hello.get("protocol") != PROTOCOL:
            return f"base speaks worker protocol {hello.get('protocol')}, head {PROTOCOL}"
        log(f"compare: session {label}: building and warming up the base")
        try:
            base_setup = wb.ask(op="setup", **setup)
        except WorkerGone as exc:
            return f"base cannot run the spec ({exc})"
        if not base_setup["cases"]:
            return f"base can run none of the cases: {base_setup['skipped']}"
        wh = stack.enter_context(Worker("head", sources[1], tmp / "head.log"))
        log(f"compare: session {label}: building and warming up the head")
        try:
            head_setup = wh.ask(op="setup", **setup)
        except WorkerGone as exc:
            raise GenbenchError(f"bench compare: head failed: {exc}\n{exc.log}") from None
        if head_setup["skipped"]:
            raise GenbenchError(f"bench compare: head cannot run {head_setup['skipped']}")
        pairs = pair_cases(base_setup["cases"], head_setup["cases"])
        if not pairs:
            return "base and head share no case"
        try:
            interleave(wb, wh, pairs, rounds, log, label)
            base_records = wb.ask(op="finish")["records"]
            head_records = wh.ask(op="finish")["records"]
        except WorkerGone as exc:
            raise GenbenchError(f"bench compare: {exc}\n{exc.log}") from None
    return base_setup, head_setup, pairs, base_records, head_records


def pool(sessions: list[list[dict[str, Any]]], side: str) -> list[SpeedResult]:
    """One result per case with the raw samples of every session, summaries redone. The
    workers' records may come from an older revision: each is read as a ``SpeedResult``
    of its own schema version."""
    by_key: dict[tuple, SpeedResult] = {}
    for i, records in enumerate(sessions):
        for data in records:
            r = parse_record(data, SpeedResult, f"{side} worker {i + 1}")
            key = case_key(r)
            if key not in by_key:
                by_key[key] = r.model_copy(update={"raw_s": list(r.raw_s), "sessions": 1})
            else:
                seen = by_key[key]
                seen.raw_s = seen.raw_s + r.raw_s
                seen.sessions = (seen.sessions or 1) + 1
    pooled = []
    for r in by_key.values():
        update = summarize(r.raw_s, r.batch_size, int(r.nfe or 1))
        pooled.append(r.model_copy(update={**update, "repeats": len(r.raw_s)}))
    return pooled
