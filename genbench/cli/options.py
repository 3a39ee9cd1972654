"""Options that several ``bench`` commands share, defined once, and the parsers of their
comma-separated values. Every command that takes one uses the same name, metavar and help."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genbench.core.errors import SpecError

SpecArg = Annotated[
    str, typer.Argument(metavar="SPEC", help="shipped spec name (see `bench list`) or a path")
]
Models = Annotated[
    str | None,
    typer.Option(metavar="A,B", help="comma-separated models of the spec (gan = dcgan)"),
]
Device = Annotated[str | None, typer.Option(metavar="DEVICE", help="auto, cpu, cuda or cuda:N")]
DataRoot = Annotated[
    Path | None,
    typer.Option(
        metavar="PATH",
        help="directory holding the data set (CIFAR-10); for dataset images: your folder or .zip",
    ),
]
InceptionWeights = Annotated[
    Path | None,
    typer.Option(
        "--inception-weights",
        "--weights",
        metavar="PATH",
        help="local extractor weights, e.g. pt_inception-2015-12-05-6726825d.pth (else "
        "$BENCH_INCEPTION_WEIGHTS, then the torch hub cache)",
    ),
]
RunsDir = Annotated[
    Path, typer.Option(metavar="DIR", help="directory that receives result directories")
]
History = Annotated[
    Path | None,
    typer.Option(
        metavar="PATH", help="JSON-lines speed history (default runs/speed_history.jsonl)"
    ),
]

# Sampling speed (bench speed, bench compare)
BatchSizes = Annotated[
    str | None,
    typer.Option(metavar="N,N", help="batch sizes, e.g. 64,256,1024 (default timing.batch_size)"),
]
Steps = Annotated[
    str | None,
    typer.Option(
        metavar="S,S",
        help="sampler step settings, e.g. 50,ddim100,10+15+20 (default: spec's); models "
        "without a steps setting are timed once",
    ),
]
Warmup = Annotated[
    int | None, typer.Option(metavar="N", help="untimed calls first (default timing.warmup)")
]
Precision = Annotated[
    str | None, typer.Option(metavar="P", help="fp32 | tf32 | bf16 | fp16 (default: spec's)")
]
ChannelsLast = Annotated[
    bool | None,
    typer.Option("--channels-last/--no-channels-last", help="NHWC weights for the networks"),
]
Compile = Annotated[
    str | None,
    typer.Option(metavar="MODE", help="none | default | reduce-overhead | max-autotune"),
]
CudaGraphs = Annotated[
    bool | None,
    typer.Option("--cuda-graphs/--no-cuda-graphs", help="replay each network step from a graph"),
]

# Evaluation (bench eval, bench stats, bench eval-speed)
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
BatchSize = Annotated[int, typer.Option(metavar="N", min=1, help="images per forward pass")]
Extractor = Annotated[
    str, typer.Option(metavar="NAME", help="feature extractor (see `bench list`)")
]


def split_list(value: str | None, option: str, example: str) -> list[str] | None:
    """A comma-separated option value as a list (None when the option was not given); an
    empty list is a usage error naming ``option``."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise SpecError(f"{option}: give at least one value, e.g. {option} {example}")
    return items


def parse_labels(value: str | None) -> list[int] | None:
    """``--labels 1,3,5`` as integers (None when not given); a usage error otherwise."""
    items = split_list(value, "--labels", "1,3,5")
    if items is None:
        return None
    bad = next((v for v in items if not v.isdigit()), None)
    if bad is not None:
        raise SpecError(f"--labels: {bad!r} is not a class number; give e.g. --labels 1,3,5")
    return [int(v) for v in items]


def parse_checkpoints(values: list[str] | None) -> dict[str, Path]:
    """``--checkpoint MODEL=PATH`` values as a dict."""
    out: dict[str, Path] = {}
    for value in values or []:
        model, sep, path = value.partition("=")
        if not sep or not model or not path:
            raise SpecError(f"--checkpoint: expected MODEL=PATH, got {value!r}")
        out[model] = Path(path)
    return out


def file_out(path: Path | None, option: str = "--out") -> Path | None:
    """A file to write results to: refused up front when it is a directory, so no work is
    lost to a write that cannot happen."""
    if path is not None and path.is_dir():
        raise SpecError(f"{option}: {path} is a directory; give the path of a file to write")
    return path
