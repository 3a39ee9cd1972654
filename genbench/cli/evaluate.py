"""``bench eval``, ``bench stats`` and ``bench eval-speed``: the evaluator on its own.

- ``bench eval REAL FAKE``: metrics between two sets of images, like ``python -m pytorch_fid``:
  each an image folder (pytorch-fid's rule: the files directly inside with an image
  extension), a ``.npz`` of samples (``arr_0``, as guided-diffusion writes them, or a single
  array; uint8 NHWC/NCHW or float NCHW in [-1, 1]), a ``.npz`` of statistics (``mu``,
  ``sigma``: FID only), or, for REAL, a data set split ``DATASET:SPLIT`` (cached statistics).
- ``bench stats DATASET --split S``: build (or find) the cached reference statistics.
- ``bench eval-speed``: images/s of the streaming path next to the bare network forward.

Imports of torch and the evaluator happen inside the commands, so ``bench --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from genbench.core.errors import GenbenchError

if TYPE_CHECKING:  # the real imports are lazy (torch): bench --help stays fast
    import numpy as np
    import torch

    from genbench.eval.extractors import ExtractorOptions, FeatureExtractor
    from genbench.eval.metrics import MetricOptions
    from genbench.eval.reference import ReferenceStats

IMAGE_EXTENSIONS = frozenset({"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"})
"""pytorch-fid's image file extensions (matched case-insensitively here)."""

# --------------------------------------------------------------------------- shared options

Dims = Annotated[
    int | None,
    typer.Option(metavar="N", help="feature size, pytorch-fid's --dims: 64, 192, 768, 2048"),
]
Resize = Annotated[
    str | None,
    typer.Option(metavar="METHOD", help="bilinear (pytorch-fid, default) or clean (clean-fid)"),
]
StrictFp32 = Annotated[
    bool,
    typer.Option(
        "--strict-fp32",
        help="forbid TF32 convolutions (by default cuDNN may use them on Ampere+ GPUs, as "
        "with pytorch-fid)",
    ),
]
Quantize = Annotated[
    bool,
    typer.Option(
        "--quantize/--no-quantize",
        help="round float images to uint8 first, as saving them as PNG would",
    ),
]
Device = Annotated[str, typer.Option(metavar="DEVICE", help="auto, cpu, cuda or cuda:N")]
BatchSize = Annotated[int, typer.Option(metavar="N", min=1, help="images per forward pass")]
Extractor = Annotated[
    str, typer.Option(metavar="NAME", help="feature extractor (see `bench list`)")
]
Weights = Annotated[
    Path | None,
    typer.Option(
        "--inception-weights",
        "--weights",
        metavar="PATH",
        help="local extractor weights, e.g. pt_inception-2015-12-05-6726825d.pth (else "
        "$BENCH_INCEPTION_WEIGHTS, then the torch hub cache)",
    ),
]
DataRoot = Annotated[
    Path | None, typer.Option(metavar="DIR", help="directory holding the data set")
]


def _load_extractor(
    name: str,
    device: str,
    weights: Path | None,
    dims: int | None,
    resize: str | None,
    quantize: bool,
    strict_fp32: bool,
) -> FeatureExtractor:
    from genbench.benchmarks.runner import resolve_device
    from genbench.eval.extractors import ExtractorOptions, load_extractor

    options = ExtractorOptions(dims, resize, quantize, not strict_fp32)
    return load_extractor(name, resolve_device(device), weights, options)


# --------------------------------------------------------------------------- image sources


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted (pytorch-fid's selection)."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix[1:].lower() in IMAGE_EXTENSIONS
    )


class _ImageFiles:
    """A map-style data set of uint8 (3, H, W) tensors read with PIL as RGB, as pytorch-fid
    reads them."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        import numpy as np
        import torch
        from PIL import Image

        with Image.open(self.files[i]) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _as_list(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    return batch


def _same_shape_runs(images: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Stack consecutive images of equal shape (folders may mix sizes)."""
    import torch

    start = 0
    for i in range(1, len(images) + 1):
        if i == len(images) or images[i].shape != images[start].shape:
            yield torch.stack(images[start:i])
            start = i


def _sample_array(path: Path) -> np.ndarray:
    """The image array of a samples ``.npz``: ``arr_0``, else its only array."""
    import numpy as np

    with np.load(path) as data:
        names = data.files
        if "arr_0" in names:
            array = data["arr_0"]
        elif len(names) == 1:
            array = data[names[0]]
        else:
            raise GenbenchError(
                f"{path}: expected mu and sigma (statistics) or arr_0 / a single array "
                f"(samples), found {', '.join(names)}"
            )
    if array.ndim != 4:
        raise GenbenchError(
            f"{path}: samples must be (N, H, W, C) or (N, C, H, W), got {array.shape}"
        )
    if array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)  # NHWC, as guided-diffusion saves samples
    if array.shape[1] not in (1, 3):
        raise GenbenchError(f"{path}: cannot tell the channel axis of shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise GenbenchError(f"{path}: samples must be uint8 or float, got {array.dtype}")
        if array.size and (array.min() < -1 or array.max() > 1):
            raise GenbenchError(f"{path}: float samples must lie in [-1, 1]")
    return array


@dataclass
class ImageSet:
    """Images to evaluate: a description for the protocol and a way to stream batches."""

    source: dict[str, Any]
    count: int
    batches: Callable[[int, int], Iterator[torch.Tensor]]
    """``batches(batch_size, num_workers)``: the images as (N, C, H, W) tensors."""


@dataclass
class StatsFile:
    """A ``.npz`` holding pytorch-fid statistics."""

    path: Path


def open_input(text: str, what: str) -> ImageSet | StatsFile:
    """Interpret REAL or FAKE: an image folder, a samples or statistics ``.npz``."""
    import numpy as np
    import torch

    path = Path(text)
    if path.is_dir():
        files = image_files(path)
        if not files:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise GenbenchError(f"{what}: no image files ({exts}) in folder {path}")

        def folder_batches(batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
            from torch.utils.data import DataLoader

            loader = DataLoader(
                _ImageFiles(files),
                batch_size=batch_size,
                num_workers=num_workers,
                collate_fn=_as_list,
            )
            for images in loader:
                yield from _same_shape_runs(images)

        return ImageSet({"folder": str(path)}, len(files), folder_batches)
    if path.is_file() and path.suffix == ".npz":
        try:
            with np.load(path) as data:
                names = set(data.files)
        except Exception as exc:
            raise GenbenchError(f"{what}: cannot read {path} ({exc})") from None
        if {"mu", "sigma"} <= names:
            return StatsFile(path)
        array = _sample_array(path)

        def array_batches(batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
            for i in range(0, len(array), batch_size):
                yield torch.from_numpy(np.ascontiguousarray(array[i : i + batch_size]))

        return ImageSet({"path": str(path)}, len(array), array_batches)
    raise GenbenchError(
        f"{what}: {text} is neither an image folder nor a .npz file (samples or statistics)"
    )


def _dataset_split(text: str) -> tuple[str, str] | None:
    """``("cifar10", "train")`` for ``cifar10:train`` when that names a registered data set
    and no file of that name exists."""
    from genbench.data.datasets import DATASETS

    name, sep, split = text.partition(":")
    if not sep or Path(text).exists() or name not in DATASETS:
        return None
    return DATASETS.canonical(name), split


# --------------------------------------------------------------------------- bench eval


def _format_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| metric | value |", "|---|---|"]
    for name, result in results.items():
        if name == "pr":
            k = result["k"]
            lines.append(f"| precision (k={k}) | {result['precision']:.6g} |")
            lines.append(f"| recall (k={k}) | {result['recall']:.6g} |")
        elif "std" in result:
            lines.append(f"| {name} | {result['value']:.6g} ± {result['std']:.6g} |")
        else:
            lines.append(f"| {name} | {result['value']:.6g} |")
    return "\n".join(lines)


def _reference(
    real: str,
    source: ImageSet | StatsFile | None,
    extractor: FeatureExtractor,
    num_features: int,
    batch_size: int,
    num_workers: int,
    data_root: Path | None,
) -> ReferenceStats:
    """REAL as ``ReferenceStats``, keeping ``num_features`` feature vectors (KID, PR), with a
    progress bar while features are computed."""
    from genbench.core.progress import counting
    from genbench.eval.reference import ReferenceStats, StatsCache, accumulate, dataset_reference

    split = _dataset_split(real)
    if split is not None:
        from genbench.data.datasets import get_dataset

        dataset = get_dataset(split[0]).load(split[1], data_root)
        with counting(f"REAL {real}", len(dataset)) as advance:
            return dataset_reference(
                extractor,
                dataset,
                *split,
                batch_size=batch_size,
                num_features=num_features,
                cache=StatsCache(),
                on_batch=advance,
            )
    source = source if source is not None else open_input(real, "REAL")
    if isinstance(source, StatsFile):
        return ReferenceStats.from_npz(source.path)
    with counting("REAL", source.count) as advance:
        batches = source.batches(batch_size, num_workers)
        stats, kept = accumulate(extractor, batches, num_features, advance)
    return ReferenceStats.from_accumulated(stats, kept, source.source)


Opened = tuple[ImageSet | StatsFile | None, ImageSet | StatsFile]


def check_inputs(real: str, fake: str, metrics: list[str]) -> Opened:
    """Usage errors before anything is loaded: unknown metrics, unreadable REAL or FAKE,
    metrics a statistics file cannot give. Returns REAL (None for a data set split) and
    FAKE opened, for ``evaluate_inputs``."""
    from genbench.eval.metrics import METRICS

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise GenbenchError(
            f"--metrics: unknown metric {unknown[0]!r}; valid choices: "
            f"{', '.join(METRICS.choices())}"
        )
    real_source = None if _dataset_split(real) is not None else open_input(real, "REAL")
    fake_source = open_input(fake, "FAKE")
    if isinstance(fake_source, StatsFile):
        others = [m for m in metrics if METRICS.canonical(m) != "fid"]
        if others:
            raise GenbenchError(
                f"FAKE is a statistics file: only fid can be computed from it, not "
                f"{', '.join(others)}; pass images (a folder or a samples .npz)"
            )
    return real_source, fake_source


def evaluate_inputs(
    real: str,
    fake: str,
    metrics: list[str],
    extractor: FeatureExtractor,
    options: MetricOptions,
    batch_size: int,
    num_workers: int = 0,
    data_root: Path | None = None,
    opened: Opened | None = None,
) -> dict[str, Any]:
    """Metrics of FAKE against REAL (see the module docstring): ``{"real", "fake",
    "metrics", "protocol"}``, the shape of a run's metrics.json. ``opened``: what
    ``check_inputs`` returned for them, so nothing is read twice."""
    from genbench.core.progress import counting
    from genbench.eval.evaluator import Evaluator
    from genbench.eval.metrics import METRICS, frechet_distance
    from genbench.eval.reference import ReferenceStats

    real_source, fake_source = opened or check_inputs(real, fake, metrics)
    needs_features = any(METRICS.get(m).needs_features for m in metrics)
    num_features = options.max_features if needs_features else 0
    ref = _reference(real, real_source, extractor, num_features, batch_size, num_workers, data_root)
    if ref.dim != extractor.feature_dim:
        raise GenbenchError(
            f"REAL holds {ref.dim}-d statistics, but the extractor gives "
            f"{extractor.feature_dim}-d features; pass --dims {ref.dim}"
        )
    if isinstance(fake_source, StatsFile):
        fake_ref = ReferenceStats.from_npz(fake_source.path)
        value = frechet_distance(fake_ref.mu, fake_ref.sigma, ref.mu, ref.sigma)
        protocol = {
            **extractor.protocol(),
            "fake": fake_ref.protocol(),
            "reference": ref.protocol(),
        }
        return {
            "real": real,
            "fake": fake,
            "metrics": {"fid": {"value": value}},
            "protocol": protocol,
        }
    evaluator = Evaluator(extractor, ref, metrics, options)
    with counting("FAKE", fake_source.count) as advance:
        for batch in fake_source.batches(batch_size, num_workers):
            evaluator.update(batch)
            advance(len(batch))
    protocol = {**evaluator.protocol(), "fake": fake_source.source}
    return {"real": real, "fake": fake, "metrics": evaluator.compute(), "protocol": protocol}


def _default_workers() -> int:
    import os

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
            help="real images: folder, samples .npz, statistics .npz, or DATASET:SPLIT",
        ),
    ],
    fake: Annotated[
        str,
        typer.Argument(metavar="FAKE", help="generated images: folder or samples .npz"),
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
    inception_weights: Weights = None,
    resize: Resize = None,
    strict_fp32: StrictFp32 = False,
    quantize: Quantize = True,
    max_features: Annotated[
        int, typer.Option(metavar="N", min=1, help="feature vectors kept for KID and PR")
    ] = 10_000,
    kid_subset_size: Annotated[int, typer.Option(metavar="N", min=2)] = 1000,
    kid_subsets: Annotated[int, typer.Option(metavar="N", min=1)] = 100,
    data_root: DataRoot = None,
    out: Annotated[
        Path, typer.Option(metavar="PATH", help="where the JSON results are written")
    ] = Path("eval.json"),
) -> None:
    """Metrics between REAL and FAKE images (FID by default, like pytorch-fid's command line);
    prints a table and writes JSON."""
    from genbench.core import io as store
    from genbench.eval.metrics import MetricOptions

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    if not names:
        raise GenbenchError("--metrics: give at least one metric, e.g. --metrics fid")
    opened = check_inputs(real, fake, names)  # fail on bad input before loading a network
    ext = _load_extractor(extractor, device, inception_weights, dims, resize, quantize, strict_fp32)
    options = MetricOptions(
        kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, max_features=max_features
    )
    workers = _default_workers() if num_workers is None else num_workers
    result = evaluate_inputs(
        real, fake, names, ext, options, batch_size, workers, data_root, opened
    )
    store.write_json_atomic(out, result)
    typer.echo(_format_table(result["metrics"]))
    typer.echo(f"results: {out}")


# --------------------------------------------------------------------------- bench stats


def stats_cmd(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="registered data set")],
    split: Annotated[str, typer.Option(metavar="SPLIT", help="train or test")] = "train",
    extractor: Extractor = "inception",
    dims: Dims = None,
    resize: Resize = None,
    strict_fp32: StrictFp32 = False,
    quantize: Quantize = True,
    batch_size: BatchSize = 250,
    device: Device = "auto",
    inception_weights: Weights = None,
    data_root: DataRoot = None,
    num_features: Annotated[
        int,
        typer.Option(metavar="N", min=0, help="feature vectors kept for KID and PR (0: none)"),
    ] = 10_000,
    force: Annotated[bool, typer.Option("--force", help="recompute even if cached")] = False,
    out: Annotated[
        Path | None, typer.Option(metavar="PATH", help="also write a copy of the .npz here")
    ] = None,
) -> None:
    """Compute (or find) the reference statistics of DATASET's SPLIT and cache them as a
    pytorch-fid .npz (mu, sigma, features) with a JSON sidecar holding their key."""
    from genbench.core.progress import counting
    from genbench.data.datasets import get_dataset
    from genbench.eval.reference import StatsCache, cache_key, dataset_reference

    ext = _load_extractor(extractor, device, inception_weights, dims, resize, quantize, strict_fp32)
    data = get_dataset(dataset).load(split, data_root)
    cache = StatsCache()
    key = cache_key(ext, dataset, split, len(data))
    ref = None if force else cache.load(key, num_features)
    cached = ref is not None
    if force:
        cache.path(key).with_suffix(".json").unlink(missing_ok=True)
    if ref is None:
        with counting(f"{dataset} {split} features", len(data)) as advance:
            ref = dataset_reference(
                ext,
                data,
                dataset,
                split,
                batch_size=batch_size,
                num_features=num_features,
                cache=cache,
                on_batch=advance,
            )
    if out is not None:
        ref.save(out)
    state = "cached" if cached else "computed"
    typer.echo(f"{state}: {cache.path(key)}")
    typer.echo(
        f"{dataset} {split}: {ref.count} images, {ref.dim}-d, stats sha256 {ref.sha256[:12]}, "
        f"{0 if ref.features is None else len(ref.features)} feature vectors kept"
    )
    if out is not None:
        typer.echo(f"copy: {out}")


# --------------------------------------------------------------------------- bench eval-speed


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
    inception_weights: Weights = None,
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
    from genbench.benchmarks.runner import resolve_device
    from genbench.core import io as store
    from genbench.core.progress import counting
    from genbench.eval.extractors import ExtractorOptions
    from genbench.eval.throughput import measure_throughput

    dev = resolve_device(device)
    if random_weights:
        ext = _random_inception(dev, ExtractorOptions(dims, resize, True, not strict_fp32))
    else:
        ext = _load_extractor(
            "inception", device, inception_weights, dims, resize, True, strict_fp32
        )
    names = tuple(m.strip() for m in metrics.split(",") if m.strip())
    bad = [m for m in names if m not in ("fid", "is")]
    if bad or not names:
        raise GenbenchError(f"--metrics: eval-speed streams fid and/or is, not {metrics!r}")
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
    if out is not None:
        store.write_json_atomic(out, result)
    tf32 = "TF32 allowed" if ext.allow_tf32 else "strict float32"
    typer.echo(
        f"device: {result['device_name']} ({result['device']}, {tf32}, tf32 in effect: "
        f"{ext.tf32}); {num_images} images, batch {batch_size}, {ext.feature_dim}-d, "
        f"resize {ext.resize}"
    )
    typer.echo(
        f"bare Inception forward: {result['forward_images_per_s']:,.1f} images/s "
        f"(on {result['forward_images']:,} images: 1 batch in {forward_every})"
    )
    typer.echo(f"streaming {','.join(names)}: {result['stream_images_per_s']:,.1f} images/s")
    ratio = result["stream_over_forward"]
    typer.echo(f"ratio: {ratio:.1%} (target >= 95%); final metrics {result['finalize_s']:.2f} s")


def _random_inception(device: torch.device, options: ExtractorOptions) -> FeatureExtractor:
    import torch

    from genbench.eval.extractors import InceptionExtractor, get_loader
    from genbench.eval.inception import build_fid_inception, random_state_dict

    resolved = get_loader("inception").resolve_options(options)
    net = build_fid_inception(random_state_dict(), resolved.dims or 2048, "random")
    ext = InceptionExtractor(
        net,
        "random",
        feature_dim=resolved.dims,
        resize=resolved.resize,
        quantize=resolved.quantize,
        allow_tf32=resolved.allow_tf32,
    )
    return ext.to(torch.device(device)).eval().requires_grad_(False)
