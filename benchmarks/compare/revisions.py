"""Two revisions measured now and compared, or two stored results compared; the outcome
written as ``compare-<time>/`` (``base.json``, ``head.json``, ``compare.json``)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genbench.benchmarks.compare.format import case_label
from genbench.benchmarks.compare.git import (
    WORKTREE,
    repo_root,
    resolve_revision,
    same_code,
    source_of,
)
from genbench.benchmarks.compare.stats import ALPHA, THRESHOLD, compare_records
from genbench.benchmarks.compare.workers import pool, session
from genbench.store import files
from genbench.store.records import (
    CompareResult,
    Comparison,
    Environment,
    SpeedResult,
    SpeedRun,
)
from genbench.store.runs import load_speed

REPEATS = 20
"""Interleaved repeats per revision: with 20 a 30% slowdown is still caught when one repeat
in twenty is a 1.2-2x outlier (tests/test_compare.py); with 10 such outliers hide it half
the time, because p < 0.002 then needs the samples almost fully separated."""
SESSIONS = 4
"""Worker pairs the repeats are spread over: on the 2-core CI VM one pair of processes with
identical code differed by up to 14% for a whole run (p < 1e-4)."""


@dataclass
class RevisionOutcome:
    """What ``compare_revisions`` measured, or why it had nothing to compare."""

    base: str
    head: str
    skipped: str | None = None
    rows: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    base_results: list[SpeedResult] = field(default_factory=list)
    head_results: list[SpeedResult] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)


def load_results(path: Path) -> list[SpeedResult]:
    """The results of a ``speed.json`` or a directory holding one; a file that is not a
    ``bench speed`` result is a usage error."""
    return load_speed(Path(path)).run.results


def compare_revisions(
    base_rev: str,
    head_rev: str,
    setup: dict[str, Any],
    repeats: int,
    threshold: float = THRESHOLD,
    alpha: float = ALPHA,
    log: Callable[[str], None] = print,
    repo: Path | None = None,
    sessions: int = SESSIONS,
) -> RevisionOutcome:
    """Measure ``setup``'s cases at two revisions now, interleaved, and compare them.

    ``setup`` is the worker's setup request (spec path, models, device, batch sizes,
    steps, fast paths, warm-up). The ``repeats`` rounds are split over ``sessions`` pairs
    of fresh worker processes whose samples are pooled: one process can run a few percent
    faster or slower than another with identical code for its whole life (memory layout,
    core placement), an offset interleaving cannot cancel but several pairs average out.
    Skipped outcomes (a pass, with the reason) when base and head are the same code, when
    the base has no compatible worker (for example the commit before ``bench speed``
    existed) or can run none of the cases. Models the base cannot build (a generator new
    in head) are left out with a note.
    """
    repo = repo or repo_root()
    base, head = resolve_revision(repo, base_rev), resolve_revision(repo, head_rev)
    if same_code(repo, base, head):
        return RevisionOutcome(base, head, skipped="base and head are the same code")
    sessions = max(1, min(sessions, repeats))
    rounds = [repeats // sessions + (i < repeats % sessions) for i in range(sessions)]
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp_name:
        tmp = Path(tmp_name)
        sources = (source_of(repo, base, tmp, "base", log), source_of(repo, head, tmp, "head", log))
        pooled: tuple[list[list[dict]], list[list[dict]]] = ([], [])
        for i, n in enumerate(rounds):
            got = session(sources, setup, n, tmp, log, f"{i + 1}/{sessions}", base[:12])
            if isinstance(got, str):
                return RevisionOutcome(base, head, skipped=got)
            base_setup, head_setup, pairs, base_records, head_records = got
            pooled[0].append(base_records)
            pooled[1].append(head_records)
    base_results, head_results = pool(pooled[0], "base"), pool(pooled[1], "head")
    for results, rev in ((base_results, base), (head_results, head)):
        for r in results:  # an export is no git checkout: name its commit here
            r.commit = r.commit if rev == WORKTREE else rev
    rows, notes = compare_records(base_results, head_results, threshold, alpha)
    notes += [f"base cannot build {m}: {why}" for m, why in base_setup["skipped"].items()]
    paired_head = {j for _, j in pairs}
    notes += [
        f"not compared, new in head: {case_label(case)}"
        for j, case in enumerate(head_setup["cases"])
        if j not in paired_head and case.get("model") not in base_setup["skipped"]
    ]
    paired_base = {i for i, _ in pairs}
    notes += [
        f"not compared, gone from head: {case_label(case)}"
        for i, case in enumerate(base_setup["cases"])
        if i not in paired_base
    ]
    return RevisionOutcome(
        base,
        head,
        rows=rows,
        notes=notes,
        base_results=base_results,
        head_results=head_results,
        environment=head_setup["environment"],
    )


def write_outcome(out_dir: Path, outcome: RevisionOutcome) -> Path:
    """``OUT/compare-<stamp>/``: base.json and head.json (speed.json format), compare.json."""
    where = files.new_run_dir(out_dir, "compare")
    env = files.parse_record(outcome.environment, Environment, "the head worker's environment")
    for side, results in (("base", outcome.base_results), ("head", outcome.head_results)):
        doc = SpeedRun(revision=getattr(outcome, side), environment=env, results=results)
        files.write_record(where / f"{side}.json", doc)
    result = CompareResult(
        base=outcome.base, head=outcome.head, rows=outcome.rows, notes=outcome.notes
    )
    files.write_record(where / "compare.json", result)
    return where
