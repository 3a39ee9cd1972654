"""Feature extractors: networks that map generated images to (features, class logits).

Every extractor takes images of any size with 1 or 3 channels in [-1, 1], converts channels
and resizes to its own input (the resize method is part of the evaluation protocol), and
returns float32 features for FID and logits for IS. Extractors are registered by name in
``EXTRACTORS`` as ``ExtractorLoader`` objects. A loader's ``WeightsSource`` finds the weights
file and checks its sha256 against what is pinned for it; the loader records the file's actual
sha256 on the extractor, so every metric value can name exactly which network measured it.

Registered:

- ``digits``: ``DigitsNet``, trained by ``eval.train_digits_classifier``, shipped in
  ``eval/weights/``, pinned by its full sha256 (``PinnedWeights``).
- ``inception``: pytorch-fid's FID Inception (``eval.inception``), pool3 2048-d features and
  1008-way logits at 299 x 299, weights from an explicit path, ``$BENCH_INCEPTION_WEIGHTS``,
  the torch hub cache or a download (``eval.inception.InceptionWeights``).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from benchmarks.errors import GenbenchError
from benchmarks.registry import Registry
from eval.digits_net import DIGITS_WEIGHTS, DigitsNet
from eval.inception import InceptionWeights, load_fid_inception

DIGITS_WEIGHTS_SHA256 = "42eba43a13dfa23c1fcc064eb3de007c2c1ce4ce2878b5e670cd41348313e477"
"""sha256 of the shipped ``eval/weights/digits_cnn.safetensors``."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert (N, 1 or 3, H, W) images to ``channels`` (1 or 3): grey is the channel mean,
    grey to colour repeats the channel."""
    have = images.shape[1]
    if have == channels:
        return images
    if channels == 1:
        return images.mean(dim=1, keepdim=True)
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


class FeatureExtractor(nn.Module, ABC):
    """Base class: images in [-1, 1], any size, 1 or 3 channels -> (features, logits).

    Subclasses set the class attributes and implement ``extract`` on images already converted
    to ``in_channels`` x ``input_size`` x ``input_size``; ``forward`` does that conversion.
    ``weights_sha256`` is set per instance by the loader from the verified file.
    """

    id: str
    feature_dim: int
    num_classes: int
    input_size: int
    in_channels: int
    resize: str = "bilinear"

    def __init__(self, weights_sha256: str) -> None:
        super().__init__()
        self.weights_sha256 = weights_sha256

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float32 images on this extractor's device, with its channels and size."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"{self.id}: expected images (N, 1 or 3, H, W), got shape {tuple(images.shape)}"
            )
        x = images.to(device=self.device, dtype=torch.float32)
        return self.resize_images(to_channels(x, self.in_channels))

    def resize_images(self, x: torch.Tensor) -> torch.Tensor:
        """Resize (N, C, H, W) to ``input_size``; the method named by ``resize``."""
        return resize_bilinear(x, self.input_size)

    @abstractmethod
    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, feature_dim), logits (N, num_classes)) of preprocessed images."""

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, feature_dim) float32, logits (N, num_classes)) of images in [-1, 1]."""
        features, logits = self.extract(self.preprocess(images))
        return features.float(), logits.float()


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

    def __init__(self, net: DigitsNet, weights_sha256: str) -> None:
        super().__init__(weights_sha256)
        self.net = net

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.features(x)
        return features, self.net.head(features)


class InceptionExtractor(FeatureExtractor):
    """pytorch-fid's FID Inception: pool3 2048-d features and 1008-way logits at 3x299x299.

    Matches pytorch-fid's ``InceptionV3([3], resize_input=True, normalize_input=True)`` fed
    the same images mapped to [0, 1]: grey is repeated to RGB (as pytorch-fid's RGB image
    loading does), the resize is pytorch-fid's plain bilinear, and no rescaling is needed
    because pytorch-fid's ``normalize_input`` (2x - 1) only brings [0, 1] to the [-1, 1] that
    our images already have.
    """

    id = "pytorch_fid_inception_v3"
    feature_dim = 2048
    num_classes = 1008
    input_size = 299
    in_channels = 3
    resize = "bilinear"

    def __init__(self, net: nn.Module, weights_sha256: str) -> None:
        super().__init__(weights_sha256)
        self.net = net

    def resize_images(self, x: torch.Tensor) -> torch.Tensor:
        # pytorch-fid's exact call (InceptionV3.forward): no antialiasing, even when shrinking,
        # and always applied (at 299 it is the identity). Resizing before rather than after
        # its 2x - 1 is the same, as bilinear weights sum to one.
        return F.interpolate(
            x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
        )

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x)


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
class ExtractorLoader:
    """How to load one registered extractor: where its weights come from and how to build it.

    Calling it, ``loader(device, weights)``, resolves the weights file (``weights`` or the
    source's default), checks its sha256 and builds the extractor in eval mode with gradients
    off, recording the file's sha256 on it.
    """

    description: str
    weights: WeightsSource
    build: Callable[[Path, str, torch.device], FeatureExtractor]
    """``build(weights_path, verified_sha256, device)``."""

    def __call__(
        self, device: str | torch.device = "cpu", weights: Path | None = None
    ) -> FeatureExtractor:
        path = self.weights.resolve(weights)
        actual = file_sha256(path)
        self.weights.check(path, actual)
        extractor = self.build(path, actual, torch.device(device))
        return extractor.eval().requires_grad_(False)


EXTRACTORS: Registry[ExtractorLoader] = Registry("feature extractor", base=ExtractorLoader)


def _build_digits(path: Path, sha256: str, device: torch.device) -> FeatureExtractor:
    net = DigitsNet()
    net.load_state_dict(load_file(path))
    return DigitsExtractor(net, sha256).to(device)


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
    ),
)


def _build_inception(path: Path, sha256: str, device: torch.device) -> FeatureExtractor:
    return InceptionExtractor(load_fid_inception(path), sha256).to(device)


EXTRACTORS.add(
    "inception",
    ExtractorLoader(
        description="pytorch-fid's FID Inception v3 (pool3 2048-d features, 1008-way logits)",
        weights=InceptionWeights(),
        build=_build_inception,
    ),
)


def load_extractor(
    name: str, device: str | torch.device = "cpu", weights: Path | None = None
) -> FeatureExtractor:
    """Load the registered extractor ``name`` on ``device``, from ``weights`` or its default
    file, after checking the file's sha256. Raises ``GenbenchError`` (one line) for an unknown
    name, a missing weights file, a hash mismatch or weights that do not fit the network."""
    if name not in EXTRACTORS:
        raise GenbenchError(
            f"unknown feature extractor {name!r}; valid choices: {', '.join(EXTRACTORS.choices())}"
        )
    return EXTRACTORS.get(name)(device, weights)
