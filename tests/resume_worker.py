"""Worker of the kill-and-resume test: train one smoke model with the harness's ``Trainer``,
continuing from the newest training state in STATES, saving a state after every step;
at the end write the trained weights to OUT.

    python -m tests.resume_worker GENERATOR STEPS STATES OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from genbench.benchmarks.batches import batches
from genbench.benchmarks.build import build_generator
from genbench.benchmarks.plan import Overrides, resolve
from genbench.benchmarks.spec import read_spec
from genbench.benchmarks.trainer import Trainer
from genbench.data.datasets import Digits
from tests.trainkit import shipped_spec_of


def main(generator: str, steps: int, states: Path, out: Path) -> None:
    torch.set_num_threads(1)  # the same arithmetic in every attempt
    spec, source = read_spec(shipped_spec_of(generator))
    plan = resolve(spec, source, Overrides(models=[generator], train_steps=steps))
    (model,) = plan.models.values()
    model.train = model.train.model_copy(
        update={"batch_size": 16, "checkpoint_every": 1, "keep_states": 2, "log_every": 1}
    )
    device = torch.device("cpu")
    gen = build_generator(model, plan.benchmark.seed, device)
    trainer = Trainer(gen, model.train)
    trainer.resume(states)
    data = batches(
        Digits.load("train"), model.train, plan.benchmark.seed, gen.image_size, device, trainer.step
    )
    trainer.fit(data, model.name, states.parent / "log.jsonl", states)
    save_file({k: v.contiguous() for k, v in gen.state_dict().items()}, str(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
