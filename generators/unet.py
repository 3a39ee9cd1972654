"""The shared diffusion backbone: ``diffusers.UNet2DModel`` built from paper-style settings.

DDPM, EDM and VDPM describe their networks as base channels, channel multipliers, res blocks
per level and the resolutions that get self-attention; this maps those onto diffusers'
block lists so every generator builds its UNet the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from diffusers import UNet2DModel
from torch import nn


def build_unet(
    *,
    image_size: int,
    in_channels: int,
    out_channels: int,
    channels: int,
    channel_mult: Sequence[int],
    num_res_blocks: int,
    attn_resolutions: Sequence[int] = (),
    dropout: float = 0.0,
    num_class_embeds: int = 0,
    norm_groups: int = 32,
    attention_head_dim: int | None = None,
    num_heads: int | None = None,
    scale_shift_norm: bool = False,
    resblock_resample: bool = False,
    flip_sin_to_cos: bool = False,
    freq_shift: int = 1,
    time_embedding_dim: int | None = None,
    attn_after_resample: bool = False,
    norm_eps: float = 1e-5,
) -> UNet2DModel:
    """A UNet with one level per entry of ``channel_mult`` (the first at ``image_size``).

    ``attn_resolutions`` lists feature-map sizes (e.g. 16 for 16x16) that get attention;
    ``num_class_embeds`` > 0 adds a learned class embedding to the time embedding (give one
    extra class for the "no label" of classifier-free guidance). ``attention_head_dim=None``
    means one head per block, as in Ho et al. 2020; ``num_heads`` instead gives every attention
    block that many heads, whatever its width (improved-diffusion's ``num_heads``).
    ``time_embedding_dim=None`` is diffusers' 4 x ``channels``. ``resblock_resample``
    resamples with residual blocks at every level (BigGAN-style), else with a (strided or
    upsampling) convolution.
    ``attn_after_resample`` (needs ``resblock_resample``) also puts self-attention after the
    resampling block of each attention level, as v-diffusion-torch's UNet does.
    """
    levels = len(channel_mult)
    if image_size % (2 ** (levels - 1)):
        raise ValueError(f"image_size {image_size} is not divisible by 2^{levels - 1}")
    widths = tuple(channels * m for m in channel_mult)
    if any(w % norm_groups for w in widths):
        raise ValueError(f"every level's channels {widths} must divide by norm_groups")
    sizes = [image_size // 2**i for i in range(levels)]
    attn = set(attn_resolutions)
    unknown = attn - set(sizes)
    if unknown:
        raise ValueError(f"attn_resolutions {sorted(unknown)} are not among the levels {sizes}")
    if num_heads is not None and attention_head_dim is not None:
        raise ValueError("give num_heads or attention_head_dim, not both")
    if attn_after_resample and not resblock_resample:
        raise ValueError("attn_after_resample needs resblock_resample")
    # diffusers' DownBlock2D / UpBlock2D ignore downsample_type: residual resampling at a
    # level without attention needs its Resnet*sample block.
    plain_down, plain_up = (
        ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D")
        if resblock_resample
        else ("DownBlock2D", "UpBlock2D")
    )
    down = tuple("AttnDownBlock2D" if s in attn else plain_down for s in sizes)
    up = tuple("AttnUpBlock2D" if s in attn else plain_up for s in reversed(sizes))
    net = UNet2DModel(
        sample_size=image_size,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=widths,
        layers_per_block=num_res_blocks,
        down_block_types=down,
        up_block_types=up,
        dropout=dropout,
        norm_num_groups=norm_groups,
        attention_head_dim=attention_head_dim,
        resnet_time_scale_shift="scale_shift" if scale_shift_norm else "default",
        downsample_type="resnet" if resblock_resample else "conv",
        upsample_type="resnet" if resblock_resample else "conv",
        num_class_embeds=num_class_embeds or None,
        flip_sin_to_cos=flip_sin_to_cos,
        freq_shift=freq_shift,
        time_embedding_dim=time_embedding_dim,
        norm_eps=norm_eps,
    )
    mid_attention = (net.mid_block.attentions or [None])[0]
    if mid_attention is not None and mid_attention.group_norm is None:
        # diffusers drops the middle attention's GroupNorm under scale-shift norms; the
        # papers' UNets (improved-diffusion, v-diffusion-torch) normalise before every
        # attention.
        mid_attention.group_norm = nn.GroupNorm(norm_groups, widths[-1], eps=norm_eps, affine=True)
    if num_heads is not None:
        _set_heads(net, num_heads)
    if attn_after_resample:
        for block in [*net.down_blocks, *net.up_blocks]:
            samplers = getattr(block, "downsamplers", None) or getattr(block, "upsamplers", None)
            if hasattr(block, "attentions") and samplers:
                samplers[0] = ResampleThenAttend(samplers[0], _fresh_copy(block.attentions[0]))
    return net


def _set_heads(net: nn.Module, heads: int) -> None:
    """Give every attention block of ``net`` ``heads`` heads (diffusers' blocks take one head
    width for the whole network; the heads' split of the channels holds no parameters)."""
    from diffusers.models.attention_processor import Attention

    for module in net.modules():
        if isinstance(module, Attention):
            width = module.to_q.out_features
            if width % heads:
                raise ValueError(f"num_heads {heads} does not divide {width} channels")
            module.heads = heads
            module.scale = (width // heads) ** -0.5


class ResampleThenAttend(nn.Module):
    """A residual resampling block followed by self-attention (with its residual), called as
    diffusers' blocks call their resamplers."""

    def __init__(self, resample: nn.Module, attention: nn.Module) -> None:
        super().__init__()
        self.resample, self.attention = resample, attention

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.attention(self.resample(hidden_states, temb))


def _fresh_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with newly initialised parameters."""
    out = copy.deepcopy(module)
    for m in out.modules():
        if m is not out and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return out


def unet_apply(
    net: UNet2DModel, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """``net``'s output for inputs ``x`` at (float, per-sample) times ``t`` and class labels."""
    t = t.expand(x.shape[0]) if t.dim() == 0 else t
    return net(x, t, class_labels=labels, return_dict=False)[0]


@torch.no_grad()
def zero_output_layers(net: UNet2DModel) -> UNet2DModel:
    """Zero the layers improved-diffusion starts at zero (its ``zero_module``): the last
    convolution of every residual block (resampling ones included), the output projection
    of every attention block and the final convolution, weights and biases. The network
    then outputs zeros at initialisation and each block starts as the identity. In place;
    returns ``net``."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    layers: list[torch.nn.Module] = [net.conv_out]
    for module in net.modules():
        if isinstance(module, ResnetBlock2D):
            layers.append(module.conv2)
        elif isinstance(module, Attention):
            layers.append(module.to_out[0])
    for layer in layers:
        for p in layer.parameters():
            p.zero_()
    return net
