"""An ensemble of expert denoisers (eDiff-I, Balaji et al. 2022): K copies of one network,
each owning one interval of noise levels, called as if they were one network.

``ExpertNets`` takes the wrapped network's arguments unchanged and routes each row by its
noise-level argument (the second, e.g. EDM's c_noise) to the expert whose interval holds
it; a batch at one noise level (every sampling step) goes to one expert in a single call,
so sampling costs what the plain network costs and NFE counts calls as before. The experts
start from the same weights (the shared start) and are specialised by training: each sees
only its own interval's noise levels, and an expert that no row of a batch reaches gets no
gradient in that update.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def log_spaced_boundaries(lo: float, hi: float, experts: int) -> tuple[float, ...]:
    """``experts - 1`` boundaries splitting [lo, hi] into intervals of equal length in log
    space (eDiff-I's default split by noise level), ascending."""
    if not 0 < lo < hi:
        raise ValueError(f"expert boundaries need 0 < lo < hi, got {lo} and {hi}")
    step = (math.log(hi) - math.log(lo)) / experts
    return tuple(math.exp(math.log(lo) + step * i) for i in range(1, experts))


def check_boundaries(boundaries: Sequence[float], experts: int) -> None:
    """``ValueError`` unless ``boundaries`` are ``experts - 1`` positive ascending values."""
    if len(boundaries) != experts - 1:
        raise ValueError(
            f"expert_boundaries: {experts} experts need {experts - 1} boundaries, got "
            f"{len(boundaries)}"
        )
    if any(b <= 0 for b in boundaries) or any(a >= b for a, b in itertools.pairwise(boundaries)):
        raise ValueError(
            f"expert_boundaries must be positive and ascending, got {list(boundaries)}"
        )


class ExpertNets(nn.Module):
    """K networks behind one call. ``bounds`` are the K - 1 ascending values of the noise
    argument (the wrapped network's second argument, increasing with the noise level) where
    one expert hands over to the next: expert 0 owns levels below ``bounds[0]``, expert i
    owns [bounds[i - 1], bounds[i]), the last one everything from ``bounds[-1]`` up."""

    def __init__(self, net: nn.Module, experts: int, bounds: Sequence[float]) -> None:
        super().__init__()
        if experts < 2:
            raise ValueError(f"an ensemble needs at least 2 experts, got {experts}")
        if len(bounds) != experts - 1:
            raise ValueError(f"{experts} experts need {experts - 1} bounds, got {len(bounds)}")
        # The shared start: every expert begins as the same network.
        self.experts = nn.ModuleList([net] + [copy.deepcopy(net) for _ in range(experts - 1)])
        self.register_buffer("bounds", torch.tensor(list(bounds)), persistent=False)

    def owner(self, noise: torch.Tensor) -> torch.Tensor:
        """The expert index of each row's noise argument (a scalar or one value per row)."""
        return torch.bucketize(noise.reshape(-1).to(self.bounds.dtype), self.bounds, right=True)

    def forward(self, x: torch.Tensor, noise: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The owning experts' outputs for each row of ``x``: the wrapped network's
        arguments, per-row tensors among them split by row; its output (a tensor, or a
        tuple of per-row tensors such as diffusers' ``return_dict=False``) put back together."""
        owners = self.owner(noise)
        first = int(owners[0])
        if bool((owners == first).all()):
            # One noise level per batch (sampling) or one interval: a single plain call.
            return self.experts[first](x, noise, *args, **kwargs)
        parts: list[tuple[torch.Tensor, Any]] = []
        for k in owners.unique().tolist():
            rows = (owners == k).nonzero().squeeze(1)
            part_args = (_rows(a, rows) for a in args)
            part_kwargs = {name: _rows(v, rows) for name, v in kwargs.items()}
            parts.append(
                (rows, self.experts[k](x[rows], _rows(noise, rows), *part_args, **part_kwargs))
            )
        first_out = parts[0][1]
        if isinstance(first_out, torch.Tensor):
            return _gather(x.shape[0], [(rows, out) for rows, out in parts])
        return type(first_out)(
            _gather(x.shape[0], [(rows, out[i]) for rows, out in parts])
            for i in range(len(first_out))
        )


def _gather(n: int, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One (n, ...) tensor from row-index / rows pairs that cover 0 .. n - 1."""
    first = parts[0][1]
    out = first.new_empty((n, *first.shape[1:]))
    for rows, part in parts:
        out = out.index_copy(0, rows, part)  # out of place: autograd sees each part
    return out


def _rows(value: Any, rows: torch.Tensor) -> Any:
    """The rows of a per-row tensor argument; anything else (None, a scalar) as it is."""
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        return value[rows]
    return value
