"""``bench speed``: sampling speed per model, batch size and step count, with a history.

Every case samples with freshly initialised (untrained) weights: sampling speed does not
depend on weight values, so no training or checkpoint is needed. Each case goes through
``runner.measure_speed`` (the timing of ``bench run``): a cold first call reported as the
time to first image, warm-up calls, ``repeats`` timed calls (CUDA events on GPU,
``perf_counter`` on CPU), median and IQR with the raw samples, the noise share, with the
requested fast paths applied. Results:

    OUT/<speed-id>/speed.json   {"kind": "speed", "environment": {...}, "results": [...]}
    HISTORY (JSON lines)        one line per result, keyed by git commit and machine

``serve`` is the worker ``bench compare`` runs inside each git revision it measures: it
builds the cases, warms them up, then times repeats on request so two revisions can be
measured interleaved (A B A B ...).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genbench.benchmarks.fastpath import FastPaths
from genbench.benchmarks.spec import ResolvedModel, RunPlan
from genbench.benchmarks.timing import SamplingTimer
from genbench.core import io as store
from genbench.core.errors import GenbenchError

WEIGHTS = "untrained"
WEIGHTS_NOTE = "untrained weights: sampling speed does not depend on the weights' values"
DEFAULT_HISTORY = Path("runs") / "speed_history.jsonl"
MIN_REPEATS = 10
PROTOCOL = 1  # version of the serve() conversation; bench compare checks it


@dataclass(frozen=True)
class SpeedCase:
    """One model at one batch size and step setting (``model.sample.steps``)."""

    model: ResolvedModel
    batch_size: int

    @property
    def steps(self) -> int | str | None:
        return self.model.sample.steps

    def key(self) -> dict[str, Any]:
        """What identifies the case across revisions and result files."""
        return {"model": self.model.name, "batch_size": self.batch_size, "steps": self.steps}


@dataclass(frozen=True)
class SpeedSettings:
    """What ``bench speed`` measures besides the spec: sizes, steps, fast paths, repeats."""

    batch_sizes: list[int] | None = None
    steps: list[int | str] | None = None
    fast: FastPaths | None = None  # None: the spec's [timing] fast paths
    repeats: int | None = None  # None: the spec's timing.repeats
    warmup: int | None = None


# --------------------------------------------------------------------------- options


def parse_batch_sizes(text: str) -> list[int]:
    """``"64,256,1024"`` -> [64, 256, 1024]; anything else is a usage error."""
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise GenbenchError(f"--batch-sizes: expected positive integers like 64,256, got {text!r}")
    return sizes


def parse_steps(text: str) -> list[int | str]:
    """``"50,ddim100"`` -> [50, "ddim100"]: integers stay integers, other settings strings."""
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise GenbenchError(f"--steps: expected step settings like 50,ddim100, got {text!r}")
    return [int(v) if v.isdigit() else v for v in items]


def resolved_settings(plan: RunPlan, settings: SpeedSettings) -> SpeedSettings:
    """Fill the unset fields from the spec's [timing] section and check the repeats."""
    timing = plan.timing
    repeats = settings.repeats if settings.repeats is not None else timing.repeats
    if repeats < MIN_REPEATS:
        raise GenbenchError(
            f"timing.repeats: bench speed needs at least {MIN_REPEATS} timed repeats for a "
            f"median and IQR worth comparing (got {repeats}); pass --repeats {MIN_REPEATS}"
        )
    warmup = settings.warmup if settings.warmup is not None else timing.warmup
    if warmup < 0:
        raise GenbenchError(f"--warmup: must be 0 or more, got {warmup}")
    return SpeedSettings(
        batch_sizes=settings.batch_sizes or [timing.batch_size],
        steps=settings.steps,
        fast=settings.fast or FastPaths.from_section(timing),
        repeats=repeats,
        warmup=warmup,
    )


def speed_cases(plan: RunPlan, settings: SpeedSettings) -> list[SpeedCase]:
    """Every (model, steps, batch size) of the plan, untrained and without a checkpoint."""
    cases = []
    for model in plan.models.values():
        for steps in settings.steps or [model.sample.steps]:
            sample = model.sample.model_copy(update={"steps": steps})
            untrained = dataclasses.replace(model, sample=sample, checkpoint=None)
            cases.extend(SpeedCase(untrained, b) for b in settings.batch_sizes or [])
    return cases


def case_plan(plan: RunPlan, case: SpeedCase, settings: SpeedSettings) -> RunPlan:
    """``plan`` with its [timing] section set to ``case`` and ``settings``."""
    fast = settings.fast or FastPaths()
    timing = plan.timing.model_copy(
        update={
            "batch_size": case.batch_size,
            "repeats": settings.repeats,
            "warmup": settings.warmup,
            **fast.to_dict(),
        }
    )
    return dataclasses.replace(plan, timing=timing)


# --------------------------------------------------------------------------- measuring


def build_untrained(plan: RunPlan, case: SpeedCase, device: torch.device) -> Any:
    """A freshly initialised generator for ``case`` (seeded like ``bench run``)."""
    from genbench.benchmarks.runner import build_generator
    from genbench.data.datasets import get_dataset
    from genbench.generators import DataShape

    info = get_dataset(plan.benchmark.dataset).info
    shape = DataShape(info.channels, info.image_size, info.num_classes)
    try:
        return build_generator(case.model, shape, plan.benchmark.seed, device)
    except ValueError as exc:
        raise GenbenchError(f"models.{case.model.name}: cannot build it ({exc})") from None


def _check_steps(gen: Any, case: SpeedCase) -> int:
    try:
        return gen.nfe(case.steps)
    except ValueError as exc:
        raise GenbenchError(
            f"--steps: {case.steps!r} does not suit model {case.model.name!r} ({exc})"
        ) from None


def machine_id(env: dict[str, Any]) -> str:
    """A short hash of everything in the fingerprint but the code version: same machine,
    same libraries, same device and thread count give the same id."""
    hardware = {k: v for k, v in env.items() if k != "git_commit"}
    blob = json.dumps(hardware, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def make_record(
    case: SpeedCase,
    timing: dict[str, Any],
    env: dict[str, Any],
    *,
    generator: str,
    parameters: int,
    speed_id: str,
    baseline: str | None = None,
) -> dict[str, Any]:
    """One result: identity, fast paths, every timing figure, raw samples, provenance."""
    return {
        "commit": env.get("git_commit"),
        "machine": machine_id(env),
        "timestamp": store.utc_now(),
        "speed_id": speed_id,
        "model": case.model.name,
        "generator": generator,
        "baseline": baseline,
        "parameters": parameters,
        "repeats": len(timing["raw_s"]),
        **timing,
        "steps": case.steps,
        "weights": WEIGHTS,
    }


def case_timer(
    plan: RunPlan, case: SpeedCase, settings: SpeedSettings, device: torch.device
) -> tuple[SamplingTimer, Any]:
    """(timer, generator) for ``case``, through ``runner.speed_timer`` (not started)."""
    from genbench.benchmarks.runner import speed_timer

    gen = build_untrained(plan, case, device)
    _check_steps(gen, case)
    return speed_timer(gen, case.model, case_plan(plan, case, settings)), gen


def run_speed(
    plan: RunPlan,
    settings: SpeedSettings,
    out_dir: Path,
    history: Path,
    *,
    baseline: str | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Measure every case; write ``speed.json`` (after each case) and append the history."""
    from genbench.benchmarks.runner import resolve_device

    device = resolve_device(plan.benchmark.device)
    settings = resolved_settings(plan, settings)
    (settings.fast or FastPaths()).check(device)
    cases = speed_cases(plan, settings)
    env = store.fingerprint(device)
    speed_dir = store.new_run_dir(out_dir, f"speed-{plan.benchmark.name}")
    doc: dict[str, Any] = {
        "kind": "speed",
        "spec": plan.benchmark.name,
        "weights": WEIGHTS,
        "note": WEIGHTS_NOTE,
        "environment": env,
        "complete": False,
        "results": [],
    }
    store.write_json_atomic(speed_dir / "speed.json", doc)
    history.parent.mkdir(parents=True, exist_ok=True)

    def keep(record: dict[str, Any]) -> None:
        doc["results"].append(record)
        store.write_json_atomic(speed_dir / "speed.json", doc)
        store.append_jsonl(history, record)
        if on_record is not None:
            on_record(record)

    for case in cases:
        measured = None
        if baseline is not None:
            from genbench.benchmarks.baselines import baseline_timer

            measured = baseline_timer(baseline, plan, case, device)
        timer, gen = case_timer(plan, case, settings, device)
        timers = [timer] if measured is None else [measured[0], timer]
        for t in timers:
            t.start(settings.warmup or 0)
        # With a baseline, the two alternate call by call (A B, then B A) so that machine
        # drift lands on both sides of the ratio instead of on whichever went second.
        for r in range(settings.repeats or MIN_REPEATS):
            for t in timers if r % 2 == 0 else timers[::-1]:
                t.repeat(1)
        if measured is not None:
            base_timer, name, params = measured
            timing = {**base_timer.result(noise=False).to_dict(), "steps": case.steps}
            keep(
                make_record(
                    case,
                    timing,
                    env,
                    generator=name,
                    parameters=params,
                    speed_id=speed_dir.name,
                    baseline=baseline,
                )
            )
        keep(
            make_record(
                case,
                {**timer.result().to_dict(), "steps": case.steps},
                env,
                generator=case.model.generator,
                parameters=gen.num_parameters(),
                speed_id=speed_dir.name,
            )
        )
        del gen, timers, measured
    doc["complete"] = True
    store.write_json_atomic(speed_dir / "speed.json", doc)
    return speed_dir, doc["results"]


# --------------------------------------------------------------------------- output


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _memory(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:.0f} MiB"


def _fast(r: dict[str, Any]) -> str:
    parts = [r["precision"]]
    if r["channels_last"]:
        parts.append("NHWC")
    if r["compile"] != "none":
        parts.append(f"compile={r['compile']}")
    if r["cuda_graphs"]:
        parts.append("graphs")
    return "+".join(parts)


def format_table(records: list[dict[str, Any]]) -> str:
    """A plain-text table: one row per result."""
    head = (
        "model",
        "batch",
        "steps",
        "NFE",
        "fast paths",
        "images/s",
        "median s (IQR)",
        "s/50k",
        "ms/NFE",
        "img-NFE/s",
        "peak mem",
        "first image s",
        "noise",
    )
    rows = [head]
    for r in records:
        name = r["model"] + (f" [{r['generator']}]" if r.get("baseline") else "")
        noise = "–" if r["noise_share"] is None else f"{100 * r['noise_share']:.1f}%"
        rows.append(
            (
                name,
                str(r["batch_size"]),
                "default" if r["steps"] is None else str(r["steps"]),
                str(r["nfe"]),
                _fast(r),
                _num(r["images_per_s"]),
                f"{r['median_s']:.4g} ({r['iqr_s']:.2g})",
                _num(r["s_per_50k"]),
                f"{r['ms_per_nfe']:.3g}",
                _num(r["image_nfe_per_s"]),
                _memory(r["peak_memory_bytes"]),
                f"{r['time_to_first_image_s']:.3g}",
                noise,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def speedups(records: list[dict[str, Any]]) -> list[str]:
    """One line per case measured with a baseline: our images/s over the baseline's."""
    lines = []
    for r in records:
        if r.get("baseline"):
            continue
        for b in records:
            same = all(b[k] == r[k] for k in ("model", "batch_size", "steps"))
            if b.get("baseline") and same:
                lines.append(
                    f"{r['model']} batch {r['batch_size']} steps {r['steps']}: "
                    f"{r['images_per_s'] / b['images_per_s']:.2f}x the throughput of "
                    f"{b['generator']} ({_fast(r)} vs fp32 eager)"
                )
    return lines


# --------------------------------------------------------------------------- worker


class _Worker:
    """State of one ``serve`` process: the cases of one setup and their timers."""

    def __init__(self) -> None:
        self.cases: list[SpeedCase] = []
        self.timers: list[SamplingTimer] = []
        self.gens: list[Any] = []
        self.env: dict[str, Any] = {}

    def setup(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Build and warm up every case; a model this revision cannot resolve or build
        (say, a generator it does not have yet) is reported under "skipped"."""
        from genbench.benchmarks.runner import resolve_device
        from genbench.benchmarks.spec import Overrides, load_spec, resolve

        spec, source = load_spec(msg["spec"])
        fast = FastPaths(**msg["fast"])
        skipped: dict[str, str] = {}
        for name in msg["models"]:
            try:
                plan = resolve(spec, source, Overrides(models=[name], device=msg["device"]))
                device = resolve_device(plan.benchmark.device)
                fast.check(device)
                settings = SpeedSettings(
                    batch_sizes=msg["batch_sizes"],
                    steps=msg.get("steps"),
                    fast=fast,
                    repeats=MIN_REPEATS,  # the driver decides how many it asks for
                    warmup=msg["warmup"],
                )
                self._add(plan, resolved_settings(plan, settings), device)
            except GenbenchError as exc:
                skipped[name] = str(exc)
        return {
            "protocol": PROTOCOL,
            "environment": self.env,
            "cases": [c.key() for c in self.cases],
            "skipped": skipped,
        }

    def _add(self, plan: RunPlan, settings: SpeedSettings, device: torch.device) -> None:
        self.env = self.env or store.fingerprint(device)
        for case in speed_cases(plan, settings):
            timer, gen = case_timer(plan, case, settings, device)
            timer.start(settings.warmup)
            self.cases.append(case)
            self.timers.append(timer)
            self.gens.append(gen)

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        if op == "hello":
            return {"protocol": PROTOCOL}
        if op == "setup":
            return self.setup(msg)
        if op == "time":
            return {"raw_s": self.timers[msg["case"]].repeat(msg["n"])}
        if op == "finish":
            records = []
            for case, timer, gen in zip(self.cases, self.timers, self.gens, strict=True):
                if not timer.raw_s:
                    continue  # a case the other revision lacks: never timed, nothing to say
                records.append(
                    make_record(
                        case,
                        timer.result().to_dict(),
                        self.env,
                        generator=case.model.generator,
                        parameters=gen.num_parameters(),
                        speed_id="compare",
                    )
                )
            return {"records": records}
        if op == "quit":
            return {}
        raise GenbenchError(f"unknown worker request {op!r}")


def serve() -> None:
    """Answer ``bench compare``'s JSON-line requests on stdin, one JSON line each on stdout.

    Anything else the process prints goes to stderr, so stray output never breaks replies.
    """
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    worker = _Worker()
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            reply = {"ok": True, **worker.handle(msg)}
        except GenbenchError as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # reported to the driver, which names the revision
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        if msg.get("op") == "quit":
            break
    replies.close()
