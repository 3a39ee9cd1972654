"""DDPM++, the network of EDM's CIFAR-10 setting (Karras et al. 2022, appendix F.2, after
Song et al. 2021's DDPM++ "cont." model), written here because ``diffusers.UNet2DModel``
cannot express it: the noise embedding is *added* before each block's second normalisation
(no scale-shift), every residual branch and attention is scaled by 1/sqrt(2), the decoder has
one attention per attention level (after its last block), the middle has one, labels and
augmentation labels enter as linear maps added to the sinusoidal embedding, and the output
comes from a normalised 3x3 convolution at the top level only.

Layout (level l at resolution R / 2^l, width ``channels * channel_mult[l]``):

- encoder: a 3x3 convolution at the top level; at every lower level a residual block that
  halves the resolution (2x2 average pooling, a 1x1 projection on the skip); then
  ``num_blocks`` residual blocks per level, each followed by attention at ``attn_resolutions``.
  Every encoder output is kept as a skip.
- decoder, from the lowest level up: at the lowest, a block with attention and a plain block;
  at the others a block that doubles the resolution (nearest neighbour); then
  ``num_blocks + 1`` blocks, each taking one skip (concatenated), the last with attention at
  ``attn_resolutions``; the top level ends in GroupNorm, SiLU and a 3x3 convolution.
- embedding: [sin, cos] of c_noise at ``channels / 2`` frequencies 1 .. 1e-4 (EDM's positional
  embedding with ``endpoint=True``), plus ``Linear(one_hot(label) * sqrt(num_classes))``
  (zeros for "no label") and ``Linear(augment_labels)`` (no bias), then two linear + SiLU
  layers to ``emb_channels``.

Initialisation as EDM's: Xavier-uniform weights, zero biases, the residual branches' last
convolutions and the attention output projections scaled by 1e-5, the qkv projections by
sqrt(0.2). GroupNorm uses min(32, C / 4) groups, eps 1e-6. The CIFAR-10 setting (128 channels
x (2, 2, 2), 4 blocks, attention at 16, augment_dim 9) has 55.73M parameters, EDM's count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from genbench.generators.base import GeneratorConfig


def _xavier(layer: nn.Conv2d | nn.Linear, gain: float = 1.0) -> nn.Module:
    """EDM's init: Xavier-uniform weight times ``gain``, zero bias."""
    with torch.no_grad():
        nn.init.xavier_uniform_(layer.weight)
        layer.weight.mul_(gain)
        if layer.bias is not None:
            layer.bias.zero_()
    return layer


def _conv(cin: int, cout: int, kernel: int, gain: float = 1.0) -> nn.Conv2d:
    return _xavier(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), gain)  # type: ignore[return-value]


def _linear(cin: int, cout: int, bias: bool = True) -> nn.Linear:
    return _xavier(nn.Linear(cin, cout, bias=bias))  # type: ignore[return-value]


def _norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """EDM's GroupNorm: at most ``max_groups`` groups and at least 4 channels per group."""
    return nn.GroupNorm(max(1, min(max_groups, channels // 4)), channels, eps=1e-6)


ZERO_GAIN = 1e-5  # EDM's init_zero: residual branches and attention start (almost) silent
ATTN_GAIN = math.sqrt(0.2)  # EDM's init_attn for the qkv projection
SKIP_SCALE = math.sqrt(0.5)


class Block(nn.Module):
    """A residual block (GroupNorm, SiLU, 3x3 conv, + embedding, GroupNorm, SiLU, dropout,
    3x3 conv), optionally resampling by 2 and followed by single-head self-attention; the sum
    with the skip and the attention's residual are each scaled by 1/sqrt(2)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        emb_channels: int,
        *,
        resample: str = "",
        attention: bool = False,
        dropout: float = 0.0,
        max_groups: int = 32,
    ) -> None:
        super().__init__()
        if resample not in ("", "up", "down"):
            raise ValueError(f"resample must be '', 'up' or 'down', not {resample!r}")
        self.cin, self.cout, self.resample = cin, cout, resample
        self.norm0 = _norm(cin, max_groups)
        self.conv0 = _conv(cin, cout, 3)
        self.affine = _linear(emb_channels, cout)
        self.norm1 = _norm(cout, max_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _conv(cout, cout, 3, ZERO_GAIN)
        # DDPM++ projects the skip whenever the shape changes (resample_proj): 1x1 after the
        # resampling.
        self.skip = _conv(cin, cout, 1) if cin != cout or resample else None
        self.attention = attention
        if attention:
            self.norm2 = _norm(cout, max_groups)
            self.qkv = _conv(cout, 3 * cout, 1, ATTN_GAIN)
            self.proj = _conv(cout, cout, 1, ZERO_GAIN)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        # EDM's [1, 1] resampling filter: 2x2 box down, nearest neighbour up.
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        h = h + self.affine(emb)[:, :, None, None].to(h.dtype)
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        skip = self._resample(x)
        x = (h + (self.skip(skip) if self.skip is not None else skip)) * SKIP_SCALE
        if self.attention:
            x = (x + self._attend(x)) * SKIP_SCALE
        return x

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hgt, wid = x.shape
        # One head; the qkv channels are read as (c, 3), EDM's layout, so its weights map 1:1.
        q, k, v = self.qkv(self.norm2(x)).reshape(n, c, 3, hgt * wid).unbind(2)
        # softmax(q^T k / sqrt(c)) v, (n, 1, hw, c); in float32, as EDM's AttentionOp
        q, k, v = (t.transpose(1, 2)[:, None].float() for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).to(x.dtype)
        return self.proj(out[:, 0].transpose(1, 2).reshape(n, c, hgt, wid))


class PositionalEmbedding(nn.Module):
    """[sin(c f_k), cos(c f_k)] for ``channels / 2`` frequencies f_k = 1e-4^(k / (K - 1))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 2 or channels < 4:
            raise ValueError(f"the noise embedding needs an even width >= 4, not {channels}")
        half = channels // 2
        freqs = (1e-4) ** (torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        arg = c_noise.float()[:, None] * self.freqs[None]
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class SongUNet(nn.Module):
    """EDM's DDPM++ network: F(x; c_noise, label, augment_labels) -> same shape as x."""

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        out_channels: int,
        channels: int = 128,
        channel_mult: Sequence[int] = (2, 2, 2),
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        emb_channels: int | None = None,
        num_classes: int = 0,
        augment_dim: int = 0,
        max_groups: int = 32,
    ) -> None:
        super().__init__()
        levels = len(channel_mult)
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{levels - 1}")
        sizes = [image_size >> lvl for lvl in range(levels)]
        unknown = set(attn_resolutions) - set(sizes)
        if unknown:
            raise ValueError(f"attn_resolutions {sorted(unknown)} are not among the levels {sizes}")
        emb = emb_channels or 4 * channels
        self.num_classes, self.augment_dim = num_classes, augment_dim
        self.map_noise = PositionalEmbedding(channels)
        self.map_label = _linear(num_classes, channels) if num_classes else None
        self.map_augment = _linear(augment_dim, channels, bias=False) if augment_dim else None
        self.map_layer0 = _linear(channels, emb)
        self.map_layer1 = _linear(emb, emb)

        kw = {"dropout": dropout, "max_groups": max_groups}
        self.conv_in = _conv(in_channels, channels, 3)
        self.enc = nn.ModuleList()
        skips = [channels]
        cout = channels
        for lvl, mult in enumerate(channel_mult):
            if lvl:
                self.enc.append(Block(cout, cout, emb, resample="down", **kw))
                skips.append(cout)
            for _ in range(num_blocks):
                cin, cout = cout, channels * mult
                attn = sizes[lvl] in attn_resolutions
                self.enc.append(Block(cin, cout, emb, attention=attn, **kw))
                skips.append(cout)
        self.mid = nn.ModuleList(
            [Block(cout, cout, emb, attention=True, **kw), Block(cout, cout, emb, **kw)]
        )
        # Each decoder level: (optional upsampling block, blocks that each take a skip).
        self.dec = nn.ModuleList()
        for lvl in reversed(range(levels)):
            level = nn.ModuleList()
            if lvl < levels - 1:
                level.append(Block(cout, cout, emb, resample="up", **kw))
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels * channel_mult[lvl]
                attn = idx == num_blocks and sizes[lvl] in attn_resolutions
                level.append(Block(cin, cout, emb, attention=attn, **kw))
            self.dec.append(level)
        self.norm_out = _norm(cout, max_groups)
        self.conv_out = _conv(cout, out_channels, 3, ZERO_GAIN)

    def embed(
        self,
        c_noise: torch.Tensor,
        labels: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The (N, emb_channels) embedding. ``labels`` are class indices, where
        ``num_classes`` (one past the last class) means "no label" (a zero one-hot)."""
        e = self.map_noise(c_noise)
        if self.map_label is not None:
            if labels is None:
                raise ValueError("this network is class-conditional: give labels")
            one_hot = F.one_hot(labels.long(), self.num_classes + 1)[:, : self.num_classes]
            e = e + self.map_label(one_hot.to(e.dtype) * math.sqrt(self.num_classes))
        if self.map_augment is not None and augment_labels is not None:
            e = e + self.map_augment(augment_labels.to(e.dtype))
        return F.silu(self.map_layer1(F.silu(self.map_layer0(e))))

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        labels: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c_noise = c_noise.expand(x.shape[0]) if c_noise.dim() == 0 else c_noise
        emb = self.embed(c_noise, labels, augment_labels).to(x.dtype)
        x = self.conv_in(x)
        skips = [x]
        for block in self.enc:
            x = block(x, emb)
            skips.append(x)
        for block in self.mid:
            x = block(x, emb)
        for level in self.dec:
            for block in level:
                if block.resample != "up":
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return self.conv_out(F.silu(self.norm_out(x)))


class SongUNetConfig(GeneratorConfig):
    """The DDPM++ network's fields, shared by the generators built on it (defaults: EDM's
    CIFAR-10 width; a generator's config redeclares a field to change its default)."""

    channels: int = Field(128, ge=1)
    channel_mult: tuple[int, ...] = Field((2, 2, 2), min_length=1)
    num_res_blocks: int = Field(4, ge=1)
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = Field(0.1, ge=0, lt=1)
    norm_groups: int = Field(
        32, ge=1, description="at most this many GroupNorm groups (and >= 4 channels per group)"
    )
    time_embed_dim: int | None = Field(
        None, ge=1, description="width of the noise embedding; None = 4 x channels"
    )

    def songunet(
        self, image_size: int, in_channels: int, out_channels: int, **inputs: int
    ) -> SongUNet:
        """The network these fields describe; ``inputs``: ``num_classes``, ``augment_dim``."""
        return SongUNet(
            image_size=image_size,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=self.channels,
            channel_mult=self.channel_mult,
            num_blocks=self.num_res_blocks,
            attn_resolutions=self.attn_resolutions,
            dropout=self.dropout,
            emb_channels=self.time_embed_dim,
            max_groups=self.norm_groups,
            **inputs,
        )
