"""Benchmark specs: TOML files validated by pydantic models.

A spec states only what differs from the defaults; unknown keys are errors naming the field
path. ``read_spec`` parses and validates the structure (``genbench.benchmarks.plan``
resolves names, configs, sampling settings and command-line overrides into a ``RunPlan``).
Every problem becomes a ``SpecError`` with one line per field, naming the field path and
the valid choices.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from genbench.core.errors import GenbenchError, SpecError
from genbench.eval.extractors import EXTRACTORS, ExtractorOptions
from genbench.store import versions
from genbench.store.records import SCHEMA_VERSION

SPECS_DIR = Path(__file__).parent / "specs"
RESOLVED_HEADER = "# genbench resolved spec"
"""The first line of every resolved spec (``RunPlan.to_toml``)."""
IS_SPLITS = 10  # the Inception Score's splits (Salimans et al. 2016), fixed by the protocol


class StrictModel(BaseModel):
    """A spec section: unknown keys, infinities and NaN are errors; integers are integers
    (``StrictInt``: ``true`` or ``2.5`` is not a step count)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class BenchmarkSection(StrictModel):
    name: str = Field(description="benchmark name; prefixes run ids")
    dataset: str = Field("digits", description="registered data set")
    seed: StrictInt = Field(0, ge=0, lt=2**63, description="seed for initialisation and data order")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    data_root: Path | None = Field(
        None, description="directory holding the data set; images: the folder or .zip itself"
    )


_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d*)?)h)?\s*(?:(\d+(?:\.\d*)?)m)?\s*(?:(\d+(?:\.\d*)?)s)?\s*$"
)
_IMAGES = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kKM]?)img\s*$")


_EVERY = re.compile(r"^\s*(\d+)\s*steps?\s*$")
EVERY_SEED_OFFSET = 2**40
"""Default first seed of the evaluations during training: far from the evaluation seeds."""


def parse_every(text: str) -> int:
    """Steps of ``"2000 steps"`` (``[evaluate] every``); ``ValueError`` naming the form."""
    match = _EVERY.match(text)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f'{text!r} is not a step interval; write it as "2000 steps"')
    return int(match.group(1))


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``"20s"``, ``"30m"``, ``"1.5h"`` or ``"1h30m"``;
    ``ValueError`` naming the accepted forms otherwise."""
    match = _DURATION.match(text)
    if not text.strip() or match is None or not any(match.groups()):
        raise ValueError(f'{text!r} is not a duration; write e.g. "20s", "30m", "1h30m"')
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not 0 < total <= 10**8:
        raise ValueError(f"{text!r}: a duration must be positive and at most 10^8 s")
    return total


def parse_images(value: int | str) -> int:
    """Training images in ``5_000_000``, ``"5Mimg"``, ``"500kimg"`` or ``"64img"``."""
    if isinstance(value, int):
        count = value
    else:
        match = _IMAGES.match(value)
        if match is None:
            raise ValueError(f'{value!r} is not an image count; write e.g. "5Mimg", "500kimg"')
        scale = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6}[match.group(2)]
        count = round(float(match.group(1)) * scale)
    if not 1 <= count <= 10**13:
        raise ValueError(f"{value!r}: an image budget must be between 1 and 10^13 images")
    return count


class TrainSection(StrictModel):
    """How a model trains: its length (``steps``, ``epochs`` or ``images_budget``, and/or a
    ``time_budget``), batch, accumulation, precision, schedule overrides, EMA, logging and
    training-state checkpoints."""

    steps: StrictInt | None = Field(
        None, ge=0, le=10**10, description="optimiser updates (0 = untrained)"
    )
    epochs: float | None = Field(None, gt=0, le=10**6, description="alternative to steps")
    images_budget: StrictInt | str | None = Field(
        None, description='training images instead of steps: 5000000, "5Mimg", "500kimg"'
    )
    time_budget: str | None = Field(
        None, description='stop training after this long: "20s", "30m", "2h" (training time)'
    )
    batch_size: StrictInt = Field(64, ge=1, description="global batch of one optimiser update")
    grad_accum: StrictInt = Field(
        1, ge=1, le=4096, description="micro-batches per update (same gradient as one batch)"
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16 = autocast the forward passes to bfloat16"
    )
    lr_schedule: Literal["constant", "cosine"] | None = Field(
        None, description="override the generator's schedule (None = its recipe)"
    )
    lr_warmup_steps: StrictInt | None = Field(
        None, ge=0, description="override the linear warm-up, in updates"
    )
    lr_floor: float | None = Field(None, ge=0, description="where a cosine decay ends")
    grad_clip: float | None = Field(
        None, ge=0, description="override the largest gradient norm (0 = no clipping)"
    )
    log_every: StrictInt = Field(50, ge=1, description="steps between training-log lines")
    num_workers: StrictInt = Field(0, ge=0, description="data-loader worker processes")
    checkpoint_every: StrictInt | str | list[StrictInt | str] | None = Field(
        None,
        description="save the full training state every N steps and/or after a duration: "
        '500, "30m" or [500, "30m"]',
    )
    keep_states: StrictInt = Field(2, ge=1, le=1000, description="training states kept")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="EMA of the sampling networks: fixed decay per update"
    )
    ema_halflife_kimg: float | None = Field(
        None, gt=0, description="EMA half-life in thousands of training images (EDM)"
    )
    ema_rampup_ratio: float | None = Field(
        None, gt=0, description="cap the EMA half-life at this fraction of images seen (EDM)"
    )

    @field_validator("time_budget")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("images_budget")
    @classmethod
    def _images(cls, value: int | str | None) -> int | str | None:
        if value is not None:
            parse_images(value)
        return value

    @field_validator("checkpoint_every")
    @classmethod
    def _every(cls, value: Any) -> Any:
        if value is None:
            return value
        items = value if isinstance(value, list) else [value]
        steps = [v for v in items if isinstance(v, int)]
        times = [v for v in items if isinstance(v, str)]
        if not items or len(steps) > 1 or len(times) > 1:
            raise ValueError('give N steps, a duration, or [N, "duration"]')
        if steps and steps[0] < 1:
            raise ValueError("a checkpoint interval in steps must be >= 1")
        for text in times:
            parse_duration(text)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainSection:
        if self.ema_decay is not None and self.ema_halflife_kimg is not None:
            raise ValueError("give ema_decay or ema_halflife_kimg, not both")
        if self.ema_rampup_ratio is not None and self.ema_halflife_kimg is None:
            raise ValueError("ema_rampup_ratio needs ema_halflife_kimg")
        lengths = [k for k in ("steps", "epochs", "images_budget") if getattr(self, k) is not None]
        if len(lengths) > 1:
            raise ValueError(
                f"give one of steps, epochs and images_budget, not {' and '.join(lengths)}"
            )
        return self

    @property
    def ema(self) -> bool:
        """Whether sampling uses an EMA of the weights."""
        return self.ema_decay is not None or self.ema_halflife_kimg is not None

    @property
    def time_budget_s(self) -> float | None:
        """``time_budget`` in seconds (None = no time limit)."""
        return None if self.time_budget is None else parse_duration(self.time_budget)

    @property
    def trains(self) -> bool:
        """Whether the model trains at all (steps > 0 or a time budget)."""
        return bool(self.steps) or self.time_budget is not None

    def _checkpoint_items(self) -> list[Any]:
        every = self.checkpoint_every
        return every if isinstance(every, list) else [every]

    @property
    def checkpoint_steps(self) -> int | None:
        """Steps between training states (None = not by steps)."""
        return next((v for v in self._checkpoint_items() if isinstance(v, int)), None)

    @property
    def checkpoint_seconds(self) -> float | None:
        """Training seconds between training states (None = not by time)."""
        items = self._checkpoint_items()
        return next((parse_duration(v) for v in items if isinstance(v, str)), None)


class SampleSection(StrictModel):
    num_samples: StrictInt = Field(
        1000, ge=2, le=10**7, description="images generated for evaluation (at most 10 million)"
    )
    seed_offset: StrictInt = Field(
        0, ge=0, le=2**62, description="sample seeds are offset .. offset+num-1"
    )
    batch_size: StrictInt = Field(250, ge=1)
    # The generator's sampling settings (its ``Settings``): checked per model when the spec
    # is resolved; a model whose generator has no such setting makes it a spec error.
    steps: StrictInt | str | None = Field(None, description="sampler steps; None = model default")
    guidance: float | None = Field(
        None, description="classifier-free guidance scale s (1 = conditional model)"
    )
    classifier_scale: float | None = Field(
        None, description="classifier guidance scale (needs [classifier]); 0 = none"
    )
    sampler: str | None = Field(None, description="cold: naive | improved; None = config's")
    upscale: Path | None = Field(
        None,
        description="super-resolution weights (spandrel: Real-ESRGAN and others) applied after "
        "sampling; evaluated at the upscaled resolution",
    )
    grid_size: StrictInt = Field(64, ge=1, le=1024, description="images in the sample grid PNG")
    trajectory_size: StrictInt = Field(
        4,
        ge=0,
        le=64,
        description="rows (seeds) of the denoising-trajectory strip of diffusion models; 0 = none",
    )
    labels: list[StrictInt] | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="class labels to sample, cycled over the seeds (class-conditional "
        "models); None = every class (seed mod classes)",
    )


class EvaluateSection(StrictModel):
    extractor: str = Field("digits", description="registered feature extractor")
    weights: Path | None = Field(None, description="local weights file of the extractor")
    metrics: list[str] = Field(default_factory=lambda: ["fid", "is"], min_length=1)
    reference: Literal["train", "test"] = Field("train", description="split of real images")
    batch_size: StrictInt = Field(250, ge=1)
    bpd_images: StrictInt = Field(
        1000, ge=0, description="test images for bits/dim of likelihood models (0 = off)"
    )
    # Evaluation protocol (eval/): defaults are pytorch-fid's behaviour; every value is
    # recorded with the metrics.
    dims: StrictInt | None = Field(
        None, description="feature size (pytorch-fid's --dims); None: full"
    )
    resize: str | None = Field(None, description="bilinear | clean (inception); None: default")
    quantize: bool = Field(True, description="round generated images to uint8 as PNGs hold them")
    tf32: bool = Field(True, description="allow TF32 convolutions (torch's default); false: fp32")
    reference_stats: Path | None = Field(
        None, description="pytorch-fid .npz (mu, sigma) to use instead of the reference split"
    )
    cache: bool = Field(True, description="reuse reference statistics in $BENCH_CACHE_DIR/stats")
    max_features: StrictInt = Field(10_000, ge=1, description="feature vectors kept for KID and PR")
    kid_subsets: StrictInt = Field(100, ge=1)
    kid_subset_size: StrictInt | None = Field(
        None, ge=2, description="KID subset size; None: 1000, and fewer samples is an error"
    )
    pr_k: StrictInt = Field(3, ge=1, description="neighbourhood size of precision/recall")
    # Quality during training: FID every N steps on its own seeds (never the evaluation's).
    every: str | None = Field(
        None, description='FID during training, e.g. "2000 steps"; None = only at the end'
    )
    every_samples: StrictInt = Field(
        500, ge=2, le=10**6, description="images sampled for each FID during training"
    )
    every_seed_offset: StrictInt = Field(
        EVERY_SEED_OFFSET,
        ge=0,
        le=2**62,
        description="first seed of the FID during training (far from the evaluation's)",
    )

    @field_validator("every")
    @classmethod
    def _every(cls, every: str | None) -> str | None:
        if every is not None:
            parse_every(every)
        return every

    @property
    def every_steps(self) -> int | None:
        """Training steps between evaluations during training (None: none)."""
        return None if self.every is None else parse_every(self.every)

    @field_validator("metrics")
    @classmethod
    def _distinct(cls, metrics: list[str]) -> list[str]:
        repeated = sorted({m for m in metrics if metrics.count(m) > 1})
        if repeated:
            raise ValueError(f"{repeated[0]!r} is listed twice; name each metric once")
        return metrics

    @model_validator(mode="after")
    def _extractor_options(self) -> EvaluateSection:
        """Fill in the extractor's default dims and resize; reject ones it does not offer."""
        if self.extractor not in EXTRACTORS:
            return self  # resolve() reports it with the valid choices
        try:
            options = EXTRACTORS.get(self.extractor).resolve_options(
                ExtractorOptions(self.dims, self.resize)
            )
        except GenbenchError as exc:
            raise ValueError(f"extractor {self.extractor!r}: {exc}") from None
        self.dims, self.resize = options.dims, options.resize
        return self


class TimingSection(StrictModel):
    repeats: StrictInt = Field(10, ge=1, description="timed sampling calls")
    warmup: StrictInt = Field(1, ge=0, description="untimed calls first (compilation, caches)")
    batch_size: StrictInt = Field(64, ge=1)
    # Fast paths (benchmarks/fastpath.py): all off by default, recorded with every result.
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = Field(
        "fp32", description="fp32 (IEEE), tf32 (CUDA), or bf16 / fp16 autocast"
    )
    channels_last: bool = Field(False, description="sampling networks in NHWC memory format")
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = Field(
        "none", description="torch.compile mode of the sampling networks"
    )
    cuda_graphs: bool = Field(False, description="replay the network step from CUDA graphs")
    fast: bool = Field(
        False,
        description="pick the fastest fast paths within tolerance, once per machine (cached); "
        "the four fields above must stay at their defaults",
    )

    @model_validator(mode="after")
    def _fast_alone(self) -> TimingSection:
        if self.fast:
            set_ = [
                name for name, default in _PLAIN_PATHS.items() if getattr(self, name) != default
            ]
            if set_:
                raise ValueError(
                    f"fast = true chooses {', '.join(set_)} itself; remove "
                    f"{' and '.join(set_)} or set fast = false"
                )
        return self


_PLAIN_PATHS = {
    "precision": "fp32",
    "channels_last": False,
    "compile": "none",
    "cuda_graphs": False,
}


class ModelEntry(StrictModel):
    generator: str
    config: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict, description="overrides of [train]")
    sample: dict[str, Any] = Field(default_factory=dict, description="overrides of [sample]")
    checkpoint: Path | None = Field(None, description="start from this checkpoint")


class ClassifierEntry(StrictModel):
    """``[classifier]``: the noise-conditional classifier that ``classifier_scale`` follows
    (``genbench.generators.classifier``), trained by the run before its models."""

    config: dict[str, Any] = Field(default_factory=dict, description="ClassifierConfig fields")
    train: TrainSection = Field(
        default_factory=lambda: TrainSection(steps=1000, batch_size=64, log_every=100),
        description="its training (the [train] keys; default 1000 steps of 64)",
    )
    checkpoint: Path | None = Field(
        None, description="a trained classifier's classifier.safetensors: used, not trained"
    )


class Spec(StrictModel):
    schema_version: StrictInt | None = Field(
        None, description="results schema the spec's settings mean (resolved specs state it)"
    )
    benchmark: BenchmarkSection
    train: TrainSection = Field(default_factory=TrainSection)
    sample: SampleSection = Field(default_factory=SampleSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    timing: TimingSection = Field(default_factory=TimingSection)
    classifier: ClassifierEntry | None = None
    models: dict[str, ModelEntry] = Field(min_length=1)


# --------------------------------------------------------------------------- errors


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that validates the object at ``loc`` (for 'valid keys')."""
    i = 0
    while i < len(loc):
        info = cls.model_fields.get(str(loc[i]))
        if info is None:
            return None
        ann = info.annotation
        if get_origin(ann) is dict:
            ann = get_args(ann)[1]
            i += 1  # skip the dict key
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
        i += 1
    return cls


def format_validation_error(
    exc: ValidationError, cls: type[BaseModel], prefix: tuple[Any, ...] = ()
) -> list[str]:
    """One line per problem: dotted field path, what is wrong, and the valid choices."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in (*prefix, *loc)) or "(top level)"
        if err["type"] == "extra_forbidden":
            parent = _model_at(cls, loc[:-1])
            valid = ", ".join(parent.model_fields) if parent else "see the docs"
            lines.append(f"{path}: unknown key; valid keys: {valid}")
        elif err["type"] == "missing":
            lines.append(f"{path}: required key is missing")
        else:
            lines.append(f"{path}: {err['msg']} (got {err.get('input')!r})")
    return lines


def validate_section(cls: type[BaseModel], data: Any, prefix: tuple[Any, ...], source: str) -> Any:
    """``data`` as a ``cls``, or a ``SpecError`` with one line per problem, each naming
    ``source`` and the field path under ``prefix``."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = format_validation_error(exc, cls, prefix)
        raise SpecError("\n".join(f"{source}: {line}" for line in lines)) from None


# --------------------------------------------------------------------------- loading


def available_specs() -> list[str]:
    """Names of the specs shipped in ``benchmarks/specs``."""
    return sorted(p.stem for p in SPECS_DIR.glob("*.toml"))


def find_spec(name_or_path: str) -> Path:
    """A spec file: an existing path, else a shipped spec name."""
    path = Path(name_or_path)
    if path.is_file() or (path.exists() and not path.is_dir()):
        return path
    if path.is_dir():
        raise SpecError(f"spec {name_or_path!r} is a directory; give a .toml file or a spec name")
    shipped = SPECS_DIR / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    raise SpecError(
        f"spec {name_or_path!r} is neither a file nor a shipped spec; "
        f"valid names: {', '.join(available_specs())}"
    )


def read_spec(name_or_path: str, version: int | None = None) -> tuple[Spec, str]:
    """Parse and validate a spec; returns it and the source name used in error messages.

    ``version``: the results schema its sampling settings were written for (``bench
    resume`` of an older run); by default the spec's own ``schema_version``, else the
    current one. Older settings are upgraded to the current meaning first.
    """
    path = find_spec(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply to be a spec") from None
    declared = versions.version_of(data) if "schema_version" in data else version
    if declared is None and "schema_version" not in data:
        # A resolved spec without a version was written by version 1 (version 2 writes
        # one), even when copied out of its run; a spec someone wrote is in today's terms.
        declared = 1 if text.startswith(RESOLVED_HEADER) else SCHEMA_VERSION
    if not versions.readable(declared):
        raise SpecError(
            f"{path}: schema_version: {data.get('schema_version')!r} is not one this genbench "
            f"reads ({versions.OLDEST} to {SCHEMA_VERSION})"
        )
    data = versions.upgrade_spec(data, declared)  # type: ignore[arg-type]  # readable
    return validate_section(Spec, data, (), str(path)), str(path)
