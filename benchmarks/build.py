"""Building a run's generators: seeded initialisation, then the checkpoint if any."""

from __future__ import annotations

import torch

from genbench.benchmarks.checkpoints import load_checkpoint
from genbench.benchmarks.plan import ResolvedClassifier, ResolvedModel, classifier_scale
from genbench.core.errors import GenbenchError
from genbench.generators import Generator
from genbench.generators.classifier import NoisyClassifier


def build_generator(model: ResolvedModel, seed: int, device: torch.device) -> Generator:
    """Instantiate ``model``'s generator with seeded initialisation (so the same seed gives
    the same weights) and load its checkpoint, if it has one."""
    torch.manual_seed(seed)
    gen = model.generator_class(model.config, model.data_shape, device)
    if model.checkpoint is not None:
        load_checkpoint(gen, model.checkpoint, model.generator)
    return gen


def build_untrained(
    model: ResolvedModel,
    seed: int,
    device: torch.device,
    classifier: ResolvedClassifier | None = None,
) -> Generator:
    """A freshly initialised generator for ``model``, never its checkpoint (speed does not
    depend on the weights), with a freshly initialised guidance classifier of ``classifier``
    when the model samples with ``classifier_scale``; a config the data cannot take is a
    one-line usage error."""
    try:
        torch.manual_seed(seed)
        gen = model.generator_class(model.config, model.data_shape, device)
        if classifier is not None and classifier_scale(model) is not None:
            gen.classifier = NoisyClassifier(classifier.config, model.data_shape, device)
        return gen
    except ValueError as exc:
        raise GenbenchError(f"models.{model.name}: cannot build it ({exc})") from None
