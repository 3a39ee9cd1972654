"""Feature extractors: networks that map generated images to (features, class logits).

Every extractor takes images of any size with 1 or 3 channels, either float in [-1, 1] or
uint8 in [0, 255] (as read from image files), converts channels and resizes to its own input,
and returns float32 features for FID / KID / precision-recall and logits for IS. How it does
so is part of the evaluation protocol (``FeatureExtractor.protocol``):

- ``quantize``: float images are first rounded to uint8 exactly as ``torchvision``'s
  ``save_image`` writes them, so streaming generated samples gives the same numbers as
  saving them as PNG files and evaluating the folder (pytorch-fid's path reads uint8 PNGs).
- ``resize``: the method that brings images to the network's input size.
- ``dims``: which layer's features (pytorch-fid's ``--dims``).
- ``tf32``: whether cuDNN may run the float32 convolutions in TF32 on Ampere or newer GPUs.

Extractors are registered by name in ``EXTRACTORS`` as ``ExtractorLoader`` objects. A
loader's ``WeightsSource`` finds the weights file and checks its sha256 against what is pinned
for it; the loader records the file's actual sha256 on the extractor, so every metric value
can name exactly which network measured it.

Registered:

- ``digits``: ``DigitsNet``, trained by ``genbench.eval.train_digits_classifier``, shipped in
  ``eval/weights/``, pinned by its full sha256 (``PinnedWeights``).
- ``inception``: pytorch-fid's FID Inception (``genbench.eval.inception``), pool3 2048-d
  features (or 64, 192, 768 with ``dims``) and 1008-way logits at 299 x 299, resized with
  pytorch-fid's ``bilinear`` or clean-fid's ``clean`` resize; weights from an explicit path,
  ``$BENCH_INCEPTION_WEIGHTS``, the torch hub cache or a download
  (``genbench.eval.inception.InceptionWeights``).
- ``dinov2``: DINOv2 ViT-L/14 CLS features for FD-DINOv2 (``genbench.eval.dinov2``), EDM2's
  preprocessing at 224 x 224; weights from a path, ``$BENCH_DINOV2_WEIGHTS``, the torch hub
  cache or a download. No logits (no Inception Score).
"""

from __future__ import annotations

import contextlib
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from genbench.core.errors import GenbenchError
from genbench.core.io import file_sha256
from genbench.core.registry import Registry
from genbench.eval.digits_net import DIGITS_WEIGHTS, DigitsNet
from genbench.eval.dinov2 import MEAN as DINO_MEAN
from genbench.eval.dinov2 import STD as DINO_STD
from genbench.eval.dinov2 import DinoWeights, load_dinov2
from genbench.eval.inception import (
    BLOCK_INDEX_BY_DIM,
    InceptionWeights,
    build_fid_inception,
    fold_batch_norm,
    load_fid_inception,
    random_state_dict,
)

DIGITS_WEIGHTS_SHA256 = "42eba43a13dfa23c1fcc064eb3de007c2c1ce4ce2878b5e670cd41348313e477"
"""sha256 of the shipped ``eval/weights/digits_cnn.safetensors``."""


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert (N, 1 or 3, H, W) images to ``channels`` (1 or 3): grey is the channel mean,
    grey to colour repeats the channel."""
    have = images.shape[1]
    if have == channels:
        return images
    if channels == 1:
        # Averaged in float64, so identical channels give back exactly their value.
        return images.to(torch.float64).mean(dim=1, keepdim=True).to(images.dtype)
    return images.expand(-1, channels, -1, -1)


def resize_bilinear(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (N, C, H, W) images to ``size`` x ``size``: bilinear, ``align_corners=False``,
    antialiased whenever an axis shrinks (plain bilinear sampling would alias there)."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    return F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=min(h, w) > size
    )


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] -> uint8, byte for byte what ``torchvision.utils.save_image(x,
    normalize=True, value_range=(-1, 1))`` writes to a PNG file: (x + 1) / 2 * 255 + 0.5,
    clamped and truncated."""
    return images.add(1).div_(2).mul_(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1] (``ToTensor``'s u / 255); float [-1, 1] -> [0, 1]."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255)
    return images.to(torch.float32).add(1).div_(2)


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (u / 127.5 - 1, the data sets' mapping); float
    images are only cast to float32."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(127.5).sub_(1)
    return images.to(torch.float32)


@contextlib.contextmanager
def float32_precision(device: torch.device, allow_tf32: bool) -> Iterator[None]:
    """Pin float32 precision on CUDA inside the block and restore the global flags after.

    ``allow_tf32`` True is torch's default and so pytorch-fid's behaviour: cuDNN convolutions
    may use TF32 on Ampere or newer GPUs, matrix products may not. False is strict float32
    for both. Pinned rather than inherited, so a generator that enabled TF32 matmuls for its
    own speed cannot change what the evaluator measures.
    """
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def tf32_in_effect(device: torch.device, allow_tf32: bool) -> bool:
    """Whether TF32 convolutions can actually run: allowed, on CUDA, on compute capability
    8.0 (Ampere) or newer."""
    if not allow_tf32 or device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


class FeatureExtractor(nn.Module, ABC):
    """Base class: images (float [-1, 1] or uint8), any size, 1 or 3 channels -> (features,
    logits).

    Subclasses set the class attributes and implement ``preprocess`` (images -> network
    input) and ``extract`` (network input -> features, logits); ``forward`` validates,
    quantizes and pins the float32 precision around them. The loader sets the per-instance
    protocol: ``weights_sha256`` from the verified file, ``feature_dim`` (the ``dims``),
    ``resize``, ``quantize`` and ``allow_tf32``.
    """

    id: str
    num_classes: int
    input_size: int
    in_channels: int
    feature_dim: int
    resize: str

    def __init__(
        self,
        weights_sha256: str,
        *,
        feature_dim: int | None = None,
        resize: str | None = None,
        quantize: bool = True,
        allow_tf32: bool = True,
    ) -> None:
        super().__init__()
        self.weights_sha256 = weights_sha256
        if feature_dim is not None:
            self.feature_dim = feature_dim
        if resize is not None:
            self.resize = resize
        self.quantize = quantize
        self.allow_tf32 = allow_tf32

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def tf32(self) -> bool:
        """Whether TF32 convolutions run (see ``tf32_in_effect``)."""
        return tf32_in_effect(self.device, self.allow_tf32)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Validated images on this extractor's device, quantized when asked, then
        ``preprocess``-ed into the network's input."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"{self.id}: expected images (N, 1 or 3, H, W), got shape {tuple(images.shape)}"
            )
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"{self.id}: expected float or uint8 images, got {images.dtype}")
        x = images.to(self.device)
        if self.quantize and x.dtype != torch.uint8:
            x = quantize(x)
        return self.preprocess(x)

    @abstractmethod
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Network input (N, in_channels, input_size, input_size) float32 of images on this
        device, uint8 or float in [-1, 1]."""

    @abstractmethod
    def extract(
        self, x: torch.Tensor, logits: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features (N, feature_dim), logits (N, num_classes) or None without ``logits``)."""

    @torch.no_grad()
    def forward(
        self, images: torch.Tensor, logits: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features (N, feature_dim) float32, logits (N, num_classes) float32, or None when
        ``logits`` is False, which lets an extractor skip work) of images."""
        x = self.prepare(images)
        with float32_precision(self.device, self.allow_tf32):
            features, out = self.extract(x, logits)
        return features.float(), out.float() if out is not None else None

    def protocol(self) -> dict[str, Any]:
        """The facts about this extractor that a metric value must be stored with."""
        return {
            "extractor": self.id,
            "weights_sha256": self.weights_sha256,
            "resize": self.resize,
            "input_size": self.input_size,
            "dtype": "float32",
            "feature_dim": self.feature_dim,
            "dims": self.feature_dim,
            "quantize": self.quantize,
            "tf32": self.tf32,
        }


class DigitsExtractor(FeatureExtractor):
    """``DigitsNet``: 64-d penultimate features and 10 digit-class logits at 1x16x16."""

    id = "digits_cnn"
    feature_dim = DigitsNet.feature_dim
    num_classes = DigitsNet.num_classes
    input_size = DigitsNet.input_size
    in_channels = DigitsNet.in_channels
    # Antialiased when shrinking (see resize_bilinear), unlike pytorch-fid's plain bilinear:
    # a different name, so the protocol never equates the two.
    resize = "bilinear_antialias"

    def __init__(self, net: DigitsNet, weights_sha256: str, **options: Any) -> None:
        super().__init__(weights_sha256, **options)
        self.net = net

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = to_channels(to_signed(images), self.in_channels)
        return resize_bilinear(x, self.input_size)

    def extract(
        self, x: torch.Tensor, logits: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = self.net.features(x)
        return features, self.net.head(features) if logits else None


@functools.cache
def _clean_resizer() -> Callable[[np.ndarray], np.ndarray]:
    from cleanfid.resize import build_resizer

    return build_resizer("clean")


def resize_clean(images: torch.Tensor, size: int = 299) -> torch.Tensor:
    """clean-fid's ``clean`` resize of (N, 3, H, W) images (uint8, or float in [-1, 1]) to
    float32 [0, 1] at 299 x 299: PIL's bicubic filter on each channel as float32 (no
    quantization after), on the CPU, one image at a time, by clean-fid's own function."""
    if size != 299:
        raise ValueError(f"clean-fid's clean resize is fixed to 299, not {size}")
    # clean-fid takes HWC arrays in [0, 255]: uint8 from files, float from generators.
    x = images if images.dtype == torch.uint8 else images.float().add(1).mul(127.5)
    arrays = x.permute(0, 2, 3, 1).cpu().numpy()
    resized = np.stack([_clean_resizer()(a) for a in arrays])
    return torch.from_numpy(resized).permute(0, 3, 1, 2).to(images.device).div_(255)


CPU_CHUNK = 16
"""Images per Inception forward pass on CPU (bench eval-speed; batches are split)."""


class InceptionExtractor(FeatureExtractor):
    """pytorch-fid's FID Inception: pool3 2048-d features (or the ``dims`` pytorch-fid offers)
    and 1008-way logits at 3x299x299.

    With ``resize="bilinear"`` it matches pytorch-fid's ``InceptionV3([block],
    resize_input=True, normalize_input=True)`` fed the same images as its folder path does:
    uint8 -> u / 255 (``ToTensor``), grey repeated to RGB (``convert("RGB")``), plain bilinear
    resize to 299, then 2x - 1. ``resize="clean"`` swaps in clean-fid's resize (PIL bicubic on
    float32 pixels) before the same 2x - 1.
    """

    id = "pytorch_fid_inception_v3"
    feature_dim = 2048
    num_classes = 1008
    input_size = 299
    in_channels = 3
    resize = "bilinear"
    is_logits = "unbiased"
    """The Inception Score's logits: pool3 x W without the fc bias (the standard definition:
    Salimans et al.'s code, OpenAI's evaluator, torch-fidelity's default)."""

    def __init__(self, net: nn.Module, weights_sha256: str, **options: Any) -> None:
        super().__init__(weights_sha256, **options)
        self.net = net

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = to_channels(images, self.in_channels)
        if self.resize == "clean":
            x = resize_clean(x, self.input_size)
        else:
            x = to_unit(x)
            if x.device.type == "cpu":
                # Resized straight into the layout ``extract`` runs in on CPU (same values).
                x = x.contiguous(memory_format=torch.channels_last)
            # pytorch-fid's exact steps (ToTensor, then InceptionV3.forward): no
            # antialiasing, even when shrinking, and always applied (the identity at 299).
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        # In place: x is a fresh tensor either way, and a 299x299 batch is worth not copying.
        return x.mul_(2).sub_(1)

    def extract(
        self, x: torch.Tensor, logits: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.device.type == "cpu":
            # oneDNN's channels-last convolutions run this network about 1.6x faster on CPU
            # (bench eval-speed); still float32, the results differ only in rounding
            # (tests/test_inception.py::test_matches_pytorch_fid). CUDA keeps pytorch-fid's layout.
            x = x.contiguous(memory_format=torch.channels_last)
            if len(x) > CPU_CHUNK:
                # Smaller forward passes keep a block's activations in the CPU's caches:
                # about 10% faster per image than 50 at once. Images are independent in eval
                # mode, so only rounding can differ.
                parts = [self.net(chunk, logits) for chunk in x.split(CPU_CHUNK)]
                features = torch.cat([f for f, _ in parts])
                out = torch.cat([o for _, o in parts]) if logits else None
                return features, out
        return self.net(x, logits)


class DINOv2Extractor(FeatureExtractor):
    """DINOv2 ViT/14 CLS features at 3x224x224 for FD-DINOv2 (``genbench.eval.dinov2``):
    EDM2's preprocessing (bicubic antialiased resize of the uint8 pixels, [0, 1], ImageNet
    normalisation). No class logits: the Inception Score needs the inception extractor."""

    id = "dinov2_vitl14"
    feature_dim = 1024
    num_classes = 0
    input_size = 224
    in_channels = 3
    resize = "bicubic_antialias"

    def __init__(self, net: nn.Module, name: str, weights_sha256: str, **options: Any) -> None:
        super().__init__(weights_sha256, **options)
        self.net = net
        self.id = name
        self.feature_dim = net.num_features
        mean = torch.tensor(DINO_MEAN).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", torch.tensor(DINO_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = to_channels(images, self.in_channels)
        # EDM2 resizes pixel values in [0, 255] (uint8 images, or floats mapped there).
        x = x.to(torch.float32) if x.dtype == torch.uint8 else x.float().add(1).mul_(127.5)
        size = (self.input_size, self.input_size)
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        return x.div_(255).sub_(self.mean).div_(self.std)

    def extract(
        self, x: torch.Tensor, logits: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if logits:
            raise GenbenchError(
                f"{self.id} has no class logits: the Inception Score (is) needs the inception "
                "extractor"
            )
        return self.net(x), None


class WeightsSource(Protocol):
    """Where a loader's weights file comes from and what its sha256 must be."""

    def resolve(self, weights: Path | None) -> Path:
        """The file to load: ``weights`` if given, else the default; ``GenbenchError`` (one
        line) if there is none."""
        ...

    def check(self, path: Path, sha256: str) -> None:
        """Raise ``GenbenchError`` (one line) if ``sha256``, the file's, is not the pinned one."""
        ...


@dataclass(frozen=True)
class PinnedWeights:
    """A weights file pinned by its full sha256, found at ``default()`` unless given."""

    sha256: str
    default: Callable[[], Path]
    hint: str = ""
    """Appended to the error message when the weights are missing or wrong."""

    def resolve(self, weights: Path | None) -> Path:
        """``weights`` or ``default()``; ``GenbenchError`` if that is not a file."""
        path = Path(weights) if weights is not None else self.default()
        if not path.is_file():
            raise GenbenchError(f"feature extractor weights not found: {path}{self.hint}")
        return path

    def check(self, path: Path, sha256: str) -> None:
        """``GenbenchError`` unless ``sha256`` is the pinned one."""
        if sha256 != self.sha256:
            raise GenbenchError(
                f"feature extractor weights {path} have sha256 {sha256}, expected "
                f"{self.sha256}{self.hint}"
            )


@dataclass(frozen=True)
class ExtractorOptions:
    """Per-use settings of an extractor, all recorded in the protocol. None means the
    extractor's default (its first choice of ``dims`` / ``resizes``)."""

    dims: int | None = None
    resize: str | None = None
    quantize: bool = True
    allow_tf32: bool = True


@dataclass(frozen=True)
class ExtractorLoader:
    """How to load one registered extractor: where its weights come from, which options it
    offers and how to build it.

    Calling it, ``loader(device, weights, options)``, checks the options, resolves the
    weights file (``weights`` or the source's default), checks its sha256 and builds the
    extractor in eval mode with gradients off, recording the file's sha256 on it.
    """

    description: str
    weights: WeightsSource
    build: Callable[[Path, str, torch.device, ExtractorOptions], FeatureExtractor]
    """``build(weights_path, verified_sha256, device, options)``; options are resolved."""
    dims: tuple[int, ...]
    """Feature sizes offered; the first is the default."""
    resizes: tuple[str, ...]
    """Resize methods offered; the first is the default."""
    logits: bool = True
    """Whether the network gives class logits (the Inception Score needs them)."""

    def resolve_options(self, options: ExtractorOptions | None = None) -> ExtractorOptions:
        """``options`` with defaults filled in; ``GenbenchError`` naming the valid choices
        for a ``dims`` or ``resize`` this extractor does not offer."""
        options = options or ExtractorOptions()
        dims = self.dims[0] if options.dims is None else options.dims
        resize = self.resizes[0] if options.resize is None else options.resize
        if dims not in self.dims:
            valid = ", ".join(map(str, self.dims))
            raise GenbenchError(f"dims {dims} is not offered by this extractor; valid: {valid}")
        if resize not in self.resizes:
            valid = ", ".join(self.resizes)
            raise GenbenchError(
                f"resize {resize!r} is not offered by this extractor; valid: {valid}"
            )
        return ExtractorOptions(dims, resize, options.quantize, options.allow_tf32)

    def __call__(
        self,
        device: str | torch.device = "cpu",
        weights: Path | None = None,
        options: ExtractorOptions | None = None,
    ) -> FeatureExtractor:
        resolved = self.resolve_options(options)
        path = self.weights.resolve(weights)
        actual = file_sha256(path)
        self.weights.check(path, actual)
        extractor = self.build(path, actual, torch.device(device), resolved)
        return extractor.eval().requires_grad_(False)


def _extractor_options(options: ExtractorOptions) -> dict[str, Any]:
    return {
        "feature_dim": options.dims,
        "resize": options.resize,
        "quantize": options.quantize,
        "allow_tf32": options.allow_tf32,
    }


EXTRACTORS: Registry[ExtractorLoader] = Registry(
    "feature extractor", base=ExtractorLoader, group="genbench.extractors"
)


def _build_digits(
    path: Path, sha256: str, device: torch.device, options: ExtractorOptions
) -> FeatureExtractor:
    net = DigitsNet()
    net.load_state_dict(load_file(path))
    return DigitsExtractor(net, sha256, **_extractor_options(options)).to(device)


EXTRACTORS.add(
    "digits",
    ExtractorLoader(
        description="small CNN trained on the embedded digits data set (64-d features)",
        weights=PinnedWeights(
            sha256=DIGITS_WEIGHTS_SHA256,
            default=lambda: DIGITS_WEIGHTS,
            # Retraining reproduces the bytes only on the same platform, so point at the file.
            hint=" (restore the shipped eval/weights/digits_cnn.safetensors from the repository)",
        ),
        build=_build_digits,
        dims=(DigitsNet.feature_dim,),
        resizes=(DigitsExtractor.resize,),
    ),
)


def _placed(ext: InceptionExtractor, device: torch.device) -> InceptionExtractor:
    """``ext`` on ``device``. On CPU its batch norms are folded into the convolutions and its
    weights stored channels-last, the layout ``extract`` runs in there (no per-call weight
    reorder); CUDA keeps pytorch-fid's network as it is."""
    if torch.device(device).type == "cpu":
        fold_batch_norm(ext.net)
        ext.net.to(memory_format=torch.channels_last)
    return ext.to(device)


def _build_inception(
    path: Path, sha256: str, device: torch.device, options: ExtractorOptions
) -> FeatureExtractor:
    net = load_fid_inception(path, options.dims or 2048)
    return _placed(InceptionExtractor(net, sha256, **_extractor_options(options)), device)


EXTRACTORS.add(
    "inception",
    ExtractorLoader(
        description="pytorch-fid's FID Inception v3 (pool3 2048-d features, 1008-way logits)",
        weights=InceptionWeights(),
        build=_build_inception,
        # pytorch-fid's --dims, its default (pool3) first.
        dims=tuple(sorted(BLOCK_INDEX_BY_DIM, reverse=True)),
        resizes=("bilinear", "clean"),
    ),
)


def _build_dinov2(
    path: Path, sha256: str, device: torch.device, options: ExtractorOptions
) -> FeatureExtractor:
    net, name = load_dinov2(path)
    if options.dims not in (None, net.num_features):
        raise GenbenchError(
            f"dims {options.dims}: {path} holds a {net.num_features}-d DINOv2 ({name})"
        )
    opts = {**_extractor_options(options), "feature_dim": net.num_features}
    return DINOv2Extractor(net, name, sha256, **opts).to(device)


EXTRACTORS.add(
    "dinov2",
    ExtractorLoader(
        description="DINOv2 ViT-L/14 CLS features (1024-d) for FD-DINOv2, EDM2's protocol",
        weights=DinoWeights(),
        build=_build_dinov2,
        dims=(1024, 384, 768, 1536),  # ViT-L (FD-DINOv2's); S, B, g when the file holds one
        resizes=(DINOv2Extractor.resize,),
        logits=False,
    ),
)


def get_loader(name: str) -> ExtractorLoader:
    """The registered loader ``name``; ``UnknownNameError`` listing the choices if unknown."""
    return EXTRACTORS.get(name)


def random_inception(device: torch.device, options: ExtractorOptions) -> FeatureExtractor:
    """pytorch-fid's FID Inception with random weights (``weights_sha256`` "random"): the
    same network and work per image, for timing where the real weights are not at hand."""
    resolved = EXTRACTORS.get("inception").resolve_options(options)
    net = build_fid_inception(random_state_dict(), resolved.dims or 2048, "random")
    ext = InceptionExtractor(net, "random", **_extractor_options(resolved))
    return _placed(ext, torch.device(device)).eval().requires_grad_(False)


def load_extractor(
    name: str,
    device: str | torch.device = "cpu",
    weights: Path | None = None,
    options: ExtractorOptions | None = None,
) -> FeatureExtractor:
    """Load the registered extractor ``name`` on ``device``, from ``weights`` or its default
    file, after checking the file's sha256, with ``options`` (defaults: the extractor's
    default dims and resize, quantized input, TF32 convolutions allowed). Raises
    ``GenbenchError`` (one line) for an unknown name or option, a missing weights file, a
    hash mismatch or weights that do not fit the network."""
    return get_loader(name)(device, weights, options)
