"""Report figures as PNG bytes (matplotlib's object API on the Agg canvas, no pyplot state).

Readable in print and on screen: the Okabe-Ito colour-blind-safe palette, and every series
also differs by marker or line style and is labelled, so nothing depends on colour alone.
Values from different evaluation protocols or timing setups are drawn as separate groups
(their own marker and legend entry), and a Pareto front is computed within a group only.
matplotlib is imported lazily: ``bench report`` and ``bench run`` pay for it only here.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from genbench.reports import fmt
from genbench.reports.model import Report
from genbench.reports.published import matched
from genbench.reports.tables import protocol_setting, speed_setting, timing_setting
from genbench.store.records import NOISY_ADVICE, NOISY_IQR_SHARE, Timing
from genbench.store.runs import ModelResult

# Okabe & Ito (2008), "Color Universal Design": distinguishable with any colour vision.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", "-.", ":"]
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
}
DPI = 144


@dataclass
class Plot:
    """One figure: what it shows, how to read it, and the PNG (``svg()`` draws it again as
    SVG, for papers, only when asked)."""

    key: str
    title: str
    caption: str
    png: bytes
    wide: bool = False  # spans the page (small multiples)
    draw: Callable[[Any], None] | None = field(default=None, repr=False)
    size: tuple[float, float] = (6.4, 4.0)

    def svg(self) -> bytes:
        """The same figure as SVG (vector: scales for print)."""
        if self.draw is None:
            raise ValueError(f"plot {self.key} keeps no drawing to render as SVG")
        return _render(self.draw, self.size, "svg")


@dataclass
class Missing:
    """A figure that could not be drawn, and what would make it appear."""

    key: str
    title: str
    reason: str


def tex_safe(text: Any) -> str:
    """Labels are user text: ``$`` would start matplotlib mathtext (and can fail to parse)."""
    return str(text).replace("$", r"\$")


def _render(
    draw: Callable[[Any], None], size: tuple[float, float] = (6.4, 4.0), kind: str = "png"
) -> bytes:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=size, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig)
        buf = io.BytesIO()
        # No "Software" text chunk (or SVG date): the file depends only on what it shows.
        metadata = {"Software": None} if kind == "png" else {"Date": None, "Creator": None}
        fig.savefig(buf, format=kind, metadata=metadata)
    return buf.getvalue()


def _style_for(index: int) -> dict[str, Any]:
    return {
        "color": PALETTE[index % len(PALETTE)],
        "marker": MARKERS[index % len(MARKERS)],
        "linestyle": LINESTYLES[(index // len(PALETTE)) % len(LINESTYLES)],
    }


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten on both axes (lower x and lower y are better), sorted by x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            if front and front[-1][0] == x:  # same cost, better quality: replace
                front[-1] = (x, y)
            else:
                front.append((x, y))
    return front


def _groups(report: Report) -> list[str]:
    """Per model, the group it may be compared within: protocol mark + timing mark."""
    out = []
    for m in report.inputs.models:
        p = report.protocols.label(protocol_setting(m)) if report.protocols.several else ""
        t = report.timings.label(timing_setting(m)) if report.timings.several else ""
        out.append(" ".join(f"[{x}]" for x in (p, t) if x))
    return out


def _quality_points(
    report: Report, x_of: Callable[[ModelResult], Any]
) -> list[tuple[str, str, float, float]]:
    groups = _groups(report)
    points = []
    for m, label, group in zip(report.inputs.models, report.labels, groups, strict=True):
        x, y = fmt.number(x_of(m)), fmt.number(m.value("fid"))
        if x is not None and y is not None and x > 0:
            points.append((label, group, x, y))
    return points


def _annotate(ax: Any, label: str, x: float, y: float) -> None:
    ax.annotate(tex_safe(label), (x, y), xytext=(5, 4), textcoords="offset points", fontsize=8)


def _scatter_by_group(ax: Any, points: list[tuple[str, str, float, float]]) -> list[str]:
    groups = list(dict.fromkeys(g for _, g, _, _ in points))
    for gi, group in enumerate(groups):
        style = _style_for(gi)
        pts = [(label, x, y) for label, g, x, y in points if g == group]
        ax.plot(
            [x for _, x, _ in pts],
            [y for _, _, y in pts],
            linestyle="none",
            marker=style["marker"],
            color=style["color"],
            markersize=7,
            label=tex_safe(f"measured {group}".strip()),
        )
        for label, x, y in pts:
            _annotate(ax, label, x, y)
    return groups


def switched_on(value: Any) -> bool:
    """Speed options are booleans or mode names; "none" / "off" / "" mean not used."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "none", "off", "false", "no")
    return bool(value)


def speed_options(record: Timing) -> list[str]:
    """The settings that distinguish one speed series from another, for labels."""
    opts = [str(record.precision)] if record.precision else []
    if switched_on(record.compile):
        opts.append(f"compile={record.compile}")
    opts += [k for k in ("channels_last", "cuda_graphs") if switched_on(getattr(record, k))]
    return opts


def fid_vs_time(report: Report) -> Plot | Missing:
    """FID against seconds per 50k images, log x, Pareto front per comparable group."""
    title = "FID against sampling time"
    points = _quality_points(report, lambda m: m.timing.s_per_50k if m.timing else None)
    if not points:
        return Missing("fid_time", title, "no model has both an FID and a sampling time")

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        groups = _scatter_by_group(ax, points)
        for gi, group in enumerate(groups):
            front = pareto_front([(x, y) for _, g, x, y in points if g == group])
            ax.step(
                [x for x, _ in front],
                [y for _, y in front],
                where="post",
                color="0.3",
                linestyle=LINESTYLES[(gi + 1) % len(LINESTYLES)],
                linewidth=1.2,
                label=tex_safe(f"Pareto front {group}".strip()),
            )
            ax.plot(
                [x for x, _ in front],
                [y for _, y in front],
                linestyle="none",
                marker="o",
                markersize=13,
                markerfacecolor="none",
                markeredgecolor="0.2",
            )
        ax.set_xscale("log")
        ax.set_xlabel("seconds to sample 50,000 images (log scale; lower is better)")
        ax.set_ylabel("FID (lower is better)")
        ax.set_title(title)
        ax.legend(loc="best")

    caption = (
        "Each point is one model. The Pareto front (ringed points, stepped line) holds the "
        "models that no other model beats on both FID and sampling time. Points with "
        "different marks were measured under different protocols or timing setups and get "
        "their own front."
    )
    return Plot("fid_time", title, caption, _render(draw), draw=draw)


def fid_vs_nfe(report: Report) -> Plot | Missing:
    """FID against network evaluations per image; matching published figures as hollow."""
    title = "FID against network evaluations per image (NFE)"
    points = _quality_points(report, lambda m: m.metrics.nfe)
    published = [
        f
        for f in matched(report.published_figures, report.inputs.models)
        if isinstance(f.nfe, int)  # "not stated" has no place on the axis
    ]
    if not points:
        return Missing("fid_nfe", title, "no model has both an FID and an NFE")

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        _scatter_by_group(ax, points)
        if published:
            xs = [f.nfe for f in published]
            ys = [f.fid[0] if isinstance(f.fid, tuple) else f.fid for f in published]
            ax.plot(
                xs,
                ys,
                linestyle="none",
                marker="D",
                markersize=7,
                markerfacecolor="none",
                markeredgecolor="black",
                label="published (not measured here)",
            )
            for f, x, y in zip(published, xs, ys, strict=True):
                _annotate(ax, f"{f.model} (published)", x, y)
        nfes = [x for _, _, x, _ in points] + [f.nfe for f in published]
        _fid_axes(ax, nfes, "NFE per image", title)
        distinct = sorted(set(nfes))
        if len(distinct) <= 8:  # label the NFEs that occur, not arbitrary fractions
            ax.set_xticks(distinct, [f"{n:g}" for n in distinct])
            ax.minorticks_off()

    caption = (
        "Sampling cost in network evaluations, independent of hardware. Hollow diamonds, if "
        "any, are published figures whose protocol matches a measured run."
    )
    return Plot("fid_nfe", title, caption, _render(draw), draw=draw)


def _fid_axes(ax: Any, xs: list[float], xlabel: str, title: str) -> None:
    """FID on y against ``xs`` on x, the x axis logarithmic when ``xs`` span more than 20x;
    labels, title and legend."""
    if max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(title)
    ax.legend(loc="best")


def fid_vs_train_time(report: Report) -> Plot | Missing:
    """FID against training time, one line per model across the runs (models compared at
    equal training compute, e.g. runs with ``--time-budget``)."""
    title = "FID against training time"
    lines: dict[str, list[tuple[float, float]]] = {}
    for m in report.inputs.models:
        x, y = fmt.number(m.metrics.train_time_s), fmt.number(m.value("fid"))
        if x is not None and y is not None and x > 0:
            lines.setdefault(m.metrics.model, []).append((x, y))
    if not lines:
        return Missing("fid_train_time", title, "no model has both an FID and a training time")

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for i, (model, pts) in enumerate(sorted(lines.items())):
            pts.sort()
            style = _style_for(i)
            ax.plot(
                [x for x, _ in pts],
                [y for _, y in pts],
                marker=style["marker"],
                color=style["color"],
                label=tex_safe(model),
            )
        times = [x for pts in lines.values() for x, _ in pts]
        _fid_axes(ax, times, "training time, s", title)

    caption = (
        "Each line is one model across the runs of the report, by the training time it had "
        "(the same device assumed: compare runs of one machine)."
    )
    return Plot("fid_train_time", title, caption, _render(draw), draw=draw)


def fid_during_training(report: Report) -> Plot | None:
    """FID measured during training (``[evaluate] every``) against training images seen,
    one line per model; None (not even a "not drawn" line: the measurement is opt-in)
    when no model has it."""
    title = "FID during training"
    lines: list[tuple[str, list[tuple[float, float]]]] = []
    counts: set[int] = set()
    for m, label in zip(report.inputs.models, report.labels, strict=True):
        pts = [
            (float(e.images), v)
            for e in m.train_eval
            if (v := fmt.number(e.value("fid"))) is not None and e.images > 0
        ]
        if pts:
            lines.append((label, sorted(pts)))
            counts |= {
                e.protocol.num_samples or 0 for e in m.train_eval if e.value("fid") is not None
            }
    if not lines:
        return None

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for i, (label, pts) in enumerate(lines):
            style = _style_for(i)
            ax.plot(
                [x for x, _ in pts],
                [y for _, y in pts],
                marker=style["marker"],
                color=style["color"],
                label=tex_safe(label),
            )
        _fid_axes(ax, [x for _, pts in lines for x, _ in pts], "training images seen", title)

    sizes = " or ".join(f"{n:,}" for n in sorted(counts))
    caption = (
        f"FID of {sizes} samples from the EMA weights (if any) at each evaluation during "
        "training, on seeds of their own: a smaller sample count than the final evaluation's, "
        "so its FID is biased upwards and not comparable with the results table."
    )
    return Plot("fid_training", title, caption, _render(draw), draw=draw)


@dataclass(frozen=True)
class _Speed:
    """One throughput point: a series name, its batch size, its median images/s, the
    images/s at the ends of its IQR (None without repeats) and whether it is noisy."""

    name: str
    batch: float
    ips: float
    spread: tuple[float, float] | None
    noisy: bool


def _speed_point(name: str, t: Timing) -> _Speed | None:
    b, v = fmt.number(t.batch_size), fmt.number(t.images_per_s)
    if b is None or v is None:
        return None
    median, iqr = fmt.number(t.median_s), fmt.number(t.iqr_s)
    spread = None
    if median and iqr and iqr < 2 * median:  # images/s at median -+ IQR/2 of the time
        spread = (v * median / (median + iqr / 2), v * median / (median - iqr / 2))
    return _Speed(name, b, v, spread, t.noisy())


def throughput(report: Report) -> Plot | Missing:
    """images/s per model against batch size (speed records, else each run's timing); with
    a single batch size, one bar per model with its IQR, fastest first."""
    points: list[_Speed] = []
    for s in report.inputs.speed:
        for r in s.run.results:
            device = speed_setting(s.run.environment, r)["device"]
            name = f"{r.model} ({', '.join(speed_options(r))}; {device})"
            points.append(_speed_point(name, r))
    for m, label in zip(report.inputs.models, report.labels, strict=True):
        if m.timing is not None:
            name = f"{label} (bench run; {timing_setting(m)['device']})"
            points.append(_speed_point(name, m.timing))
    kept = [p for p in points if p is not None]
    batches = sorted({p.batch for p in kept})
    if len(batches) == 1:
        return _throughput_bars(kept, batches[0])
    title = "Sampling throughput by model and batch size"
    if not kept:
        return Missing("throughput", title, "no timing results")
    series: dict[str, list[tuple[float, float]]] = {}
    for p in kept:
        series.setdefault(p.name, []).append((p.batch, p.ips))
    noisy = [(p.batch, p.ips) for p in kept if p.noisy]  # ringed in the plot

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for i, (name, pts) in enumerate(series.items()):
            pts.sort()
            style = _style_for(i)
            ax.plot(
                [b for b, _ in pts],
                [v for _, v in pts],
                label=tex_safe(name),
                markersize=6,
                **style,
            )
        if noisy:
            ax.scatter(
                [b for b, _ in noisy],
                [v for _, v in noisy],
                s=220,
                facecolors="none",
                edgecolors="#c00000",
                linewidths=1.5,
                label=f"{NOISY_ADVICE} (IQR > {100 * NOISY_IQR_SHARE:.0f}% of median, or load)",
                zorder=5,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [f"{b:g}" for b in batches])
        ax.set_yscale("log")
        ax.set_xlabel("batch size (images per sampling call)")
        ax.set_ylabel("images per second (log scale; higher is better)")
        ax.set_title(title)
        ax.legend(loc="best")

    caption = (
        "Median throughput after warm-up. Lines connect the batch sizes measured by "
        "`bench speed`; single points are the timing of a `bench run`. Compare lines on the "
        "same device only."
    )
    return Plot("throughput", title, caption, _render(draw), draw=draw)


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _throughput_bars(points: list[_Speed], batch: float) -> Plot:
    """One horizontal bar per timing, fastest on top, the IQR as an error bar, noisy bars
    hatched in red; a log axis when the speeds span more than 20x."""
    title = f"Sampling throughput by model (batch size {batch:g})"
    points = sorted(points, key=lambda p: p.ips)  # barh draws bottom-up: fastest on top
    log = points[-1].ips > 20 * points[0].ips
    # "model (context)": a context every bar shares goes into the axis label once.
    contexts = {p.name.partition(" (")[2] for p in points}
    shared = contexts.pop().removesuffix(")") if len(contexts) == 1 else ""
    names = [p.name.partition(" (")[0] if shared else p.name for p in points]

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        y = list(range(len(points)))
        err = [
            [p.ips - p.spread[0] if p.spread else 0.0 for p in points],
            [p.spread[1] - p.ips if p.spread else 0.0 for p in points],
        ]
        bars = ax.barh(y, [p.ips for p in points], xerr=err, capsize=3, ecolor="#333333",
                       color=[_style_for(i)["color"] for i in y])  # fmt: skip
        for bar, p in zip(bars, points, strict=True):
            if p.noisy:
                bar.set_hatch("//")
                bar.set_edgecolor("#c00000")
            text = f" {_rate(p.ips)}/s" + (" (noisy)" if p.noisy else "")
            end = p.spread[1] if p.spread else p.ips  # past the whisker
            ax.annotate(text, (end, bar.get_y() + bar.get_height() / 2), va="center",
                        fontsize="small", color="#c00000" if p.noisy else "black")  # fmt: skip
        ax.set_yticks(y, [tex_safe(n) for n in names])
        if log:
            ax.set_xscale("log")
        scale = "log scale; " if log else ""
        where = f"\n{tex_safe(shared)}" if shared else ""
        ax.set_xlabel(f"images per second ({scale}higher is better){where}")
        ax.margins(x=0.25)
        ax.set_title(title)

    caption = (
        f"Median throughput after warm-up, every timing at batch size {batch:g}; the whiskers "
        "span the repeats' interquartile range, and hatched red bars spread more than "
        f"{100 * NOISY_IQR_SHARE:.0f}% of their median or ran on a machine loaded beyond "
        f"their threads ({NOISY_ADVICE}). Compare bars of the same device only."
    )
    height = max(2.5, 1.2 + 0.45 * len(points))
    return Plot("throughput", title, caption, _render(draw, (6.4, height)), draw=draw,
                size=(6.4, height))  # fmt: skip


def _is_lr(key: str) -> bool:
    """A logged learning rate (``lr``, ``lr_G``, ``lr_D``), not a loss."""
    return key == "lr" or key.startswith("lr_")


def training_losses(report: Report) -> Plot | Missing:
    """One panel per model: every logged loss against the training step."""
    title = "Training losses and logged statistics"
    logged = [
        (label, m.train_log)
        for m, label in zip(report.inputs.models, report.labels, strict=True)
        if m.train_log
    ]
    if not logged:
        return Missing("losses", title, "no training log (untrained or checkpoint-only models)")
    cols = min(3, len(logged))
    rows = math.ceil(len(logged) / cols)

    def draw(fig: Any) -> None:
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.flat[len(logged) :]:
            ax.set_visible(False)
        for ax, (label, log) in zip(axes.flat, logged, strict=False):
            # Every logged name with a finite value somewhere (a diverged run logs None); the
            # learning rates (orders of magnitude below the losses) get an axis of their own.
            named = dict.fromkeys(k for r in log for k, v in r.losses.items() if v is not None)
            keys = [k for k in named if not _is_lr(k)]
            rates = [k for k in named if _is_lr(k)]
            if rates:
                twin = ax.twinx()
                for key in rates:
                    pts = [(r.step, r.losses[key]) for r in log if r.losses.get(key) is not None]
                    twin.plot(
                        [s for s, _ in pts],
                        [v for _, v in pts],
                        color="#777777",
                        linestyle=":",
                        label=tex_safe(key),
                    )
                twin.set_ylabel("learning rate (dotted)")
                twin.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
            for i, key in enumerate(keys):
                pts = [(r.step, r.losses[key]) for r in log if r.losses.get(key) is not None]
                ax.plot(
                    [s for s, _ in pts],
                    [v for _, v in pts],
                    label=tex_safe(key),
                    markevery=max(1, len(pts) // 8),
                    markersize=4,
                    **_style_for(i),
                )
            ax.set_title(tex_safe(label))
            ax.set_xlabel("step")
            if keys:
                ax.legend(loc="best")
            else:
                ax.text(0.5, 0.5, "no finite value logged", ha="center", transform=ax.transAxes)
        for ax in axes[:, 0]:
            ax.set_ylabel("mean over logging interval")

    size = (6.4, 4.0) if len(logged) == 1 else (min(4.2 * cols, 12.6), 3.4 * rows)
    caption = (
        "Every value the generator logs (losses, and e.g. a GAN's mean discriminator outputs "
        "d_real / d_fake), averaged over each logging interval of train_log.jsonl."
    )
    return Plot(
        "losses", title, caption, _render(draw, size), len(logged) > 1, draw=draw, size=size
    )


def speed_history(report: Report) -> Plot | Missing:
    """images/s across commits, one line per (model, batch, options, machine)."""
    title = "Sampling speed across commits"
    records = [r for r in report.inputs.history if fmt.number(r.images_per_s) is not None]
    if not records:
        where = report.inputs.history_path
        if report.inputs.history_error:
            reason = f"the speed history could not be read: {report.inputs.history_error}"
        elif where:
            reason = f"the speed history {where} has no records"
        else:
            reason = (
                "no speed history file (`bench speed` appends to runs/speed_history.jsonl; "
                "`bench report --history PATH` reads another)"
            )
        return Missing("history", title, reason)
    records.sort(key=lambda r: str(r.timestamp or ""))
    commits = list(dict.fromkeys(str(r.commit or "?")[:8] for r in records))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        name = (
            f"{r.model} b{r.batch_size} {' '.join(speed_options(r))} @{str(r.machine or '?')[:8]}"
        )
        x = commits.index(str(r.commit or "?")[:8])
        series.setdefault(name, []).append((x, float(r.images_per_s)))

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for i, (name, pts) in enumerate(series.items()):
            ax.plot(
                [x for x, _ in pts],
                [v for _, v in pts],
                label=tex_safe(name),
                markersize=6,
                **_style_for(i),
            )
        ax.set_xticks(range(len(commits)), commits, rotation=45, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("commit (oldest left)")
        ax.set_ylabel("images per second (log scale)")
        ax.set_title(title)
        ax.legend(loc="best")

    caption = (
        "From the speed history file: one line per model, batch size, options and machine "
        "(@ fingerprint). Only points of one line are comparable with each other."
    )
    return Plot("history", title, caption, _render(draw), draw=draw)


FIGURES = [
    fid_vs_time,
    fid_vs_nfe,
    fid_vs_train_time,
    fid_during_training,
    throughput,
    training_losses,
    speed_history,
]


def all_plots(report: Report) -> list[Plot | Missing]:
    """Every figure of the report, or why it is absent (opt-in figures only when drawn)."""
    return [f for make in FIGURES if (f := make(report)) is not None]
