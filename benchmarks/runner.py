"""``bench run``: train, sample, time and evaluate every model of a resolved spec.

Each stage is its own function; ``run`` strings them together and writes the results store:

    runs/<run-id>/
        spec.toml            the fully resolved spec
        environment.json     git commit, torch/CUDA, device, world size
        run.json             status ("running" / "complete"), models, start and end times
        <model>/train_log.jsonl   one line per ``log_every`` steps
        <model>/checkpoint.safetensors
        <model>/samples.png  sample grid
        <model>/timing.json  sampling speed (warm-up, raw repeats, median, IQR, ...)
        <model>/metrics.json FID / IS with their evaluation protocol
        report.md, report.html   the comparison report (written last, by ``reports``)
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from genbench.benchmarks.ema import EMA, ema_beta
from genbench.benchmarks.fastpath import FastPaths
from genbench.benchmarks.spec import IS_SPLITS, EvaluateSection, ResolvedModel, RunPlan
from genbench.benchmarks.timing import SamplingTimer, sampling_timer
from genbench.core import io as store
from genbench.core.errors import CheckpointError, GenbenchError
from genbench.core.progress import counting, progress_bar
from genbench.data.datasets import get_dataset
from genbench.generators import GENERATORS, Batch, DataShape, Generator

if TYPE_CHECKING:  # eval is imported lazily (see RunInputs)
    from genbench.eval.evaluator import Evaluator
    from genbench.eval.extractors import ExtractorOptions, FeatureExtractor
    from genbench.eval.metrics import MetricOptions
    from genbench.eval.reference import ReferenceStats


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable device is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GenbenchError(
            f"--device: unknown device {name!r}; valid: auto, cpu, cuda, cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenbenchError("--device cuda: no CUDA device is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise GenbenchError(f"--device: unsupported device {name!r}; valid: auto, cpu, cuda")
    return device


def seed_list(model: ResolvedModel) -> list[int]:
    start = model.sample.seed_offset
    return list(range(start, start + model.sample.num_samples))


# --------------------------------------------------------------------------- data


def _to_size(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def batches(
    dataset: TorchDataset, model: ResolvedModel, seed: int, size: int, device: torch.device
) -> Iterator[Batch]:
    """Endless shuffled batches (seeded, reshuffled every epoch) at the model's resolution."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=model.train.batch_size,
        shuffle=True,
        drop_last=True,
        generator=gen,
        num_workers=model.train.num_workers,
        persistent_workers=model.train.num_workers > 0,
    )
    while True:
        for images, labels in loader:
            yield Batch(_to_size(images.to(device), size), labels.to(device))


# --------------------------------------------------------------------------- stages


def build_generator(
    model: ResolvedModel, shape: DataShape, seed: int, device: torch.device
) -> Generator:
    """Instantiate the generator with seeded initialisation (and its checkpoint, if any)."""
    torch.manual_seed(seed)
    gen = GENERATORS.get(model.generator)(model.config, shape, device)
    if model.checkpoint is not None:
        load_checkpoint(gen, model.checkpoint, model.generator)
    return gen


def train(
    gen: Generator, data: Iterator[Batch], model: ResolvedModel, log_path: Path
) -> dict[str, Any]:
    """Run ``model.train.steps`` updates with a progress bar and a JSONL log.

    With an EMA configured, the sampling networks hold the averaged weights afterwards.
    """
    steps, every = model.train.steps or 0, model.train.log_every
    sums: dict[str, float] = {}
    cfg = model.train
    mods = gen.modules()
    ema = EMA({n: mods[n] for n in gen.sampling_modules()}) if cfg.ema else None
    gen.train()
    t0 = last = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"train {model.name}", total=steps, status="")
        for step in range(1, steps + 1):
            losses = gen.train_step(next(data))
            if ema is not None:
                ema.update(
                    ema_beta(
                        batch_size=cfg.batch_size,
                        step=step,
                        decay=cfg.ema_decay,
                        halflife_kimg=cfg.ema_halflife_kimg,
                        rampup_ratio=cfg.ema_rampup_ratio,
                    )
                )
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            if step % every == 0 or step == steps:
                n = every if step % every == 0 else step % every
                now = time.perf_counter()
                record = {"step": step, "time_s": round(now - t0, 4)}
                record.update({k: v / n for k, v in sums.items()})
                record["images_per_s"] = n * model.train.batch_size / max(now - last, 1e-9)
                store.append_jsonl(log_path, record)
                status = " ".join(f"{k}={v / n:.3f}" for k, v in sums.items())
                bar.update(task, status=status)
                sums, last = {}, now
            bar.advance(task)
    if ema is not None:  # sample (and checkpoint) with the averaged weights from here on
        ema.copy_to_modules()
    return {
        "train_steps": steps,
        "train_time_s": time.perf_counter() - t0,
        "ema": cfg.ema_decay or (f"halflife {cfg.ema_halflife_kimg} kimg" if cfg.ema else None),
    }


def save_checkpoint(
    gen: Generator,
    path: Path,
    model: ResolvedModel,
    steps: int,
    train_info: dict[str, Any] | None = None,
) -> None:
    """Write ``gen``'s state atomically; ``train_info`` (steps, time, EMA) goes into the
    metadata so that ``bench resume`` can evaluate the checkpoint without training again."""
    state = {k: v.detach().contiguous().cpu() for k, v in gen.state_dict().items()}
    meta = {
        "generator": model.generator,
        "config": json.dumps(model.config.model_dump(mode="json")),
        "train_steps": str(steps),
    }
    if train_info is not None:
        meta["train_info"] = json.dumps(train_info)
    store.write_with_atomic(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def checkpoint_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from None


def load_checkpoint(gen: Generator, path: Path, generator: str) -> None:
    meta = checkpoint_metadata(path)
    if meta.get("generator") not in (None, generator):
        raise CheckpointError(
            f"{path}: checkpoint of generator {meta['generator']!r}, not {generator!r}"
        )
    try:
        gen.load_state_dict(load_file(str(path), device=str(gen.device)))
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(
            f"{path}: does not fit this model's config ({first}); use the config it was "
            "trained with"
        ) from None


def _labels(gen: Generator, seeds: list[int]) -> torch.Tensor | None:
    if gen.data.num_classes == 0 or not gen.conditional:
        return None
    # A label is a function of the seed, so a class-conditional image still depends only on it.
    return torch.tensor(seeds, device=gen.device) % gen.data.num_classes


def sample_and_evaluate(
    gen: Generator, model: ResolvedModel, evaluator, grid_path: Path
) -> dict[str, Any]:
    """Stream samples by seed into the evaluator; keep only the first few for the grid."""
    from torchvision.utils import make_grid, save_image

    seeds = seed_list(model)
    bs = model.sample.batch_size
    grid: list[torch.Tensor] = []
    gen.eval()
    t0 = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"sample {model.name}", total=len(seeds), status="")
        for i in range(0, len(seeds), bs):
            chunk = seeds[i : i + bs]
            images = gen.sample(
                chunk, _labels(gen, chunk), model.sample.steps, model.sample.guidance
            )
            evaluator.update(images)
            if len(grid) * bs < model.sample.grid_size:
                grid.append(images[: model.sample.grid_size].cpu())
            bar.advance(task, len(chunk))
    elapsed = time.perf_counter() - t0
    picture = torch.cat(grid)[: model.sample.grid_size]
    if picture.shape[-1] < 64:  # enlarge small images (digits are 16 px) so the grid is legible
        factor = -(-64 // picture.shape[-1])
        picture = F.interpolate(picture, scale_factor=factor, mode="nearest")
    nrow = max(1, round(picture.shape[0] ** 0.5))
    image = make_grid(picture, nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1.0)
    store.write_with_atomic(grid_path, lambda tmp: save_image(image, str(tmp), format="png"))
    return {"seconds": elapsed, "seeds": f"{seeds[0]}-{seeds[-1]}"}


def has_likelihood(generator: str) -> bool:
    """Whether the registered generator overrides ``bits_per_dim``."""
    return GENERATORS.get(generator).bits_per_dim is not Generator.bits_per_dim


@torch.no_grad()
def bits_per_dim(
    gen: Generator, images: TorchDataset, count: int, batch_size: int
) -> dict[str, Any]:
    """Mean (and standard error) of the model's bits/dim bound over the first ``count``
    images of ``images`` (the test split), with a progress bar."""
    count = min(count, len(images))
    loader = DataLoader(torch.utils.data.Subset(images, range(count)), batch_size=batch_size)
    values: list[torch.Tensor] = []
    gen.eval()
    with progress_bar() as bar:
        task = bar.add_task("bits/dim (test)", total=count, status="")
        for x, y in loader:
            x = _to_size(x.to(gen.device), gen.image_size)
            labels = y.to(gen.device) if gen.conditional else None
            values.append(gen.bits_per_dim(Batch(x, labels)).double().cpu())
            bar.advance(task, len(x))
    v = torch.cat(values)
    std_err = float(v.std() / len(v) ** 0.5) if len(v) > 1 else float("nan")
    return {"value": float(v.mean()), "std_err": std_err, "num_images": len(v), "split": "test"}


def speed_timer(gen: Generator, model: ResolvedModel, plan: RunPlan) -> SamplingTimer:
    """A timer of one sampling call of ``plan.timing.batch_size`` images with the timing
    section's fast paths applied to ``gen`` (in place).

    ``bench speed`` uses it too, so both commands share one timing and fast-path path.
    """
    seeds = list(range(plan.timing.batch_size))
    fast = FastPaths.from_section(plan.timing)
    guidance = model.sample.guidance
    return sampling_timer(gen, seeds, _labels(gen, seeds), model.sample.steps, guidance, fast)


def measure_speed(gen: Generator, model: ResolvedModel, plan: RunPlan) -> dict[str, Any]:
    """Time ``plan.timing.repeats`` sampling calls after ``plan.timing.warmup`` untimed
    ones (see ``speed_timer``); the dict of timing.json."""
    timer = speed_timer(gen, model, plan)
    out = timer.run(repeats=plan.timing.repeats, warmup=plan.timing.warmup).to_dict()
    out["steps"] = model.sample.steps
    return out


# --------------------------------------------------------------------------- the run


class RunInputs:
    """Data splits and the feature extractor of a run, opened before anything is written.

    Opening them first turns a missing data set or missing extractor weights into a usage
    error that leaves no half-made run directory behind.
    """

    def __init__(self, plan: RunPlan, device: torch.device) -> None:
        from genbench.eval.extractors import load_extractor

        bench, evaluate = plan.benchmark, plan.evaluate
        self.dataset = get_dataset(bench.dataset)
        needs_train = any(m.train.steps for m in plan.models.values())
        self.train = self.dataset.load("train", bench.data_root) if needs_train else None
        for model in plan.models.values():
            if model.train.steps and model.train.batch_size > len(self.train):
                raise GenbenchError(
                    f"models.{model.name}.train.batch_size: {model.train.batch_size} exceeds "
                    f"the {len(self.train)} training images of {bench.dataset}; lower it"
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
        self.plan = plan
        self.extractor = load_extractor(
            evaluate.extractor, device, evaluate.weights, extractor_options(evaluate)
        )
        self.batch_size = evaluate.batch_size
        check_evaluation(plan)
        if evaluate.reference_stats is not None:
            # Read now: a wrong file is a usage error before any run directory exists.
            self.stats = reference_from_file(evaluate, self.extractor)

    @functools.cached_property
    def stats(self):
        """Reference statistics (``eval.reference.ReferenceStats``), computed once and shared
        by every model: from the statistics cache when it holds them, else computed (and
        cached, unless ``evaluate.cache`` is off)."""
        from genbench.eval.reference import StatsCache, dataset_reference

        evaluate = self.plan.evaluate
        with counting("reference statistics", len(self.reference)) as advance:
            return dataset_reference(
                self.extractor,
                self.reference,
                self.plan.benchmark.dataset,
                evaluate.reference,
                batch_size=self.batch_size,
                num_features=evaluate.max_features if needs_features(evaluate) else 0,
                cache=StatsCache() if evaluate.cache else None,
                on_batch=advance,
            )

    def evaluator(self) -> Evaluator:
        """A fresh ``eval.evaluator.Evaluator`` for one model, set up from the spec."""
        from genbench.eval.evaluator import Evaluator

        evaluate = self.plan.evaluate
        return Evaluator(self.extractor, self.stats, evaluate.metrics, metric_options(evaluate))


def extractor_options(evaluate: EvaluateSection) -> ExtractorOptions:
    """The spec's extractor settings as ``eval.extractors.ExtractorOptions``."""
    from genbench.eval.extractors import ExtractorOptions

    return ExtractorOptions(evaluate.dims, evaluate.resize, evaluate.quantize, evaluate.tf32)


def metric_options(evaluate: EvaluateSection) -> MetricOptions:
    """The spec's metric settings as ``eval.metrics.MetricOptions``."""
    from genbench.eval.metrics import MetricOptions

    return MetricOptions(
        is_splits=IS_SPLITS,
        kid_subsets=evaluate.kid_subsets,
        kid_subset_size=evaluate.kid_subset_size,
        pr_k=evaluate.pr_k,
        max_features=evaluate.max_features,
    )


def needs_features(evaluate: EvaluateSection) -> bool:
    """Whether a requested metric (KID, precision/recall) compares feature vectors."""
    from genbench.eval.metrics import METRICS

    return any(METRICS.get(name).needs_features for name in evaluate.metrics)


def check_evaluation(plan: RunPlan) -> None:
    """Usage errors the metrics would otherwise raise only after sampling."""
    evaluate = plan.evaluate
    for model in plan.models.values():
        kept = min(model.sample.num_samples, evaluate.max_features)
        if "pr" in evaluate.metrics and kept <= evaluate.pr_k:
            raise GenbenchError(
                f"models.{model.name}.sample.num_samples: precision/recall with k = "
                f"{evaluate.pr_k} needs more than {evaluate.pr_k} samples (and "
                "evaluate.max_features); raise them"
            )


def reference_from_file(evaluate: EvaluateSection, extractor: FeatureExtractor) -> ReferenceStats:
    """``evaluate.reference_stats`` read and checked against the extractor's feature size."""
    from genbench.eval.reference import ReferenceStats

    ref = ReferenceStats.from_npz(evaluate.reference_stats)
    if ref.dim != extractor.feature_dim:
        raise GenbenchError(
            f"evaluate.reference_stats: {evaluate.reference_stats} holds {ref.dim}-d statistics, "
            f"but the extractor gives {extractor.feature_dim}-d features; set evaluate.dims"
        )
    if needs_features(evaluate) and ref.features is None:
        raise GenbenchError(
            f"evaluate.reference_stats: {evaluate.reference_stats} holds only mu and sigma; KID "
            "and precision/recall need feature vectors (drop kid/pr or the file)"
        )
    return ref


def run_model(
    plan: RunPlan,
    model: ResolvedModel,
    out: Path,
    device: torch.device,
    inputs: RunInputs,
    trained: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (or load), checkpoint, sample + evaluate, time; write the model's files.

    ``trained``: the train info of a finished checkpoint already in ``out`` (``bench
    resume``); the model is then loaded from it instead of trained again.
    """
    out.mkdir(parents=True, exist_ok=True)
    info = inputs.dataset.info
    gen = build_generator(
        model,
        DataShape(info.channels, info.image_size, info.num_classes),
        plan.benchmark.seed,
        device,
    )
    ckpt = out / "checkpoint.safetensors"
    if trained is not None:
        load_checkpoint(gen, ckpt, model.generator)
        train_info = trained
    else:
        train_info = {"train_steps": 0, "train_time_s": 0.0, "ema": None}
        if model.train.steps:
            data = batches(inputs.train, model, plan.benchmark.seed, gen.image_size, device)
            train_info = train(gen, data, model, out / "train_log.jsonl")
        save_checkpoint(gen, ckpt, model, train_info["train_steps"], train_info)

    evaluator = inputs.evaluator()
    sampled = sample_and_evaluate(gen, model, evaluator, out / "samples.png")
    extra = {}
    if inputs.test is not None and has_likelihood(model.generator):
        extra["bits_per_dim"] = bits_per_dim(
            gen, inputs.test, plan.evaluate.bpd_images, plan.evaluate.batch_size
        )
    timing = measure_speed(gen, model, plan)
    store.write_json_atomic(out / "timing.json", timing)
    metrics = {
        "model": model.name,
        "generator": model.generator,
        "config": model.config.model_dump(mode="json"),
        "parameters": gen.num_parameters(),
        "nfe": gen.nfe(model.sample.steps, model.sample.guidance),
        "dataset": plan.benchmark.dataset,
        "checkpoint_source": str(model.checkpoint) if model.checkpoint else None,
        **train_info,
        "sample": {
            "num_samples": model.sample.num_samples,
            "seeds": sampled["seeds"],
            "steps": model.sample.steps,
            "guidance": model.sample.guidance,
            "seconds": sampled["seconds"],
        },
        "metrics": evaluator.compute(),
        "extra": extra,
        "protocol": {
            **evaluator.protocol(),
            "seeds": sampled["seeds"],  # the reference's protocol comes with the evaluator's
        },
    }
    store.write_json_atomic(out / "metrics.json", metrics)
    return metrics


def run(plan: RunPlan, out_dir: Path) -> Path:
    """Execute ``plan``; returns the run directory."""
    device = resolve_device(plan.benchmark.device)
    inputs = RunInputs(plan, device)
    run_dir = store.new_run_dir(out_dir, plan.benchmark.name)
    store.write_text_atomic(run_dir / "spec.toml", plan.to_toml())
    store.write_json_atomic(run_dir / "environment.json", store.fingerprint(device))
    status = {
        "run_id": run_dir.name,
        "benchmark": plan.benchmark.name,
        "status": "running",
        "models": list(plan.models),
        "started": store.utc_now(),
    }
    store.write_json_atomic(run_dir / "run.json", status)
    for model in plan.models.values():
        run_model(plan, model, run_dir / model.name, device, inputs)
    _finish_run(run_dir, status)
    return run_dir


def _finish_run(run_dir: Path, status: dict[str, Any]) -> None:
    """Mark the run complete, then write its reports (the speed history lives beside it)."""
    status.update(status="complete", finished=store.utc_now())
    store.write_json_atomic(run_dir / "run.json", status)
    from genbench.reports.report import write_run_reports  # reads back only the files written above

    write_run_reports(run_dir, run_dir.parent / "speed_history.jsonl")


# --------------------------------------------------------------------------- resuming


def read_run_status(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of a run directory, or a one-line error saying it is not one."""
    path = Path(run_dir) / "run.json"
    if not (Path(run_dir) / "spec.toml").is_file():
        raise GenbenchError(
            f"{run_dir}: not a run directory (no spec.toml); pass a directory that "
            "`bench run` created, e.g. runs/<run-id>"
        )
    if not path.is_file():  # killed between writing the spec and the status
        return {"run_id": Path(run_dir).name, "status": "running"}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GenbenchError(f"{path}: unreadable ({exc})") from None


def finished_training(model: ResolvedModel, model_dir: Path) -> dict[str, Any] | None:
    """The train info of ``model_dir``'s checkpoint when it holds the finished training of
    ``model`` (written after the last update), else None."""
    path = model_dir / "checkpoint.safetensors"
    if not path.is_file():
        return None
    try:
        meta = checkpoint_metadata(path)
        info = json.loads(meta["train_info"])
    except (CheckpointError, KeyError, ValueError):
        return None  # unreadable, or from a version that did not record its training
    if meta.get("generator") != model.generator or info.get("train_steps") != (
        model.train.steps or 0
    ):
        return None
    return info


def _clear_incomplete(model_dir: Path, keep_checkpoint: bool) -> None:
    """Remove what an interrupted attempt left of a model that has no metrics.json."""
    keep = {"checkpoint.safetensors", "train_log.jsonl"} if keep_checkpoint else set()
    if not model_dir.is_dir():
        return
    for path in model_dir.iterdir():
        if path.is_file() and path.name not in keep:
            path.unlink()


def resume(plan: RunPlan, run_dir: Path) -> dict[str, str]:
    """Finish the interrupted run ``run_dir`` in place; returns what it did with each model
    ("kept", "evaluate" or "run").

    Models with a metrics.json are kept untouched; a model whose training had finished is
    evaluated from its checkpoint; every other model is run again from the start (the
    same seeds, so the same result as an uninterrupted run on the same machine). The
    reports are rewritten at the end.
    """
    run_dir = Path(run_dir)
    status = read_run_status(run_dir)
    device = resolve_device(plan.benchmark.device)
    inputs = RunInputs(plan, device)  # a missing data set fails before anything changes
    # What to do with each model: keep it, evaluate its finished training, or run it again.
    actions: dict[str, str] = {}
    trained: dict[str, dict[str, Any] | None] = {}
    for name, model in plan.models.items():
        trained[name] = None
        if (run_dir / name / "metrics.json").is_file():
            actions[name] = "kept"
            continue
        trained[name] = finished_training(model, run_dir / name)
        actions[name] = "run" if trained[name] is None else "evaluate"
    for partial in run_dir.glob("*.partial"):
        partial.unlink()
    status.update(status="running")
    status.setdefault("benchmark", plan.benchmark.name)
    status.setdefault("models", list(plan.models))
    status.setdefault("resumed", []).append(
        {"at": store.utc_now(), "environment": store.fingerprint(device), "actions": actions}
    )
    store.write_json_atomic(run_dir / "run.json", status)
    for name, model in plan.models.items():
        if actions[name] == "kept":
            continue
        _clear_incomplete(run_dir / name, keep_checkpoint=trained[name] is not None)
        run_model(plan, model, run_dir / name, device, inputs, trained=trained[name])
    _finish_run(run_dir, status)
    return actions
