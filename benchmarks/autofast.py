"""``--fast``: the fastest fast-path combination whose images stay within tolerance.

For one model, batch size and sampler setting on one machine, candidates are tried on
copies of the generator, each sampling the case's own seeds:

1. eager: every precision the device runs (CPU: fp32, bf16; CUDA: fp32, tf32, bf16,
   fp16), each with and without channels-last;
2. ``compile="default"`` on the fastest eligible eager candidate;
3. on CUDA, CUDA graphs on the fastest eligible candidate so far.

A candidate is eligible when its images differ from fp32 eager's on the same seeds by at
most its precision's tolerance (``fastpath.TOLERANCE``, mean absolute difference on
[-1, 1] images) and are finite. The fastest eligible candidate by median seconds per call
wins; fp32 eager is always eligible, so there is always a choice. A candidate already
``SLOWER`` times slower than the best so far after one timed call is not timed further, and
an eager one whose first call took twice that is not timed at all (its first call stands).

The choice is cached per machine (``environment.machine_id``: hardware, libraries,
threads) in ``<cache>/fast/<machine>.json`` under a key of the generator, its config, its
sampler settings, the batch size and the device, and recorded with every result
(``FastChoice``): the chosen paths, whether they came from the cache, and each
candidate's figures. Delete the file to choose again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from genbench.benchmarks.environment import fingerprint, machine_id
from genbench.benchmarks.fastpath import FastPaths, prepare_sampler
from genbench.core import collectives, io
from genbench.core.cache import cache_root
from genbench.core.device import time_call
from genbench.core.errors import GenbenchError
from genbench.generators import Generator, SampleSettings
from genbench.store.records import FastCandidate, FastChoice, FastPathsRecord

TIMED = 3  # timed calls per candidate after one untimed warm call
SLOWER = 1.5  # a candidate this many times slower than the best after one call is dropped
STAGES: tuple[str, ...] = ("eager", "compile", "cuda_graphs")
"""The search stages run (the tests leave out ``compile``, which takes a minute on CPU)."""

Measure = Callable[[FastPaths, float | None], tuple[torch.Tensor, list[float]]]
"""(paths, best median so far) -> (images of the case's seeds, seconds of timed calls)."""


def paths_of(record: Any) -> FastPaths:
    """The ``FastPaths`` of a ``FastCandidate`` or ``FastPathsRecord``."""
    return FastPaths(
        precision=record.precision,
        channels_last=record.channels_last,
        compile=record.compile,
        cuda_graphs=record.cuda_graphs,
    )


def eager_candidates(device: torch.device) -> list[FastPaths]:
    """Stage 1: every precision ``device`` runs, without and with channels-last."""
    precisions = ["fp32", "tf32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]
    return [FastPaths(precision=p, channels_last=cl) for p in precisions for cl in (False, True)]


def search(
    device: torch.device, measure: Measure, stages: Sequence[str] | None = None
) -> tuple[FastPaths, list[FastCandidate]]:
    """Run the staged search with ``measure``; returns (chosen paths, every candidate).

    The first candidate measured is fp32 eager, whose images are the reference."""
    stages = STAGES if stages is None else stages
    candidates: list[FastCandidate] = []
    reference: torch.Tensor | None = None

    def best() -> FastCandidate:
        ok = [c for c in candidates if c.within_tolerance and c.median_s is not None]
        return min(ok, key=lambda c: c.median_s or float("inf"))

    def attempt(paths: FastPaths) -> None:
        nonlocal reference
        so_far = best().median_s if candidates else None
        try:
            images, seconds = measure(paths, so_far)
        except Exception as exc:
            if reference is None:  # fp32 eager itself failed: nothing to compare against
                raise
            # A path this model or device cannot take is not a candidate (say why).
            candidates.append(
                FastCandidate(
                    **paths.to_dict(),
                    tolerance=paths.tolerance,
                    within_tolerance=False,
                    error=f"{type(exc).__name__}: {exc}".splitlines()[0][:200],
                )
            )
            return
        images = images.float().cpu()
        if reference is None:
            if not torch.isfinite(images).all():
                raise GenbenchError("--fast: fp32 eager sampling gave non-finite images")
            reference = images
        finite = bool(torch.isfinite(images).all())
        diff = (images - reference).abs().mean().item() if finite else float("inf")
        candidates.append(
            FastCandidate(
                **paths.to_dict(),
                mean_abs_diff=diff,
                tolerance=paths.tolerance,
                within_tolerance=finite and diff <= paths.tolerance,
                median_s=statistics.median(seconds) if seconds else None,
                timed_calls=len(seconds),
            )
        )

    for paths in eager_candidates(device) if "eager" in stages else [FastPaths()]:
        attempt(paths)
    if "compile" in stages:
        attempt(paths_of(best()).override(compile="default"))
    if "cuda_graphs" in stages and device.type == "cuda":
        attempt(paths_of(best()).override(cuda_graphs=True))
    return paths_of(best()), candidates


def measure_on_copies(
    gen: Generator,
    seeds: Sequence[int],
    labels: torch.Tensor | None,
    settings: SampleSettings,
) -> Measure:
    """A ``Measure`` that samples ``seeds`` with a deep copy of ``gen`` per candidate (the
    fast paths change a generator in place): one untimed call (its images are checked),
    one more untimed warm call, then up to ``TIMED`` timed calls."""
    seeds = list(seeds)

    def measure(paths: FastPaths, best_s: float | None) -> tuple[torch.Tensor, list[float]]:
        candidate = copy.deepcopy(gen)
        candidate.eval()
        run = prepare_sampler(candidate, paths, lambda: candidate.sample(seeds, labels, settings))
        kept: list[torch.Tensor] = []
        first = time_call(lambda: kept.append(run()), candidate.device)
        images = kept[0]
        eager = paths.compile == "none" and not paths.cuda_graphs
        if eager and best_s is not None and first > 2 * SLOWER * best_s:
            # An eager first call costs about what later ones do: this one is out of the
            # race already (bf16 emulated on a CPU without bf16 units takes minutes).
            return images, [first]
        run()  # warm: compile's second call, CUDA graph capture
        seconds: list[float] = []
        for _ in range(TIMED):
            seconds.append(time_call(run, candidate.device))
            if best_s is not None and seconds[0] > SLOWER * best_s:
                break  # clearly slower: not worth the rest of its calls
        return images, seconds

    return measure


def choice_key(
    generator: str, config: dict[str, Any], settings: dict[str, Any], batch_size: int, device
) -> str:
    """What a cached choice is for: the model, its sampler settings, batch size, device."""
    blob = json.dumps(
        {
            "generator": generator,
            "config": config,
            "settings": settings,
            "batch_size": batch_size,
            "device": torch.device(device).type,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_file(device: torch.device) -> Any:
    """``<cache>/fast/<machine id>.json`` for ``device`` on this machine."""
    return cache_root() / "fast" / f"{machine_id(fingerprint(device))}.json"


def _cached(path: Any, key: str) -> FastChoice | None:
    try:
        entry = json.loads(path.read_text()).get(key)
        return FastChoice.model_validate(entry) if entry else None
    except (OSError, ValueError, AttributeError):
        return None  # no cache yet, or a damaged one: choose again


def choose(
    gen: Generator,
    *,
    generator: str,
    config: dict[str, Any],
    seeds: Sequence[int],
    labels: torch.Tensor | None,
    settings: SampleSettings,
    log: Callable[[str], None] | None = None,
) -> FastChoice:
    """The fast paths for sampling ``seeds`` with ``gen``: cached for this machine, else
    searched now (on rank 0 under several processes; every rank gets the same choice)."""
    key = choice_key(generator, config, settings.given(), len(seeds), gen.device)
    path = cache_file(gen.device)

    def compute() -> FastChoice:
        cached = _cached(path, key)
        if cached is not None:
            return cached.model_copy(update={"cache": "hit"})
        if log is not None:
            log(f"--fast: choosing the fastest path for {generator} (once per machine)")
        chosen, candidates = search(gen.device, measure_on_copies(gen, seeds, labels, settings))
        choice = FastChoice(
            key=key,
            paths=FastPathsRecord(**chosen.to_dict()),
            cache="chosen",
            candidates=candidates,
            at=io.utc_now(),
        )
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            table = {}
        table = table if isinstance(table, dict) else {}
        table[key] = choice.model_dump(mode="json")
        path.parent.mkdir(parents=True, exist_ok=True)
        io.write_json_atomic(path, table)
        return choice

    return collectives.from_rank0(compute)
