"""``bench speed --train``: images/s of one training step, the harness against a plain loop.

For each model and batch size, two freshly initialised copies of the generator (the same
seed) train on one fixed batch of random images (and labels, for conditional data), so
data loading is left out of both:

- ``harness``: ``Trainer.train_step``, the loop ``bench run`` trains with (micro-batch
  weighting, gradient norm and divergence guard, learning-rate schedule, logs, EMA);
- ``plain``: ``PlainLoop``, the same networks, phases, losses and optimisers in the
  shortest correct PyTorch loop: per update zero_grad, each phase's draw and loss,
  backward, clipping when the generator asks for it, step; then the same EMA as a
  ``torch._foreach_lerp_``.

The two alternate call by call (A B, then B A) as ``bench speed --baseline`` does, after
the same warm-up, and are timed with ``timing.SamplingTimer``. Both run one micro-batch per
update (``grad_accum`` = 1): the harness's overhead, not accumulation, is measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from genbench.benchmarks.build import build_untrained
from genbench.benchmarks.ema import ema_beta
from genbench.benchmarks.plan import ResolvedModel
from genbench.benchmarks.spec import TrainSection
from genbench.benchmarks.timing import SamplingTimer
from genbench.benchmarks.trainer import Trainer, effective
from genbench.generators import Batch, Generator
from genbench.generators.training import Phase, Training


def fixed_batch(gen: Generator, batch_size: int, seed: int) -> Batch:
    """``batch_size`` random images in [-1, 1] of ``gen``'s data shape at the size it
    trains at (labels when the data has classes), on ``gen``'s device."""
    shape, size = gen.data, gen.image_size
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, shape.channels, size, size, generator=g)
    labels = None
    if shape.num_classes:
        labels = torch.randint(0, shape.num_classes, (batch_size,), generator=g)
        labels = labels.to(gen.device)
    return Batch(images=(images * 2 - 1).to(gen.device), labels=labels)


class PlainLoop:
    """A plain PyTorch training loop over ``gen.training()``'s declarations (see module)."""

    def __init__(self, gen: Generator, train: TrainSection) -> None:
        self.gen, self.train = gen, train
        self.training: Training = gen.training()
        self.specs = {n: effective(spec, train) for n, spec in self.training.optimizers.items()}
        modules = gen.modules()
        self.nets = dict(modules)
        self.params = {
            name: [p for m in spec.modules for p in modules[m].parameters() if p.requires_grad]
            for name, spec in self.training.optimizers.items()
        }
        self.optimizers = {
            name: spec.build(self.params[name]) for name, spec in self.training.optimizers.items()
        }
        self.trainable = {
            name: [p for p in mod.parameters() if p.requires_grad] for name, mod in modules.items()
        }
        sampling = [modules[n] for n in gen.sampling_modules()] if train.ema else []
        self.live = [t for m in sampling for t in m.state_dict().values() if t.is_floating_point()]
        self.shadow = [t.detach().clone() for t in self.live]
        self.step = 0
        gen.train()

    def _groups(self, step: int) -> list[tuple[str, list[Phase]]]:
        groups: list[tuple[str, list[Phase]]] = []
        for phase in self.training.phases:
            if not phase.due(step):
                continue
            if groups and groups[-1][0] == phase.optimizer:
                groups[-1][1].append(phase)
            else:
                groups.append((phase.optimizer, [phase]))
        return groups

    def __call__(self, batch: Batch) -> None:
        """One training step on ``batch``."""
        self.step += 1
        autocast = (
            torch.autocast(self.gen.device.type, dtype=torch.bfloat16)
            if self.train.precision == "bf16"
            else contextlib.nullcontext()
        )
        several = len(self.optimizers) > 1
        groups = self._groups(self.step)
        # Every due phase draws first, in order, as the Trainer does: the same random draws.
        draws = {id(p): p.draw(batch) for _, phases in groups for p in phases}
        for name, phases in groups:
            spec = self.specs[name]
            if several:  # the other optimisers' networks take no gradient
                for net, params in self.trainable.items():
                    for p in params:
                        p.requires_grad_(net in spec.modules)
            opt = self.optimizers[name]
            opt.zero_grad(set_to_none=True)
            for phase in phases:
                with autocast:
                    loss = phase.loss(self.nets, draws[id(phase)]).value
                loss.float().mean().backward()
            if spec.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.params[name], spec.grad_clip)
            images = self.step * self.train.batch_size
            progress = (self.step - 1) / self.train.steps if self.train.steps else 0.0
            for group in opt.param_groups:
                group["lr"] = spec.schedule.lr(spec.lr, self.step, images, progress)
            opt.step()
        if several:
            for params in self.trainable.values():
                for p in params:
                    p.requires_grad_(True)
        if self.shadow:
            beta = ema_beta(
                batch_size=self.train.batch_size,
                step=self.step,
                decay=self.train.ema_decay,
                halflife_kimg=self.train.ema_halflife_kimg,
                rampup_ratio=self.train.ema_rampup_ratio,
            )
            with torch.no_grad():
                torch._foreach_lerp_(self.shadow, self.live, 1.0 - beta)


def train_timers(
    model: ResolvedModel, batch_size: int, seed: int, device: torch.device
) -> list[tuple[str, SamplingTimer, int]]:
    """[("harness", timer, parameters), ("plain", timer, parameters)] for ``model`` at
    ``batch_size`` (not started)."""
    train = model.train.model_copy(update={"batch_size": batch_size, "grad_accum": 1})
    timers = []
    for loop in ("harness", "plain"):
        gen = build_untrained(model, seed, device)
        batch = fixed_batch(gen, batch_size, seed)
        step: Callable[[Batch], None]
        if loop == "harness":
            trainer = Trainer(gen, train)
            step = trainer.train_step
        else:
            step = PlainLoop(gen, train)
        timer = SamplingTimer(
            lambda step=step, batch=batch: step(batch),
            device=device,
            batch_size=batch_size,
            nfe=1,
        )
        timers.append((loop, timer, gen.num_parameters()))
    return timers


def train_model(model: ResolvedModel) -> ResolvedModel:
    """``model`` without its checkpoint (training speed does not depend on the weights)."""
    return dataclasses.replace(model, checkpoint=None)
