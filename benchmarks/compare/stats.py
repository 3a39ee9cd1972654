"""The regression rule of ``bench compare`` and the matching of results across two sides."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu

from genbench.benchmarks.compare.format import describe
from genbench.core.errors import GenbenchError
from genbench.store.records import Comparison, SpeedResult

THRESHOLD = 0.10
ALPHA = 0.002
KEY_FIELDS = (
    "task",
    "model",
    "batch_size",
    "steps",
    "precision",
    "channels_last",
    "compile",
    "cuda_graphs",
    "device",
)
"""What makes two results the same case (their raw samples are compared)."""


class Regression(GenbenchError):
    """HEAD is slower than BASE by the two-condition rule; ``bench`` exits with 1."""

    exit_code = 1


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
        key=key or {},
        base_median_s=float(np.median(base)),
        head_median_s=float(np.median(head)),
        ratio=ratio,
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        n_base=len(base),
        n_head=len(head),
        verdict=verdict,  # type: ignore[arg-type]  # one of the three
    )


def case_key(record: SpeedResult) -> tuple[str, ...]:
    """A hashable identity of a result's case (``KEY_FIELDS``)."""
    return tuple(json.dumps(getattr(record, k)) for k in KEY_FIELDS)


def case_fields(record: SpeedResult) -> dict[str, Any]:
    return {k: getattr(record, k) for k in KEY_FIELDS}


def compare_records(
    base: list[SpeedResult],
    head: list[SpeedResult],
    threshold: float = THRESHOLD,
    alpha: float = ALPHA,
) -> tuple[list[Comparison], list[str]]:
    """Match results by model, batch size, steps, fast paths and device; compare each.

    A model whose network changed between the two sides (another parameter count: an
    architecture change, not slower code) is different work: it is noted, not compared.
    Returns the comparisons and one note per result found on one side only or changed.
    """
    base_by = {case_key(r): r for r in base if not r.baseline}
    head_by = {case_key(r): r for r in head if not r.baseline}
    rows, notes = [], []
    for k, h in head_by.items():
        b = base_by.get(k)
        if b is None:
            notes.append(f"only in head (not compared): {describe(case_fields(h))}")
            continue
        if None not in (b.parameters, h.parameters) and b.parameters != h.parameters:
            notes.append(
                f"network changed (not compared): {describe(case_fields(h))}, "
                f"{b.parameters:,} -> {h.parameters:,} parameters"
            )
            continue
        rows.append(compare_samples(b.raw_s, h.raw_s, threshold, alpha, case_fields(h)))
    notes += [
        f"only in base (not compared): {describe(case_fields(r))}"
        for k, r in base_by.items()
        if k not in head_by
    ]
    return rows, notes
