"""Sampling-time measurement: warm-up excluded and reported, repeats, median and spread.

On CUDA each call is bracketed by CUDA events after a synchronisation; on CPU by
``time.perf_counter``. Raw per-repeat seconds are kept so later comparisons can test them.
The first call of a freshly prepared sampler is the cold start (compilation, autotuning,
graph capture, caches): its duration is reported as the time to first image and never
enters the timed repeats. One extra untimed call measures the share of sampling time
spent drawing per-sample noise (``genbench.core.noise.seeded_randn``).

``bench run`` (``measure_speed``) and ``bench speed`` both go through ``sampling_timer``,
so fast paths and timing have one code path.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from genbench.benchmarks import autofast, distributed
from genbench.benchmarks.fastpath import FastPaths, prepare_sampler
from genbench.benchmarks.plan import ResolvedModel
from genbench.benchmarks.sampling import labels_for
from genbench.benchmarks.spec import TimingSection
from genbench.core import collectives
from genbench.core.device import synchronize, time_call
from genbench.core.noise import noise_clock
from genbench.generators import Generator, SampleSettings
from genbench.store.records import FastChoice, Timing


@dataclass
class TimingResult:
    """One timed sampling configuration; seconds are per call of ``batch_size`` images."""

    device: str
    batch_size: int
    nfe: int
    warmup_s: list[float]
    raw_s: list[float]
    median_s: float
    iqr_s: float
    images_per_s: float
    s_per_50k: float
    ms_per_nfe: float
    image_nfe_per_s: float
    peak_memory_bytes: int | None
    peak_memory_kind: str
    time_to_first_image_s: float
    noise_share: float | None
    noise_s: float | None
    fast: FastPaths = field(default_factory=FastPaths)
    load_average: float | None = None
    threads: int | None = None
    compile_cache: str | None = None
    fast_choice: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict; the fast paths appear as top-level fields."""
        out = asdict(self)
        out.update(out.pop("fast"))
        return out

    def to_record(self, steps: int | str | None) -> Timing:
        """The store's ``Timing`` record of this result, for sampler setting ``steps``."""
        return Timing.model_validate({**self.to_dict(), "steps": steps})


def _quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def summarize(raw_s: list[float], batch_size: int, nfe: int) -> dict[str, float]:
    """The summary fields of a set of per-call seconds: median, IQR and the rates derived
    from the median (``SamplingTimer.result`` and ``bench compare``'s pooling share it)."""
    median = statistics.median(raw_s)
    q1, q3 = _quartiles(raw_s)
    return {
        "median_s": median,
        "iqr_s": q3 - q1,
        "images_per_s": batch_size / median,
        "s_per_50k": 50_000 * median / batch_size,
        "ms_per_nfe": 1000.0 * median / max(nfe, 1),
        "image_nfe_per_s": batch_size * nfe / median,
    }


def _peak_memory(device: torch.device) -> tuple[int | None, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    # ru_maxrss is KiB on Linux, bytes on macOS; it is the whole process's high-water mark.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024), "process_max_rss"


def _fx_cache_counts() -> tuple[int, int]:
    """(hits, misses) of inductor's FX graph cache so far in this process; a bypass (a
    graph the cache cannot hold) is compiled, so it counts as a miss."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    misses = inductor["fxgraph_cache_miss"] + inductor["fxgraph_cache_bypass"]
    return inductor["fxgraph_cache_hit"], misses


def _fx_cache_enabled() -> bool:
    try:
        from torch._inductor import config
    except ImportError:
        return False
    return bool(getattr(config, "fx_graph_cache", False))


class SamplingTimer:
    """Times one sampling callable in phases: ``start`` (cold call and warm-ups), any number
    of ``repeat`` rounds (``bench compare`` interleaves them between revisions), then
    ``result``. ``run`` does all three in one go."""

    def __init__(
        self,
        fn: Callable[[], object],
        *,
        device: torch.device,
        batch_size: int,
        nfe: int,
        fast: FastPaths | None = None,
        choice: FastChoice | None = None,
    ) -> None:
        self.fn = fn
        self.choice = choice
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.nfe = nfe
        self.fast = fast or FastPaths()
        self.warmup_s: list[float] = []
        self.raw_s: list[float] = []
        self.load_average: float | None = None
        self.compile_cache: str | None = None
        self.first_s: float | None = None
        self.peak_bytes: int | None = None  # CUDA: this timer's own high-water mark

    def _call(self) -> float:
        # Peak memory is tracked per call so that two timers interleaved on one GPU (ours
        # and a baseline) each report their own high-water mark, not the pair's.
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        seconds = time_call(self.fn, self.device)
        if cuda:
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peak_bytes = max(self.peak_bytes or 0, peak)
        return seconds

    def start(self, warmup: int) -> None:
        """Run ``warmup`` untimed calls; the first is the cold start (time to first image).
        With ``compile``, whether that call found its kernels compiled already (in inductor's
        on-disk cache, or earlier in this process) is recorded (``compile_cache``: "warm",
        "cold" or "partly warm")."""
        before = _fx_cache_counts()
        self.warmup_s = [self._call() for _ in range(min(warmup, 1))]
        if self.warmup_s and self.fast.compile != "none":
            hits, misses = (now - was for now, was in zip(_fx_cache_counts(), before, strict=True))
            if hits or misses:
                warm = "warm" if not misses else "partly warm"
                self.compile_cache = warm if hits else "cold"
            elif _fx_cache_enabled():  # no lookup: compiled earlier in this process
                self.compile_cache = "warm"
        self.warmup_s += [self._call() for _ in range(warmup - len(self.warmup_s))]
        if self.warmup_s:
            self.first_s = self.warmup_s[0]

    def repeat(self, n: int) -> list[float]:
        """``n`` timed calls; returns their seconds (also kept for ``result``)."""
        new = [self._call() for _ in range(n)]
        if self.first_s is None and new:  # no warm-up: the first timed call was the cold one
            self.first_s = new[0]
        self.raw_s.extend(new)
        if hasattr(os, "getloadavg"):  # the highest seen at the end of a round of calls
            self.load_average = max(self.load_average or 0.0, os.getloadavg()[0])
        return new

    def noise_share(self) -> tuple[float | None, float | None]:
        """One untimed call with every noise draw synchronised and timed: (share, seconds).

        (None, None) when the sampler draws no seeded noise. Synchronising around each draw
        removes the CPU/GPU overlap of that call, so the share is an upper estimate.
        """
        spent: list[float] = []

        def clock(draw: Callable[[], torch.Tensor]) -> torch.Tensor:
            synchronize(self.device)
            t0 = time.perf_counter()
            out = draw()
            synchronize(self.device)
            spent.append(time.perf_counter() - t0)
            return out

        with noise_clock(clock):
            synchronize(self.device)
            t0 = time.perf_counter()
            self.fn()
            synchronize(self.device)
            total = time.perf_counter() - t0
        if not spent:
            return None, None
        return min(1.0, sum(spent) / total), sum(spent)

    def result(self, noise: bool = True) -> TimingResult:
        """Summarise the repeats so far (at least one), measuring the noise share first."""
        if not self.raw_s:
            raise ValueError("no timed repeats yet")
        share, noise_s = self.noise_share() if noise else (None, None)
        raw = self.raw_s
        peak, kind = _peak_memory(self.device)
        if self.peak_bytes is not None:
            peak = self.peak_bytes
        return TimingResult(
            device=str(self.device),
            batch_size=self.batch_size,
            nfe=self.nfe,
            warmup_s=list(self.warmup_s),
            raw_s=list(raw),
            **summarize(raw, self.batch_size, self.nfe),
            peak_memory_bytes=peak,
            peak_memory_kind=kind,
            time_to_first_image_s=self.first_s if self.first_s is not None else raw[0],
            noise_share=share,
            noise_s=noise_s,
            fast=self.fast,
            load_average=self.load_average,
            threads=torch.get_num_threads(),
            compile_cache=self.compile_cache,
            fast_choice=self.choice.model_dump(mode="json") if self.choice else None,
        )

    def run(self, *, repeats: int, warmup: int) -> TimingResult:
        """Warm up, time ``repeats`` calls, summarise."""
        self.start(warmup)
        self.repeat(repeats)
        return self.result()


def sampling_timer(
    gen: Generator,
    seeds: Sequence[int],
    labels: torch.Tensor | None,
    settings: SampleSettings,
    fast: FastPaths,
) -> SamplingTimer:
    """A timer of ``gen.sample(seeds, labels, settings)`` with ``fast`` applied.

    Applies the fast paths to ``gen`` in place (see ``genbench.benchmarks.fastpath``).
    """
    gen.eval()
    seeds = list(seeds)
    run = prepare_sampler(gen, fast, lambda: gen.sample(seeds, labels, settings))
    return SamplingTimer(
        run, device=gen.device, batch_size=len(seeds), nfe=gen.nfe(settings), fast=fast
    )


def speed_timer(gen: Generator, model: ResolvedModel, timing: TimingSection) -> SamplingTimer:
    """A timer of one sampling call of ``timing.batch_size`` images with the timing
    section's fast paths applied to ``gen`` (in place). ``bench run`` and ``bench speed``
    share it, so both time the same way."""
    seeds = list(range(timing.batch_size))
    labels = labels_for(gen, seeds, model.sample.labels, model.settings)
    fast = FastPaths.from_section(timing)
    choice = None
    if timing.fast:
        choice = autofast.choose(
            gen,
            generator=model.generator,
            config=model.config.model_dump(mode="json"),
            seeds=seeds,
            labels=labels,
            settings=model.settings,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
        fast = autofast.paths_of(choice.paths)
    timer = sampling_timer(gen, seeds, labels, model.settings, fast)
    timer.choice = choice
    return timer


def measure_speed(gen: Generator, model: ResolvedModel, timing: TimingSection) -> Timing:
    """Time ``timing.repeats`` sampling calls after ``timing.warmup`` untimed ones (see
    ``speed_timer``): the record of ``timing.json``.

    Under several processes: first rank 0 alone (the others wait), the one-process figure;
    then every rank at once, each timing its own calls. The record's main fields are rank
    0's in the joint round; it adds every rank's images/s, their sum, the straggler spread
    and the scaling efficiency against the one-process figure (``Timing``)."""
    timer = speed_timer(gen, model, timing)
    steps = model.settings.given().get("steps")
    processes = collectives.world_size()
    if processes == 1:
        timer.start(timing.warmup)
        before = dict(gen.stage_seconds or {})
        timer.repeat(timing.repeats)
        stages = {
            k: (v - before.get(k, 0.0)) / timing.repeats
            for k, v in (gen.stage_seconds or {}).items()
        }
        record = timer.result().to_record(steps)
        return record.model_copy(update={"stage_s": stages}) if stages else record
    alone = None
    if distributed.is_main():
        alone = timer.run(repeats=timing.repeats, warmup=timing.warmup).images_per_s
    collectives.barrier()
    joint = SamplingTimer(
        timer.fn,
        device=timer.device,
        batch_size=timer.batch_size,
        nfe=timer.nfe,
        fast=timer.fast,
        choice=timer.choice,
    )
    joint.start(timing.warmup)  # rank 0's cold start is behind it; the others' is here
    collectives.barrier()  # start the timed calls together
    joint.repeat(timing.repeats)
    result = joint.result(noise=False)
    if timer.first_s is not None:  # rank 0's cold start, and whether its kernels were cached
        result.time_to_first_image_s = timer.first_s
        result.compile_cache = timer.compile_cache
    # Every process of this machine ran at once: the load they may make is all their threads.
    result.threads = (result.threads or 1) * distributed.current().local_world_size
    rates = collectives.gather(result.images_per_s)
    alone = collectives.broadcast(alone)
    return scaling(result.to_record(steps), rates, alone)


def scaling(record: Timing, rates: list[float], alone: float) -> Timing:
    """``record`` with the several-process fields: ``rates`` are each rank's images/s when
    all ran at once, ``alone`` rank 0's when it ran alone."""
    total = sum(rates)
    return record.model_copy(
        update={
            "processes": len(rates),
            "per_rank_images_per_s": rates,
            "aggregate_images_per_s": total,
            # How much slower the slowest rank was than the fastest, as a fraction.
            "straggler_spread": (max(rates) - min(rates)) / max(rates),
            "single_process_images_per_s": alone,
            "scaling_efficiency": total / (len(rates) * alone),
        }
    )
