"""``bench compare``: is HEAD slower than BASE? Two conditions, as airspeed velocity decides.

A case regresses only when both hold:

1. the ratio of medians, head / base seconds per call, exceeds ``1 + threshold``
   (default 10%), and
2. a two-sided Mann-Whitney U test on the raw per-repeat samples rejects "same
   distribution" at ``alpha`` (default 0.002).

A single noisy repeat can move neither a median nor a rank test much, which is what makes
this safe to gate CI on. The table shows each ratio with a 95% bootstrap confidence
interval. BASE and HEAD are either two result files (``speed.json`` or a directory holding
one) or two git revisions measured now: each revision is exported with ``git archive`` and
runs its own ``benchmarks.speed.serve`` worker, and the two are timed interleaved
(A B B A A B ...), one repeat per turn, so drift of the machine hits both alike; the
rounds are spread over several pairs of fresh worker processes (``SESSIONS``), so that a
process that happens to run slower for its whole life weighs on neither side.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from genbench.core import io as store
from genbench.core.errors import GenbenchError

THRESHOLD = 0.10
ALPHA = 0.002
# Interleaved repeats per revision: with 20 a 30% slowdown is still caught when one repeat in
# twenty is a 1.2-2x outlier (tests/test_compare.py); with 10 such outliers hide it half the
# time, because p < 0.002 then needs the samples almost fully separated.
REPEATS = 20
# Worker pairs the repeats are spread over (see compare_revisions): on the 2-core CI VM one
# pair of processes with identical code differed by up to 14% for a whole run (p < 1e-4).
SESSIONS = 4
WORKTREE = "."  # the working tree as it is, uncommitted changes included
KEY_FIELDS = (
    "model",
    "batch_size",
    "steps",
    "precision",
    "channels_last",
    "compile",
    "cuda_graphs",
    "device",
)


class Regression(GenbenchError):
    """HEAD is slower than BASE by the two-condition rule; ``bench`` exits with 1."""

    exit_code = 1


@dataclass
class Comparison:
    """One case of BASE against HEAD."""

    key: dict[str, Any]
    base_median_s: float
    head_median_s: float
    ratio: float  # head / base median seconds: > 1 is slower
    ci_low: float
    ci_high: float
    p_value: float
    n_base: int
    n_head: int
    verdict: str  # "regression", "improvement" or "unchanged"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio_ci(
    base: list[float], head: list[float], level: float = 0.95, resamples: int = 2000
) -> tuple[float, float]:
    """Percentile bootstrap interval of median(head) / median(base) (fixed seed)."""
    rng = np.random.default_rng(0)
    b, h = np.asarray(base, dtype=float), np.asarray(head, dtype=float)
    mb = np.median(b[rng.integers(0, len(b), (resamples, len(b)))], axis=1)
    mh = np.median(h[rng.integers(0, len(h), (resamples, len(h)))], axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(mh / mb, [tail, 100 - tail])
    return float(lo), float(hi)


def decide(
    base: list[float], head: list[float], threshold: float = THRESHOLD, alpha: float = ALPHA
) -> tuple[float, float, str]:
    """The two-condition rule on raw seconds: (median ratio head / base, p-value, verdict)."""
    from scipy.stats import mannwhitneyu

    if not base or not head:
        raise GenbenchError("bench compare: a result has no raw samples (raw_s is empty)")
    ratio = float(np.median(head) / np.median(base))
    p = float(mannwhitneyu(head, base, alternative="two-sided").pvalue)
    if p < alpha and ratio > 1 + threshold:
        return ratio, p, "regression"
    if p < alpha and ratio < 1 / (1 + threshold):
        return ratio, p, "improvement"
    return ratio, p, "unchanged"


def compare_samples(
    base: list[float],
    head: list[float],
    threshold: float = THRESHOLD,
    alpha: float = ALPHA,
    key: dict[str, Any] | None = None,
) -> Comparison:
    """``decide`` plus medians, sample counts and the ratio's 95% confidence interval."""
    ratio, p, verdict = decide(base, head, threshold, alpha)
    lo, hi = ratio_ci(base, head)
    return Comparison(
        key or {},
        float(np.median(base)),
        float(np.median(head)),
        ratio,
        lo,
        hi,
        p,
        len(base),
        len(head),
        verdict,
    )


def _key(record: dict[str, Any]) -> tuple:
    return tuple(json.dumps(record.get(k)) for k in KEY_FIELDS)


def compare_records(
    base: list[dict[str, Any]],
    head: list[dict[str, Any]],
    threshold: float = THRESHOLD,
    alpha: float = ALPHA,
) -> tuple[list[Comparison], list[str]]:
    """Match results by model, batch size, steps, fast paths and device; compare each.

    Returns the comparisons and one note per result found on one side only.
    """
    base_by = {_key(r): r for r in base if not r.get("baseline")}
    head_by = {_key(r): r for r in head if not r.get("baseline")}
    rows, notes = [], []
    for k, h in head_by.items():
        b = base_by.get(k)
        label = {f: h.get(f) for f in KEY_FIELDS}
        if b is None:
            notes.append(f"only in head (not compared): {describe(label)}")
            continue
        rows.append(compare_samples(b["raw_s"], h["raw_s"], threshold, alpha, label))
    notes += [
        f"only in base (not compared): {describe({f: r.get(f) for f in KEY_FIELDS})}"
        for k, r in base_by.items()
        if k not in head_by
    ]
    return rows, notes


def describe(key: dict[str, Any]) -> str:
    """One line naming a case: model, batch, steps, fast paths, device."""
    steps = "default" if key.get("steps") is None else key["steps"]
    fast = [str(key.get("precision"))]
    fast += ["NHWC"] if key.get("channels_last") else []
    fast += [f"compile={key['compile']}"] if key.get("compile") not in (None, "none") else []
    fast += ["graphs"] if key.get("cuda_graphs") else []
    return (
        f"{key.get('model')} batch {key.get('batch_size')} steps {steps} "
        f"{'+'.join(fast)} {key.get('device')}"
    )


def format_comparisons(rows: list[Comparison], threshold: float, alpha: float) -> str:
    """The table: medians, ratio with its 95% CI, p-value, verdict; then the rule."""
    head = ("case", "base median s", "head median s", "ratio [95% CI]", "p", "verdict")
    lines = [head]
    for r in rows:
        lines.append(
            (
                describe(r.key),
                f"{r.base_median_s:.4g}",
                f"{r.head_median_s:.4g}",
                f"{r.ratio:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]",
                f"{r.p_value:.2g}",
                r.verdict.upper() if r.verdict == "regression" else r.verdict,
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    rule = (
        f"rule: a regression needs median ratio > {1 + threshold:.2f} and Mann-Whitney U "
        f"p < {alpha:g} (two-sided); ratio = head / base seconds per call"
    )
    return "\n".join([*(t.rstrip() for t in text), rule])


# --------------------------------------------------------------------------- result files


def load_results(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(environment, results) of a ``speed.json`` or a directory holding one."""
    path = Path(path)
    file = path / "speed.json" if path.is_dir() else path
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise GenbenchError(f"{path}: not a readable bench speed result ({exc})") from None
    if not isinstance(doc, dict) or doc.get("kind") != "speed":
        raise GenbenchError(f"{path}: not a bench speed result (speed.json, kind 'speed')")
    return doc.get("environment", {}), list(doc.get("results", []))


# --------------------------------------------------------------------------- revisions


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def repo_root(where: Path | None = None) -> Path:
    """The top of the git checkout containing ``where`` (default: the current directory)."""
    top = _git(where or Path.cwd(), "rev-parse", "--show-toplevel")
    if top is None:
        raise GenbenchError(
            "bench compare: comparing revisions needs a git checkout; run it inside one or "
            "give two speed.json files"
        )
    return Path(top)


def default_base(repo: Path) -> str | None:
    """The merge base of HEAD with origin/main; on main itself (the merge base is HEAD) or
    without that remote, HEAD's parent. None when HEAD has no parent."""
    head = _git(repo, "rev-parse", "HEAD")
    merge_base = _git(repo, "merge-base", "HEAD", "origin/main")
    if merge_base and merge_base != head:
        return merge_base
    return _git(repo, "rev-parse", "--verify", "--quiet", "HEAD~1^{commit}")


def resolve_revision(repo: Path, rev: str) -> str:
    """The commit ``rev`` names, or ``WORKTREE``; an unknown revision is a usage error."""
    if rev == WORKTREE:
        return WORKTREE
    sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if sha is None:
        raise GenbenchError(f"bench compare: {rev!r} is not a git revision of {repo}")
    return sha


def export_revision(repo: Path, sha: str, dest: Path) -> Path:
    """The tracked files of ``sha`` under ``dest`` (``git archive``; the repo is untouched)."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["git", "-C", str(repo), "archive", "--format=tar", sha],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        tar.extractall(dest, filter="data")
    if proc.wait() != 0:
        raise GenbenchError(f"bench compare: git archive of {sha} failed")
    return dest


# The worker must import only its revision's code. An editable install of genbench adds a
# meta-path finder that would fill any module the revision lacks from the installed
# checkout, so the bootstrap drops such finders before importing anything of ours. In a
# checkout the design card's folders (benchmarks/, generators/, ...) sit beside genbench/;
# appending the checkout to genbench.__path__ makes them its subpackages, as the installed
# package-dir mapping does. Revisions from before the genbench package import the old names.
_BOOTSTRAP = """\
import os
import sys
sys.meta_path[:] = [
    f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")
]
if os.path.isfile(os.path.join("genbench", "__init__.py")):
    import genbench
    genbench.__path__.append(os.getcwd())
    from genbench.benchmarks.speed import serve
else:
    from benchmarks.speed import serve
serve()
"""


class WorkerGone(Exception):
    """A worker exited or could not start; ``log`` holds its stderr."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


class Worker:
    """One revision's ``benchmarks.speed.serve`` process, spoken to in JSON lines."""

    def __init__(self, label: str, source: Path, log: Path) -> None:
        self.label = label
        self.log_path = log
        self._log: IO[bytes] = open(log, "wb")  # noqa: SIM115 (closed in close())
        env = {**_clean_env(), "PYTHONPATH": str(source)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP],
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
        assert self.proc.stdin is not None and self.proc.stdout is not None
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


def _clean_env() -> dict[str, str]:
    import os

    # The revision's own sources must win over any PYTHONPATH of the caller.
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _missing_worker(log: str) -> bool:
    return any(
        s in log
        for s in (
            "No module named 'benchmarks.speed'",
            "No module named 'genbench.benchmarks.speed'",
            "cannot import name 'serve'",
            "No module named 'benchmarks'",
        )
    )


@dataclass
class RevisionOutcome:
    """What ``compare_revisions`` measured, or why it had nothing to compare."""

    base: str
    head: str
    skipped: str | None = None
    rows: list[Comparison] | None = None
    notes: list[str] | None = None
    base_results: list[dict[str, Any]] | None = None
    head_results: list[dict[str, Any]] | None = None
    environment: dict[str, Any] | None = None


def _source(repo: Path, rev: str, tmp: Path, label: str, log: Callable[[str], None]) -> Path:
    """Where ``rev``'s code is: the checkout itself for the working tree (or a clean HEAD),
    else an export of the commit."""
    dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    if rev == WORKTREE or (rev == _git(repo, "rev-parse", "HEAD") and not dirty):
        return repo
    log(f"compare: exporting {label} {rev[:12]} (git archive)")
    return export_revision(repo, rev, tmp / label)


def _same_code(repo: Path, base: str, head: str) -> bool:
    dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    head_commit = _git(repo, "rev-parse", "HEAD")
    as_commit = {
        rev: (head_commit if rev == WORKTREE and not dirty else rev) for rev in (base, head)
    }
    return as_commit[base] == as_commit[head]


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
    if _same_code(repo, base, head):
        return RevisionOutcome(base, head, skipped="base and head are the same code")
    sessions = max(1, min(sessions, repeats))
    rounds = [repeats // sessions + (i < repeats % sessions) for i in range(sessions)]
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp_name:
        tmp = Path(tmp_name)
        sources = (_source(repo, base, tmp, "base", log), _source(repo, head, tmp, "head", log))
        pooled: tuple[list[dict], list[dict]] = ([], [])
        for i, n in enumerate(rounds):
            got = _session(sources, setup, n, tmp, log, f"{i + 1}/{sessions}", base[:12])
            if isinstance(got, str):
                return RevisionOutcome(base, head, skipped=got)
            base_setup, head_setup, pairs, base_records, head_records = got
            pooled[0].append(base_records)
            pooled[1].append(head_records)
    base_records, head_records = _pool(pooled[0]), _pool(pooled[1])
    for records, rev in ((base_records, base), (head_records, head)):
        for r in records:  # an export is no git checkout: name its commit here
            r["commit"] = r["commit"] if rev == WORKTREE else rev
    rows, notes = compare_records(base_records, head_records, threshold, alpha)
    notes += [f"base cannot build {m}: {why}" for m, why in base_setup["skipped"].items()]
    paired_head = {j for _, j in pairs}
    notes += [
        f"not compared, new in head: {_case_label(case)}"
        for j, case in enumerate(head_setup["cases"])
        if j not in paired_head and case.get("model") not in base_setup["skipped"]
    ]
    paired_base = {i for i, _ in pairs}
    notes += [
        f"not compared, gone from head: {_case_label(case)}"
        for i, case in enumerate(base_setup["cases"])
        if i not in paired_base
    ]
    return RevisionOutcome(
        base,
        head,
        rows=rows,
        notes=notes,
        base_results=base_records,
        head_results=head_records,
        environment=head_setup["environment"],
    )


def _session(
    sources: tuple[Path, Path],
    setup: dict[str, Any],
    rounds: int,
    tmp: Path,
    log: Callable[[str], None],
    label: str,
    base_label: str,
) -> str | tuple[dict, dict, list[tuple[int, int]], list[dict], list[dict]]:
    """One pair of fresh workers: set both up, time ``rounds`` interleaved rounds, finish.

    Returns why there is nothing to compare, or (base setup, head setup, case pairs,
    base records, head records).
    """
    with ExitStack() as stack:
        wb = stack.enter_context(Worker("base", sources[0], tmp / "base.log"))
        try:
            hello = wb.ask(op="hello")
        except WorkerGone as exc:
            if _missing_worker(exc.log):
                return f"base {base_label} has no bench speed worker"
            raise GenbenchError(f"bench compare: base worker failed: {exc.log}") from None
        if hello.get("protocol") != _protocol():
            return f"base speaks worker protocol {hello.get('protocol')}, head {_protocol()}"
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
        pairs = _pair_cases(base_setup["cases"], head_setup["cases"])
        if not pairs:
            return "base and head share no case"
        try:
            _interleave(wb, wh, pairs, rounds, log, label)
            base_records = wb.ask(op="finish")["records"]
            head_records = wh.ask(op="finish")["records"]
        except WorkerGone as exc:
            raise GenbenchError(f"bench compare: {exc}\n{exc.log}") from None
    return base_setup, head_setup, pairs, base_records, head_records


def _pool(sessions: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One record per case with the raw samples of every session and summaries redone."""
    from genbench.benchmarks.timing import summarize

    by_key: dict[tuple, dict[str, Any]] = {}
    for records in sessions:
        for r in records:
            key = _key(r)
            if key not in by_key:
                by_key[key] = {**r, "raw_s": list(r["raw_s"]), "sessions": 1}
            else:
                by_key[key]["raw_s"] += r["raw_s"]
                by_key[key]["sessions"] += 1
    for r in by_key.values():
        r.update(summarize(r["raw_s"], r["batch_size"], int(r.get("nfe") or 1)))
    return list(by_key.values())


def _protocol() -> int:
    from genbench.benchmarks.speed import PROTOCOL

    return PROTOCOL


def _case_label(key: Any) -> str:
    """A case key (a dict of model, batch size, steps ...) as one short line."""
    if isinstance(key, dict):
        return ", ".join(f"{k}={v}" for k, v in key.items())
    return str(key)


def _pair_cases(base: list[dict], head: list[dict]) -> list[tuple[int, int]]:
    index = {json.dumps(k, sort_keys=True): i for i, k in enumerate(base)}
    pairs = []
    for j, k in enumerate(head):
        i = index.get(json.dumps(k, sort_keys=True))
        if i is not None:
            pairs.append((i, j))
    return pairs


def _interleave(
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


def write_outcome(out_dir: Path, outcome: RevisionOutcome) -> Path:
    """``OUT/compare-<stamp>/``: base.json and head.json (speed.json format), compare.json."""
    where = store.new_run_dir(out_dir, "compare")
    for side, results in (("base", outcome.base_results), ("head", outcome.head_results)):
        store.write_json_atomic(
            where / f"{side}.json",
            {
                "kind": "speed",
                "revision": getattr(outcome, side),
                "environment": outcome.environment or {},
                "results": results or [],
            },
        )
    store.write_json_atomic(
        where / "compare.json",
        {
            "base": outcome.base,
            "head": outcome.head,
            "rows": [r.to_dict() for r in outcome.rows or []],
            "notes": outcome.notes or [],
        },
    )
    return where
