"""Worker of the DDP test: one process of a 2-process Gloo group training each smoke
model for one step with the harness's ``Trainer`` and k = 4 micro-batches, counting the
gradient all-reduces through a DDP communication hook; then rank 0, alone (the group
destroyed), trains the one-process references.

    python -m tests.ddp_worker GENERATORS RANK INIT_FILE OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from genbench.benchmarks.build import build_generator
from genbench.benchmarks.plan import Overrides, resolve
from genbench.benchmarks.spec import read_spec
from genbench.benchmarks.trainer import Trainer
from genbench.data.datasets import Digits
from genbench.generators import Batch
from tests.trainkit import shipped_spec_of, wake

BATCH, STEPS = 32, 1  # one step: the gradients compare on the same weights


def main(names: list[str], rank: int, init: Path, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    for name in names:
        train(name, rank, 4, out / f"{name}-ddp.pt")
    dist.destroy_process_group()
    if rank == 0:
        for name in names:
            # DCGAN's batch norm normalises per micro-batch: its reference cuts the same 8.
            train(name, 0, 8 if name == "dcgan" else 1, out / f"{name}-ref.pt")


def train(generator: str, rank: int, accum: int, out: Path) -> None:
    spec, source = read_spec(shipped_spec_of(generator))
    plan = resolve(spec, source, Overrides(models=[generator], train_steps=STEPS))
    (model,) = plan.models.values()
    model.train = model.train.model_copy(update={"batch_size": BATCH, "grad_accum": accum})
    gen = build_generator(model, plan.benchmark.seed, torch.device("cpu"))
    # Zero-initialised output layers pass no gradient on at step 1: wake them.
    if generator in ("ddpm", "vdpm", "cold", "cascade"):
        wake(gen)
    trainer = Trainer(gen, model.train)
    calls: dict[str, list[int]] = {}
    for name, net in trainer.nets.items():
        if isinstance(net, DistributedDataParallel):

            def counting(state, bucket, name=name):  # type: ignore[no-untyped-def]
                calls.setdefault(name, []).append(bucket.index())
                return allreduce_hook(state, bucket)

            net.register_comm_hook(None, counting)
    x, y = Digits.tensors("train")
    torch.manual_seed(1234)  # the same draws in every process and in the reference
    for step in range(STEPS):
        trainer.train_step(Batch(x[step * BATCH : (step + 1) * BATCH], y[step * BATCH :][:BATCH]))
    if rank == 0:
        params = {
            f"{n}.{k}": p.detach().clone()
            for n, m in gen.modules().items()
            for k, p in m.named_parameters()
        }
        grads = {
            f"{n}.{k}": p.grad.detach().clone()
            for n, m in gen.modules().items()
            for k, p in m.named_parameters()
            if p.grad is not None
        }
        phases = [(p.name, p.optimizer, p.interval) for p in trainer.training.phases]
        torch.save({"params": params, "grads": grads, "calls": calls, "phases": phases}, out)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0].split(","), int(a[1]), Path(a[2]), Path(a[3]))
