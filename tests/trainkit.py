"""Test helper: train a generator for a few steps through the harness's one ``Trainer``."""

from __future__ import annotations

from typing import Any

import torch

from genbench.benchmarks.spec import TrainSection
from genbench.benchmarks.trainer import Trainer
from genbench.generators import Batch, Generator


def trainer(gen: Generator, batch_size: int, steps: int = 10**6, **train: Any) -> Trainer:
    """A ``Trainer`` for ``gen`` with the given ``[train]`` settings."""
    return Trainer(gen, TrainSection(steps=steps, batch_size=batch_size, **train))


def fit(gen: Generator, batch: Batch, steps: int = 1, **train: Any) -> dict[str, float]:
    """Train ``gen`` for ``steps`` updates on ``batch``; the logged means."""
    t = trainer(gen, len(batch), steps=steps, **train)
    for _ in range(steps):
        t.train_step(batch)
    t.restore_flags()
    return t.read_logs()


@torch.no_grad()
def wake(gen: Generator, seed: int = 0, scale: float = 0.02) -> Generator:
    """Add small seeded noise to every parameter of ``gen``'s networks, in place.

    A freshly built DDPM starts its output layers at zero (improved-diffusion's
    ``zero_module``): it outputs zeros, so its output is the same at any precision and no
    gradient reaches past those layers in the first update. Tests about gradients,
    accumulation and numerics need a network in a generic state; this gives one.
    """
    gen_ = torch.Generator().manual_seed(seed)
    for module in gen.modules().values():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=gen_, dtype=p.dtype)
            p.add_(noise.to(p.device) * scale)
    return gen


def shipped_spec_of(generator: str) -> str:
    """The shipped spec holding ``generator``'s tiny entry: ``smoke``, or ``extras`` for
    the generators added later."""
    from genbench.benchmarks.spec import read_spec

    spec, _ = read_spec("smoke")
    return "smoke" if any(m.generator == generator for m in spec.models.values()) else "extras"


def trained_and_untrained(
    spec: str, model: str, steps: int, num_samples: int, out: Any, repeats: int = 1
) -> dict[int, dict[str, Any]]:
    """``{0: metrics.json, steps: metrics.json}`` of ``model`` of ``spec`` run untrained
    and after ``steps`` updates on ``num_samples`` samples (each with its ``timing.json``
    under ``"timing"``): the "trained FID at most half of untrained" claims. Runs go
    through the runner as ``bench run`` does, with ``repeats`` timed sampling calls, no
    warm-up and no bits/dim pass, since those claims are about quality, not speed."""
    import json
    from pathlib import Path

    from genbench.benchmarks.plan import Overrides, resolve
    from genbench.benchmarks.runner import run
    from genbench.benchmarks.spec import read_spec

    spec_doc, source = read_spec(spec)
    found = {}
    for n in (0, steps):
        plan = resolve(
            spec_doc,
            source,
            Overrides(models=[model], train_steps=n, num_samples=num_samples, device="cpu"),
        )
        plan.evaluate = plan.evaluate.model_copy(update={"bpd_images": 0})
        plan.timing = plan.timing.model_copy(update={"repeats": repeats, "warmup": 0})
        folder = run(plan, Path(out) / str(n)) / model
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["timing"] = json.loads((folder / "timing.json").read_text())
        assert metrics["train_steps"] == n
        found[n] = metrics
    fid = {n: m["metrics"]["fid"]["value"] for n, m in found.items()}
    print(f"{model} FID untrained {fid[0]:.1f}, after {steps} steps {fid[steps]:.1f}")
    return found
