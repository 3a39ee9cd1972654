"""Official DDGAN checkpoints (NVlabs/denoising-diffusion-gan ``netG_*.pth``) as genbench
DDGAN states.

The official training script saves its generator with ``torch.save(netG.state_dict())``
while it is wrapped in ``DistributedDataParallel`` (every key starts with ``module.``), with
the EMA weights swapped in. The file holds tensors only; genbench reads it with
``torch.load(weights_only=True)``, which unpickles no class of the file.

The official generator is NCSN++ with adaptive group norms (``ncsnpp_generator_adagn``): one
flat ``all_modules`` list in the order its constructor appends them (time MLP, stem, per
encoder level its residual blocks each followed by attention at the attention resolutions,
then the down-sampling block and the input pyramid's down-sampler, the middle block /
attention / block, per decoder level its blocks, attention after the last one and the
up-sampling block, then the output norm and convolution) and the latent mapping
``z_transform``. ``genbench.generators.ddgan_nets`` builds the same network with named
stages; ``official_names`` walks both in that order. Three tensors change form on the way:

- adaptive group norm: the official ``style`` layer gives (gamma, beta) and computes
  gamma * norm(x) + beta; diffusers' ``AdaGroupNorm`` computes (1 + scale) * norm(x) + shift
  from the same layer's output, so the scale half of the bias is one lower here;
- attention projections (``NIN``): a (in, out) matrix ``W`` and a bias ``b``; ``nn.Linear``
  holds W's transpose;
- the key projection's bias: it adds the same amount to every logit of a query, which the
  softmax cancels, so genbench's attention has none (``ddgan_nets.self_attention``); it is
  dropped on import and written as zeros on export.

Only the generator is published; the discriminator keeps its initialisation (sampling needs
G only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from genbench.generators.ddgan_nets import AdaResBlock, DDGANGeneratorNet, Stage

PREFIX = "module."
"""What DistributedDataParallel puts before every key of the official files."""
MARKER = "z_transform.1.weight"
"""A tensor only the official DDGAN generator has: the first layer of its latent mapping."""

Kind = Literal["same", "adagn_bias", "nin_weight", "dropped"]


def _linear(out: dict[str, tuple[str, Kind]], ours: str, theirs: str, *, bias: bool = True) -> None:
    out[f"{ours}.weight"] = (f"{theirs}.weight", "same")
    if bias:
        out[f"{ours}.bias"] = (f"{theirs}.bias", "same")


def _resblock(out: dict[str, tuple[str, Kind]], ours: str, theirs: str, block: AdaResBlock) -> None:
    for norm, official in (("norm1", "GroupNorm_0"), ("norm2", "GroupNorm_1")):
        out[f"{ours}.{norm}.linear.weight"] = (f"{theirs}.{official}.style.weight", "same")
        out[f"{ours}.{norm}.linear.bias"] = (f"{theirs}.{official}.style.bias", "adagn_bias")
    _linear(out, f"{ours}.conv1", f"{theirs}.Conv_0")
    _linear(out, f"{ours}.temb", f"{theirs}.Dense_0")
    _linear(out, f"{ours}.conv2", f"{theirs}.Conv_1")
    if isinstance(block.skip, nn.Conv2d):
        _linear(out, f"{ours}.skip", f"{theirs}.Conv_2")


def _attention(out: dict[str, tuple[str, Kind]], ours: str, theirs: str) -> None:
    _linear(out, f"{ours}.group_norm", f"{theirs}.GroupNorm_0")
    for proj, nin in (
        ("to_q", "NIN_0"),
        ("to_k", "NIN_1"),
        ("to_v", "NIN_2"),
        ("to_out.0", "NIN_3"),
    ):
        out[f"{ours}.{proj}.weight"] = (f"{theirs}.{nin}.W", "nin_weight")
        if proj != "to_k":
            out[f"{ours}.{proj}.bias"] = (f"{theirs}.{nin}.b", "same")
    out[f"{ours}.to_k.bias"] = (f"{theirs}.NIN_1.b", "dropped")


def official_names(G: DDGANGeneratorNet) -> dict[str, tuple[str, Kind]]:
    """``{our key below "G.": (the official key without "module.", how the tensor maps)}``;
    the ``dropped`` entry's key is not in our state dict."""
    out: dict[str, tuple[str, Kind]] = {}
    index = iter(range(10**6))

    def stage(ours: str, s: Stage) -> None:
        _resblock(out, f"{ours}.block", f"all_modules.{next(index)}", s.block)
        if s.attn is not None:
            _attention(out, f"{ours}.attn", f"all_modules.{next(index)}")

    _linear(out, "time_mlp.linear_1", f"all_modules.{next(index)}")
    _linear(out, "time_mlp.linear_2", f"all_modules.{next(index)}")
    _linear(out, "conv_in", f"all_modules.{next(index)}")
    level = 0
    for i, s in enumerate(G.down):
        stage(f"down.{i}", s)
        if G.pyramid and s.block.resample_kind == "down":
            conv = "Conv2d_0" if G.pyramid[level].fir else "Conv_0"
            _linear(out, f"pyramid.{level}.conv", f"all_modules.{next(index)}.{conv}")
            level += 1
    for i, s in enumerate(G.mid):
        stage(f"mid.{i}", s)
    for i, s in enumerate(G.up):
        stage(f"up.{i}", s)
    _linear(out, "norm_out", f"all_modules.{next(index)}")
    _linear(out, "conv_out", f"all_modules.{next(index)}")
    for i, layer in enumerate(G.mapping):
        if isinstance(layer, nn.Linear):
            _linear(out, f"mapping.{i}", f"z_transform.{i}")
    return out


def is_ddgan_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` holds an official DDGAN generator (with or without ``module.``)."""
    return MARKER in state or PREFIX + MARKER in state


def _adagn_offset(bias: torch.Tensor) -> torch.Tensor:
    """1 on the scale half of an adaptive norm's bias, 0 on the shift half."""
    offset = torch.zeros_like(bias)
    offset[: bias.shape[0] // 2] = 1
    return offset


def import_ddgan_state(
    G: DDGANGeneratorNet, state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``G``'s state dict from the tensors of an official ``netG_*.pth``; ``ValueError``
    (one line) naming the first tensor that is missing, extra or of another shape."""
    prefix = PREFIX if PREFIX + MARKER in state else ""
    theirs = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    ours = G.state_dict()
    names = official_names(G)
    out: dict[str, torch.Tensor] = {}
    for key, (name, kind) in names.items():
        if name not in theirs:
            raise ValueError(
                f"the checkpoint has no {prefix}{name}; is it a DDGAN generator of this config "
                "(channels, channel_mult, num_res_blocks, attn_resolutions, progressive_input)?"
            )
        value = theirs[name]
        if kind == "dropped":
            continue
        if kind == "nin_weight":
            value = value.t()
        elif kind == "adagn_bias":
            value = value - _adagn_offset(value)
        if value.shape != ours[key].shape:
            raise ValueError(
                f"{prefix}{name} is {tuple(theirs[name].shape)}, which does not fit this "
                f"config's network ({tuple(ours[key].shape)} as G.{key}): use the channels, "
                "channel_mult, nz, z_emb_dim and n_mlp it was trained with"
            )
        out[key] = value.contiguous()
    extra = sorted(set(theirs) - {name for name, _ in names.values()})
    if extra:
        raise ValueError(
            f"the checkpoint holds {prefix}{extra[0]}, which this config's generator has no "
            "place for (only NCSN++ with adaptive group norms and BigGAN blocks is read)"
        )
    return out


def export_ddgan_state(G: DDGANGeneratorNet) -> dict[str, torch.Tensor]:
    """The inverse of ``import_ddgan_state``: ``G``'s tensors under the official names, as
    the official training script saves them (``module.`` first)."""
    ours = G.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, (name, kind) in official_names(G).items():
        if kind == "dropped":  # the key projection's bias: zeros, of its weight's width
            weight = ours[key.removesuffix("bias") + "weight"]
            out[PREFIX + name] = weight.new_zeros(weight.shape[0])
            continue
        value = ours[key].detach().clone()
        if kind == "nin_weight":
            value = value.t().contiguous()
        elif kind == "adagn_bias":
            value = value + _adagn_offset(value)
        out[PREFIX + name] = value
    return out
