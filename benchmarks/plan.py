"""A spec resolved into what a run executes: every name, config and sampling setting checked.

``resolve`` checks every registry name (dataset, generators, extractor, metrics) and every
name that becomes a folder (the benchmark and model names), validates each model's
generator config and typed sampling settings, merges per-model ``train`` / ``sample``
overrides over the global sections, applies command-line overrides, and returns a
``RunPlan`` whose ``to_toml()`` is the fully resolved spec (written next to the results,
printed by ``--dry-run``). Everything is checked here, before any training, so a bad
setting never fails a run after hours of work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from genbench.benchmarks.spec import (
    IS_SPLITS,
    RESOLVED_HEADER,
    BenchmarkSection,
    EvaluateSection,
    SampleSection,
    Spec,
    TimingSection,
    TrainSection,
    parse_images,
    validate_section,
)
from genbench.core.errors import SpecError, StoreError, UnknownNameError
from genbench.core.registry import Registry
from genbench.data.datasets import DATASETS
from genbench.eval.extractors import EXTRACTORS
from genbench.eval.metrics import METRICS
from genbench.generators import GENERATORS, DataShape, Generator, GeneratorConfig, SampleSettings
from genbench.generators.classifier import ClassifierConfig
from genbench.store.files import CLASSIFIER_DIR, check_model_name, check_name
from genbench.store.records import SCHEMA_VERSION

LENGTH_KEYS = frozenset({"steps", "epochs", "images_budget"})
"""``[train]`` keys that give a model's training length: a model's own replaces the global."""

SETTING_KEYS = ("steps", "guidance", "classifier_scale", "sampler")
"""``[sample]`` keys that are the generator's typed sampling settings, not the harness's."""


@dataclass
class Overrides:
    """Command-line overrides; ``None`` means "keep the spec's value"."""

    models: list[str] | None = None
    device: str | None = None
    seed: int | None = None
    train_steps: int | None = None
    time_budget: str | None = None
    num_samples: int | None = None
    data_root: Path | None = None
    dataset: str | None = None
    inception_weights: Path | None = None
    checkpoints: dict[str, Path] = field(default_factory=dict)
    reference_stats: Path | None = None
    labels: list[int] | None = None
    """``--labels``: applied to the class-conditional models of the run."""


@dataclass
class ResolvedModel:
    """One model of a run with everything filled in."""

    name: str
    generator: str
    config: GeneratorConfig
    train: TrainSection
    sample: SampleSection
    """The harness's sampling section (how many images, seeds, batch size, grid); its
    ``steps`` and ``guidance`` are always None here: they live in ``settings``."""
    settings: SampleSettings
    """The generator's typed sampling settings (``Generator.Settings``)."""
    checkpoint: Path | None
    data_shape: DataShape
    """The data set's image shape and classes, as the generator sees them."""

    @property
    def generator_class(self) -> type[Generator]:
        return GENERATORS.get(self.generator)

    def has_setting(self, key: str) -> bool:
        """Whether the generator has the sampling setting ``key`` (``steps``, ...)."""
        return key in self.generator_class.Settings.model_fields

    def with_settings(self, where: str, **values: Any) -> ResolvedModel:
        """This model with some sampling settings replaced (``bench speed --steps``),
        validated like the spec's; a ``SpecError`` naming ``where`` otherwise."""
        merged = {**self.settings.given(), **values}
        settings = make_settings(self.generator_class, self.config, self.data_shape, merged, where)
        return dataclasses.replace(self, settings=settings)


@dataclass
class ResolvedClassifier:
    """``[classifier]`` resolved: its validated config, training and checkpoint."""

    config: ClassifierConfig
    train: TrainSection
    checkpoint: Path | None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "config": self.config.view(),
            "train": self.train.model_dump(mode="json", exclude_none=True),
        }
        if self.checkpoint is not None:
            out["checkpoint"] = str(self.checkpoint)
        return out


@dataclass
class RunPlan:
    """A fully resolved spec: what ``bench run`` executes and writes as ``spec.toml``."""

    benchmark: BenchmarkSection
    evaluate: EvaluateSection
    timing: TimingSection
    models: dict[str, ResolvedModel]
    source: str
    classifier: ResolvedClassifier | None = None

    def to_dict(self) -> dict[str, Any]:
        models = {}
        for name, m in self.models.items():
            sample = m.sample.model_dump(mode="json", exclude_none=True)
            entry: dict[str, Any] = {
                "generator": m.generator,
                "config": m.config.view(),
                "train": m.train.model_dump(mode="json", exclude_none=True),
                "sample": {**sample, **m.settings.given()},
            }
            if m.checkpoint is not None:
                entry["checkpoint"] = str(m.checkpoint)
            models[name] = entry
        return {
            "schema_version": SCHEMA_VERSION,
            "benchmark": self.benchmark.model_dump(mode="json", exclude_none=True),
            "evaluate": self.evaluate.model_dump(mode="json", exclude_none=True),
            "timing": self.timing.model_dump(mode="json", exclude_none=True),
            **({"classifier": self.classifier.to_dict()} if self.classifier else {}),
            "models": models,
        }

    def to_toml(self) -> str:
        header = f"{RESOLVED_HEADER} (from {self.source}); every default filled in\n"
        notes = "".join(
            f"# models.{name}: {line}\n"
            for name, m in self.models.items()
            for line in m.config.notes()
        )
        return header + tomli_w.dumps(self.to_dict()) + notes


def select_models(spec: Spec, wanted: list[str], generators: Registry) -> list[str]:
    """Spec model keys for ``--models``: a key of [models], or a generator name/alias."""
    chosen: list[str] = []
    for want in wanted:
        if want in spec.models:
            key = want
        elif want in generators:
            canon = generators.canonical(want)
            keys = [
                k
                for k, m in spec.models.items()
                if m.generator in generators and generators.canonical(m.generator) == canon
            ]
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
    """Turn ``epochs`` or ``images_budget`` into ``steps`` so the plan states exactly what
    runs; with only a ``time_budget`` the steps stay open (None)."""
    if train.steps is not None:
        return train
    if train.images_budget is not None:
        steps = -(-parse_images(train.images_budget) // train.batch_size)
        return train.model_copy(update={"steps": steps})
    if train.epochs is None and train.time_budget is not None:
        return train
    epochs = train.epochs if train.epochs is not None else 1.0
    steps = max(1, round(epochs * dataset_size / train.batch_size))  # epochs <= 1e6
    return train.model_copy(update={"steps": steps})


def _absolute(path: str | Path | None) -> Path | None:
    return None if path is None else Path(path).expanduser().absolute()


def _lookup(registry: Registry, name: str, where: str) -> Any:
    """``registry.get(name)``, an unknown name being a ``SpecError`` naming ``where``."""
    try:
        return registry.get(name, where=where)
    except UnknownNameError as exc:
        raise SpecError(str(exc)) from None


def _checked_name(name: str, where: str, model: bool = False) -> str:
    """A name that becomes a folder (benchmark or model), as a ``SpecError`` if unsafe."""
    try:
        return check_model_name(name, where) if model else check_name(name, where)
    except StoreError as exc:
        raise SpecError(str(exc)) from None


def settings_error(
    exc: ValidationError | ValueError, gen: type[Generator], where: str
) -> SpecError:
    """One line per problem with a model's sampling settings, naming the setting."""
    if not isinstance(exc, ValidationError):
        return SpecError(f"{where}: {exc}")
    valid = ", ".join(gen.Settings.model_fields) or "none"
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(
                f"{where}.{key}: this generator has no sampling setting {key!r} "
                f"(its settings: {valid})"
            )
        else:
            lines.append(f"{where}.{key}: {err['msg']} (got {err.get('input')!r})")
    return SpecError("\n".join(lines))


def make_settings(
    gen: type[Generator],
    config: GeneratorConfig,
    shape: DataShape,
    values: dict[str, Any],
    where: str,
) -> SampleSettings:
    """``values`` as ``gen``'s typed sampling settings, or a ``SpecError`` naming ``where``."""
    try:
        return gen.make_settings(config, shape, values)
    except (ValidationError, ValueError) as exc:
        raise settings_error(exc, gen, where) from None


def resolve(spec: Spec, source: str, overrides: Overrides | None = None) -> RunPlan:
    """Validate every name, config and setting, merge overrides; ``SpecError`` on any
    problem (one line per field, naming the field path)."""
    ov = overrides or Overrides()
    given = {
        "device": ov.device,
        "seed": ov.seed,
        "data_root": ov.data_root,
        "dataset": ov.dataset,
    }
    # Validated like the spec's own values: `--seed -5` is as wrong as `seed = -5`.
    bench = validate_section(
        BenchmarkSection,
        {**spec.benchmark.model_dump(), **{k: v for k, v in given.items() if v is not None}},
        ("benchmark",),
        f"{source} (with the command-line overrides)",
    )
    _checked_name(bench.name, f"{source}: benchmark.name")
    bench = bench.model_copy(update={"data_root": _absolute(bench.data_root)})
    dataset = _lookup(DATASETS, bench.dataset, f"{source}: benchmark.dataset")
    info = dataset.describe(bench.data_root)  # the user's files: read from their headers
    shape = DataShape(info.channels, info.image_size, info.num_classes)
    _lookup(EXTRACTORS, spec.evaluate.extractor, f"{source}: evaluate.extractor")
    for metric in spec.evaluate.metrics:
        _lookup(METRICS, metric, f"{source}: evaluate.metrics")

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
    if ov.reference_stats is not None:
        evaluate = evaluate.model_copy(update={"reference_stats": ov.reference_stats})
    where = "--reference-stats" if ov.reference_stats is not None else "evaluate.reference_stats"
    if evaluate.reference_stats is not None and not Path(evaluate.reference_stats).is_file():
        raise SpecError(f"{where}: no such file: {evaluate.reference_stats}")
    evaluate = evaluate.model_copy(
        update={
            "weights": _absolute(evaluate.weights),
            "reference_stats": _absolute(evaluate.reference_stats),
        }
    )

    names = list(spec.models)
    folded = [n.lower() for n in names]
    clash = next((n for n in names if folded.count(n.lower()) > 1), None)
    if clash is not None:  # one folder on case-insensitive file systems (macOS, Windows)
        raise SpecError(f"{source}: models.{clash}: another model differs only in case; rename one")
    if ov.models:
        names = select_models(spec, ov.models, GENERATORS)
    for key in ov.checkpoints:
        if key not in names:
            raise SpecError(
                f"--checkpoint: model {key!r} is not in this run; valid choices: {', '.join(names)}"
            )

    models: dict[str, ResolvedModel] = {}
    for name in names:
        models[name] = _resolve_model(spec, source, name, evaluate, ov, shape, info.train_size)
    if ov.labels is not None and not any(m.sample.labels for m in models.values()):
        raise SpecError(
            f"--labels: no model of this run is class-conditional on {bench.dataset} "
            f"({', '.join(names)}); labels apply to conditional models"
        )
    return RunPlan(
        benchmark=bench,
        evaluate=evaluate,
        timing=spec.timing,
        models=models,
        source=source,
        classifier=_resolve_classifier(spec, source, models, shape, info.train_size),
    )


def _resolve_classifier(
    spec: Spec, source: str, models: dict[str, ResolvedModel], shape: DataShape, train_size: int
) -> ResolvedClassifier | None:
    """``[classifier]`` validated; ``SpecError`` when a model's ``classifier_scale`` has
    none to follow, or its name would be the classifier's folder."""
    guided = [n for n, m in models.items() if classifier_scale(m) is not None]
    if spec.classifier is None:
        if guided:
            raise SpecError(
                f"{source}: models.{guided[0]}.sample.classifier_scale needs a [classifier] "
                "section (the classifier it follows); add one or drop classifier_scale"
            )
        return None
    if CLASSIFIER_DIR in models:
        raise SpecError(
            f"{source}: models.{CLASSIFIER_DIR}: the name of the [classifier]'s folder; "
            "rename the model"
        )
    if shape.num_classes < 2:
        raise SpecError(f"{source}: classifier: the data set has no class labels to learn")
    for name in guided:  # the classifier learns the data's images, at the data's size
        size = getattr(models[name].config, "image_size", None)
        if size is not None and size != shape.image_size:
            raise SpecError(
                f"{source}: models.{name}: classifier guidance at image_size {size}, but the "
                f"[classifier] learns the data's {shape.image_size} px; drop image_size or "
                "classifier_scale"
            )
    config = validate_section(
        ClassifierConfig, spec.classifier.config, ("classifier", "config"), source
    )
    checkpoint = spec.classifier.checkpoint
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise SpecError(f"classifier.checkpoint: no such file: {checkpoint}")
    train = _train_steps(spec.classifier.train, train_size)
    if checkpoint is None and not train.trains:  # an untrained guide would steer by noise
        raise SpecError(
            f"{source}: classifier.train: no training (steps, epochs, images_budget or "
            "time_budget); give one, or a trained classifier.checkpoint"
        )
    return ResolvedClassifier(config, train, _absolute(checkpoint))


def classifier_scale(model: ResolvedModel) -> float | None:
    """The model's classifier guidance scale (None: the generator has none, or unset)."""
    return getattr(model.settings, "classifier_scale", None)


def _check_labels(labels: list[int], conditional: bool, shape: DataShape, where: str) -> None:
    """``SpecError`` unless the model is class-conditional and every label is a class."""
    if not conditional:
        raise SpecError(
            f"{where}: this model is not class-conditional on this data set; remove labels"
        )
    bad = next((label for label in labels if not 0 <= label < shape.num_classes), None)
    if bad is not None:
        raise SpecError(
            f"{where}: {bad} is not a class of this data set (0 to {shape.num_classes - 1})"
        )


def _resolve_model(
    spec: Spec,
    source: str,
    name: str,
    evaluate: EvaluateSection,
    ov: Overrides,
    shape: DataShape,
    train_size: int,
) -> ResolvedModel:
    entry = spec.models[name]
    where = ("models", name)
    _checked_name(name, f"{source}: models.{name}", model=True)
    gen_cls = _lookup(GENERATORS, entry.generator, f"{source}: models.{name}.generator")
    checkpoint = ov.checkpoints.get(name, entry.checkpoint)
    config_data = entry.config
    if checkpoint is not None and Path(checkpoint).is_dir():
        # A diffusers folder (a pipeline, or a UNet's save_pretrained) is the generator's
        # pretrained network, with the process its scheduler config describes.
        if "pretrained" not in gen_cls.Config.model_fields:
            raise SpecError(
                f"models.{name}.checkpoint: {checkpoint} is a folder; generator "
                f"{entry.generator!r} takes checkpoint files only (diffusers folders: ddpm)"
            )
        replaced = getattr(gen_cls.Config, "FROM_PRETRAINED", frozenset())
        config_data = {k: v for k, v in config_data.items() if k not in replaced}
        config_data["pretrained"] = str(_absolute(checkpoint))
    elif checkpoint is not None and not Path(checkpoint).is_file():
        raise SpecError(f"models.{name}.checkpoint: no such file: {checkpoint}")
    config = validate_section(gen_cls.Config, config_data, (*where, "config"), source)
    train_data = {**spec.train.model_dump(exclude_unset=True), **entry.train}
    own = LENGTH_KEYS & entry.train.keys()
    if own:  # the model's own length replaces the global one
        for key in LENGTH_KEYS - own:
            train_data.pop(key, None)
    sample_data = {**spec.sample.model_dump(exclude_unset=True), **entry.sample}
    if ov.time_budget is not None:  # the budget replaces the length (--train-steps adds one)
        for key in LENGTH_KEYS:
            train_data.pop(key, None)
        train_data.update(time_budget=ov.time_budget)
    if ov.train_steps is not None:
        for key in LENGTH_KEYS:
            train_data.pop(key, None)
        train_data.update(steps=ov.train_steps)
    elif checkpoint is not None and not (LENGTH_KEYS | {"time_budget"}) & entry.train.keys():
        # A checkpoint is evaluated as it is unless its entry asks for more training.
        for key in LENGTH_KEYS | {"time_budget"}:
            train_data.pop(key, None)
        train_data.update(steps=0)
    if ov.num_samples is not None:
        sample_data.update(num_samples=ov.num_samples)
    train = validate_section(TrainSection, train_data, (*where, "train"), source)
    conditional = gen_cls.is_conditional(config, shape)
    # Classifier guidance steers towards a label, as conditioning does.
    conditional = conditional or sample_data.get("classifier_scale") is not None
    if ov.labels is not None and conditional:  # unconditional models sample as they are
        sample_data.update(labels=ov.labels)
    sample = validate_section(SampleSection, sample_data, (*where, "sample"), source)
    if sample.upscale is not None:
        if not Path(sample.upscale).is_file():
            raise SpecError(f"models.{name}.sample.upscale: no such file: {sample.upscale}")
        sample = sample.model_copy(update={"upscale": _absolute(sample.upscale)})
    if sample.labels is not None:
        _check_labels(sample.labels, conditional, shape, f"{source}: models.{name}.sample.labels")
    train = _train_steps(train, train_size)
    if "is" in evaluate.metrics and sample.num_samples < IS_SPLITS:
        raise SpecError(
            f"models.{name}.sample.num_samples: {sample.num_samples} is too few for IS "
            f"({IS_SPLITS} splits); use at least {IS_SPLITS}"
        )
    values = {k: getattr(sample, k) for k in SETTING_KEYS if getattr(sample, k) is not None}
    settings = make_settings(gen_cls, config, shape, values, f"{source}: models.{name}.sample")
    return ResolvedModel(
        name=name,
        generator=GENERATORS.canonical(entry.generator),
        config=config,
        train=train,
        sample=sample.model_copy(update=dict.fromkeys(SETTING_KEYS)),
        settings=settings,
        # Absolute: the resolved spec must mean the same from any directory (bench resume).
        # A folder became the config's pretrained network above.
        checkpoint=None
        if checkpoint is None or Path(checkpoint).is_dir()
        else _absolute(checkpoint),
        data_shape=shape,
    )
