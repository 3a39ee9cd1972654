"""Image data sets behind one registry (``genbench.data.datasets.DATASETS``)."""

# Registered here, not in datasets.py, which they build on (no import cycle).
from genbench.data import (
    celeba,  # noqa: F401  (celeba, 64x64)
    idx,  # noqa: F401  (mnist, fashion_mnist, emnist)
    imagenet64,  # noqa: F401  (downsampled ImageNet 64x64 .npz batches)
    images,  # noqa: F401  ("images", the user's own files)
)
