"""The few collectives genbench needs, over ``torch.distributed``'s default process group,
each the identity with one process (no group). The harness sets the group up
(``genbench.benchmarks.distributed``); every layer that shards work (the trainer, sampling,
the evaluator) uses these."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def active() -> bool:
    """Whether a process group of several processes exists."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank."""
    if active():
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for small objects and statistics)."""
    if not active():
        return obj
    box = [obj if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_rank0(compute: Any) -> Any:
    """``compute()`` run on rank 0 alone, its result on every rank."""
    return broadcast(compute() if rank() == 0 else None)


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (pickled: ragged data welcome)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over ranks, in place (float64 sums stay float64)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard(count: int, parts: int | None = None, index: int | None = None) -> range:
    """The contiguous part of ``range(count)`` that rank ``index`` of ``parts`` handles:
    sizes differ by at most one, earlier ranks take the extra items."""
    parts = world_size() if parts is None else parts
    index = rank() if index is None else index
    base, extra = divmod(count, parts)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))
