"""Exponential moving average of a generator's sampling networks (owned by the harness).

Two ways to give the decay, as the papers do: a fixed per-step ``decay`` (DDPM, DDGAN,
v-diffusion: 0.9999), or a half-life in thousands of training images (EDM: 500 kimg, with
an optional ramp-up that caps the half-life at ``rampup_ratio`` x images seen so far).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def ema_beta(
    *,
    batch_size: int,
    step: int,
    decay: float | None = None,
    halflife_kimg: float | None = None,
    rampup_ratio: float | None = None,
) -> float:
    """Weight of the old average after update number ``step`` (1-based) of ``batch_size``."""
    if decay is not None:
        return decay
    if halflife_kimg is None:
        raise ValueError("give decay or halflife_kimg")
    halflife = halflife_kimg * 1000.0
    if rampup_ratio is not None:
        halflife = min(halflife, step * batch_size * rampup_ratio)
    # Karras et al. 2022, training_loop: beta = 0.5 ** (batch / half-life in images).
    return 0.5 ** (batch_size / max(halflife, 1e-8))


class EMA:
    """Shadow copies of the floating-point parameters of ``modules``; buffers are copied."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.shadow = {
            name: {k: v.detach().clone() for k, v in mod.state_dict().items()}
            for name, mod in modules.items()
        }
        # The live tensors behind each state-dict entry, found once (walking the module
        # tree every step cost a few percent of a small model's step): the Parameter
        # objects themselves, so a later ``.data`` swap is still followed, and the buffers,
        # which training updates in place.
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        for name, mod in modules.items():
            live = dict(mod.named_parameters()) | dict(mod.named_buffers())
            for key, shadow in self.shadow[name].items():
                self._pairs.append((shadow, live[key]))
        self._floats = [(s, v) for s, v in self._pairs if v.is_floating_point()]
        self._others = [(s, v) for s, v in self._pairs if not v.is_floating_point()]

    @torch.no_grad()
    def update(self, beta: float) -> None:
        """shadow <- beta * shadow + (1 - beta) * current (integer buffers: current)."""
        for shadow, value in self._others:
            shadow.copy_(value)
        if self._floats:  # one fused call: per-tensor lerps cost a dispatch each, every step
            torch._foreach_lerp_(
                [s for s, _ in self._floats], [v for _, v in self._floats], 1.0 - beta
            )

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """The averaged tensors by network (saved in training states)."""
        return {
            name: {k: v.detach().cpu() for k, v in sd.items()} for name, sd in self.shadow.items()
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Inverse of ``state_dict``; the networks and tensor names must match."""
        if set(state) != set(self.shadow):
            raise KeyError(f"EMA of networks {sorted(state)}, expected {sorted(self.shadow)}")
        for name, shadow in self.shadow.items():
            if set(state[name]) != set(shadow):
                raise KeyError(f"EMA of {name}: tensor names differ")
            for key, value in shadow.items():
                value.copy_(state[name][key])

    @torch.no_grad()
    def copy_to_modules(self) -> None:
        """Load the averaged weights into the live networks (used for sampling from then on)."""
        for name, mod in self.modules.items():
            mod.load_state_dict(self.shadow[name], strict=True)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Run the block with the averaged weights in the live networks, then give them
        their trained weights back (an evaluation in the middle of training)."""
        live = {
            name: {k: v.detach().clone() for k, v in mod.state_dict().items()}
            for name, mod in self.modules.items()
        }
        self.copy_to_modules()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, mod in self.modules.items():
                    mod.load_state_dict(live[name], strict=True)
