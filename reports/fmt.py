"""Number formatting shared by the markdown and HTML reports (plain text, never escaped here).

Missing values print as an en dash, never as 0 or "N/A", so an absent metric cannot be
mistaken for a measured one.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "–"


def number(value: Any) -> float | None:
    """``value`` as a finite float, else None (absent keys, strings, NaN, infinities)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def fixed(value: Any, digits: int = 2) -> str:
    """Fixed decimals with thousands separators: ``fixed(1234.5, 1) == "1,234.5"``."""
    v = number(value)
    return MISSING if v is None else f"{v:,.{digits}f}"


def sig(value: Any, digits: int = 3) -> str:
    """Round to ``digits`` significant figures: 24927.3 -> "24,900", 0.012345 -> "0.0123".

    Timing noise is a few percent, so more figures than three would only suggest precision
    the measurement does not have.
    """
    v = number(value)
    if v is None:
        return MISSING
    if v == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(v)))
    decimals = max(0, digits - 1 - magnitude)
    rounded = round(v, -magnitude + digits - 1)
    return f"{rounded:,.{decimals}f}"


def count(n: Any) -> str:
    """Parameter counts: 950 -> "950", 99008 -> "99.0k", 35_700_000 -> "35.70M"."""
    v = number(n)
    if v is None:
        return MISSING
    if v >= 1e9:
        return f"{v / 1e9:.2f}B"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return str(int(v))


def duration(seconds: Any) -> str:
    """A time span in the unit a reader expects: s, min, h or days."""
    v = number(seconds)
    if v is None:
        return MISSING
    if v < 1:
        return f"{v * 1000:.0f} ms" if v >= 0.001 else f"{v * 1000:.2f} ms"
    if v < 120:
        return f"{v:.1f} s"
    if v < 7200:
        return f"{v / 60:.1f} min"
    if v < 172_800:
        return f"{v / 3600:.1f} h"
    return f"{v / 86_400:.1f} days"


def memory(n_bytes: Any) -> str:
    """Bytes in binary units: 912388096 -> "870 MiB"."""
    v = number(n_bytes)
    if v is None:
        return MISSING
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if v >= size:
            value = v / size
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{v:.0f} B"


def with_spread(value: Any, spread: Any, digits: int) -> str:
    """``value ± spread`` (both fixed to ``digits``); just the value when spread is absent."""
    text = fixed(value, digits)
    if text == MISSING or number(spread) is None:
        return text
    return f"{text} ± {fixed(spread, digits)}"


def short_hash(value: Any) -> str:
    """sha256 hex digests shortened to 12 digits (enough to tell them apart in a note)."""
    text = str(value)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:12]
    return text
