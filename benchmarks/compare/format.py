"""``bench compare``'s text: a case on one line, and the table of comparisons."""

from __future__ import annotations

from typing import Any

from genbench.store.records import Comparison


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


def case_label(key: Any) -> str:
    """A case key (a dict of model, batch size, steps ...) as one short line."""
    if isinstance(key, dict):
        return ", ".join(f"{k}={v}" for k, v in key.items())
    return str(key)
