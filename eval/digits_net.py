"""The embedded evaluator network: a small CNN classifier for the 1x16x16 ``digits`` data set.

It plays the role Inception-v3 plays for CIFAR-10: its penultimate layer gives the features
for FID and its softmax the class posterior for IS. The architecture is fixed (the shipped
weights in ``eval/weights/`` must match it); ``genbench.eval.train_digits_classifier`` trains it.
The net sees exactly 1x16x16 inputs in [-1, 1]; other sizes and channel counts are the
feature extractor's job (``genbench.eval.extractors``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

DIGITS_WEIGHTS = Path(__file__).resolve().parent / "weights" / "digits_cnn.safetensors"
"""Where the shipped weights live and where the training script writes them by default."""


class DigitsNet(nn.Module):
    """Three 3x3 conv layers (16, 32, 48 channels, two 2x max-pools), a 64-d hidden layer, a
    10-way linear head. About 68k parameters, 270 KB as float32."""

    # SiLU rather than ReLU: with ReLU about half of the 64 feature units came out dead
    # (constant zero), which leaves the FID covariance singular and its square root inexact.

    in_channels = 1
    input_size = 16
    feature_dim = 64
    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(32, 48, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Flatten(),
            nn.Linear(48 * 4 * 4, self.feature_dim),
            nn.SiLU(),
        )
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, 64) of images (N, 1, 16, 16), after the last SiLU."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, 10) of images (N, 1, 16, 16)."""
        return self.head(self.features(x))
