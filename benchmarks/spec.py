"""Benchmark specs: TOML files validated by pydantic models, plus CLI overrides.

A spec states only what differs from the defaults. ``load_spec`` parses and validates the
structure; ``resolve`` checks every registry name (dataset, generators, extractor, metrics),
validates each model's generator config, merges per-model ``train`` / ``sample`` overrides
over the global sections, applies command-line overrides, and returns a ``RunPlan`` whose
``to_toml()`` is the fully resolved spec (written next to the results, printed by
``--dry-run``). Every problem becomes a ``SpecError`` with one line per field, naming the
field path and the valid choices.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from genbench.core.errors import SpecError

SPECS_DIR = Path(__file__).parent / "specs"
IS_SPLITS = 10  # the Inception Score's splits (Salimans et al. 2016), fixed by the protocol


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BenchmarkSection(StrictModel):
    name: str = Field(description="benchmark name; prefixes run ids")
    dataset: str = Field("digits", description="registered data set")
    seed: int = Field(0, ge=0, description="seed for initialisation and data order")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    data_root: Path | None = Field(None, description="directory holding the data set")


class TrainSection(StrictModel):
    steps: int | None = Field(None, ge=0, description="optimiser updates (0 = untrained)")
    epochs: float | None = Field(None, gt=0, description="alternative to steps")
    batch_size: int = Field(64, ge=1)
    log_every: int = Field(50, ge=1, description="steps between training-log lines")
    num_workers: int = Field(0, ge=0, description="data-loader worker processes")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="EMA of the sampling networks: fixed decay per update"
    )
    ema_halflife_kimg: float | None = Field(
        None, gt=0, description="EMA half-life in thousands of training images (EDM)"
    )
    ema_rampup_ratio: float | None = Field(
        None, gt=0, description="cap the EMA half-life at this fraction of images seen (EDM)"
    )

    @model_validator(mode="after")
    def _one_ema(self) -> TrainSection:
        if self.ema_decay is not None and self.ema_halflife_kimg is not None:
            raise ValueError("give ema_decay or ema_halflife_kimg, not both")
        if self.ema_rampup_ratio is not None and self.ema_halflife_kimg is None:
            raise ValueError("ema_rampup_ratio needs ema_halflife_kimg")
        return self

    @property
    def ema(self) -> bool:
        """Whether sampling uses an EMA of the weights."""
        return self.ema_decay is not None or self.ema_halflife_kimg is not None


class SampleSection(StrictModel):
    num_samples: int = Field(1000, ge=2, description="images generated for evaluation")
    seed_offset: int = Field(0, ge=0, description="sample seeds are offset .. offset+num-1")
    batch_size: int = Field(250, ge=1)
    steps: int | str | None = Field(None, description="sampler steps; None = model default")
    guidance: float | None = Field(None, description="guidance strength, if supported")
    grid_size: int = Field(64, ge=1, le=1024, description="images in the sample grid PNG")


class EvaluateSection(StrictModel):
    extractor: str = Field("digits", description="registered feature extractor")
    weights: Path | None = Field(None, description="local weights file of the extractor")
    metrics: list[str] = Field(default_factory=lambda: ["fid", "is"])
    reference: Literal["train", "test"] = Field("train", description="split of real images")
    batch_size: int = Field(250, ge=1)
    bpd_images: int = Field(
        1000, ge=0, description="test images for bits/dim of likelihood models (0 = off)"
    )
    # Evaluation protocol (eval/): defaults are pytorch-fid's behaviour; every value is
    # recorded with the metrics.
    dims: int | None = Field(None, description="feature size (pytorch-fid's --dims); None: full")
    resize: str | None = Field(None, description="bilinear | clean (inception); None: default")
    quantize: bool = Field(True, description="round generated images to uint8 as PNGs hold them")
    tf32: bool = Field(True, description="allow TF32 convolutions (torch's default); false: fp32")
    reference_stats: Path | None = Field(
        None, description="pytorch-fid .npz (mu, sigma) to use instead of the reference split"
    )
    cache: bool = Field(True, description="reuse reference statistics in $BENCH_CACHE_DIR/stats")
    max_features: int = Field(10_000, ge=1, description="feature vectors kept for KID and PR")
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2)
    pr_k: int = Field(3, ge=1, description="neighbourhood size of precision/recall")

    @model_validator(mode="after")
    def _extractor_options(self) -> EvaluateSection:
        """Fill in the extractor's default dims and resize; reject ones it does not offer."""
        from genbench.core.errors import GenbenchError
        from genbench.eval.extractors import EXTRACTORS, ExtractorOptions

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
    repeats: int = Field(10, ge=1, description="timed sampling calls")
    warmup: int = Field(1, ge=0, description="untimed calls first (compilation, caches)")
    batch_size: int = Field(64, ge=1)
    # Fast paths (benchmarks/fastpath.py): all off by default, recorded with every result.
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = Field(
        "fp32", description="fp32 (IEEE), tf32 (CUDA), or bf16 / fp16 autocast"
    )
    channels_last: bool = Field(False, description="sampling networks in NHWC memory format")
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = Field(
        "none", description="torch.compile mode of the sampling networks"
    )
    cuda_graphs: bool = Field(False, description="replay the network step from CUDA graphs")


class ModelEntry(StrictModel):
    generator: str
    config: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict, description="overrides of [train]")
    sample: dict[str, Any] = Field(default_factory=dict, description="overrides of [sample]")
    checkpoint: Path | None = Field(None, description="start from this checkpoint")


class Spec(StrictModel):
    benchmark: BenchmarkSection
    train: TrainSection = Field(default_factory=TrainSection)
    sample: SampleSection = Field(default_factory=SampleSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    timing: TimingSection = Field(default_factory=TimingSection)
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


def _validate(cls: type[BaseModel], data: Any, prefix: tuple[Any, ...], source: str) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = format_validation_error(exc, cls, prefix)
        raise SpecError("\n".join(f"{source}: {line}" for line in lines)) from None


def _unknown(path: str, kind: str, name: str, choices: list[str]) -> SpecError:
    return SpecError(f"{path}: unknown {kind} {name!r}; valid choices: {', '.join(choices)}")


# --------------------------------------------------------------------------- loading


def available_specs() -> list[str]:
    """Names of the specs shipped in ``benchmarks/specs``."""
    return sorted(p.stem for p in SPECS_DIR.glob("*.toml"))


def find_spec(name_or_path: str) -> Path:
    """A spec file: an existing path, else a shipped spec name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SPECS_DIR / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    raise SpecError(
        f"spec {name_or_path!r} is neither a file nor a shipped spec; "
        f"valid names: {', '.join(available_specs())}"
    )


def load_spec(name_or_path: str) -> tuple[Spec, str]:
    """Parse and validate a spec; returns it and the source name used in error messages."""
    path = find_spec(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    return _validate(Spec, data, (), str(path)), str(path)


# --------------------------------------------------------------------------- resolving


@dataclass
class Overrides:
    """Command-line overrides; ``None`` means "keep the spec's value"."""

    models: list[str] | None = None
    device: str | None = None
    seed: int | None = None
    train_steps: int | None = None
    num_samples: int | None = None
    data_root: Path | None = None
    inception_weights: Path | None = None
    checkpoints: dict[str, Path] = field(default_factory=dict)


@dataclass
class ResolvedModel:
    """One model of a run with everything filled in."""

    name: str
    generator: str
    config: Any  # the generator's validated Config instance
    train: TrainSection
    sample: SampleSection
    checkpoint: Path | None


@dataclass
class RunPlan:
    """A fully resolved spec: what ``bench run`` executes and writes as ``spec.toml``."""

    benchmark: BenchmarkSection
    evaluate: EvaluateSection
    timing: TimingSection
    models: dict[str, ResolvedModel]
    source: str

    def to_dict(self) -> dict[str, Any]:
        models = {}
        for name, m in self.models.items():
            entry: dict[str, Any] = {
                "generator": m.generator,
                "config": m.config.model_dump(mode="json", exclude_none=True),
                "train": m.train.model_dump(mode="json", exclude_none=True),
                "sample": m.sample.model_dump(mode="json", exclude_none=True),
            }
            if m.checkpoint is not None:
                entry["checkpoint"] = str(m.checkpoint)
            models[name] = entry
        return {
            "benchmark": self.benchmark.model_dump(mode="json", exclude_none=True),
            "evaluate": self.evaluate.model_dump(mode="json", exclude_none=True),
            "timing": self.timing.model_dump(mode="json", exclude_none=True),
            "models": models,
        }

    def to_toml(self) -> str:
        header = f"# genbench resolved spec (from {self.source}); every default filled in\n"
        return header + tomli_w.dumps(self.to_dict())


def select_models(spec: Spec, wanted: list[str], generators: Any) -> list[str]:
    """Spec model keys for ``--models``: a key of [models], or a generator name/alias."""
    chosen: list[str] = []
    for want in wanted:
        if want in spec.models:
            key = want
        elif want in generators:
            canon = generators.canonical(want)
            keys = [k for k, m in spec.models.items() if generators.canonical(m.generator) == canon]
            if not keys:
                raise SpecError(
                    f"--models: generator {want!r} has no entry in this spec; "
                    f"valid choices: {', '.join(spec.models)}"
                )
            key = keys[0]
        else:
            raise SpecError(
                f"--models: unknown model {want!r}; valid choices: {', '.join(spec.models)}"
            )
        if key not in chosen:
            chosen.append(key)
    return chosen


def _train_steps(train: TrainSection, dataset_size: int) -> TrainSection:
    """Turn ``epochs`` into ``steps`` so the plan states exactly what runs."""
    if train.steps is not None and train.epochs is not None:
        raise SpecError("train: give steps or epochs, not both")
    if train.steps is None:
        epochs = train.epochs if train.epochs is not None else 1.0
        steps = max(1, round(epochs * dataset_size / train.batch_size))
        return train.model_copy(update={"steps": steps})
    return train


def resolve(spec: Spec, source: str, overrides: Overrides | None = None) -> RunPlan:
    """Validate every name and config, merge overrides; raise ``SpecError`` on any problem."""
    from genbench.data.datasets import DATASETS
    from genbench.eval.extractors import EXTRACTORS
    from genbench.eval.metrics import METRICS
    from genbench.generators import GENERATORS

    ov = overrides or Overrides()
    bench = spec.benchmark.model_copy(
        update={
            k: v
            for k, v in {"device": ov.device, "seed": ov.seed, "data_root": ov.data_root}.items()
            if v is not None
        }
    )
    if bench.dataset not in DATASETS:
        raise _unknown(f"{source}: benchmark.dataset", "dataset", bench.dataset, DATASETS.choices())
    dataset = DATASETS.get(bench.dataset)
    if spec.evaluate.extractor not in EXTRACTORS:
        raise _unknown(
            f"{source}: evaluate.extractor",
            "feature extractor",
            spec.evaluate.extractor,
            EXTRACTORS.choices(),
        )
    for metric in spec.evaluate.metrics:
        if metric not in METRICS:
            raise _unknown(f"{source}: evaluate.metrics", "metric", metric, METRICS.choices())

    evaluate = spec.evaluate
    if ov.inception_weights is not None:
        if evaluate.extractor != "inception":
            raise SpecError(
                f"--inception-weights: this spec evaluates with the {evaluate.extractor!r} "
                "extractor, not 'inception'"
            )
        evaluate = evaluate.model_copy(update={"weights": ov.inception_weights})
    if evaluate.weights is not None and not Path(evaluate.weights).is_file():
        raise SpecError(f"evaluate.weights: no such file: {evaluate.weights}")

    names = list(spec.models)
    if ov.models:
        names = select_models(spec, ov.models, GENERATORS)
    for key in ov.checkpoints:
        if key not in names:
            raise SpecError(
                f"--checkpoint: model {key!r} is not in this run; valid choices: {', '.join(names)}"
            )

    models: dict[str, ResolvedModel] = {}
    for name in names:
        entry = spec.models[name]
        where = ("models", name)
        if entry.generator not in GENERATORS:
            raise _unknown(
                f"{source}: models.{name}.generator",
                "generator",
                entry.generator,
                GENERATORS.choices(),
            )
        gen_cls = GENERATORS.get(entry.generator)
        config = _validate(gen_cls.Config, entry.config, (*where, "config"), source)
        checkpoint = ov.checkpoints.get(name, entry.checkpoint)
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise SpecError(f"models.{name}.checkpoint: no such file: {checkpoint}")
        train_data = {**spec.train.model_dump(exclude_unset=True), **entry.train}
        sample_data = {**spec.sample.model_dump(exclude_unset=True), **entry.sample}
        if ov.train_steps is not None:
            train_data.update(steps=ov.train_steps)
            train_data.pop("epochs", None)
        elif checkpoint is not None and "steps" not in entry.train:
            # A checkpoint is evaluated as it is unless its entry asks for more training.
            train_data.update(steps=0)
            train_data.pop("epochs", None)
        if ov.num_samples is not None:
            sample_data.update(num_samples=ov.num_samples)
        train = _validate(TrainSection, train_data, (*where, "train"), source)
        sample = _validate(SampleSection, sample_data, (*where, "sample"), source)
        train = _train_steps(train, dataset.info.train_size)
        if "is" in evaluate.metrics and sample.num_samples < IS_SPLITS:
            raise SpecError(
                f"models.{name}.sample.num_samples: {sample.num_samples} is too few for IS "
                f"({IS_SPLITS} splits); use at least {IS_SPLITS}"
            )
        models[name] = ResolvedModel(
            name=name,
            generator=GENERATORS.canonical(entry.generator),
            config=config,
            train=train,
            sample=sample,
            checkpoint=Path(checkpoint) if checkpoint is not None else None,
        )
    return RunPlan(
        benchmark=bench,
        evaluate=evaluate,
        timing=spec.timing,
        models=models,
        source=source,
    )
