"""The results store's records: typed, versioned, the only contract between the harness that
writes results and the reports and API that read them.

Every JSON file of a run or speed directory is one of these pydantic records and carries a
``schema_version``. Unknown keys are errors (a typo or a file from elsewhere never passes
silently); fields a report can do without are optional, so a run killed early or written by
an older version still loads. ``genbench.store.files`` reads and writes them, migrating
files of earlier schema versions (``genbench.store.versions``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

SCHEMA_VERSION = 3
"""The schema version this genbench writes. 1: files written before records had a version
(guidance in Ho & Salimans' w for DDPM and VDPM, DDPM step sections as "a,b,c"); 2: one
guidance scale s everywhere, sections as "a+b+c"."""


class Strict(BaseModel):
    """A part of a record: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Sparse(Strict):
    """A part whose fields apply only in some cases (one metric's values, one kind of
    source): written without the fields that do not apply."""

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class Record(Strict):
    """A whole file of the store, stamped with the schema version it was written in."""

    schema_version: int = SCHEMA_VERSION


# --------------------------------------------------------------------------- environment


class Environment(Record):
    """What numbers were measured on: code, libraries, hardware, world size
    (``environment.json``; also embedded in speed results and resumptions)."""

    git_commit: str | None = None
    python: str | None = None
    torch: str | None = None
    cuda: str | None = None
    platform: str | None = None
    cpu: str | None = None
    cpu_count: int | None = None
    torch_threads: int | None = None
    device: str | None = None
    world_size: int = 1
    launcher: str | None = None
    """What started the processes: torchrun, mpi, slurm or single (None: older runs)."""
    device_name: str | None = None
    device_memory_bytes: int | None = None
    cudnn: int | None = None
    driver: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """The fields as a plain dict, without the schema version (for hashing and display).
        The CUDA-only fields are left out when unset, as they were before records had a
        schema, so a machine keeps its ``machine_id`` across versions."""
        out = self.model_dump(exclude={"schema_version"})
        for key in ("device_memory_bytes", "cudnn", "driver", "launcher"):
            if out[key] is None:
                del out[key]
        return out


# --------------------------------------------------------------------------- runs


class Resumption(Strict):
    """One ``bench resume`` of a run: when, where, and what it did with each model."""

    at: str
    environment: Environment
    actions: dict[str, Literal["kept", "evaluate", "continue", "run"]]


class RunStatus(Record):
    """``run.json``: the run's status and its models, in run order."""

    run_id: str
    benchmark: str | None = None
    status: Literal["running", "complete"] = "running"
    models: list[str] = Field(default_factory=list)
    started: str | None = None
    finished: str | None = None
    resumed: list[Resumption] = Field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.status == "complete"


class MetricValue(Sparse):
    """One metric's result: ``value`` (FID, IS, KID, bits/dim) with its spread (``std`` over
    splits or subsets, ``std_err``), or precision and recall with their ``k``."""

    value: float | None = None
    std: float | None = None
    std_err: float | None = None
    precision: float | None = None
    recall: float | None = None
    k: int | None = None
    num_images: int | None = None
    split: str | None = None


class Source(Sparse):
    """Where a set of images or statistics came from: a data set split, a file, a folder,
    an array or a callable; with the image count and the statistics' sha256 when known."""

    dataset: str | None = None
    split: str | None = None
    path: str | None = None
    folder: str | None = None
    zip: str | None = None
    array: str | None = None
    callable: str | None = None
    count: int | None = None
    stats_sha256: str | None = None
    num_features: int | None = None
    clean_fid: dict[str, str] | None = None  # a clean-fid statistics file: mode and model
    resize: str | None = None
    """How the images were resized before the extractor (reference statistics at an upscaled
    resolution: "bicubic 16->64"); None: as stored."""


class Protocol(Sparse):
    """Everything a metric value must be stored with to be comparable: the extractor and its
    weights, resize, dtype, feature size, quantisation, TF32, sample count, the metrics'
    settings, the reference and the seed range."""

    extractor: str
    weights_sha256: str
    resize: str
    input_size: int | None = None
    dtype: str = "float32"
    feature_dim: int
    dims: int | None = None
    quantize: bool | None = None
    tf32: bool | None = None
    num_samples: int | None = None
    is_splits: int | None = None
    max_features: int | None = None
    num_features: int | None = None
    kid_subsets: int | None = None
    kid_subset_size: int | None = None
    kid_seed: int | None = None
    pr_k: int | None = None
    sample_resize: str | None = None
    """How samples were resized to the data set's resolution before the extractor, for a
    generator sampling at another size (e.g. "bilinear_antialias 64->32"); None: not resized."""
    is_logits: str | None = None
    """Which logits the Inception Score used ("unbiased": pool3 x W, no fc bias); None in
    runs made before it was recorded, which used the biased fc output."""
    reference: Source | None = None
    fake: Source | None = None
    seeds: str | None = None
    upscale: str | None = None
    """The super-resolution stage applied to the samples before the extractor
    (``[sample] upscale``: architecture, scale, weights sha256); None: none."""
    labels: list[int] | None = None
    """The class labels sampled (cycled over the seeds); None: every class, or an
    unconditional model. Part of the comparability key: FID of some classes is another
    number than FID of all."""

    def setting(self) -> dict[str, Any]:
        """The comparability key: every recorded fact except which images were drawn (the
        seed range), as a flat-able dict without empty fields."""
        return self.model_dump(exclude_none=True, exclude={"seeds"})


class SampleInfo(Strict):
    """How a model's evaluation samples were drawn."""

    num_samples: int
    seeds: str
    steps: int | str | None = None
    guidance: float | None = None
    """Classifier-free guidance scale s (diffusers' ``guidance_scale``); None: not set."""
    labels: list[int] | None = None
    """The class labels sampled, cycled over the seeds; None: every class in turn."""
    seconds: float | None = None
    stage_seconds: dict[str, float] | None = None
    """Sampling seconds by stage of a multi-stage generator (within ``seconds``)."""
    upscale_seconds: float | None = None
    """Time of the upscaling stage (``[sample] upscale``) over the evaluation samples, apart
    from ``seconds`` (sampling)."""
    classifier_scale: float | None = None
    """Classifier guidance scale (``[classifier]``); None: not guided by a classifier."""
    classifier_sha256: str | None = None
    """sha256 of the guidance classifier's weights that ``classifier_scale`` followed."""
    trajectory_sigmas: list[float] | None = None
    """Noise levels of the columns of ``trajectory.png`` (the last column, 0, is the final
    sample); None: no strip (not a diffusion model, or ``trajectory_size = 0``)."""


class ModelMetrics(Record):
    """``<model>/metrics.json``: a trained (or loaded) model's quality with its protocol,
    cost and provenance."""

    model: str
    generator: str
    config: dict[str, Any] = Field(default_factory=dict)
    parameters: int | None = None
    nfe: int | None = None
    dataset: str | None = None
    checkpoint_source: str | None = None
    checkpoint_sha256: str | None = None
    """sha256 of the checkpoint file given to the run (a diffusers folder's weights file)."""
    checkpoint_id: str | None = None
    """The ``vendor/checkpoints.toml`` entry with that sha256, if any."""
    train_steps: int = 0
    train_time_s: float | None = None
    """Training seconds (saving training states not counted)."""
    train_images: int | None = None
    train_budget: str | None = None
    """The ``time_budget`` or ``images_budget`` the model was trained under, if any."""
    train_stopped_by: Literal["steps", "time_budget"] | None = None
    train_precision: Literal["fp32", "bf16"] | None = None
    grad_accum: int | None = None
    ema: float | str | None = None
    sample: SampleInfo | None = None
    metrics: dict[str, MetricValue] = Field(default_factory=dict)
    extra: dict[str, MetricValue] = Field(default_factory=dict)
    """Model-specific measurements outside the protocol (``bits_per_dim``)."""
    protocol: Protocol | None = None
    failure: str | None = None
    """Why the model has no metrics: training diverged, samples were not finite. A failed
    model's values are never a result."""

    def metric(self, name: str) -> MetricValue | None:
        """The stored result of one metric (or extra measurement), None when not computed."""
        return self.metrics.get(name) or self.extra.get(name)

    def value(self, name: str) -> float | None:
        """``metric(name).value``: FID, IS, KID or bits/dim; None when not computed."""
        found = self.metric(name)
        return None if found is None else found.value


# --------------------------------------------------------------------------- timing


class FastPathsRecord(Strict):
    """The sampling fast paths a timing was measured with."""

    precision: str | None = None
    channels_last: bool | None = None
    compile: str | None = None
    cuda_graphs: bool | None = None


class FastCandidate(Strict):
    """One fast-path combination ``--fast`` tried: its images against fp32 eager's on the
    same seeds and its seconds per call (``benchmarks.autofast``)."""

    precision: str
    channels_last: bool
    compile: str
    cuda_graphs: bool
    mean_abs_diff: float | None = None
    tolerance: float
    within_tolerance: bool
    median_s: float | None = None
    """Median seconds per call (None: not timed)."""
    timed_calls: int = 0
    error: str | None = None
    """Why the path could not run, when it could not."""


class FastChoice(Strict):
    """What ``--fast`` chose for a case and how: the paths, whether they came from this
    machine's cache ("hit") or were chosen now ("chosen"), and every candidate."""

    key: str
    paths: FastPathsRecord
    cache: str
    candidates: list[FastCandidate] = Field(default_factory=list)
    at: str | None = None
    """When the choice was made."""


NOISY_IQR_SHARE = 0.10
"""A timing whose repeats spread (IQR) more than this share of their median is noisy."""
NOISY_ADVICE = "noisy: rerun on a quiet machine"


def is_noisy(
    median_s: float | None,
    iqr_s: float | None,
    load_average: float | None = None,
    threads: int | None = None,
) -> bool:
    """Whether a timing cannot be trusted: its repeats spread more than ``NOISY_IQR_SHARE``
    of their median, or the machine's load average at the end of the timed calls exceeded
    the threads the timing used (other processes competed for the cores)."""
    if load_average is not None and threads and load_average > threads:
        return True
    if median_s is None or iqr_s is None or not median_s > 0:
        return False
    return iqr_s > NOISY_IQR_SHARE * median_s


class Timing(Record):
    """``<model>/timing.json``: one timed sampling configuration; seconds per call of
    ``batch_size`` images, raw repeats kept."""

    device: str | None = None
    batch_size: int
    nfe: int | None = None
    steps: int | str | None = None
    warmup_s: list[float] = Field(default_factory=list)
    raw_s: list[float] = Field(default_factory=list)
    stage_s: dict[str, float] | None = None
    """Mean seconds per timed call in each stage of a multi-stage generator (a cascade's
    base and SR stages); they add up to the calls' mean time. None: one stage."""
    median_s: float
    iqr_s: float | None = None
    images_per_s: float
    s_per_50k: float | None = None
    ms_per_nfe: float | None = None
    image_nfe_per_s: float | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None
    time_to_first_image_s: float | None = None
    noise_share: float | None = None
    noise_s: float | None = None
    precision: str | None = None
    channels_last: bool | None = None
    compile: str | None = None
    cuda_graphs: bool | None = None
    # Several processes (``bench run`` under torchrun / mpirun / srun); None with one.
    processes: int | None = None
    per_rank_images_per_s: list[float] | None = None
    aggregate_images_per_s: float | None = None
    straggler_spread: float | None = None
    """(fastest - slowest) / fastest of the ranks' images/s in the joint round."""
    single_process_images_per_s: float | None = None
    scaling_efficiency: float | None = None
    """aggregate images/s / (processes x one process's images/s)."""
    load_average: float | None = None
    """The machine's 1-minute load average when the timed calls ended."""
    threads: int | None = None
    """torch's intra-op threads during the timed calls."""
    compile_cache: str | None = None
    """With ``compile``: whether the first call found its kernels in inductor's on-disk
    cache ("warm"), compiled them ("cold") or both ("partly warm")."""
    fast_choice: FastChoice | None = None
    """With ``--fast`` / ``[timing] fast``: how the fast paths above were chosen."""

    def noisy(self) -> bool:
        """``is_noisy`` of this timing (spread or load)."""
        return is_noisy(self.median_s, self.iqr_s, self.load_average, self.threads)

    def fast_paths(self) -> FastPathsRecord:
        return FastPathsRecord(
            precision=self.precision,
            channels_last=self.channels_last,
            compile=self.compile,
            cuda_graphs=self.cuda_graphs,
        )


class SpeedResult(Timing):
    """One ``bench speed`` result: a model at one batch size and step setting, with where
    and when it was measured (a line of the speed history, an entry of ``speed.json``)."""

    task: str | None = None
    """None: sampling; "train": one training step (``bench speed --train``)."""
    commit: str | None = None
    machine: str | None = None
    timestamp: str | None = None
    speed_id: str | None = None
    model: str
    generator: str | None = None
    baseline: str | None = None
    parameters: int | None = None
    repeats: int | None = None
    weights: str | None = None
    settings: dict[str, Any] | None = None
    """The model's sampling settings other than steps that its spec sets (guidance,
    classifier_scale, sampler, ...); None: none."""
    sessions: int | None = None
    """Worker pairs whose samples were pooled (``bench compare``)."""
    flops_per_image: float | None = None
    """Network FLOPs of one generated image (``benchmarks.peak``; None: not counted)."""
    gflops_per_s: float | None = None
    peak_gflops_per_s: float | None = None
    """This machine's measured peak in the result's precision."""
    peak_fraction: float | None = None


class SpeedRun(Record):
    """``speed.json`` of a ``bench speed`` directory (or ``base.json`` / ``head.json`` of a
    ``bench compare`` directory): the environment and every result."""

    kind: Literal["speed"] = "speed"
    spec: str | None = None
    revision: str | None = None
    weights: str | None = None
    note: str | None = None
    environment: Environment = Field(default_factory=Environment)
    complete: bool = True
    results: list[SpeedResult] = Field(default_factory=list)


class Comparison(Strict):
    """One case of ``bench compare``: BASE against HEAD by the two-condition rule."""

    key: dict[str, Any]
    base_median_s: float
    head_median_s: float
    ratio: float
    """head / base median seconds: above 1 is slower."""
    ci_low: float
    ci_high: float
    p_value: float
    n_base: int
    n_head: int
    verdict: Literal["regression", "improvement", "unchanged"]


class CompareResult(Record):
    """``compare.json`` of a ``bench compare`` directory."""

    base: str
    head: str
    rows: list[Comparison] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- evaluation


class EvalResult(Record):
    """Metrics between two image sets (``bench eval``'s JSON, ``genbench.evaluate``'s
    return value): values and the protocol they were measured under."""

    real: str
    fake: str
    metrics: dict[str, MetricValue]
    protocol: Protocol
    processes: int = 1
    fake_seconds: float | None = None
    """Wall seconds of the fake side's pass (extraction and accumulation; the slowest rank's)."""
    fake_images_per_s: float | None = None

    def value(self, name: str) -> float | None:
        """``metrics[name].value`` (FID, IS, KID); None when not computed."""
        found = self.metrics.get(name)
        return None if found is None else found.value


# --------------------------------------------------------------------------- training log


class ClassifierResult(Record):
    """``classifier/classifier.json``: the run's guidance classifier (``[classifier]``),
    its training and its accuracy on held-out images at a few noise levels."""

    config: dict[str, Any] = Field(default_factory=dict)
    parameters: int
    sha256: str
    """sha256 of ``classifier.safetensors``."""
    source: str | None = None
    """The file it was loaded from (``[classifier] checkpoint``); None: trained here."""
    train_steps: int = 0
    train_time_s: float | None = None
    accuracy: dict[str, float] = Field(default_factory=dict)
    """Top-1 accuracy by noise level sigma (as text), on ``accuracy_images`` images."""
    accuracy_split: str | None = None
    accuracy_images: int = 0


class TrainEvalEntry(Strict):
    """One line of ``<model>/train_eval.jsonl``: quality measured in the middle of training
    (``[evaluate] every``), on its own seeds and sample count, with its own protocol."""

    step: int
    images: int
    """Training images seen so far (steps x global batch)."""
    time_s: float | None = None
    """Training seconds so far (the evaluations themselves not counted)."""
    metrics: dict[str, MetricValue] = Field(default_factory=dict)
    protocol: Protocol
    error: str | None = None
    """Why this evaluation has no metrics (non-finite samples); training went on."""

    def value(self, metric: str) -> float | None:
        entry = self.metrics.get(metric)
        return None if entry is None else entry.value


class TrainLogEntry(Strict):
    """One line of ``<model>/train_log.jsonl``: mean losses over the last ``log_every``
    steps. On disk the losses are top-level keys beside ``step``, ``time_s`` and
    ``images_per_s``."""

    step: int
    time_s: float | None = None
    images_per_s: float | None = None
    losses: dict[str, float | None] = Field(default_factory=dict)
    """Mean losses; None where a loss was NaN or infinite (strict JSON has no NaN)."""

    @model_validator(mode="before")
    @classmethod
    def _gather_losses(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "losses" in data:
            return data
        fixed = {"step", "time_s", "images_per_s"}
        losses = {k: v for k, v in data.items() if k not in fixed}
        return {**{k: v for k, v in data.items() if k in fixed}, "losses": losses}

    @model_serializer
    def _flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step}
        if self.time_s is not None:
            out["time_s"] = self.time_s
        out.update(self.losses)
        if self.images_per_s is not None:
            out["images_per_s"] = self.images_per_s
        return out
