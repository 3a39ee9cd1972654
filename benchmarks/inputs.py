"""What a run evaluates against, opened before anything is written: the data splits, the
feature extractor and the reference statistics; and the spec's evaluation settings in the
forms ``genbench.eval`` takes."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from genbench.benchmarks.checkpoints import check_checkpoint
from genbench.benchmarks.plan import ResolvedModel, RunPlan
from genbench.benchmarks.sampling import has_likelihood
from genbench.benchmarks.spec import IS_SPLITS, EvaluateSection
from genbench.benchmarks.trainer import check_micro_batches
from genbench.benchmarks.upscale import Upscaler
from genbench.core import collectives
from genbench.core.errors import GenbenchError
from genbench.core.progress import counting
from genbench.data.datasets import DATASETS
from genbench.eval.evaluator import Evaluator
from genbench.eval.extractors import (
    EXTRACTORS,
    ExtractorOptions,
    FeatureExtractor,
    load_extractor,
)
from genbench.eval.metrics import KID_SUBSET_SIZE, METRICS, MetricOptions
from genbench.eval.reference import (
    ReferenceStats,
    StatsCache,
    check_stats_protocol,
    dataset_reference,
)


def extractor_options(evaluate: EvaluateSection) -> ExtractorOptions:
    """The spec's extractor settings as ``ExtractorOptions``."""
    return ExtractorOptions(evaluate.dims, evaluate.resize, evaluate.quantize, evaluate.tf32)


def metric_options(evaluate: EvaluateSection) -> MetricOptions:
    """The spec's metric settings as ``MetricOptions``."""
    return MetricOptions(
        is_splits=IS_SPLITS,
        kid_subsets=evaluate.kid_subsets,
        kid_subset_size=evaluate.kid_subset_size,
        pr_k=evaluate.pr_k,
        max_features=evaluate.max_features,
    )


def needs_features(evaluate: EvaluateSection) -> bool:
    """Whether a requested metric (KID, precision/recall) compares feature vectors."""
    return any(METRICS.get(name).needs_features for name in evaluate.metrics)


def check_evaluation(plan: RunPlan) -> None:
    """Usage errors the metrics would otherwise raise only after sampling."""
    evaluate = plan.evaluate
    loader = EXTRACTORS.get(evaluate.extractor, where="evaluate.extractor")
    if not loader.logits and any(METRICS.get(m).needs_logits for m in evaluate.metrics):
        raise GenbenchError(
            f"evaluate.metrics: is needs class logits, which the {evaluate.extractor} "
            "extractor has not; drop is or use the inception extractor"
        )
    for model in plan.models.values():
        kept = min(model.sample.num_samples, evaluate.max_features)
        if "pr" in evaluate.metrics and kept <= evaluate.pr_k:
            raise GenbenchError(
                f"models.{model.name}.sample.num_samples: precision/recall with k = "
                f"{evaluate.pr_k} needs more than {evaluate.pr_k} samples (and "
                "evaluate.max_features); raise them"
            )
        if (
            "kid" in evaluate.metrics
            and evaluate.kid_subset_size is None
            and kept < KID_SUBSET_SIZE
        ):
            raise GenbenchError(
                f"models.{model.name}.sample.num_samples: KID keeps {kept} feature vectors, "
                f"fewer than its default subset size of {KID_SUBSET_SIZE}; set "
                f"evaluate.kid_subset_size (at most {kept}) or raise num_samples and "
                "evaluate.max_features"
            )


def reference_from_file(evaluate: EvaluateSection, extractor: FeatureExtractor) -> ReferenceStats:
    """``evaluate.reference_stats`` read and checked against the extractor's feature size."""
    path = evaluate.reference_stats
    assert path is not None  # the caller checked
    ref = ReferenceStats.from_npz(path)
    if ref.dim != extractor.feature_dim:
        raise GenbenchError(
            f"evaluate.reference_stats: {path} holds {ref.dim}-d statistics, but the "
            f"extractor gives {extractor.feature_dim}-d features; set evaluate.dims"
        )
    if needs_features(evaluate) and ref.features is None:
        raise GenbenchError(
            f"evaluate.reference_stats: {path} holds only mu and sigma; KID and "
            "precision/recall need feature vectors (drop kid/pr or the file)"
        )
    return ref


class RunInputs:
    """Data splits and the feature extractor of a run, opened before anything is written.

    Opening them first turns a missing data set or missing extractor weights into a usage
    error that leaves no half-made run directory behind.
    """

    def __init__(self, plan: RunPlan, device: torch.device) -> None:
        bench, evaluate = plan.benchmark, plan.evaluate
        self.plan = plan
        self.dataset = DATASETS.get(bench.dataset, where="benchmark.dataset")
        clf = plan.classifier
        clf_trains = clf is not None and clf.checkpoint is None and clf.train.trains
        needs_train = clf_trains or any(m.train.trains for m in plan.models.values())
        self.train = self.dataset.load("train", bench.data_root) if needs_train else None
        size = len(self.train) if self.train is not None else 0  # type: ignore[arg-type]
        if clf is not None and clf_trains and clf.train.batch_size > size:
            raise GenbenchError(
                f"classifier.train.batch_size: {clf.train.batch_size} exceeds the {size} "
                f"training images of {bench.dataset}; lower it"
            )
        for model in plan.models.values():
            if model.train.trains and model.train.batch_size > size:
                raise GenbenchError(
                    f"models.{model.name}.train.batch_size: {model.train.batch_size} exceeds "
                    f"the {size} training images of {bench.dataset}; lower it"
                )
        if evaluate.reference_stats is not None:
            self.reference = None  # the statistics come from that file instead
        elif evaluate.reference == "train" and self.train is not None:
            self.reference = self.train
        else:
            self.reference = self.dataset.load(evaluate.reference, bench.data_root)
        needs_test = evaluate.bpd_images > 0 and any(
            has_likelihood(m.generator) for m in plan.models.values()
        )
        self.test = self.dataset.load("test", bench.data_root) if needs_test else None
        self.held_out = None
        """Test images for the guidance classifier's accuracy (None: no classifier, or a
        data set without a test split)."""
        if clf is not None:
            try:
                self.held_out = (
                    self.test
                    if self.test is not None
                    else self.dataset.load("test", bench.data_root)
                )
            except GenbenchError:
                self.held_out = None
        check_evaluation(plan)
        for model in plan.models.values():  # a bad --checkpoint fails before the run exists
            check_checkpoint(model)  # (and before the extractor's weights are fetched)
            if model.train.trains:
                check_micro_batches(model)
        if evaluate.reference_stats is not None:
            check_stats_protocol(
                evaluate.reference_stats,
                EXTRACTORS.canonical(evaluate.extractor),
                evaluate.resize,
                "evaluate.reference_stats",
            )
        self._stats_at: dict[int, ReferenceStats] = {}
        upscaled = [m.name for m in plan.models.values() if m.sample.upscale is not None]
        if upscaled and evaluate.reference_stats is not None:
            raise GenbenchError(
                f"models.{upscaled[0]}.sample.upscale: upscaled samples are compared with the "
                "data set's images at the upscaled size; evaluate.reference_stats holds "
                "statistics at its own size only; drop one of the two"
            )
        # Upscalers load now: a file spandrel cannot read is a usage error before the run.
        self._upscalers = {
            Path(m.sample.upscale): Upscaler(Path(m.sample.upscale), device, m.data_shape.channels)
            for m in plan.models.values()
            if m.sample.upscale is not None
        }
        self.extractor = load_extractor(
            evaluate.extractor, device, evaluate.weights, extractor_options(evaluate)
        )
        self.batch_size = evaluate.batch_size
        if evaluate.reference_stats is not None:
            # Read now: a wrong file is a usage error before any run directory exists.
            self.stats = reference_from_file(evaluate, self.extractor)

    @functools.cached_property
    def stats(self) -> ReferenceStats:
        """Reference statistics, computed once and shared by every model: from the
        statistics cache when it holds them, else computed (and cached, unless
        ``evaluate.cache`` is off)."""
        # Under several processes rank 0 computes them (or reads the cache) and sends them
        # to the others: computed once, and no two ranks write one cache file.
        return collectives.from_rank0(self._compute_stats)

    def stats_at(self, size: int | None) -> ReferenceStats:
        """Reference statistics of the real images resized to ``size`` pixels (upscaled
        samples are compared with those), or the usual ones for None."""
        if size is None:
            return self.stats
        if self.reference is None:
            raise GenbenchError(
                "sample.upscale: evaluation at the upscaled resolution needs the data set's "
                "images; evaluate.reference_stats gives statistics at its own resolution only"
            )
        if size not in self._stats_at:
            self._stats_at[size] = collectives.from_rank0(lambda: self._compute_stats(size))
        return self._stats_at[size]

    def _compute_stats(self, size: int | None = None) -> ReferenceStats:
        evaluate = self.plan.evaluate
        assert self.reference is not None  # set whenever no statistics file is given
        bench = self.plan.benchmark
        name = self.dataset.cache_name(bench.data_root)
        return dataset_reference(
            self.extractor,
            self.reference,
            name,
            evaluate.reference,
            batch_size=self.batch_size,
            num_features=evaluate.max_features if needs_features(evaluate) else 0,
            cache=StatsCache() if evaluate.cache else None,
            progress=lambda total: counting("reference statistics", total),
            size=size,
        )

    def evaluator(self, metrics: list[str] | None = None, size: int | None = None) -> Evaluator:
        """A fresh ``Evaluator`` for one model, set up from the spec (of ``metrics``: the
        spec's by default), against the reference at ``size`` pixels (None: the data's)."""
        evaluate = self.plan.evaluate
        return Evaluator(
            self.extractor,
            self.stats_at(size),
            metrics or evaluate.metrics,
            metric_options(evaluate),
        )

    def upscaler(self, model: ResolvedModel) -> Upscaler | None:
        """The model's upscaling stage (``[sample] upscale``), loaded once per file."""
        path = model.sample.upscale
        return None if path is None else self._upscalers[Path(path)]
