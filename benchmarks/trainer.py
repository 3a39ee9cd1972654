"""The harness's one training loop, for every generator (``genbench.generators.training``
says what a generator declares).

Per step, each due phase draws for the whole global batch; the batch is cut into
``grad_accum`` micro-batches per process (whole groups where a phase asks), each forward and
backward runs inside DDP's ``no_sync()`` except the last of the update, and each
micro-batch's mean loss is weighted by its share of the global batch, so k micro-batches on
W processes give the gradient of one full batch. Then the divergence guard, clipping, the
learning rate of the schedule and the optimiser step; after the step the EMA. Losses stay
on the device and are read once per logging interval; the guard reads one flag per
optimiser update, never per micro-batch.

The full training state (networks, EMA, optimisers, the timestep sampler's history, step,
images, training time, every RNG state) is saved on a schedule; since the data order is a
function of seed and step (``batches``), a run resumed from a state continues exactly as
the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from genbench.benchmarks.ema import EMA, ema_beta
from genbench.benchmarks.plan import ResolvedModel
from genbench.benchmarks.spec import TrainSection
from genbench.core import collectives, io
from genbench.core.errors import CheckpointError, NonFinite, SpecError
from genbench.core.progress import progress_bar
from genbench.generators import Batch
from genbench.generators.base import Trainable
from genbench.generators.training import (
    Loss,
    OptimizerSpec,
    Phase,
    Training,
    batch_size_of,
    group_slices,
    take,
)
from genbench.store.files import append_line
from genbench.store.records import TrainLogEntry

STATE_FORMAT = "genbench-training-state-1"
_STATE_NAME = re.compile(r"^state-(\d{10})\.pt$")


class Diverged(Exception):
    """A non-finite loss or gradient in an update (raised before the update is applied)."""

    def __init__(self, step: int, phase: str, what: str) -> None:
        super().__init__(f"training diverged at step {step}, phase {phase}: {what}")
        self.step, self.phase, self.what = step, phase, what


@dataclasses.dataclass
class _Update:
    """The phases that make one optimiser update, with their draws and this process's
    micro-batch slices of the global batch."""

    optimizer: str
    phases: list[Phase]
    draws: list[Any]
    slices: list[list[slice]]


class Trainer:
    """Trains one generator as its ``training()`` declares, under ``train``'s settings.

    ``total_steps`` (None = open, with a time budget) and ``time_budget_s`` bound the run;
    the cosine schedule's progress is the larger fraction of the two that is used up.
    """

    def __init__(self, gen: Trainable, train: TrainSection) -> None:
        self.gen, self.cfg = gen, train
        self.device = gen.device
        self.rank, self.world = collectives.rank(), collectives.world_size()
        self.training: Training = gen.training()
        self.total_steps = train.steps
        self.time_budget_s = train.time_budget_s
        self.step = 0  # updates done
        self.images = 0  # training images seen (global)
        self.elapsed = 0.0  # training seconds (without saving states)
        modules = gen.modules()
        # Each network's parameters with their own requires_grad, listed once: walking the
        # module tree every update cost a few percent of a small model's step.
        self._trainable = {
            n: [(p, p.requires_grad) for p in m.parameters()] for n, m in modules.items()
        }
        self.schedules = {n: effective(spec, train) for n, spec in self.training.optimizers.items()}
        self.params = {
            n: [p for m in spec.modules for p in modules[m].parameters() if p.requires_grad]
            for n, spec in self.training.optimizers.items()
        }
        self.optimizers = {
            n: spec.build(self.params[n]) for n, spec in self.training.optimizers.items()
        }
        self.nets: dict[str, nn.Module] = dict(modules)
        if self.world > 1:
            # Declared order, never a set's: every process must build its DDP wrappers
            # (each a collective) in the same order, and string hashes differ by process.
            trained = list(
                dict.fromkeys(m for spec in self.training.optimizers.values() for m in spec.modules)
            )
            ids = [self.device.index] if self.device.type == "cuda" else None
            for name in trained:
                # Buffers (batch-norm statistics) stay per process, as in StyleGAN2-ADA.
                # torch 2.14 deprecates broadcast_buffers but its replacement still syncs
                # buffers at construction; the warning would print once per rank per net.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated")
                    self.nets[name] = DistributedDataParallel(
                        modules[name], device_ids=ids, broadcast_buffers=False
                    )
        samplers = {n: modules[n] for n in gen.sampling_modules()}
        self.ema = EMA(samplers) if train.ema else None
        self._sums: dict[str, torch.Tensor] = {}  # per-sample logs, reduced over processes
        self._counts: dict[str, int] = {}
        self._local: dict[str, torch.Tensor] = {}  # logs equal on every process (norms)
        self._local_counts: dict[str, int] = {}
        self._lrs: dict[str, float] = {}
        self.check_batch()

    # ------------------------------------------------------------------ settings

    def check_batch(self) -> None:
        """``ValueError`` when a phase cannot cut the global batch into ``grad_accum``
        micro-batches on every process."""
        parts = self.world * self.cfg.grad_accum
        for phase in self.training.phases:
            try:
                group_slices(self.cfg.batch_size, parts, phase.group)
            except ValueError:
                raise ValueError(f"train.{cut_error(self.cfg, parts, phase)}") from None

    def progress(self) -> float:
        """The fraction of the run done before the current update (cosine schedules)."""
        done = 0.0
        if self.total_steps:
            done = self.step / self.total_steps
        if self.time_budget_s:
            done = max(done, self.elapsed / self.time_budget_s)
        return done

    def finished(self) -> bool:
        if self.total_steps is not None and self.step >= self.total_steps:
            return True
        return self.time_budget_s is not None and self.elapsed >= self.time_budget_s

    # ------------------------------------------------------------------ one step

    def _updates(self, batch: Batch, step: int) -> list[_Update]:
        """This step's optimiser updates: consecutive due phases on one optimiser join."""
        updates: list[_Update] = []
        for phase in self.training.phases:
            if not phase.due(step):
                continue
            draws = phase.draw(batch)
            n = batch_size_of(draws)
            pieces = group_slices(n, self.world * self.cfg.grad_accum, phase.group)
            k = self.cfg.grad_accum
            mine = pieces[self.rank * k : (self.rank + 1) * k]
            if updates and updates[-1].optimizer == phase.optimizer:
                last = updates[-1]
                last.phases.append(phase)
                last.draws.append(draws)
                last.slices.append(mine)
            else:
                updates.append(_Update(phase.optimizer, [phase], [draws], [mine]))
        return updates

    @contextlib.contextmanager
    def _sync(self, trained: tuple[str, ...], sync: bool) -> Iterator[None]:
        """DDP all-reduces the gradients of ``trained`` networks only when ``sync``; the
        networks a phase does not train never reduce."""
        with contextlib.ExitStack() as stack:
            for name, net in self.nets.items():
                if isinstance(net, DistributedDataParallel) and not (sync and name in trained):
                    stack.enter_context(net.no_sync())
            yield

    def _freeze_others(self, trained: tuple[str, ...]) -> None:
        for name, params in self._trainable.items():
            on = name in trained
            for p, flag in params:
                p.requires_grad_(flag and on)

    def _log(self, key: str, value: torch.Tensor, rows: int, n: int) -> None:
        value = value.detach().float()
        part = value.sum() / n if value.dim() > 0 else value * (rows / n)
        self._sums[key] = self._sums[key] + part if key in self._sums else part

    def _apply(self, update: _Update, step: int) -> None:
        spec = self.schedules[update.optimizer]
        opt = self.optimizers[update.optimizer]
        self._freeze_others(spec.modules)
        opt.zero_grad(set_to_none=True)
        total = sum(len(s) for s in update.slices)
        done = 0
        objectives: list[torch.Tensor] = []
        observed: list[list[torch.Tensor]] = []
        autocast = torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"
        )
        for phase, draws, slices in zip(update.phases, update.draws, update.slices, strict=True):
            n = batch_size_of(draws)
            phase_objective = torch.zeros((), device=self.device)
            seen: list[torch.Tensor] = []
            keys: set[str] = set()
            for rows in slices:
                done += 1
                size = rows.stop - rows.start
                with self._sync(spec.modules, sync=done == total):
                    with autocast:
                        out: Loss = phase.loss(self.nets, take(draws, rows))
                    # The micro-batch mean weighted by its share of the global batch; DDP
                    # averages over the W processes, hence the factor W.
                    value = out.value
                    if value.dtype in (torch.float16, torch.bfloat16):
                        value = value.float()  # reduce in fp32 under autocast
                    objective = value.mean() * (size * self.world / n)
                    objective.backward()
                phase_objective = phase_objective + objective.detach()
                for key, value in out.logs.items():
                    self._log(key, value, size, n)
                    keys.add(key)
                if phase.observe is not None and out.observed is not None:
                    seen.append(out.observed.detach().float())
            for key in keys:  # one count per phase run: the log is a mean over runs
                self._counts[key] = self._counts.get(key, 0) + 1
            objectives.append(phase_objective)
            observed.append(seen)

        grads = [p.grad for p in self.params[update.optimizer] if p.grad is not None]
        norm = (
            torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        )
        stacked = torch.stack([*objectives, norm.to(self.device, torch.float32)])
        bad = (~torch.isfinite(stacked)).float()
        if self.world > 1:  # every process stops together
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bool(bad.any()):  # the one host read per update
            flags = bad.tolist()
            for phase, flag, obj in zip(update.phases, flags, objectives, strict=False):
                if flag:
                    raise Diverged(step, phase.name, f"loss is {obj.item()}")
            raise Diverged(
                step,
                update.phases[-1].name,
                f"gradient norm of {update.optimizer} is {norm.item()}",
            )
        if spec.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(
                self.params[update.optimizer], spec.grad_clip, norm
            )
        lr = spec.schedule.lr(spec.lr, step, step * self.cfg.batch_size, self.progress())
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        suffix = "" if len(self.optimizers) == 1 else f"_{update.optimizer}"
        self._lrs["lr" + suffix] = lr
        key = "grad_norm" + suffix
        self._local[key] = self._local.get(key, 0.0) + norm.detach().float()
        self._local_counts[key] = self._local_counts.get(key, 0) + 1
        for phase, draws, seen in zip(update.phases, update.draws, observed, strict=True):
            if phase.observe is not None and seen:
                phase.observe(draws, self._gather(torch.cat(seen), update, phase))

    def _gather(self, local: torch.Tensor, update: _Update, phase: Phase) -> torch.Tensor:
        """The whole batch's observed values, in batch order, from every process."""
        if self.world == 1:
            return local
        n = batch_size_of(update.draws[update.phases.index(phase)])
        pieces = group_slices(n, self.world * self.cfg.grad_accum, phase.group)
        k = self.cfg.grad_accum
        sizes = [
            sum(s.stop - s.start for s in pieces[r * k : (r + 1) * k]) for r in range(self.world)
        ]
        padded = torch.zeros(max(sizes), device=local.device, dtype=local.dtype)
        padded[: local.shape[0]] = local
        gathered = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(gathered, padded)
        return torch.cat([g[:size] for g, size in zip(gathered, sizes, strict=True)])

    def train_step(self, batch: Batch) -> None:
        """One training step on the global ``batch``: every due phase's update, then the
        EMA. ``Diverged`` (nothing applied) when a loss or gradient is not finite."""
        step = self.step + 1
        self.gen.train()
        # The logs as they were: a diverged step's values never reach the training log.
        logs = (dict(self._sums), dict(self._counts), dict(self._local), dict(self._local_counts))
        try:
            for update in self._updates(batch, step):
                self._apply(update, step)
        except Diverged:
            self._sums, self._counts, self._local, self._local_counts = logs
            raise
        finally:  # each update froze the networks it does not train
            self.restore_flags()
        self.step = step
        self.images += len(batch)
        if self.ema is not None:
            self.ema.update(
                ema_beta(
                    batch_size=self.cfg.batch_size,
                    step=step,
                    decay=self.cfg.ema_decay,
                    halflife_kimg=self.cfg.ema_halflife_kimg,
                    rampup_ratio=self.cfg.ema_rampup_ratio,
                )
            )

    def read_logs(self) -> dict[str, float]:
        """The mean of every logged value since the last call (one host read), and the
        learning rates of the last update."""
        keys = sorted(self._sums)
        out: dict[str, float] = {}
        if keys:
            sums = torch.stack([self._sums[k] for k in keys])
            if self.world > 1:
                dist.all_reduce(sums)
            for key, value in zip(keys, sums.tolist(), strict=True):
                out[key] = value / max(self._counts.get(key, 1), 1)
        for key, value in self._local.items():
            out[key] = float(value) / self._local_counts[key]
        out.update(self._lrs)
        self._sums, self._counts, self._local, self._local_counts = {}, {}, {}, {}
        return out

    def restore_flags(self) -> None:
        """Give every parameter its own ``requires_grad`` back (after training)."""
        for params in self._trainable.values():
            for p, flag in params:
                p.requires_grad_(flag)

    # ------------------------------------------------------------------ the loop

    def fit(
        self,
        data: Iterator[Batch],
        name: str,
        log_path: Path | None = None,
        states: Path | None = None,
        every: tuple[int, Callable[[int], str]] | None = None,
    ) -> dict[str, Any]:
        """Train until the step count or time budget is reached; log every ``log_every``
        steps, save the training state as ``checkpoint_every`` asks (in ``states``).
        ``every = (n, evaluate)``: after every n-th step, ``evaluate(step)`` (which
        returns a status line for the progress bar) runs with the sampling weights (the EMA
        ones, if there is an EMA); its time is not training time and it draws nothing from
        the global RNGs training uses, so training goes on exactly as without it.
        Afterwards the sampling networks hold the EMA weights, if there is an EMA. Returns
        the train info stored with the results; a divergence saves the last good state
        and raises ``NonFinite``."""
        cfg = self.cfg
        writer = self.rank == 0
        every_s, every_n = cfg.checkpoint_seconds, cfg.checkpoint_steps
        # The log's images/s is over training time (what time_s counts): saves and
        # evaluations between two lines are not training.
        last_save, last_log = self.elapsed, self.elapsed
        logged_step = self.step
        by_time = self.total_steps is None
        total = math.ceil(self.time_budget_s or 0) if by_time else self.total_steps
        try:
            with progress_bar() as bar:
                task = bar.add_task(f"train {name}", total=total, status="")
                bar.update(task, completed=int(self.elapsed) if by_time else self.step)
                while not self.finished():
                    start = time.perf_counter()
                    try:
                        self.train_step(next(data))
                    except Diverged as exc:
                        if self.step > logged_step:  # the good steps since the last line
                            self._write_log(log_path, self.step - logged_step, last_log)
                        saved = self._save_last_good(states) if writer else None
                        where = f"; last good training state: {saved}" if saved else ""
                        raise NonFinite(f"{exc}{where}") from None
                    self.elapsed += time.perf_counter() - start
                    if self.step % cfg.log_every == 0 or self.finished():
                        losses = self._write_log(log_path, self.step - logged_step, last_log)
                        shown = {k: v for k, v in losses.items() if not k.startswith("lr")}
                        bar.update(task, status=" ".join(f"{k}={v:.3g}" for k, v in shown.items()))
                        last_log, logged_step = self.elapsed, self.step
                    due = (every_n is not None and self.step % every_n == 0) or (
                        every_s is not None and self.elapsed - last_save >= every_s
                    )
                    if due and states is not None and not self.finished():
                        if writer:
                            self.save(states)
                        last_save = self.elapsed
                    if every is not None and self.step % every[0] == 0:
                        bar.update(task, status=f"evaluating at step {self.step}")
                        bar.update(task, status=self._evaluate(every[1]))
                    bar.update(task, completed=int(self.elapsed) if by_time else self.step)
        finally:
            self.restore_flags()
        if self.ema is not None:  # sample (and checkpoint) with the averaged weights
            self.ema.copy_to_modules()
        return self.info()

    def _evaluate(self, evaluate: Callable[[int], str]) -> str:
        """``evaluate(step)`` with the sampling weights, every global RNG left as it was."""
        rng = rng_state()
        swapped = self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()
        try:
            with swapped:
                return evaluate(self.step)
        finally:
            set_rng_state(rng)

    def _write_log(self, log_path: Path | None, steps: int, since: float) -> dict[str, float]:
        """Read the logs of the last ``steps`` steps and append them to the training log
        (rank 0), with their images/s over the training time since ``since`` (an earlier
        ``elapsed``); returns them."""
        losses = self.read_logs()
        if self.rank == 0 and log_path is not None:
            append_line(
                log_path,
                TrainLogEntry(
                    step=self.step,
                    time_s=round(self.elapsed, 4),
                    losses=losses,
                    images_per_s=steps * self.cfg.batch_size / max(self.elapsed - since, 1e-9),
                ),
            )
        return losses

    def info(self) -> dict[str, Any]:
        """What the results record about this training."""
        cfg = self.cfg
        budget = cfg.time_budget or (
            str(cfg.images_budget) if cfg.images_budget is not None else None
        )
        stopped = (
            "time_budget" if self.total_steps is None or self.step < self.total_steps else "steps"
        )
        return {
            "train_steps": self.step,
            "train_time_s": self.elapsed,
            "train_images": self.images,
            "train_budget": budget,
            "train_stopped_by": stopped,
            "train_precision": cfg.precision,
            "grad_accum": cfg.grad_accum,
            "ema": cfg.ema_decay or (f"halflife {cfg.ema_halflife_kimg} kimg" if cfg.ema else None),
        }

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The full training state (everything a resumed run needs to continue exactly)."""
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "images": self.images,
            "elapsed_s": self.elapsed,
            "batch_size": self.cfg.batch_size,
            "networks": {k: v.detach().cpu() for k, v in self.gen.state_dict().items()},
            "extra": {k: v.detach().cpu() for k, v in self.gen.extra_state().items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng_state(),
            "logs": {
                "sums": {k: float(v) for k, v in self._sums.items()},
                "counts": dict(self._counts),
                "local": {k: float(v) for k, v in self._local.items()},
                "local_counts": dict(self._local_counts),
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (``state_dict``'s); ``CheckpointError`` if it does not
        fit this generator and batch."""
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError("not a genbench training state")
        if state["batch_size"] != self.cfg.batch_size:
            raise CheckpointError(
                f"training state of batch {state['batch_size']}, not {self.cfg.batch_size}"
            )
        try:
            self.gen.load_state_dict(state["networks"])
            self.gen.load_extra_state(state["extra"])
            for name, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
        except (KeyError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(f"training state does not fit this model ({first})") from None
        self.step, self.images, self.elapsed = state["step"], state["images"], state["elapsed_s"]
        logs = state["logs"]
        self._sums = {k: torch.tensor(v, device=self.device) for k, v in logs["sums"].items()}
        self._counts = dict(logs["counts"])
        self._local = {k: torch.tensor(v, device=self.device) for k, v in logs["local"].items()}
        self._local_counts = dict(logs["local_counts"])
        set_rng_state(state["rng"])

    def save(self, states: Path) -> Path:
        """Write the training state to ``states/state-<step>.pt`` atomically and keep only
        the newest ``keep_states``."""
        path = states / f"state-{self.step:010d}.pt"
        state = self.state_dict()
        io.write_with_atomic(path, lambda tmp: torch.save(state, tmp))
        for old in state_files(states)[self.cfg.keep_states :]:
            old.unlink(missing_ok=True)
        return path

    def _save_last_good(self, states: Path | None) -> Path | None:
        """After a divergence (the bad update not applied): save the state if every
        network tensor is finite, else point at the newest one already saved."""
        if states is None:
            return None
        finite = all(
            bool(torch.isfinite(v).all())
            for v in self.gen.state_dict().values()
            if v.is_floating_point()
        )
        if finite:
            return self.save(states)
        kept = state_files(states)
        return kept[0] if kept else None

    def resume(self, states: Path) -> Path | None:
        """Load the newest loadable state in ``states`` (a corrupt newest one falls back to
        the one before); returns its path, None when there is none."""
        for path in state_files(states):
            try:
                state = read_state(path, self.device)
                self.load_state_dict(state)
            except CheckpointError:
                continue
            return path
        return None


def effective(spec: OptimizerSpec, train: TrainSection) -> OptimizerSpec:
    """An optimiser's schedule and clipping with ``train``'s overrides."""
    sched = spec.schedule
    if train.lr_schedule is not None:
        sched = dataclasses.replace(sched, decay=train.lr_schedule)
    if train.lr_warmup_steps is not None:
        sched = dataclasses.replace(sched, warmup_steps=train.lr_warmup_steps, warmup_images=0)
    if train.lr_floor is not None:
        sched = dataclasses.replace(sched, floor=train.lr_floor)
    clip = spec.grad_clip if train.grad_clip is None else train.grad_clip
    return dataclasses.replace(spec, schedule=sched, grad_clip=clip)


def check_micro_batches(model: ResolvedModel, processes: int | None = None) -> None:
    """Before anything is written: every phase of ``model``'s generator can cut its batch
    into ``grad_accum`` micro-batches on each process (the generator is built on the
    "meta" device, where it costs nothing); a ``SpecError`` naming the model otherwise."""
    try:
        with torch.device("meta"):
            gen = model.generator_class(model.config, model.data_shape, torch.device("meta"))
            phases = gen.training().phases
    except Exception:  # a network the meta device cannot build: the Trainer checks it
        return
    parts = (processes or collectives.world_size()) * model.train.grad_accum
    for phase in phases:
        try:
            group_slices(model.train.batch_size, parts, phase.group)
        except ValueError:
            raise SpecError(
                f"models.{model.name}.train: {cut_error(model.train, parts, phase)}"
            ) from None


def cut_error(train: TrainSection, parts: int, phase: Phase) -> str:
    unit = "samples" if phase.group == 1 else f"groups of {phase.group} samples"
    return (
        f"batch_size {train.batch_size} cannot be cut into {parts} micro-batches "
        f"(grad_accum {train.grad_accum} x {parts // train.grad_accum} processes) of whole "
        f"{unit} for phase {phase.name}; use a larger batch or a smaller grad_accum"
    )


def state_files(states: Path) -> list[Path]:
    """The training states in ``states``, newest first."""
    if not states.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in states.iterdir() if (m := _STATE_NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True) if p.is_file() and not p.is_symlink()]


def read_state(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A training state file; ``CheckpointError`` (one line) when it cannot be read."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path}: not a readable training state ({first})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a genbench training state")
    return state


def rng_state() -> dict[str, Any]:
    """Every RNG state training can touch: Python, numpy, torch CPU and CUDA."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    random.setstate(state["python"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
