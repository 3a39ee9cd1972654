"""``bench eval``, ``bench stats`` and ``bench eval-speed``: the evaluator on its own.

- ``bench eval REAL FAKE``: ``genbench.evaluate`` on two inputs, like ``python -m
  pytorch_fid`` (see ``genbench.eval.sources`` for what each may be).
- ``bench stats DATASET --split S``: build (or find) the cached reference statistics.
- ``bench eval-speed``: images/s of the streaming path next to the bare network forward.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from genbench.cli.options import (
    BatchSize,
    DataRoot,
    Device,
    Dims,
    Extractor,
    InceptionWeights,
    Quantize,
    Resize,
    StrictFp32,
    file_out,
    split_list,
)


def default_workers() -> int:
    """Image-loading processes by default: one per CPU this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return min(cpus, 8)


def eval_cmd(
    real: Annotated[
        str,
        typer.Argument(
            metavar="REAL",
            help="real images: folder, .zip, samples .npz, statistics .npz, or DATASET:SPLIT",
        ),
    ],
    fake: Annotated[
        str,
        typer.Argument(metavar="FAKE", help="generated images: folder, .zip or samples .npz"),
    ],
    metrics: Annotated[
        str, typer.Option(metavar="A,B", help="comma-separated: fid, is, kid, pr")
    ] = "fid",
    dims: Dims = None,
    batch_size: BatchSize = 50,
    device: Device = "auto",
    num_workers: Annotated[
        int | None,
        typer.Option(metavar="N", min=0, help="image loading processes (default min(8, CPUs))"),
    ] = None,
    extractor: Extractor = "inception",
    inception_weights: InceptionWeights = None,
    resize: Resize = None,
    strict_fp32: StrictFp32 = False,
    quantize: Quantize = True,
    max_features: Annotated[
        int, typer.Option(metavar="N", min=1, help="feature vectors kept for KID and PR")
    ] = 10_000,
    kid_subset_size: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            min=2,
            help="KID subset size; default 1000, and fewer images than that is an error",
        ),
    ] = None,
    kid_subsets: Annotated[int, typer.Option(metavar="N", min=1)] = 100,
    data_root: DataRoot = None,
    out: Annotated[
        Path, typer.Option(metavar="PATH", help="where the JSON results are written")
    ] = Path("eval.json"),
) -> None:
    """Metrics between REAL and FAKE images (FID by default, like pytorch-fid's command line);
    prints a table and writes JSON."""
    # Imported here: the evaluator loads torch, which `bench --help` must not.
    from genbench.benchmarks import distributed
    from genbench.core.device import resolve_device
    from genbench.eval.evaluate import evaluate, metrics_table
    from genbench.store.files import write_record

    file_out(out)
    # Under torchrun / mpirun / srun the fake images are sharded by rank; rank 0 writes.
    with distributed.session(resolve_device(device or "auto")) as mine:
        result = evaluate(
            fake,
            real,
            split_list(metrics, "--metrics", "fid") or [],
            extractor=extractor,
            weights=inception_weights,
            dims=dims,
            resize=resize,
            quantize=quantize,
            tf32=not strict_fp32,
            device=str(mine),
            batch_size=batch_size,
            num_workers=default_workers() if num_workers is None else num_workers,
            data_root=data_root,
            max_features=max_features,
            kid_subsets=kid_subsets,
            kid_subset_size=kid_subset_size,
        )
        if not distributed.is_main():
            return
        write_record(out, result)
    typer.echo(metrics_table(result))
    if result.fake_images_per_s is not None:
        typer.echo(
            f"fake: {result.protocol.num_samples} images in {result.fake_seconds:.2f} s "
            f"({result.fake_images_per_s:.1f} images/s, {result.processes} "
            f"process{'es' if result.processes > 1 else ''})"
        )
    typer.echo(f"results: {out}")


def stats_cmd(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="a data set (its --split), DATASET:SPLIT, an image folder, a .zip of images "
            "or a samples .npz",
        ),
    ],
    split: Annotated[
        str, typer.Option(metavar="SPLIT", help="train or test (for a data set name)")
    ] = "train",
    extractor: Extractor = "inception",
    dims: Dims = None,
    resize: Resize = None,
    strict_fp32: StrictFp32 = False,
    quantize: Quantize = True,
    batch_size: BatchSize = 250,
    device: Device = "auto",
    num_workers: Annotated[
        int | None,
        typer.Option(metavar="N", min=0, help="image loading processes (default min(8, CPUs))"),
    ] = None,
    inception_weights: InceptionWeights = None,
    data_root: DataRoot = None,
    num_features: Annotated[
        int,
        typer.Option(metavar="N", min=0, help="feature vectors kept for KID and PR (0: none)"),
    ] = 10_000,
    force: Annotated[bool, typer.Option("--force", help="recompute even if cached")] = False,
    out: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="also write a copy of the .npz here (pytorch-fid's)"),
    ] = None,
) -> None:
    """Reference statistics of SOURCE, cached as a pytorch-fid .npz (mu, sigma, features)
    with a JSON sidecar holding their key: a data set split by name, image files by content
    hash. `python -m pytorch_fid` reads the .npz (--out) as it reads its own."""
    # Imported here: `bench --help` and `bench report` must not load torch.
    from genbench.core.device import resolve_device
    from genbench.eval.extractors import ExtractorOptions, load_extractor
    from genbench.eval.reference import image_statistics, split_statistics

    file_out(out)
    target = _stats_source(source, split)  # bad input fails before any weights load
    ext = load_extractor(
        extractor,
        resolve_device(device or "auto"),
        inception_weights,
        ExtractorOptions(dims, resize, quantize, not strict_fp32),
    )
    if isinstance(target, tuple):
        name, split = target
        ref, path, cached = split_statistics(
            ext,
            name,
            split,
            data_root=data_root,
            batch_size=batch_size,
            num_features=num_features,
            force=force,
            progress=True,
        )
        what = f"{name} {split}"
    else:
        ref, path, cached = image_statistics(
            ext,
            target,
            batch_size=batch_size,
            num_workers=default_workers() if num_workers is None else num_workers,
            num_features=num_features,
            force=force,
            progress=True,
        )
        what = target.label
    if out is not None:
        ref.save(out)
    typer.echo(f"{'cached' if cached else 'computed'}: {path}")
    kept = 0 if ref.features is None else len(ref.features)
    typer.echo(
        f"{what}: {ref.count} images, {ref.dim}-d, stats sha256 {ref.sha256[:12]}, "
        f"{kept} feature vectors kept"
    )
    if out is not None:
        typer.echo(f"copy: {out}")


def _stats_source(text: str, split: str) -> Any:
    """``bench stats``' SOURCE: ``(data set, split)`` or an ``ImageSet``; a one-line usage
    error (listing the data sets) when it is neither a data set nor readable image files."""
    from genbench.core.errors import GenbenchError, UnknownNameError
    from genbench.data.datasets import DATASETS, SPLITS
    from genbench.eval.sources import DatasetSplit, ImageSet, open_source

    if not Path(text).exists() and ":" not in text and "/" not in text:
        if split not in SPLITS:
            raise GenbenchError(f"--split: unknown split {split!r}; valid choices: train, test")
        try:
            return DATASETS.canonical(text), split
        except UnknownNameError as exc:
            raise GenbenchError(
                f"SOURCE: {text!r} is neither a data set ({', '.join(exc.choices)}) nor an "
                "existing folder, .zip or .npz"
            ) from None
    opened = open_source(text, "SOURCE")
    if isinstance(opened, DatasetSplit):
        return opened.dataset, opened.split
    if not isinstance(opened, ImageSet):
        raise GenbenchError(f"SOURCE: {text} already holds statistics (mu, sigma), not images")
    return opened


def eval_speed_cmd(
    num_images: Annotated[int, typer.Option(metavar="N", min=1)] = 50_000,
    batch_size: BatchSize = 500,
    device: Device = "auto",
    dims: Dims = None,
    resize: Resize = None,
    strict_fp32: StrictFp32 = False,
    image_size: Annotated[
        int, typer.Option(metavar="PX", min=1, help="side of the generated images")
    ] = 32,
    inception_weights: InceptionWeights = None,
    random_weights: Annotated[
        bool,
        typer.Option(
            "--random-weights",
            help="time pytorch-fid's Inception with random weights (no file needed; speed "
            "does not depend on the values)",
        ),
    ] = False,
    metrics: Annotated[
        str, typer.Option(metavar="A,B", help="metrics streamed (fid and is need no reference)")
    ] = "fid,is",
    warmup: Annotated[int, typer.Option(metavar="N", min=0, help="untimed batches first")] = 2,
    forward_every: Annotated[
        int,
        typer.Option(
            metavar="K",
            min=1,
            help="time the bare forward on every K-th batch only, interleaved as ever (1: "
            "every batch); saves time on a slow device",
        ),
    ] = 1,
    out: Annotated[Path | None, typer.Option(metavar="PATH", help="write JSON here")] = None,
) -> None:
    """Images/s of the streaming evaluation path (FID + IS by default) next to the bare
    Inception forward pass in the same process, on NUM_IMAGES synthetic images (target: at
    least 95% of the forward rate)."""
    # Imported here: `bench --help` and `bench report` must not load torch.
    from genbench.core.device import resolve_device
    from genbench.core.io import write_json_atomic
    from genbench.eval.throughput import describe_throughput, eval_speed

    file_out(out)
    result, ext = eval_speed(
        resolve_device(device or "auto"),
        num_images=num_images,
        batch_size=batch_size,
        image_size=image_size,
        metrics=split_list(metrics, "--metrics", "fid,is") or [],
        dims=dims,
        resize=resize,
        strict_fp32=strict_fp32,
        weights=inception_weights,
        random_weights=random_weights,
        warmup=warmup,
        forward_every=forward_every,
    )
    if out is not None:
        write_json_atomic(out, result)
    typer.echo(describe_throughput(result, ext))
