"""The report's tables, built from the results store's records (``genbench.reports.model``
holds what they are made of).

Protocol honesty lives here: every quality value is tagged with its evaluation protocol (the
stored protocol minus the seed range, plus the device) and every speed value with its timing
setup (device, batch size, precision). When a column would mix values from different
protocols or setups, each such value carries a mark (quality ``[a]``, ``[b]``; run speed
``[t1]``, ``[t2]``; ``bench speed`` devices ``[d1]``, ``[d2]``) and a note says exactly what
differs.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from genbench.reports import fmt
from genbench.reports.load import ReportInputs
from genbench.reports.model import Cell, Column, Groups, Table, describe
from genbench.store.records import (
    NOISY_ADVICE,
    NOISY_IQR_SHARE,
    Environment,
    MetricValue,
    SampleInfo,
    Timing,
)
from genbench.store.runs import ModelResult, RunResult

KID_FEW = 100
"""Below this many images per subset, KID is noise (``genbench.eval.evaluate.KID_FEW``; the
reports may not import the evaluator)."""

# --------------------------------------------------------------------------- settings


def protocol_setting(model: ModelResult) -> dict[str, Any]:
    """The comparability key of a model's quality values: its protocol minus the seeds, plus
    the device it ran on (float arithmetic, and so the last digits of FID, differs by
    device; thread counts do not matter here, so the bare device name)."""
    protocol = model.metrics.protocol
    setting = protocol.setting() if protocol is not None else {}
    env = model.run.environment
    setting["measured_on"] = env.device_name or env.device or fmt.MISSING
    return setting


def device_label(env: Environment, fallback: str | None = None) -> str:
    """What the numbers were measured on, as a reader would name it."""
    name = env.device_name or env.device or fallback or fmt.MISSING
    if str(env.device or "").startswith("cpu") and env.torch_threads:
        name = f"{name} ({env.torch_threads} threads)"
    if env.world_size > 1:
        name = f"{name} x {env.world_size} processes"
    return str(name)


def timing_setting(model: ModelResult) -> dict[str, Any]:
    """What a speed number depends on besides the model: device, batch size, precision."""
    t = model.timing
    return {
        "device": device_label(model.run.environment, t.device if t else None),
        "batch_size": t.batch_size if t else None,
        "precision": t.precision if t else None,
    }


def run_tag(run_id: str) -> str:
    """A run id's random tag (its last part), as short as a table cell allows."""
    return run_id.rsplit("-", 1)[-1]


def model_labels(models: list[ModelResult]) -> list[str]:
    """Unique display names: the model name, plus ``@<run tag>`` where names repeat."""
    counts: dict[str, int] = {}
    for m in models:
        counts[m.name] = counts.get(m.name, 0) + 1
    labels = []
    for m in models:
        tag = run_tag(m.run.run_id)
        labels.append(m.name if counts[m.name] == 1 else f"{m.name} @{tag}")
    return labels


def _iqr_percent(timing: Timing) -> float | None:
    median, iqr = fmt.number(timing.median_s), fmt.number(timing.iqr_s)
    if median is None or iqr is None or median <= 0:
        return None
    return 100.0 * iqr / median


def throughput_text(timing: Timing | None) -> str:
    """images/s to three figures, with the relative IQR of the timed repeats."""
    if timing is None:
        return fmt.MISSING
    text = fmt.sig(timing.images_per_s)
    spread = _iqr_percent(timing)
    if text != fmt.MISSING and spread is not None:
        text = f"{text} (IQR {spread:.1f}%)" if spread < 10 else f"{text} (IQR {spread:.0f}%)"
        if timing.noisy():
            text = text[:-1] + ", noisy)"
    return text + processes_text(timing)


def processes_text(timing: Timing) -> str:
    """For several processes: what all ranks gave together, how well that scales against
    one process alone, and how far the slowest rank trailed (empty for one process)."""
    if not timing.processes or timing.processes < 2:
        return ""
    parts = [f"per rank; {timing.processes} processes: {fmt.sig(timing.aggregate_images_per_s)}"]
    if timing.scaling_efficiency is not None:
        parts.append(f"scaling {100 * timing.scaling_efficiency:.0f}%")
    if timing.straggler_spread is not None:
        parts.append(f"straggler {100 * timing.straggler_spread:.0f}%")
    return " " + ", ".join(parts)


def sampling_text(sample: SampleInfo | None) -> str:
    """A model's sampling settings as set, e.g. ``steps ddim10, guidance s = 1.5``;
    ``default`` when none was set."""
    if sample is None:
        return fmt.MISSING
    parts = []
    if sample.steps is not None:
        parts.append(f"steps {sample.steps}")
    if sample.guidance is not None:
        parts.append(f"guidance s = {sample.guidance:g}")
    return ", ".join(parts) or "default"


# --------------------------------------------------------------------------- results


@dataclass
class MetricColumn:
    key: str
    header: str
    help: str
    render: Callable[[MetricValue], str]
    sort: Callable[[MetricValue], float | None]
    optional: bool
    protocol_bound: bool = True


METRIC_COLUMNS = [
    MetricColumn(
        "fid",
        "FID ↓",
        "Fréchet distance between generated and real feature statistics; lower is better",
        lambda r: fmt.fixed(r.value, 2),
        lambda r: r.value,
        optional=False,
    ),
    MetricColumn(
        "is",
        "IS ↑",
        "Inception score (mean ± std over splits); higher is better",
        lambda r: fmt.with_spread(r.value, r.std, 2),
        lambda r: r.value,
        optional=False,
    ),
    MetricColumn(
        "kid",
        "KID ↓",
        "kernel inception distance (mean ± std over subsets); lower is better",
        lambda r: fmt.with_spread(r.value, r.std, 4),
        lambda r: r.value,
        optional=True,
    ),
    MetricColumn(
        "precision",
        "precision ↑",
        "share of generated images that lie on the real-image manifold; higher is better",
        lambda r: fmt.fixed(r.precision, 3),
        lambda r: r.precision,
        optional=True,
    ),
    MetricColumn(
        "recall",
        "recall ↑",
        "share of real images covered by the generated-image manifold; higher is better",
        lambda r: fmt.fixed(r.recall, 3),
        lambda r: r.recall,
        optional=True,
    ),
    MetricColumn(
        "bits_per_dim",
        "bits/dim ↓",
        "negative log-likelihood in bits per dimension (likelihood models); lower is better",
        lambda r: fmt.fixed(r.value, 3),
        lambda r: r.value,
        optional=True,
        protocol_bound=False,
    ),
]

_NONE = MetricValue()


def metric_record(model: ModelResult, key: str) -> MetricValue:
    """The stored result behind a column (an empty one when the run did not compute it);
    precision and recall are stored together under "pr"."""
    name = "pr" if key in ("precision", "recall") else key
    return model.metrics.metric(name) or _NONE


def _has(models: list[ModelResult], col: MetricColumn) -> bool:
    return any(fmt.number(col.sort(metric_record(m, col.key))) is not None for m in models)


def results_table(
    models: list[ModelResult], labels: list[str], protocols: Groups, timings: Groups
) -> Table:
    """One row per (run, model): quality, cost and provenance, marks where needed."""
    for m in models:  # label every setting first, so marks appear only when there are several
        if not m.metrics.failure:  # a failed model has neither values nor timing to mark
            protocols.label(protocol_setting(m))
            timings.label(timing_setting(m))
    metric_cols = [c for c in METRIC_COLUMNS if not c.optional or _has(models, c)]
    # Columns that would repeat one value, or another column, are left out so that two runs
    # fit a 1,400 px page: the run list above names the runs in full and their devices.
    several_runs = len({m.run.run_id for m in models}) > 1
    devices = {
        device_label(m.run.environment, m.timing.device if m.timing else None) for m in models
    }
    columns = [
        *(
            [Column("run", "run directory: its random tag (the runs are listed above)")]
            if several_runs
            else []
        ),
        Column("model", "model name in the spec (and its generator, where the names differ)"),
        Column("train steps", "optimiser updates", numeric=True),
        Column("parameters", "parameters of the sampling network", numeric=True),
        Column("NFE", "network evaluations per generated image", numeric=True),
        Column(
            "sampling",
            "the generator's sampling settings as set: steps, and the classifier-free "
            "guidance scale s (1 = conditional model, 0 = unconditional); default = the config's",
        ),
        *(Column(c.header, c.help, numeric=True) for c in metric_cols),
        Column("images/s ↑", "sampling throughput after warm-up (median of repeats)", True),
        Column("s per 50k ↓", "time to sample 50,000 images at that throughput", True),
        Column("train time", "wall-clock training time", numeric=True),
        *([Column("device", "where sampling and training ran")] if len(devices) > 1 else []),
    ]
    rows = []
    for m, label in zip(models, labels, strict=True):
        md, t = m.metrics, m.timing
        pmarks = () if md.failure else protocols.marks(protocol_setting(m))
        tmarks = () if md.failure else timings.marks(timing_setting(m))
        name = m.name if several_runs else label  # the run column tells repeated names apart
        if md.generator != m.name:
            name = f"{name} ({md.generator})"
        cells = [
            *([Cell(run_tag(m.run.run_id), m.run.run_id)] if several_runs else []),
            Cell(name, name),
            Cell.number(str(md.train_steps), md.train_steps),
            Cell.number(fmt.count(md.parameters), md.parameters),
            Cell.number(fmt.MISSING if md.nfe is None else str(md.nfe), md.nfe),
            Cell.text_of(sampling_text(md.sample)),
        ]
        for i, c in enumerate(metric_cols):
            if md.failure:  # a failed model has no value, only the word in the first column
                cells.append(Cell("failed" if i == 0 else fmt.MISSING, None))
                continue
            record = metric_record(m, c.key)
            marks = pmarks if c.protocol_bound else ()
            cells.append(Cell.number(c.render(record), c.sort(record), marks))
        s_per_50k = t.s_per_50k if t else None
        cells += [
            Cell.number(throughput_text(t), t.images_per_s if t else None, tmarks),
            Cell.number(fmt.duration(s_per_50k), s_per_50k, tmarks),
            Cell.number(fmt.duration(md.train_time_s), md.train_time_s),
        ]
        if len(devices) > 1:
            cells.append(Cell.text_of(device_label(m.run.environment, t.device if t else None)))
        rows.append(cells)
    notes = [*protocol_notes(protocols), *timing_notes(models, timings)]
    small = sorted(
        {
            m.metrics.protocol.kid_subset_size
            for m in models
            if m.metrics.protocol is not None
            and m.metrics.protocol.kid_subset_size is not None
            and m.metrics.protocol.kid_subset_size < KID_FEW
        }
    )
    if small and any(m.metrics.metric("kid") for m in models):
        notes.append(
            f"KID here comes from subsets of {', '.join(map(str, small))} images: dominated by "
            f"noise, it may be negative; at least {KID_FEW} images per subset are needed."
        )
    notes += [
        f"Failed, no result: {label} ({m.run.run_id}): {m.metrics.failure}."
        for m, label in zip(models, labels, strict=True)
        if m.metrics.failure
    ]
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
        return [f"Evaluation protocol of every quality value: {describe(shared)}."]
    letters = ", ".join(f"[{name}]" for name in differing)
    notes = [
        f"Quality values marked {letters} were measured under different evaluation "
        "protocols and are not directly comparable across marks."
    ]
    notes += [f"[{name}] {describe(values)}" for name, values in differing.items()]
    if shared:
        notes.append(f"Shared by all: {describe(shared)}.")
    return notes


def timing_notes(models: list[ModelResult], timings: Groups) -> list[str]:
    """How speed was measured; with several devices or setups, what differs."""
    timed = [m.timing for m in models if m.timing is not None]
    if not timed:
        return []
    repeats = sorted({len(t.raw_s) for t in timed})
    warmups = sorted({len(t.warmup_s) for t in timed})
    how = (
        f"images/s is the median over {'/'.join(map(str, repeats))} timed sampling calls "
        f"after {'/'.join(map(str, warmups))} untimed warm-up call(s); IQR is the "
        "interquartile range of those calls relative to the median."
    )
    noisy = sum(t.noisy() for t in timed)
    if noisy:
        how += (
            f" {noisy} of {len(timed)} timings spread more than "
            f"{100 * NOISY_IQR_SHARE:.0f}% of their median or ran on a machine loaded beyond "
            f"their threads, and are marked noisy ({NOISY_ADVICE}): another process or a "
            "throttled CPU interfered."
        )
    if any(t.processes and t.processes > 1 for t in timed):
        how += (
            " Under several processes it is rank 0's while every rank samples at once; after "
            "it come all ranks' images/s together, the scaling efficiency against rank 0 "
            "sampling alone, and how far the slowest rank trailed the fastest."
        )
    shared, differing = timings.split()
    if not timings.several:
        return [how, f"Timing setup of every speed value: {describe(shared)}."]
    marks = ", ".join(f"[{name}]" for name in differing)
    notes = [
        how,
        f"Speed values marked {marks} were measured on different devices or timing setups "
        "and are not directly comparable across marks.",
    ]
    notes += [f"[{name}] {describe(values)}" for name, values in differing.items()]
    if shared:
        notes.append(f"Shared by all: {describe(shared)}.")
    return notes


# --------------------------------------------------------------------------- repeats


def _identity(m: ModelResult) -> str:
    md = m.metrics
    sample = md.sample
    key = {
        "model": m.name,
        "generator": md.generator,
        "config": md.config,
        "train_steps": md.train_steps,
        "dataset": md.dataset,
        "checkpoint": md.checkpoint_source,
        "sample": {
            "steps": sample.steps if sample else None,
            "guidance": sample.guidance if sample else None,
            "num_samples": sample.num_samples if sample else None,
        },
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


def _values(models: list[ModelResult], get: Callable[[ModelResult], Any]) -> list[float]:
    return [v for m in models if (v := fmt.number(get(m))) is not None]


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
        fid = _values(g, lambda m: m.value("fid"))
        is_ = _values(g, lambda m: m.value("is"))
        ips = _values(g, lambda m: m.timing.images_per_s if m.timing else None)
        rows.append(
            [
                Cell(first.name, first.name),
                Cell.text_of(first.metrics.generator),
                Cell(str(len(g)), len(g)),
                Cell.number(_mean_sd(fid, _two), statistics.fmean(fid) if fid else None, pm),
                Cell.number(fmt.fixed(min(fid, default=None), 2), min(fid, default=None), pm),
                Cell.number(_mean_sd(is_, _two), statistics.fmean(is_) if is_ else None, pm),
                Cell.number(_mean_sd(ips, fmt.sig), statistics.fmean(ips) if ips else None, tm),
            ]
        )
    note = (
        "Rows above with the same model, generator, config, training steps, sampling "
        "settings, evaluation protocol and timing setup, summarised across runs (different "
        "seeds). sd is the sample standard deviation."
    )
    return Table(columns, rows, [note])


# --------------------------------------------------------------------------- speed


def speed_setting(env: Environment, record: Timing) -> dict[str, Any]:
    return {"device": device_label(env, record.device)}


def speed_table(inputs: ReportInputs) -> Table | None:
    """Every record of the given ``bench speed`` directories, marked by device."""
    records = [(s, r) for s in inputs.speed for r in s.run.results]
    if not records:
        return None
    devices = Groups("d")
    for s, r in records:
        devices.label(speed_setting(s.run.environment, r))
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
        marks = devices.marks(speed_setting(s.run.environment, r))
        warm_total = sum(r.warmup_s) if r.warmup_s else None
        rows.append(
            [
                Cell.text_of(s.speed_id),
                Cell.text_of(r.model),
                Cell.text_of(r.generator),
                Cell.number(str(r.batch_size), r.batch_size),
                Cell.number(_plain(r.steps), r.steps),
                Cell.number(_plain(r.nfe), r.nfe),
                Cell.text_of(r.precision),
                Cell.text_of(_yes_no(r.channels_last)),
                Cell.text_of(_yes_no(r.compile)),
                Cell.number(throughput_text(r), r.images_per_s, marks),
                Cell.number(fmt.duration(r.s_per_50k), r.s_per_50k, marks),
                Cell.number(fmt.sig(r.ms_per_nfe), r.ms_per_nfe, marks),
                Cell.number(fmt.memory(r.peak_memory_bytes), r.peak_memory_bytes),
                Cell.number(fmt.duration(warm_total), warm_total),
                Cell.number(fmt.duration(r.time_to_first_image_s), r.time_to_first_image_s),
                Cell.text_of(device_label(s.run.environment, r.device)),
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
        notes += [f"[{name}] {describe(values)}" for name, values in differing.items()]
    return Table(columns, rows, notes)


def _plain(value: Any) -> str:
    return fmt.MISSING if value is None else str(value)


def _yes_no(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return None if value is None else str(value)


# --------------------------------------------------------------------------- runs


def run_summary(run: RunResult) -> str:
    """One line per run: id, spec, data set, status, commit, device."""
    bench = run.spec.get("benchmark", {})
    commit = run.environment.git_commit or "unknown commit"
    dirty = commit.endswith("-dirty")
    commit = commit.removesuffix("-dirty")[:10] + (" (uncommitted changes)" if dirty else "")
    status = run.status.status
    if status != "complete":
        status = f"{status}: incomplete, only finished models are shown"
    parts = [
        f"spec {run.status.benchmark or bench.get('name') or '?'}",
        f"data set {bench.get('dataset', '?')}",
        status,
        f"started {run.status.started or '?'}",
        f"commit {commit}",
        device_label(run.environment),
        f"torch {run.environment.torch or '?'}",
    ]
    return f"{run.run_id}: " + "; ".join(parts)
