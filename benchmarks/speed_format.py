"""``bench speed``'s plain-text output: one row per result, and the baseline ratios."""

from __future__ import annotations

from typing import Any

from genbench.store.records import NOISY_ADVICE, NOISY_IQR_SHARE, SpeedResult


def _num(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _memory(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:.0f} MiB"


def _flops(r: SpeedResult) -> str:
    """Achieved GFLOP/s and its share of the machine's peak in the result's precision."""
    if r.gflops_per_s is None:
        return "–"
    share = "" if r.peak_fraction is None else f" ({100 * r.peak_fraction:.0f}%)"
    return f"{_num(r.gflops_per_s)}{share}"


def fast_label(r: Any) -> str:
    """The fast paths of a result (or a ``FastPaths``), e.g. ``bf16+NHWC+compile=default``;
    ``(--fast)`` when ``--fast`` chose them."""
    parts = [str(r.precision)]
    if r.channels_last:
        parts.append("NHWC")
    if r.compile not in (None, "none"):
        parts.append(f"compile={r.compile}")
    if r.cuda_graphs:
        parts.append("graphs")
    return "+".join(parts) + (" (--fast)" if getattr(r, "fast_choice", None) else "")


def fast_choices(records: list[SpeedResult]) -> list[str]:
    """One line per result whose fast paths ``--fast`` chose: what, from where, against
    which candidates."""
    lines = []
    for r in records:
        choice = r.fast_choice
        if choice is None:
            continue
        tried = []
        for c in choice.candidates:
            label = fast_label(c)
            if c.error:
                tried.append(f"{label} failed")
            elif not c.within_tolerance:
                tried.append(f"{label} off by {c.mean_abs_diff:.2g} > {c.tolerance:g}")
            else:
                tried.append(f"{label} {c.median_s:.3g} s")
        source = "from this machine's cache" if choice.cache == "hit" else "chosen now"
        lines.append(
            f"--fast: {r.model} batch {r.batch_size}: {fast_label(choice.paths)} ({source}; "
            f"tried {', '.join(tried)})"
        )
    return lines


def format_table(records: list[SpeedResult]) -> str:
    """A plain-text table: one row per result."""
    head = (
        "model",
        "batch",
        "steps",
        "NFE",
        "fast paths",
        "images/s",
        "median s (IQR)",
        "s/50k",
        "ms/NFE",
        "img-NFE/s",
        "GFLOP/s (peak)",
        "peak mem",
        "first image s",
        "noise",
    )
    rows = [head]
    for r in records:
        name = r.model + (f" [{r.generator}]" if r.baseline else "")
        noise = "–" if r.noise_share is None else f"{100 * r.noise_share:.1f}%"
        first = "–" if r.time_to_first_image_s is None else f"{r.time_to_first_image_s:.3g}"
        if r.compile_cache and first != "–":
            first += f" ({r.compile_cache})"
        rows.append(
            (
                name,
                str(r.batch_size),
                "default" if r.steps is None else str(r.steps),
                str(r.nfe),
                fast_label(r),
                _num(r.images_per_s),
                f"{r.median_s:.4g} ({r.iqr_s or 0:.2g})" + (" noisy" if r.noisy() else ""),
                _num(r.s_per_50k),
                "–" if r.ms_per_nfe is None else f"{r.ms_per_nfe:.3g}",
                _num(r.image_nfe_per_s),
                _flops(r),
                _memory(r.peak_memory_bytes),
                first,
                noise,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    noisy = sum(r.noisy() for r in records)
    if noisy:
        lines.append(
            f"{NOISY_ADVICE} ({noisy} of {len(records)} results spread more than "
            f"{100 * NOISY_IQR_SHARE:.0f}% of their median or ran on a machine loaded "
            "beyond their threads)"
        )
    return "\n".join(line.rstrip() for line in lines)


def speedups(records: list[SpeedResult]) -> list[str]:
    """One line per case measured with a baseline: our images/s over the baseline's."""
    lines = []
    for r in records:
        if r.baseline:
            continue
        for b in records:
            same = (b.model, b.batch_size, b.steps) == (r.model, r.batch_size, r.steps)
            if b.baseline and same:
                noisy = r.noisy() or b.noisy()
                lines.append(
                    f"{r.model} batch {r.batch_size} steps {r.steps}: "
                    f"{r.images_per_s / b.images_per_s:.2f}x the throughput of "
                    f"{b.generator} ({fast_label(r)} vs {fast_label(b)} eager)"
                    + (f" ({NOISY_ADVICE})" if noisy else "")
                )
    return lines


def format_train_table(records: list[SpeedResult]) -> str:
    """``bench speed --train``'s table: one row per model, batch size and loop."""
    head = ("model", "batch", "loop", "images/s", "median s (IQR)", "ms/image", "peak mem")
    rows = [head]
    for r in records:
        rows.append(
            (
                f"{r.model} [{r.generator}]",
                str(r.batch_size),
                r.baseline or "harness",
                _num(r.images_per_s),
                f"{r.median_s:.4g} ({r.iqr_s or 0:.2g})" + (" noisy" if r.noisy() else ""),
                f"{1000 * r.median_s / r.batch_size:.3g}",
                _memory(r.peak_memory_bytes),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def train_overhead(harness: SpeedResult, plain: SpeedResult) -> float:
    """The harness's training-step overhead over the plain loop: its median seconds over
    the plain loop's, minus 1 (0.05 = 5% slower; negative: faster)."""
    return harness.median_s / plain.median_s - 1.0


def train_overheads(records: list[SpeedResult]) -> list[str]:
    """One line per model and batch size timed with ``--train``: the harness's overhead."""
    lines = []
    for r in records:
        if r.task != "train" or r.baseline:
            continue
        for b in records:
            if (
                b.task == "train"
                and b.baseline
                and (b.model, b.batch_size)
                == (
                    r.model,
                    r.batch_size,
                )
            ):
                noisy = r.noisy() or b.noisy()
                over = train_overhead(r, b)
                lines.append(
                    f"{r.model} batch {r.batch_size}: the harness's training step is "
                    f"{100 * abs(over):.1f}% {'slower' if over >= 0 else 'faster'} than a "
                    "plain loop "
                    f"({_num(r.images_per_s)} vs {_num(b.images_per_s)} images/s)"
                    + (f" ({NOISY_ADVICE})" if noisy else "")
                )
    return lines
