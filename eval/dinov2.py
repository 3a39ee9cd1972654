"""DINOv2 features for FD-DINOv2 (Stein et al. 2023; the headline metric of EDM2, Karras et
al. 2024): the Fréchet distance of DINOv2 ViT-L/14 CLS features instead of Inception's.

The network is timm's ``vit_large_patch14_dinov2`` architecture (``vit_small``/``base``/
``giant`` when the weights file holds one of those: the width gives the size, the head size
is 64 in every DINOv2 ViT) with the weights of Meta's release, ``dinov2_vitl14_pretrain.pth``:
from an explicit path (``--weights``), ``$BENCH_DINOV2_WEIGHTS``, the torch hub cache
(``<hub dir>/checkpoints/``, where ``torch.hub.load("facebookresearch/dinov2", ...)`` keeps
it) or a download into that cache, which fails within seconds offline.

The protocol is EDM2's (``calculate_metrics.py``, its default ``torch`` resize): uint8 images
resized to 224 x 224 by bicubic interpolation with antialiasing, scaled to [0, 1], normalised
with ImageNet's mean and standard deviation; the feature is the CLS token after the final
layer norm (1024-d for ViT-L). The released position embedding covers a 37 x 37 grid (518
px); as in DINOv2's own ``interpolate_pos_encoding``, it is resampled to the 16 x 16 grid of
224 px with bicubic interpolation at scale (16 + 0.1) / 37, no antialiasing. This is done once
when the weights load.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench.core.download import (
    check_host_resolves,
    local_or_download,
    one_line,
    socket_timeout,
)
from genbench.core.errors import GenbenchError

FILE_NAME = "dinov2_vitl14_pretrain.pth"
URL = f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/{FILE_NAME}"
WEIGHTS_ENV = "BENCH_DINOV2_WEIGHTS"
DOWNLOAD_TIMEOUT_S = 15.0
INPUT_SIZE = 224
PATCH = 14
HEAD_DIM = 64
INTERPOLATE_OFFSET = 0.1
"""DINOv2's ``interpolate_offset``: the position grid is scaled by (new + 0.1) / old."""
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZES = {384: "small", 768: "base", 1024: "large", 1536: "giant"}
"""DINOv2 ViT width -> timm's ``vit_<size>_patch14_dinov2``."""


@dataclass(frozen=True)
class DinoWeights:
    """Finds the DINOv2 weights file (see the module docstring). Meta publishes no hash for
    it, so nothing is pinned: the file's sha256 goes into the protocol of every result."""

    url: str = URL
    file_name: str = FILE_NAME
    timeout_s: float = DOWNLOAD_TIMEOUT_S

    @property
    def hint(self) -> str:
        return f"pass --weights PATH or set {WEIGHTS_ENV} to a copy of {self.file_name}"

    def hub_path(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / self.file_name

    def resolve(self, weights: Path | None) -> Path:
        """``weights``, else ``$BENCH_DINOV2_WEIGHTS``, else the torch hub cache, else a
        download into it; ``GenbenchError`` (one line) when none is there."""
        return local_or_download(
            weights, WEIGHTS_ENV, self.hub_path(), self._download, "DINOv2 weights", self.hint
        )

    def _download(self, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        print(f'Downloading "{self.url}" to {dst}', file=sys.stderr)
        with socket_timeout(self.timeout_s):
            check_host_resolves(self.url, self.timeout_s)
            torch.hub.download_url_to_file(self.url, str(dst))

    def check(self, path: Path, sha256: str) -> None:
        """Nothing to check against (no published hash); the sha256 is recorded."""


def resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + M^2, D) position embedding -> (1, 1 + grid^2, D), as DINOv2's
    ``interpolate_pos_encoding``: the CLS entry kept, the M x M grid resampled bicubically
    at scale (grid + 0.1) / M, without antialiasing, in float32."""
    count = pos_embed.shape[1] - 1
    side = round(count**0.5)
    if side * side != count:
        raise ValueError(f"pos_embed holds {count} patch positions, not a square grid")
    if side == grid:
        return pos_embed
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:].float()
    scale = (grid + INTERPOLATE_OFFSET) / side
    patches = F.interpolate(
        patches.reshape(1, side, side, -1).permute(0, 3, 1, 2),
        scale_factor=(scale, scale),
        mode="bicubic",
        antialias=False,
    )
    if patches.shape[-2:] != (grid, grid):
        raise ValueError(f"resampling {side}x{side} positions gave {tuple(patches.shape[-2:])}")
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos_embed.dtype)
    return torch.cat([cls, patches], dim=1)


def build_vit(width: int, depth: int) -> nn.Module:
    """timm's DINOv2 ViT/14 of this width and depth at 224 px, on the meta device (the
    weights are assigned when loaded), returning the CLS feature."""
    import timm

    if width not in SIZES:
        raise ValueError(f"no DINOv2 ViT is {width} wide (DINOv2's are {sorted(SIZES)})")
    with torch.device("meta"):
        return timm.create_model(
            f"vit_{SIZES[width]}_patch14_dinov2",
            pretrained=False,
            num_classes=0,
            img_size=INPUT_SIZE,
            depth=depth,
            num_heads=width // HEAD_DIM,
        )


def load_dinov2(path: Path) -> tuple[nn.Module, str]:
    """(network, its name such as ``dinov2_vitl14``) from a DINOv2 release file (Meta's key
    layout, read as tensors only) or a timm state dict of the same network."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GenbenchError(
            f"DINOv2 weights {path}: not a torch state dict ({one_line(exc)})"
        ) from None
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or "cls_token" not in state or "pos_embed" not in state:
        raise GenbenchError(
            f"DINOv2 weights {path}: no cls_token / pos_embed in it (not a DINOv2 ViT state "
            "dict such as dinov2_vitl14_pretrain.pth)"
        )
    if any(k.startswith("register_tokens") for k in state):
        raise GenbenchError(f"DINOv2 weights {path}: a ViT with registers, not FD-DINOv2's")
    width = state["cls_token"].shape[-1]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    try:
        net = build_vit(width, depth)
        state = dict(state)
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], INPUT_SIZE // PATCH)
        state = checkpoint_filter_fn(state, net)
        net.load_state_dict(state, strict=True, assign=True)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise GenbenchError(
            f"DINOv2 weights {path}: do not fit a DINOv2 ViT/14 ({one_line(exc)})"
        ) from None
    return net.eval().requires_grad_(False), f"dinov2_vit{SIZES[width][0]}14"
