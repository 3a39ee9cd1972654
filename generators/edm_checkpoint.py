"""Official EDM checkpoints (NVlabs/edm ``network-snapshot-*.pkl``) as genbench EDM states.

EDM pickles whole networks (``{"ema": EDMPrecond(model=SongUNet(...)), ...}``); genbench
reads only their tensors (``genbench.core.safe_pickle``: no class imported, no code run).
EDM's DDPM++ (``SongUNet`` with the standard encoder and decoder and the [1, 1] resampling
filter, its CIFAR-10 and FFHQ/AFHQ networks) is the network ``genbench.generators.songunet``
implements, block for block, with EDM's qkv channel layout, so every tensor maps 1:1; only
the names differ: EDM keys its encoder and decoder by resolution
(``enc.32x32_conv``, ``enc.16x16_down``, ``enc.16x16_block0``, ``dec.8x8_in0``,
``dec.16x16_up``, ``dec.32x32_aux_norm``), genbench by position (``conv_in``, ``enc.3``,
``mid.0``, ``dec.1.0``, ``norm_out``). ``official_names`` gives the correspondence for a
configured network; anything that does not fit (another encoder type, FIR resampling,
another width) is refused in one line naming the first tensor that differs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

PREFIXES = ("ema.model.", "net.model.", "model.")
"""Where the DDPM++ sits in an EDM pickle (the EMA network first: the one EDM samples with)."""
BOX_FILTER = 0.25
"""EDM's [1, 1] resampling filter as its 2x2 buffer holds it: outer([1, 1]) / 4."""


def _block_names(out: dict[str, str], ours: str, theirs: str, module: nn.Module) -> None:
    for key in module.state_dict():
        out[f"{ours}.{key}"] = f"{theirs}.{key}"


def official_names(
    net: nn.Module, image_size: int, channel_mult: tuple[int, ...]
) -> dict[str, str]:
    """``{our state-dict key: EDM's key (below "model.")}`` for a ``SongUNet``."""
    out: dict[str, str] = {}
    for name in ("map_label", "map_augment", "map_layer0", "map_layer1"):
        module = getattr(net, name)
        if module is not None:
            _block_names(out, name, name, module)
    levels = len(channel_mult)
    sizes = [image_size >> level for level in range(levels)]
    res = [f"{s}x{s}" for s in sizes]
    _block_names(out, "conv_in", f"enc.{res[0]}_conv", net.conv_in)
    enc = iter(enumerate(net.enc))
    num_blocks = (len(net.enc) - (levels - 1)) // levels
    for level in range(levels):
        if level:
            i, block = next(enc)
            _block_names(out, f"enc.{i}", f"enc.{res[level]}_down", block)
        for b in range(num_blocks):
            i, block = next(enc)
            _block_names(out, f"enc.{i}", f"enc.{res[level]}_block{b}", block)
    _block_names(out, "mid.0", f"dec.{res[-1]}_in0", net.mid[0])
    _block_names(out, "mid.1", f"dec.{res[-1]}_in1", net.mid[1])
    for j, level in enumerate(reversed(range(levels))):
        blocks = list(net.dec[j])
        first = 0
        if level < levels - 1:
            _block_names(out, f"dec.{j}.0", f"dec.{res[level]}_up", blocks[0])
            first = 1
        for idx in range(len(blocks) - first):
            _block_names(
                out, f"dec.{j}.{first + idx}", f"dec.{res[level]}_block{idx}", blocks[first + idx]
            )
    _block_names(out, "norm_out", f"dec.{res[0]}_aux_norm", net.norm_out)
    _block_names(out, "conv_out", f"dec.{res[0]}_aux_conv", net.conv_out)
    return out


def is_edm_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` holds an EDM network (its ``map_layer0`` under one of ``PREFIXES``)."""
    return any(f"{p}map_layer0.weight" in state for p in PREFIXES)


def import_edm_state(
    net: nn.Module,
    state: Mapping[str, torch.Tensor],
    image_size: int,
    channel_mult: tuple[int, ...],
) -> dict[str, torch.Tensor]:
    """``net``'s state dict from the tensors of an EDM pickle; ``ValueError`` (one line)
    naming the first tensor that is missing, extra or of another shape."""
    prefix = next(p for p in PREFIXES if f"{p}map_layer0.weight" in state)
    theirs = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    filters = {k: v for k, v in theirs.items() if k.endswith("resample_filter")}
    for key, value in filters.items():
        if value.numel() != 4 or not torch.all(value == BOX_FILTER):
            raise ValueError(
                f"{prefix}{key} is not EDM's [1, 1] resampling filter: networks with FIR "
                "resampling (NCSN++) are not supported"
            )
    names = official_names(net, image_size, channel_mult)
    ours = net.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, name in names.items():
        if name not in theirs:
            hint = " (augment_dim: set augment > 0)" if "map_augment" in name else ""
            raise ValueError(f"the checkpoint has no {prefix}{name}{hint}; is its config this one?")
        value = theirs[name]
        if value.shape != ours[key].shape:
            raise ValueError(
                f"{prefix}{name} is {tuple(value.shape)}, this config's network needs "
                f"{tuple(ours[key].shape)}: use the channels, channel_mult, num_res_blocks and "
                "attn_resolutions it was trained with"
            )
        out[key] = value
    extra = sorted(set(theirs) - set(names.values()) - set(filters))
    if extra:
        hint = " (EDM's map_augment: set augment > 0)" if "map_augment" in extra[0] else ""
        raise ValueError(
            f"the checkpoint holds {prefix}{extra[0]}, which this config's network has no "
            f"place for{hint}; only DDPM++ with the standard encoder and decoder is read"
        )
    return out


def export_edm_state(
    net: nn.Module, image_size: int, channel_mult: tuple[int, ...]
) -> dict[str, torch.Tensor]:
    """The inverse of ``import_edm_state``: ``net``'s tensors under EDM's names (below
    "model."), with the resampling filters EDM's up/down convolutions hold."""
    state = net.state_dict()
    out = {
        name: state[key].detach().clone()
        for key, name in official_names(net, image_size, channel_mult).items()
    }
    box = torch.full((1, 1, 2, 2), BOX_FILTER)
    for name in list(out):
        block, _, leaf = name.rpartition(".")
        if (
            ("_down." in name or "_up." in name)
            and leaf == "weight"
            and block.rsplit(".", 1)[-1] in ("conv0", "skip")
        ):
            out[f"{block}.resample_filter"] = box.clone()
    return out
