"""The report's tables as data (cells with display text, sort keys and footnote marks).

Markdown and HTML render the same ``Table`` objects, so both say the same thing. Protocol
honesty lives here: every quality value is tagged with its evaluation protocol (the stored
protocol minus the seed range, plus the device) and every speed value with its timing setup
(device, batch size, precision). When a column would mix values from different protocols or
setups, each such value carries a mark (quality ``[a]``, ``[b]``; run speed ``[t1]``,
``[t2]``; ``bench speed`` devices ``[d1]``, ``[d2]``) and a note says exactly what differs.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from genbench.reports import fmt
from genbench.reports.load import ModelResult, ReportInputs, RunInfo

# Protocol keys that identify *which* images were drawn, not *how* they were measured:
# runs that differ only in these are comparable (and repeats of one another).
NON_PROTOCOL_KEYS = ("seeds",)


@dataclass
class Cell:
    """One table cell: plain display text (renderers escape it), a sort key, marks."""

    text: str
    sort: float | str | None = None
    marks: tuple[str, ...] = ()


@dataclass
class Column:
    """A column header; ``help`` explains it (HTML tooltip, markdown legend)."""

    header: str
    help: str = ""
    numeric: bool = False


@dataclass
class Table:
    """Columns, rows of cells and the notes that must be read with them."""

    columns: list[Column]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)


def _text(value: Any) -> Cell:
    text = fmt.MISSING if value is None or value == "" else str(value)
    return Cell(text, text if text != fmt.MISSING else None)


def _num(text: str, value: Any, marks: Iterable[str] = ()) -> Cell:
    v = fmt.number(value)
    marks = tuple(marks) if v is not None else ()
    return Cell(text, v, marks)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"reference": {"split": "train"}}`` -> ``{"reference.split": "train"}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt.short_hash(v)}" for k, v in values.items()) or "(none recorded)"


class Groups:
    """Assigns a short label to each distinct setting (a dict) in order of appearance:
    letters ``a, b, ...`` without a prefix, else ``<prefix>1, <prefix>2, ...``."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.labels: dict[str, str] = {}
        self.settings: dict[str, dict[str, Any]] = {}

    def label(self, setting: dict[str, Any]) -> str:
        key = json.dumps(setting, sort_keys=True, default=str)
        if key not in self.labels:
            n = len(self.labels)
            if self.prefix:
                name = f"{self.prefix}{n + 1}"
            else:
                name = chr(ord("a") + n % 26) + (str(n // 26) if n >= 26 else "")
            self.labels[key] = name
            self.settings[name] = setting
        return self.labels[key]

    @property
    def several(self) -> bool:
        return len(self.labels) > 1

    def marks(self, setting: dict[str, Any]) -> tuple[str, ...]:
        """The mark for ``setting`` when marks are needed (several settings), else none."""
        label = self.label(setting)
        return (label,) if self.several else ()

    def split(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """(settings shared by every group, per label the settings that differ)."""
        flat = {name: flatten(s) for name, s in self.settings.items()}
        keys = sorted({k for f in flat.values() for k in f})
        shared = {}
        for k in keys:
            values = {json.dumps(f.get(k, "(absent)"), default=str) for f in flat.values()}
            if len(values) == 1 and all(k in f for f in flat.values()):
                shared[k] = next(iter(flat.values()))[k]
        differing = {
            name: {k: f.get(k, "(absent)") for k in keys if k not in shared}
            for name, f in flat.items()
        }
        return shared, differing


# --------------------------------------------------------------------------- settings


def protocol_setting(model: ModelResult) -> dict[str, Any]:
    """The comparability key of a model's quality values: its protocol minus the seeds, plus
    the device it ran on (float arithmetic, and so the last digits of FID, differs by
    device; thread counts do not matter here, so the bare device name)."""
    setting = {k: v for k, v in model.protocol.items() if k not in NON_PROTOCOL_KEYS}
    env = model.run.env
    setting["measured_on"] = env.get("device_name") or env.get("device") or fmt.MISSING
    return setting


def device_label(env: dict[str, Any], fallback: str | None = None) -> str:
    """What the numbers were measured on, as a reader would name it."""
    name = env.get("device_name") or env.get("device") or fallback or fmt.MISSING
    if str(env.get("device", "")).startswith("cpu") and env.get("torch_threads"):
        name = f"{name} ({env['torch_threads']} threads)"
    world = env.get("world_size")
    if isinstance(world, int) and world > 1:
        name = f"{name} x {world} processes"
    return str(name)


def timing_setting(model: ModelResult) -> dict[str, Any]:
    """What a speed number depends on besides the model: device, batch size, precision."""
    t = model.timing
    return {
        "device": device_label(model.run.env, t.get("device")),
        "batch_size": t.get("batch_size"),
        "precision": t.get("precision"),
    }


def model_labels(models: list[ModelResult]) -> list[str]:
    """Unique display names: the model name, plus ``@<run tag>`` where names repeat."""
    counts: dict[str, int] = {}
    for m in models:
        counts[m.name] = counts.get(m.name, 0) + 1
    labels = []
    for m in models:
        tag = m.run.run_id.rsplit("-", 1)[-1]
        labels.append(m.name if counts[m.name] == 1 else f"{m.name} @{tag}")
    return labels


def _iqr_percent(timing: dict[str, Any]) -> float | None:
    median, iqr = fmt.number(timing.get("median_s")), fmt.number(timing.get("iqr_s"))
    if median is None or iqr is None or median <= 0:
        return None
    return 100.0 * iqr / median


def throughput_text(timing: dict[str, Any]) -> str:
    """images/s to three figures, with the relative IQR of the timed repeats."""
    text = fmt.sig(timing.get("images_per_s"))
    spread = _iqr_percent(timing)
    if text == fmt.MISSING or spread is None:
        return text
    return f"{text} (IQR {spread:.1f}%)" if spread < 10 else f"{text} (IQR {spread:.0f}%)"


# --------------------------------------------------------------------------- results


@dataclass
class MetricColumn:
    key: str
    header: str
    help: str
    render: Callable[[dict[str, Any]], str]
    sort: Callable[[dict[str, Any]], Any]
    optional: bool
    protocol_bound: bool = True


METRIC_COLUMNS = [
    MetricColumn(
        "fid",
        "FID ↓",
        "Fréchet distance between generated and real feature statistics; lower is better",
        lambda r: fmt.fixed(r.get("value"), 2),
        lambda r: r.get("value"),
        optional=False,
    ),
    MetricColumn(
        "is",
        "IS ↑",
        "Inception score (mean ± std over splits); higher is better",
        lambda r: fmt.with_spread(r.get("value"), r.get("std"), 2),
        lambda r: r.get("value"),
        optional=False,
    ),
    MetricColumn(
        "kid",
        "KID ↓",
        "kernel inception distance (mean ± std over subsets); lower is better",
        lambda r: fmt.with_spread(r.get("value"), r.get("std"), 4),
        lambda r: r.get("value"),
        optional=True,
    ),
    MetricColumn(
        "precision",
        "precision ↑",
        "share of generated images that lie on the real-image manifold; higher is better",
        lambda r: fmt.fixed(r.get("precision"), 3),
        lambda r: r.get("precision"),
        optional=True,
    ),
    MetricColumn(
        "recall",
        "recall ↑",
        "share of real images covered by the generated-image manifold; higher is better",
        lambda r: fmt.fixed(r.get("recall"), 3),
        lambda r: r.get("recall"),
        optional=True,
    ),
    MetricColumn(
        "bits_per_dim",
        "bits/dim ↓",
        "negative log-likelihood in bits per dimension (likelihood models); lower is better",
        lambda r: fmt.fixed(r.get("value"), 3),
        lambda r: r.get("value"),
        optional=True,
        protocol_bound=False,
    ),
]


def _metric_record(model: ModelResult, key: str) -> dict[str, Any]:
    # precision and recall are stored together under "pr"
    if key in ("precision", "recall"):
        return model.metric("pr")
    return model.metric(key)


def _has(models: list[ModelResult], col: MetricColumn) -> bool:
    return any(fmt.number(col.sort(_metric_record(m, col.key))) is not None for m in models)


@dataclass
class Report:
    """Every table and label of one report, built once and rendered as markdown or HTML."""

    inputs: ReportInputs
    labels: list[str]
    protocols: Groups
    timings: Groups
    results: Table
    repeats: Table | None
    speed: Table | None
    published: Table | None
    published_note: str
    published_figures: list[Any]
    generated: str


def results_table(
    models: list[ModelResult], labels: list[str], protocols: Groups, timings: Groups
) -> Table:
    """One row per (run, model): quality, cost and provenance, marks where needed."""
    for m in models:  # label every setting first, so marks appear only when there are several
        protocols.label(protocol_setting(m))
        timings.label(timing_setting(m))
    metric_cols = [c for c in METRIC_COLUMNS if not c.optional or _has(models, c)]
    columns = [
        Column("run", "run directory"),
        Column("model", "model name in the spec"),
        Column("generator", "registered generator"),
        Column("train steps", "optimiser updates", numeric=True),
        Column("parameters", "parameters of the sampling network", numeric=True),
        Column("NFE", "network evaluations per generated image", numeric=True),
        *(Column(c.header, c.help, numeric=True) for c in metric_cols),
        Column("images/s ↑", "sampling throughput after warm-up (median of repeats)", True),
        Column("s per 50k ↓", "time to sample 50,000 images at that throughput", True),
        Column("train time", "wall-clock training time", numeric=True),
        Column("device", "where sampling and training ran"),
    ]
    rows = []
    for m, label in zip(models, labels, strict=True):
        md, t = m.metrics, m.timing
        pmarks = protocols.marks(protocol_setting(m))
        tmarks = timings.marks(timing_setting(m))
        cells = [
            _text(m.run.run_id),
            Cell(label, label),
            _text(md.get("generator")),
            _num(str(md.get("train_steps", fmt.MISSING)), md.get("train_steps")),
            _num(fmt.count(md.get("parameters")), md.get("parameters")),
            _num(str(md.get("nfe", fmt.MISSING)), md.get("nfe")),
        ]
        for c in metric_cols:
            record = _metric_record(m, c.key)
            cells.append(_num(c.render(record), c.sort(record), pmarks if c.protocol_bound else ()))
        cells += [
            _num(throughput_text(t), t.get("images_per_s"), tmarks),
            _num(fmt.duration(t.get("s_per_50k")), t.get("s_per_50k"), tmarks),
            _num(fmt.duration(md.get("train_time_s")), md.get("train_time_s")),
            _text(device_label(m.run.env, t.get("device"))),
        ]
        rows.append(cells)
    notes = [*protocol_notes(protocols), *timing_notes(models, timings)]
    missing = [c.header.split()[0] for c in METRIC_COLUMNS if c.optional and c not in metric_cols]
    missing = [name for name in missing if name != "bits/dim"]
    if missing and models:
        notes.append(
            f"Not computed in these runs: {', '.join(missing)} (add them to the spec's "
            "evaluate.metrics to measure them)."
        )
    return Table(columns, rows, notes)


def protocol_notes(protocols: Groups) -> list[str]:
    """Footnotes naming the evaluation protocol(s); with several, what differs."""
    if not protocols.labels:
        return []
    shared, differing = protocols.split()
    if not protocols.several:
        return [f"Evaluation protocol of every quality value: {_describe(shared)}."]
    letters = ", ".join(f"[{name}]" for name in differing)
    notes = [
        f"Quality values marked {letters} were measured under different evaluation "
        "protocols and are not directly comparable across marks."
    ]
    notes += [f"[{name}] {_describe(values)}" for name, values in differing.items()]
    if shared:
        notes.append(f"Shared by all: {_describe(shared)}.")
    return notes


def timing_notes(models: list[ModelResult], timings: Groups) -> list[str]:
    """How speed was measured; with several devices or setups, what differs."""
    timed = [m for m in models if m.timing]
    if not timed:
        return []
    repeats = sorted({len(m.timing.get("raw_s", [])) for m in timed})
    warmups = sorted({len(m.timing.get("warmup_s", [])) for m in timed})
    how = (
        f"images/s is the median over {'/'.join(map(str, repeats))} timed sampling calls "
        f"after {'/'.join(map(str, warmups))} untimed warm-up call(s); IQR is the "
        "interquartile range of those calls relative to the median."
    )
    shared, differing = timings.split()
    if not timings.several:
        return [how, f"Timing setup of every speed value: {_describe(shared)}."]
    marks = ", ".join(f"[{name}]" for name in differing)
    notes = [
        how,
        f"Speed values marked {marks} were measured on different devices or timing setups "
        "and are not directly comparable across marks.",
    ]
    notes += [f"[{name}] {_describe(values)}" for name, values in differing.items()]
    if shared:
        notes.append(f"Shared by all: {_describe(shared)}.")
    return notes


# --------------------------------------------------------------------------- repeats


def _identity(m: ModelResult) -> str:
    md = m.metrics
    key = {
        "model": m.name,
        "generator": md.get("generator"),
        "config": md.get("config"),
        "train_steps": md.get("train_steps"),
        "dataset": md.get("dataset"),
        "checkpoint": md.get("checkpoint_source"),
        "sample": {k: md.get("sample", {}).get(k) for k in ("steps", "guidance", "num_samples")},
        "protocol": protocol_setting(m),
        "timing": timing_setting(m),
    }
    return json.dumps(key, sort_keys=True, default=str)


def _mean_sd(values: list[float], show: Callable[[float], str]) -> str:
    if not values:
        return fmt.MISSING
    if len(values) == 1:
        return show(values[0])
    return f"{show(statistics.fmean(values))} ± {show(statistics.stdev(values))}"


def _two(v: float) -> str:
    return fmt.fixed(v, 2)


def repeats_table(models: list[ModelResult], protocols: Groups, timings: Groups) -> Table | None:
    """Models run several times with the same settings: mean ± sample std and minimum."""
    groups: dict[str, list[ModelResult]] = {}
    for m in models:
        groups.setdefault(_identity(m), []).append(m)
    repeated = [g for g in groups.values() if len(g) > 1]
    if not repeated:
        return None
    columns = [
        Column("model"),
        Column("generator"),
        Column("runs", "repeats with identical settings", numeric=True),
        Column("FID mean ± sd", "mean and sample standard deviation over runs", numeric=True),
        Column("FID min", "best of the runs (how some papers report)", numeric=True),
        Column("IS mean ± sd", numeric=True),
        Column("images/s mean ± sd", numeric=True),
    ]
    rows = []
    for g in repeated:
        first = g[0]
        pm = protocols.marks(protocol_setting(first))
        tm = timings.marks(timing_setting(first))
        fid = [v for m in g if (v := fmt.number(m.metric("fid").get("value"))) is not None]
        is_ = [v for m in g if (v := fmt.number(m.metric("is").get("value"))) is not None]
        ips = [v for m in g if (v := fmt.number(m.timing.get("images_per_s"))) is not None]
        rows.append(
            [
                Cell(first.name, first.name),
                _text(first.metrics.get("generator")),
                Cell(str(len(g)), len(g)),
                _num(_mean_sd(fid, _two), statistics.fmean(fid) if fid else None, pm),
                _num(fmt.fixed(min(fid), 2) if fid else fmt.MISSING, min(fid, default=None), pm),
                _num(_mean_sd(is_, _two), statistics.fmean(is_) if is_ else None, pm),
                _num(_mean_sd(ips, fmt.sig), statistics.fmean(ips) if ips else None, tm),
            ]
        )
    note = (
        "Rows above with the same model, generator, config, training steps, sampling "
        "settings, evaluation protocol and timing setup, summarised across runs (different "
        "seeds). sd is the sample standard deviation."
    )
    return Table(columns, rows, [note])


# --------------------------------------------------------------------------- speed


def speed_setting(env: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    return {"device": device_label(env, record.get("device"))}


def speed_table(inputs: ReportInputs) -> Table | None:
    """Every record of the given ``bench speed`` directories, marked by device."""
    records = [(s, r) for s in inputs.speed for r in s.results]
    if not records:
        return None
    devices = Groups("d")
    for s, r in records:
        devices.label(speed_setting(s.environment, r))
    columns = [
        Column("speed run"),
        Column("model"),
        Column("generator"),
        Column("batch", "images per sampling call", numeric=True),
        Column("steps", "sampler steps", numeric=True),
        Column("NFE", "network evaluations per image", numeric=True),
        Column("precision"),
        Column("channels_last"),
        Column("compile"),
        Column("images/s ↑", "median throughput over timed repeats", numeric=True),
        Column("s per 50k ↓", numeric=True),
        Column("ms per NFE ↓", "milliseconds per network evaluation (per batch)", numeric=True),
        Column("peak memory", numeric=True),
        Column("warm-up", "untimed first call(s), compilation included", numeric=True),
        Column("first image", "time to first image", numeric=True),
        Column("device"),
    ]
    rows = []
    for s, r in records:
        marks = devices.marks(speed_setting(s.environment, r))
        warmup = r.get("warmup_s")
        warm_total = sum(warmup) if isinstance(warmup, list) and warmup else warmup
        rows.append(
            [
                _text(s.speed_id),
                _text(r.get("model")),
                _text(r.get("generator")),
                _num(str(r.get("batch_size", fmt.MISSING)), r.get("batch_size")),
                _num(_plain(r.get("steps")), r.get("steps")),
                _num(str(r.get("nfe", fmt.MISSING)), r.get("nfe")),
                _text(r.get("precision")),
                _text(_yes_no(r.get("channels_last"))),
                _text(_yes_no(r.get("compile"))),
                _num(throughput_text(r), r.get("images_per_s"), marks),
                _num(fmt.duration(r.get("s_per_50k")), r.get("s_per_50k"), marks),
                _num(fmt.sig(r.get("ms_per_nfe")), r.get("ms_per_nfe"), marks),
                _num(fmt.memory(r.get("peak_memory_bytes")), r.get("peak_memory_bytes")),
                _num(fmt.duration(warm_total), warm_total),
                _num(fmt.duration(r.get("time_to_first_image_s")), r.get("time_to_first_image_s")),
                _text(device_label(s.environment, r.get("device"))),
            ]
        )
    notes = [
        "images/s is the median over the timed repeats of each configuration; IQR is their "
        "interquartile range relative to the median. Warm-up (compilation included) is "
        "excluded from the timed region and shown separately."
    ]
    if devices.several:
        _, differing = devices.split()
        notes.append(
            f"Speed values marked {', '.join(f'[{n}]' for n in differing)} were measured on "
            "different devices and are not directly comparable across marks."
        )
        notes += [f"[{name}] {_describe(values)}" for name, values in differing.items()]
    return Table(columns, rows, notes)


def _plain(value: Any) -> str:
    return fmt.MISSING if value is None else str(value)


def _yes_no(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return None if value is None else str(value)


# --------------------------------------------------------------------------- runs


def run_summary(run: RunInfo) -> str:
    """One line per run: id, spec, data set, status, commit, device."""
    bench = run.spec.get("benchmark", {})
    commit = run.env.get("git_commit") or "unknown commit"
    dirty = commit.endswith("-dirty")
    commit = commit.removesuffix("-dirty")[:10] + (" (uncommitted changes)" if dirty else "")
    status = run.status.get("status", "unknown")
    if status != "complete":
        status = f"{status}: incomplete, only finished models are shown"
    parts = [
        f"spec {run.status.get('benchmark') or bench.get('name') or '?'}",
        f"data set {bench.get('dataset', '?')}",
        status,
        f"started {run.status.get('started', '?')}",
        f"commit {commit}",
        device_label(run.env),
        f"torch {run.env.get('torch', '?')}",
    ]
    return f"{run.run_id}: " + "; ".join(parts)
