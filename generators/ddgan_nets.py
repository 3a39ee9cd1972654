"""DDGAN's networks (Xiao, Kreis, Vahdat 2022): a latent-modulated UNet G and a pair critic D.

G(x_t, z, t) predicts x_0. It is an NCSN++-style UNet (Song et al. 2021, BigGAN residual
blocks with skip rescaling by 1/sqrt(2)) whose group norms are modulated by a style vector
w = mapping(z) (adaptive group norm, Xiao et al. 2022 section 3.4 / appendix). Time enters
every residual block additively through a positional (sinusoidal) embedding.

D(x_{t-1}, x_t, t) scores a pair: both images stacked on channels, residual down-sampling
blocks with an additive time embedding, a minibatch-standard-deviation feature, a spatial
sum and a linear head (the official "small" discriminator). The standard deviation is taken
over groups of ``stddev_group`` *consecutive* samples (the official code strides them across
the batch), so a micro-batch made of whole groups sees exactly the groups of the full batch.

Resampling is the official code's FIR filter (``fir``, default on): the [1, 3, 3, 1] binomial
kernel, normalised, for 2x down-sampling (a depthwise stride-2 convolution, padding 1) and,
times 4, for 2x up-sampling (its transpose); ``fir=False`` falls back to 2x2 average pooling
and nearest-neighbour up-sampling. G's ``progressive_input = "residual"`` (NCSN++'s input
pyramid, the official setting) down-samples the input image alongside the encoder: after each
down-sampling block, a FIR-blurred stride-2 3x3 convolution of the pyramid is added to the
features (scaled by 1/sqrt(2)), and the sum is both the skip and the next level's input.

Building blocks from diffusers where they fit: ``AdaGroupNorm`` (group norm with a
per-sample scale and shift), ``Timesteps`` / ``TimestepEmbedding`` (sinusoidal embedding
+ MLP) and ``Attention`` (single-head self-attention on feature maps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.normalization import AdaGroupNorm
from torch import nn

Resample = Literal["none", "down", "up"]
EPS = 1e-6
"""The epsilon of every group norm, as in the official code (``eps=1e-6``)."""


def official_time(t: torch.Tensor) -> torch.Tensor:
    """The time the official code embeds for reverse step ``t`` (1..T, x_t -> x_{t-1}):
    ``t - 1``, the index of the pair's earlier image, so official weights see the times
    they were trained with."""
    return t - 1


def _fir_kernel(x: torch.Tensor, gain: float) -> torch.Tensor:
    """The depthwise 4x4 [1, 3, 3, 1] x [1, 3, 3, 1] kernel, summing to ``gain``, for x's
    channels."""
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], device=x.device, dtype=x.dtype)
    k = torch.outer(k, k) * (gain / 64.0)
    return k.expand(x.shape[1], 1, 4, 4)


def fir_down(x: torch.Tensor) -> torch.Tensor:
    """2x FIR down-sampling: out[i] = (x[2i-1] + 3 x[2i] + 3 x[2i+1] + x[2i+2]) / 8 per axis,
    zeros beyond the border."""
    return F.conv2d(x, _fir_kernel(x, 1.0), stride=2, padding=1, groups=x.shape[1])


def fir_up(x: torch.Tensor) -> torch.Tensor:
    """2x FIR up-sampling: out[2i] = (x[i-1] + 3 x[i]) / 4, out[2i+1] = (3 x[i] + x[i+1]) / 4
    per axis, zeros beyond the border."""
    return F.conv_transpose2d(x, _fir_kernel(x, 4.0), stride=2, padding=1, groups=x.shape[1])


_RESAMPLE: dict[bool, dict[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    True: {"none": lambda x: x, "down": fir_down, "up": fir_up},
    False: {
        "none": lambda x: x,
        "down": lambda x: F.avg_pool2d(x, 2),
        "up": lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest"),
    },
}


class PyramidDown(nn.Module):
    """The input pyramid's down-sampler: a FIR blur (zero padding 2; without ``fir``, zero
    padding of 1 on the right and bottom only), then a stride-2 3x3 convolution without
    padding: (N, cin, H, W) -> (N, cout, H/2, W/2)."""

    def __init__(self, cin: int, cout: int, fir: bool = True) -> None:
        super().__init__()
        self.fir = fir
        self.conv = nn.Conv2d(cin, cout, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fir:
            x = F.conv2d(x, _fir_kernel(x, 1.0), padding=2, groups=x.shape[1])
        else:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


def norm_groups(channels: int) -> int:
    """Group count of every group norm: min(C / 4, 32), as in NCSN++ (Song et al. 2021)."""
    return min(channels // 4, 32)


def _zero(module: nn.Conv2d | nn.Linear) -> nn.Conv2d | nn.Linear:
    """Mark a layer that closes a residual branch: ``init_weights`` zeroes it."""
    module.zero_init = True
    return module


def init_weights(net: nn.Module) -> None:
    """NCSN++ initialisation (Song et al. 2021), as DDGAN uses it: Glorot-uniform weights
    ("default_init"), zero biases, and zero weights where ``init_scale = 0`` (the last layer
    of every residual branch, so each starts as the identity)."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            if getattr(module, "zero_init", False):
                nn.init.zeros_(module.weight)
            else:
                nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class PixelNorm(nn.Module):
    """z / rms(z), per sample (Karras et al. 2018, eq. 4 applied to the latent)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)


def mapping_network(nz: int, z_emb_dim: int, n_mlp: int) -> nn.Sequential:
    """z (N, nz) -> style w (N, z_emb_dim): pixel norm, then 1 + ``n_mlp`` linear + SiLU."""
    layers: list[nn.Module] = [PixelNorm(), nn.Linear(nz, z_emb_dim), nn.SiLU()]
    for _ in range(n_mlp):
        layers += [nn.Linear(z_emb_dim, z_emb_dim), nn.SiLU()]
    return nn.Sequential(*layers)


class AdaResBlock(nn.Module):
    """BigGAN residual block whose norms are modulated by the style w (Xiao et al. 2022)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        temb_dim: int,
        w_dim: int,
        dropout: float = 0.0,
        resample: Resample = "none",
        fir: bool = True,
    ) -> None:
        super().__init__()
        self.resample_kind = resample
        self.norm1 = AdaGroupNorm(w_dim, cin, norm_groups(cin), eps=EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, cout)
        self.norm2 = AdaGroupNorm(w_dim, cout, norm_groups(cout), eps=EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        needs_skip = cin != cout or resample != "none"
        self.skip = nn.Conv2d(cin, cout, 1) if needs_skip else nn.Identity()
        self.resample = _RESAMPLE[fir][resample]

    def forward(self, x: torch.Tensor, temb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(x, w))
        h, x = self.resample(h), self.resample(x)
        h = self.conv1(h) + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h, w))))
        return (self.skip(x) + h) / math.sqrt(2.0)


def self_attention(channels: int) -> Attention:
    """Single-head self-attention over a feature map, residual, rescaled by 1/sqrt(2)."""
    attention = Attention(
        channels,
        heads=1,
        dim_head=channels,
        norm_num_groups=norm_groups(channels),
        eps=EPS,
        residual_connection=True,
        rescale_output_factor=math.sqrt(2.0),
        bias=True,
    )
    # A key bias only shifts every logit of a query by the same amount, which the softmax
    # cancels: its gradient is zero up to rounding, and Adam would turn that rounding into
    # full-size random updates. Drop it.
    attention.to_k.register_parameter("bias", None)
    _zero(attention.to_out[0])
    return attention


class Stage(nn.Module):
    """One UNet stage: a residual block, optionally followed by self-attention.

    ``takes_skip``: the block's input is the running features concatenated with the
    matching encoder activation (decoder stages that are not up-samplers).
    """

    def __init__(self, block: AdaResBlock, attention: bool, takes_skip: bool = False) -> None:
        super().__init__()
        self.block = block
        self.attn = self_attention(block.conv1.out_channels) if attention else None
        self.takes_skip = takes_skip

    def forward(self, h: torch.Tensor, temb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h = self.block(h, temb, w)
        return self.attn(h) if self.attn is not None else h


class DDGANGeneratorNet(nn.Module):
    """G(x_t, z, t) -> predicted x_0 in [-1, 1] (tanh output, as the official model); t is
    the reverse step, 1..T (``official_time``)."""

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float,
        nz: int,
        z_emb_dim: int,
        n_mlp: int,
        fir: bool = True,
        progressive_input: Literal["none", "residual"] = "residual",
    ) -> None:
        super().__init__()
        temb_dim = 4 * channels
        # Positional embedding of t (Vaswani et al. 2017 / Ho et al. 2020), then an MLP.
        self.time_proj = Timesteps(channels, flip_sin_to_cos=False, downscale_freq_shift=1)
        self.time_mlp = TimestepEmbedding(channels, temb_dim)
        self.mapping = mapping_network(nz, z_emb_dim, n_mlp)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down, self.mid, self.up = _unet_stages(
            image_size,
            channels,
            channel_mult,
            num_res_blocks,
            set(attn_resolutions),
            lambda cin, cout, rs: AdaResBlock(cin, cout, temb_dim, z_emb_dim, dropout, rs, fir),
        )
        # NCSN++'s input pyramid: one down-sampler per encoder down-sampling block, from the
        # previous level's (combined) features to this level's width.
        self.pyramid = nn.ModuleList()
        if progressive_input == "residual":
            cin = in_channels
            for stage in self.down:
                if stage.block.resample_kind == "down":
                    cout = stage.block.conv1.out_channels
                    self.pyramid.append(PyramidDown(cin, cout, fir))
                    cin = cout
        elif progressive_input != "none":
            raise ValueError(
                f"progressive_input must be 'none' or 'residual', not {progressive_input!r}"
            )
        self.norm_out = nn.GroupNorm(norm_groups(channels), channels, eps=EPS)
        # Not zero-initialised (NCSN++ does): an untrained G must still map seeds to images.
        self.conv_out = nn.Conv2d(channels, in_channels, 3, padding=1)
        init_weights(self)

    def forward(self, x_t: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(self.time_proj(official_time(t)))
        w = self.mapping(z)
        h = self.conv_in(x_t)
        skips = [h]
        pyramid, level = x_t, 0
        for stage in self.down:
            h = stage(h, temb, w)
            if self.pyramid and stage.block.resample_kind == "down":
                pyramid = (self.pyramid[level](pyramid) + h) / math.sqrt(2.0)
                h, level = pyramid, level + 1
            skips.append(h)
        for stage in self.mid:
            h = stage(h, temb, w)
        for stage in self.up:
            h = torch.cat([h, skips.pop()], dim=1) if stage.takes_skip else h
            h = stage(h, temb, w)
        return torch.tanh(self.conv_out(F.silu(self.norm_out(h))))


def _unet_stages(
    image_size: int,
    channels: int,
    channel_mult: Sequence[int],
    num_res_blocks: int,
    attn: set[int],
    block: Callable[[int, int, Resample], AdaResBlock],
) -> tuple[nn.ModuleList, nn.ModuleList, nn.ModuleList]:
    """Encoder, middle and decoder stages of the NCSN++ layout (Song et al. 2021, fig. 4).

    Encoder levels: ``num_res_blocks`` blocks, then a down-sampling residual block (not on
    the last level); every encoder output (and the stem) is a skip. Decoder levels:
    ``num_res_blocks + 1`` blocks each consuming one skip, then an up-sampling block.
    """
    widths = [channels * m for m in channel_mult]
    down, skip_ch, cin, size = nn.ModuleList(), [channels], channels, image_size
    for level, width in enumerate(widths):
        for _ in range(num_res_blocks):
            down.append(Stage(block(cin, width, "none"), size in attn))
            cin = width
            skip_ch.append(cin)
        if level < len(widths) - 1:
            down.append(Stage(block(cin, cin, "down"), False))
            skip_ch.append(cin)
            size //= 2
    # Middle: block, attention, block (Song et al. 2021).
    mid = nn.ModuleList(Stage(block(cin, cin, "none"), attention) for attention in (True, False))
    up = nn.ModuleList()
    for level in reversed(range(len(widths))):
        for i in range(num_res_blocks + 1):
            attention = i == num_res_blocks and size in attn  # after the level's last block
            stage = Stage(block(cin + skip_ch.pop(), widths[level], "none"), attention, True)
            up.append(stage)
            cin = widths[level]
        if level > 0:
            up.append(Stage(block(cin, cin, "up"), False))
            size *= 2
    return down, mid, up


class DownBlock(nn.Module):
    """Discriminator residual block: LeakyReLU(0.2), additive time embedding, FIR (or
    average-pool) down-sampling."""

    def __init__(
        self, cin: int, cout: int, temb_dim: int, downsample: bool, fir: bool = True
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, cout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)
        self.resample = _RESAMPLE[fir]["down" if downsample else "none"]

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(x, 0.2)) + self.temb(temb)[:, :, None, None]
        h = self.conv2(self.resample(F.leaky_relu(h, 0.2)))
        return (h + self.skip(self.resample(x))) / math.sqrt(2.0)


def minibatch_stddev(h: torch.Tensor, group: int) -> torch.Tensor:
    """``h`` with one more channel: the mean feature std over each group of ``group``
    consecutive samples (the last group may be smaller) (Karras et al. 2018, section 3)."""
    n = h.shape[0]
    full = n - n % group
    parts = [h[:full].unflatten(0, (-1, group))] if full else []
    if full < n:
        parts.append(h[full:].unsqueeze(0))
    stds = []
    for grouped in parts:  # (groups, size, C, H, W)
        std = (grouped.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
        stds.append(std.repeat_interleave(grouped.shape[1]))
    feature = torch.cat(stds)[:, None, None, None].expand(n, 1, *h.shape[2:])
    return torch.cat([h, feature], dim=1)


class DDGANDiscriminatorNet(nn.Module):
    """D(x_{t-1}, x_t, t) -> one logit per pair (N,); t is the reverse step, 1..T."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        channel_mult: Sequence[int],
        stddev_group: int,
        temb_dim: int | None = None,
        fir: bool = True,
    ) -> None:
        super().__init__()
        self.stddev_group = stddev_group
        temb_dim = temb_dim or 4 * channels  # the official code: t_emb_dim 256 at ngf 64
        self.time_proj = Timesteps(temb_dim, flip_sin_to_cos=False, downscale_freq_shift=1)
        self.time_mlp = nn.Sequential(
            nn.Linear(temb_dim, temb_dim), nn.LeakyReLU(0.2), nn.Linear(temb_dim, temb_dim)
        )
        widths = [channels * m for m in channel_mult]
        self.conv_in = nn.Conv2d(2 * in_channels, widths[0], 1)
        self.blocks = nn.ModuleList(
            DownBlock(cin, cout, temb_dim, downsample=i > 0, fir=fir)
            for i, (cin, cout) in enumerate(zip(widths[:1] + widths[:-1], widths, strict=True))
        )
        extra = 1 if stddev_group > 1 else 0
        self.conv_out = _zero(nn.Conv2d(widths[-1] + extra, widths[-1], 3, padding=1))
        self.head = nn.Linear(widths[-1], 1)
        init_weights(self)

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = F.leaky_relu(self.time_mlp(self.time_proj(official_time(t))), 0.2)
        h = self.conv_in(torch.cat([x_prev, x_t], dim=1))
        for block in self.blocks:
            h = block(h, temb)
        if self.stddev_group > 1:
            h = minibatch_stddev(h, self.stddev_group)
        h = F.leaky_relu(self.conv_out(h), 0.2).sum(dim=(2, 3))
        return self.head(h).flatten()
