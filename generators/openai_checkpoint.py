"""UNet checkpoints of OpenAI's improved-diffusion and guided-diffusion, read into DDPM's network.

Their ``UNetModel`` (Nichol & Dhariwal 2021; Dhariwal & Nichol 2021) and the
``diffusers.UNet2DModel`` that ``build_unet`` configures from the same settings are one
network: the same residual blocks (GroupNorm, SiLU, 3x3 convolution, the timestep embedding
added or applied as scale and shift, dropout, a 3x3 convolution, a 1x1 skip where the width
changes), the same self-attention blocks, resampling (strided convolution / nearest
upsampling and a convolution, or residual blocks that resample), skips and time embedding
MLP; with ``time_embedding = "openai"`` the same sinusoidal embedding (cosines first, periods
up to 10,000). Their layers are numbered in ``input_blocks``, ``middle_block`` and
``output_blocks``; ours are nested in levels. ``openai_layout`` pairs the two, in their
order, from our network; ``import_openai_state`` renames every tensor and splits their
attention's fused ``qkv`` 1x1 convolution into the q, k and v projections (in either of
their two head orders) and their 1x1 ``proj_out`` into a linear layer.

Written from a reading of their ``unet.py``; none of their code is used here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

#: Keys whose presence marks a state dict as OpenAI's UNet.
OPENAI_MARKERS = ("time_embed.0.weight", "input_blocks.0.0.weight")

AttentionOrder = Literal["legacy", "new"]

# their residual block's layers -> diffusers' ResnetBlock2D attributes
_RESBLOCK = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
)


def is_openai_state(state: Mapping[str, object]) -> bool:
    """Whether ``state`` looks like an improved-/guided-diffusion ``UNetModel`` state dict."""
    return all(key in state for key in OPENAI_MARKERS)


@dataclass(frozen=True)
class Part:
    """One of their modules and the module of ours it becomes."""

    theirs: str  # their module's prefix in the state dict
    ours: str  # our module's name in the UNet
    kind: Literal["plain", "resblock", "attention", "down_conv", "up_conv"]


def openai_layout(net: nn.Module, num_res_blocks: int) -> list[Part]:
    """Their modules paired with ours, in the order of their state dict, for a UNet that
    ``build_unet`` made with ``num_res_blocks`` residual blocks per level."""
    from diffusers.models.resnet import ResnetBlock2D

    names = {id(m): name for name, m in net.named_modules()}
    parts: list[Part] = []

    def add(theirs: str, module: nn.Module, kind: str = "plain") -> None:
        if isinstance(module, ResnetBlock2D):
            kind = "resblock"
        parts.append(Part(theirs, names[id(module)], kind))  # type: ignore[arg-type]

    def level(prefix: str, index: int, block: nn.Module, i: int) -> int:
        add(f"{prefix}.{index}.0", block.resnets[i])
        attentions = getattr(block, "attentions", None)
        if attentions is not None:
            add(f"{prefix}.{index}.1", attentions[i], "attention")
            return 2
        return 1

    add("time_embed.0", net.time_embedding.linear_1)
    add("time_embed.2", net.time_embedding.linear_2)
    if net.class_embedding is not None:
        add("label_emb", net.class_embedding)
    add("input_blocks.0.0", net.conv_in)
    index = 1
    for block in net.down_blocks:
        for i in range(num_res_blocks):
            level("input_blocks", index, block, i)
            index += 1
        if block.downsamplers:
            add(f"input_blocks.{index}.0", block.downsamplers[0], "down_conv")
            index += 1
    add("middle_block.0", net.mid_block.resnets[0])
    add("middle_block.1", net.mid_block.attentions[0], "attention")
    add("middle_block.2", net.mid_block.resnets[1])
    for index, (block, i) in enumerate(
        (block, i) for block in net.up_blocks for i in range(num_res_blocks + 1)
    ):
        position = level("output_blocks", index, block, i)
        if block.upsamplers and i == num_res_blocks:
            add(f"output_blocks.{index}.{position}", block.upsamplers[0], "up_conv")
    add("out.0", net.conv_norm_out)
    add("out.2", net.conv_out)
    return parts


def _tensors(part: Part, module: nn.Module) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """(their key, our key, the shape their tensor must have) for every tensor of ``part``
    except attention's, which ``_attention`` packs."""
    own = dict(module.named_parameters())
    if part.kind == "plain":
        renames = [("", "")]
    elif part.kind in ("down_conv", "up_conv"):
        # their Downsample names its convolution "op", their Upsample "conv"
        renames = [("op" if part.kind == "down_conv" else "conv", "conv")]
    else:
        renames = [(t, o) for t, o in _RESBLOCK if getattr(module, o, None) is not None]
    for theirs, ours in renames:
        for name in ("weight", "bias"):
            key = f"{ours}.{name}" if ours else name
            if key in own:
                their_key = f"{part.theirs}.{theirs}.{name}" if theirs else f"{part.theirs}.{name}"
                yield their_key, f"{part.ours}.{key}", tuple(own[key].shape)


def _attention_shapes(part: Part, module: nn.Module) -> dict[str, tuple[int, ...]]:
    width = module.to_q.in_features
    return {
        f"{part.theirs}.norm.weight": (width,),
        f"{part.theirs}.norm.bias": (width,),
        f"{part.theirs}.qkv.weight": (3 * width, width, 1),
        f"{part.theirs}.qkv.bias": (3 * width,),
        f"{part.theirs}.proj_out.weight": (width, width, 1),
        f"{part.theirs}.proj_out.bias": (width,),
    }


def _split_qkv(
    packed: torch.Tensor, heads: int, order: AttentionOrder
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k and v rows of their fused projection (weight (3C, C, 1) or bias (3C,)).

    "legacy" (improved-diffusion, guided-diffusion's default) packs the channels as
    [head][q|k|v][channel of the head]; "new" (``use_new_attention_order``) as
    [q|k|v][head][channel]. Ours are [head][channel] within each of q, k, v."""
    rows = packed.shape[0] // 3
    rest = packed.shape[1:]
    if order == "legacy":
        split = packed.reshape(heads, 3, rows // heads, *rest).transpose(0, 1)
    else:
        split = packed.reshape(3, heads, rows // heads, *rest)
    q, k, v = (part.reshape(rows, *rest) for part in split)
    return q, k, v


def _attention(
    part: Part, module: nn.Module, state: Mapping[str, torch.Tensor], order: AttentionOrder
) -> dict[str, torch.Tensor]:
    p, o = part.theirs, part.ours
    q, k, v = _split_qkv(state[f"{p}.qkv.weight"][..., 0], module.heads, order)
    qb, kb, vb = _split_qkv(state[f"{p}.qkv.bias"], module.heads, order)
    return {
        f"{o}.group_norm.weight": state[f"{p}.norm.weight"],
        f"{o}.group_norm.bias": state[f"{p}.norm.bias"],
        f"{o}.to_q.weight": q,
        f"{o}.to_k.weight": k,
        f"{o}.to_v.weight": v,
        f"{o}.to_q.bias": qb,
        f"{o}.to_k.bias": kb,
        f"{o}.to_v.bias": vb,
        f"{o}.to_out.0.weight": state[f"{p}.proj_out.weight"][..., 0],
        f"{o}.to_out.0.bias": state[f"{p}.proj_out.bias"],
    }


def expected_openai_shapes(net: nn.Module, num_res_blocks: int) -> dict[str, tuple[int, ...]]:
    """Every tensor an OpenAI checkpoint of this network holds, with its shape, in their
    state dict's order."""
    modules = dict(net.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    for part in openai_layout(net, num_res_blocks):
        module = modules[part.ours]
        if part.kind == "attention":
            shapes.update(_attention_shapes(part, module))
        else:
            shapes.update({theirs: shape for theirs, _, shape in _tensors(part, module)})
    return shapes


def _hint(key: str) -> str:
    if key.startswith("label_emb"):
        return (
            " (class_cond: conditional and null_label = false, on a data set of that many classes)"
        )
    if key.startswith("out.2") or key.startswith("input_blocks.0.0"):
        return " (learn_sigma: variance = 'learned_range'; the image channels)"
    return ""


def check_openai_state(
    net: nn.Module, state: Mapping[str, torch.Tensor], num_res_blocks: int
) -> None:
    """``ValueError`` naming the first tensor (in their order) that the network the flags
    describe lacks, has in another shape, or that the checkpoint lacks."""
    expected = expected_openai_shapes(net, num_res_blocks)
    for key, shape in expected.items():
        if key not in state:
            raise ValueError(
                f"has no tensor {key} {list(shape)}, which the given flags' network has"
                f"{_hint(key)}: check num_res_blocks, channel_mult, attn_resolutions and "
                "resblock_updown"
            )
        found = tuple(state[key].shape)
        if found != shape:
            raise ValueError(
                f"tensor {key} is {list(found)}, the given flags' network expects "
                f"{list(shape)}{_hint(key)}"
            )
    extra = [key for key in state if key not in expected]
    if extra:
        raise ValueError(
            f"holds tensor {extra[0]} {list(state[extra[0]].shape)}, which the given flags' "
            f"network lacks ({len(extra)} such tensors): check num_res_blocks, channel_mult, "
            "attn_resolutions and resblock_updown"
        )


def import_openai_state(
    net: nn.Module,
    state: Mapping[str, torch.Tensor],
    num_res_blocks: int,
    attention_order: AttentionOrder = "legacy",
) -> dict[str, torch.Tensor]:
    """``net``'s state dict from an improved-/guided-diffusion ``UNetModel`` state dict
    (``ValueError`` naming the first tensor that does not fit; see ``check_openai_state``)."""
    check_openai_state(net, state, num_res_blocks)
    modules = dict(net.named_modules())
    out: dict[str, torch.Tensor] = {}
    for part in openai_layout(net, num_res_blocks):
        module = modules[part.ours]
        if part.kind == "attention":
            out.update(_attention(part, module, state, attention_order))
        else:
            out.update({ours: state[theirs] for theirs, ours, _ in _tensors(part, module)})
    missing = sorted(set(net.state_dict()) - set(out))
    if missing:  # a layer of ours that no part covers: a layout this module does not know
        raise ValueError(f"cannot fill {missing[0]} of this network from their tensors")
    return {key: value.contiguous() for key, value in out.items()}


# --------------------------------------------------------------------------- their flags

#: Their default channel multipliers by image size (``channel_mult = ""``).
_DEFAULT_MULT = {64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)}
#: Their flags that change nothing in the weights or the maths.
_IGNORED = {"use_fp16", "use_checkpoint"}


def _csv(value: object) -> tuple[int, ...]:
    text = str(value).strip()
    return tuple(int(part) for part in text.split(",") if part.strip())


def config_from_openai_flags(flags: Mapping[str, object]) -> dict[str, object]:
    """The DDPM config fields for a model that improved-diffusion / guided-diffusion built
    with ``flags`` (their ``script_util`` names: ``image_size``, ``num_channels``, ...;
    flags not given take their defaults there). ``ValueError`` names a flag this
    network or this module does not support."""
    known = {
        "image_size", "num_channels", "num_res_blocks", "channel_mult", "num_heads",
        "num_head_channels", "num_heads_upsample", "attention_resolutions", "dropout",
        "class_cond", "learn_sigma", "sigma_small", "use_kl", "predict_xstart",
        "diffusion_steps", "noise_schedule", "timestep_respacing", "rescale_timesteps",
        "rescale_learned_sigmas", "use_scale_shift_norm", "resblock_updown",
        "use_new_attention_order", *_IGNORED,
    }  # fmt: skip
    unknown = sorted(set(flags) - known)
    if unknown:
        raise ValueError(f"unknown improved-/guided-diffusion flag {unknown[0]!r}")
    f = dict(flags)
    if f.get("predict_xstart"):
        raise ValueError("predict_xstart: DDPM predicts eps; x0-predicting models are not read")
    heads, head_channels = int(f.get("num_heads", 4)), int(f.get("num_head_channels", -1))
    if int(f.get("num_heads_upsample", -1)) not in (-1, heads) and head_channels == -1:
        raise ValueError("num_heads_upsample: other heads in the decoder are not supported")
    size = int(f.get("image_size", 64))
    mult = _csv(f.get("channel_mult", ""))
    if not mult:
        if size not in _DEFAULT_MULT:
            raise ValueError(f"channel_mult: give it for image_size {size} (no default there)")
        mult = _DEFAULT_MULT[size]
    steps = int(f.get("diffusion_steps", 1000))
    learn_sigma = bool(f.get("learn_sigma", False))
    loss = "vlb" if f.get("use_kl") else ("hybrid" if learn_sigma else "simple")
    variance = (
        "learned_range"
        if learn_sigma
        else ("fixed_small" if f.get("sigma_small") else "fixed_large")
    )
    config: dict[str, object] = {
        "image_size": size,
        "channels": int(f.get("num_channels", 128)),
        "channel_mult": mult,
        "num_res_blocks": int(f.get("num_res_blocks", 2)),
        "attn_resolutions": _csv(f.get("attention_resolutions", "16,8")),
        "dropout": float(f.get("dropout", 0.0)),
        "scale_shift_norm": bool(f.get("use_scale_shift_norm", True)),
        "resblock_updown": bool(f.get("resblock_updown", False)),
        "attention_order": "new" if f.get("use_new_attention_order") else "legacy",
        "time_embedding": "openai",
        "num_timesteps": steps,
        "schedule": str(f.get("noise_schedule", "linear")),
        "variance": variance,
        "loss": loss,
        # Their hybrid loss is mse + L_t (loss type MSE) or mse + T / 1000 L_t (rescaled):
        # lambda T L_t with lambda = 1 / T or 1 / 1000.
        "hybrid_lambda": 1e-3 if f.get("rescale_learned_sigmas") else 1.0 / steps,
        "rescale_timesteps": bool(f.get("rescale_timesteps", False)),
        "conditional": bool(f.get("class_cond", False)),
        "null_label": False,
        "p_uncond": 0.0,
    }
    if head_channels != -1:
        config["attention_head_dim"] = head_channels
    else:
        config["num_heads"] = heads
    respacing = str(f.get("timestep_respacing", "")).strip()
    if respacing:
        config["sample_steps"] = respacing.replace(",", "+")
    return config
