"""Throughput of the streaming evaluation path against the bare network forward pass.

``measure_throughput`` times, in one process on one device, (1) the extractor's network alone
on ready-made network inputs and (2) the whole streaming path a run uses
(``Evaluator.update``: quantize, resize, forward, float64 sums, logits), at the same batch size
on the same device. Generated images come from a small pool made beforehand on
the device, so neither rate includes a generator. Warm-up batches (cuDNN's algorithm search,
allocator growth) run first, untimed; then every batch goes through the streaming path and every
``forward_every``-th batch (by default each one) also through the bare forward, the two timed
in turn, on CUDA with CUDA events after a synchronisation, on CPU with ``time.perf_counter``.
Sampling the forward on every k-th batch keeps the two rates side by side, under the same
load, while a slow device spends most of its time on the path being measured.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.linalg import LinAlgWarning

from genbench.core.device import time_call
from genbench.core.errors import GenbenchError
from genbench.core.progress import counting
from genbench.eval.evaluator import Evaluator
from genbench.eval.extractors import (
    ExtractorOptions,
    FeatureExtractor,
    float32_precision,
    load_extractor,
    random_inception,
)


def _batch_sizes(num_images: int, batch_size: int) -> list[int]:
    full, rest = divmod(num_images, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def measure_throughput(
    extractor: FeatureExtractor,
    num_images: int = 50_000,
    batch_size: int = 500,
    image_size: int = 32,
    metrics: tuple[str, ...] = ("fid", "is"),
    warmup: int = 2,
    seed: int = 0,
    forward_every: int = 1,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Images/s of the streaming path over ``num_images`` generated images of ``image_size``
    pixels in batches of ``batch_size``, and of the bare forward pass on every
    ``forward_every``-th of those batches, with the time of the final metric computation
    (FID's matrix square root) reported apart. ``on_batch(n)`` is called after each batch of
    n images (progress bars)."""
    if forward_every < 1:
        raise ValueError(f"forward_every must be at least 1, got {forward_every}")
    device = extractor.device
    sizes = _batch_sizes(num_images, batch_size)
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (batch_size, 3, image_size, image_size)
    # A few distinct batches, reused: image content does not change the work done.
    pool = [torch.rand(shape, generator=gen, device=device) * 2 - 1 for _ in range(4)]
    net_input = extractor.prepare(pool[0])
    dim = extractor.feature_dim
    evaluator = Evaluator(extractor, (np.zeros(dim), np.eye(dim)), list(metrics))

    def forward(i: int) -> None:
        # The same network work as the streaming path: the logits only when a metric uses them.
        with float32_precision(device, extractor.allow_tf32), torch.no_grad():
            extractor.extract(net_input[: sizes[i]], evaluator.keep_logits)

    def stream(i: int) -> None:
        evaluator.update(pool[i % len(pool)][: sizes[i]])

    for _ in range(warmup):
        forward(0)
        Evaluator(extractor, (np.zeros(dim), np.eye(dim)), list(metrics)).update(pool[0])
    # Batch by batch, alternating, so that a change in the machine's load (other processes,
    # clocks) falls on both rates alike and their ratio stays meaningful.
    forward_s = stream_s = 0.0
    forward_images = 0
    for i, size in enumerate(sizes):
        if i % forward_every == 0:
            forward_s += time_call(lambda: forward(i), device)  # noqa: B023 (called at once)
            forward_images += size
        stream_s += time_call(lambda: stream(i), device)  # noqa: B023
        if on_batch is not None:
            on_batch(size)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # The reference is a stand-in (0, I) and the images noise: only the time matters,
        # so SciPy's near-singular warnings about them would only mislead.
        warnings.simplefilter("ignore", LinAlgWarning)
        values = evaluator.compute()
    finalize_s = time.perf_counter() - t0
    forward_ips, stream_ips = forward_images / forward_s, num_images / stream_s
    return {
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        "torch_threads": torch.get_num_threads(),
        "num_images": num_images,
        "batch_size": batch_size,
        "image_size": image_size,
        "metrics": list(metrics),
        "forward_every": forward_every,
        "forward_images": forward_images,
        "forward_s": forward_s,
        "forward_images_per_s": forward_ips,
        "stream_s": stream_s,
        "stream_images_per_s": stream_ips,
        "stream_over_forward": stream_ips / forward_ips,
        "finalize_s": finalize_s,
        "values": values,
        "protocol": evaluator.protocol(),
    }


def eval_speed(
    device: torch.device,
    *,
    num_images: int = 50_000,
    batch_size: int = 500,
    image_size: int = 32,
    metrics: list[str] | tuple[str, ...] = ("fid", "is"),
    dims: int | None = None,
    resize: str | None = None,
    strict_fp32: bool = False,
    weights: Path | None = None,
    random_weights: bool = False,
    warmup: int = 2,
    forward_every: int = 1,
) -> tuple[dict[str, Any], FeatureExtractor]:
    """``bench eval-speed``: ``measure_throughput`` of pytorch-fid's Inception (its weights,
    or random ones of the same shape) with a progress bar; returns the result and the
    extractor that was timed."""
    names = tuple(metrics)
    bad = [m for m in names if m not in ("fid", "is")]
    if bad or not names:
        raise GenbenchError(f"--metrics: eval-speed streams fid and/or is, not {','.join(names)}")
    options = ExtractorOptions(dims, resize, True, not strict_fp32)
    if random_weights:
        ext = random_inception(device, options)
    else:
        ext = load_extractor("inception", device, weights, options)
    with counting("streaming path", num_images) as advance:
        result = measure_throughput(
            ext,
            num_images,
            batch_size,
            image_size,
            names,
            warmup,
            forward_every=forward_every,
            on_batch=advance,
        )
    return result, ext


def describe_throughput(result: dict[str, Any], ext: FeatureExtractor) -> str:
    """What ``bench eval-speed`` prints: the device, both rates and their ratio."""
    tf32 = "TF32 allowed" if ext.allow_tf32 else "strict float32"
    names = ",".join(result["metrics"])
    return "\n".join(
        [
            f"device: {result['device_name']} ({result['device']}, {tf32}, tf32 in effect: "
            f"{ext.tf32}); {result['num_images']} images, batch {result['batch_size']}, "
            f"{ext.feature_dim}-d, resize {ext.resize}",
            f"bare Inception forward: {result['forward_images_per_s']:,.1f} images/s "
            f"(on {result['forward_images']:,} images: 1 batch in {result['forward_every']})",
            f"streaming {names}: {result['stream_images_per_s']:,.1f} images/s",
            f"ratio: {result['stream_over_forward']:.1%} (target >= 95%); final metrics "
            f"{result['finalize_s']:.2f} s",
        ]
    )
