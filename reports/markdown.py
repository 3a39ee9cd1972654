"""Markdown comparison tables, read from run directories (never from live objects)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.errors import GenbenchError

COLUMNS = [
    "run",
    "model",
    "generator",
    "train steps",
    "parameters",
    "NFE",
    "FID",
    "IS",
    "images/s",
    "train time",
    "device",
]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise GenbenchError(f"{path}: cannot read ({exc})") from None


def load_rows(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """One record per completed model in the given run directories."""
    rows = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not (run_dir / "run.json").is_file():
            raise GenbenchError(f"{run_dir}: not a genbench run directory (no run.json)")
        env = (
            _read_json(run_dir / "environment.json")
            if (run_dir / "environment.json").is_file()
            else {}
        )
        for metrics_path in sorted(run_dir.glob("*/metrics.json")):
            metrics = _read_json(metrics_path)
            timing_path = metrics_path.with_name("timing.json")
            timing = _read_json(timing_path) if timing_path.is_file() else {}
            rows.append({"run": run_dir.name, "env": env, "metrics": metrics, "timing": timing})
    return rows


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _count(n: int | None) -> str:
    if n is None:
        return "–"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _device(env: dict[str, Any], timing: dict[str, Any]) -> str:
    name = env.get("device_name") or timing.get("device") or "–"
    if str(env.get("device", "")).startswith("cpu") and env.get("torch_threads"):
        return f"{name} ({env['torch_threads']} threads)"
    return name


def _protocol_key(metrics: dict[str, Any]) -> str:
    return json.dumps(metrics.get("protocol", {}), sort_keys=True)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(value: Any) -> str:
    """Hashes shortened to 12 hex digits (enough to tell them apart in a footnote)."""
    text = str(value)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:12]
    return text


def render_markdown(run_dirs: list[Path]) -> str:
    """A GitHub-flavoured table of every model in ``run_dirs``, protocols footnoted."""
    rows = load_rows(run_dirs)
    if not rows:
        return "_no completed models in the given runs_\n"
    protocols: dict[str, str] = {}
    for row in rows:
        protocols.setdefault(_protocol_key(row["metrics"]), chr(ord("a") + len(protocols)))
    marked = len(protocols) > 1
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        m, t = row["metrics"], row["timing"]
        values = m.get("metrics", {})
        fid = values.get("fid", {}).get("value")
        is_ = values.get("is", {})
        mark = f" [{protocols[_protocol_key(m)]}]" if marked else ""
        is_text = _num(is_.get("value")) + (f" ± {_num(is_['std'])}" if "std" in is_ else "")
        cells = [
            row["run"],
            m.get("model", "–"),
            m.get("generator", "–"),
            str(m.get("train_steps", "–")),
            _count(m.get("parameters")),
            str(m.get("nfe", "–")),
            _num(fid) + mark,
            (is_text + mark) if is_ else "–",
            _num(t.get("images_per_s"), 1),
            _duration(m.get("train_time_s")),
            _device(row["env"], t),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for key, letter in protocols.items():
        proto = json.loads(key)
        desc = ", ".join(f"{k}={_short(v)}" for k, v in _flatten(proto).items())
        notes.append(f"{'[' + letter + '] ' if marked else ''}evaluation protocol: {desc}")
    if marked:
        notes.insert(
            0,
            "Values marked with different letters were measured under different "
            "evaluation protocols and are not directly comparable.",
        )
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"
