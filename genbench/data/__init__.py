"""Image data sets behind one registry (``genbench.data.datasets.DATASETS``)."""

from genbench.data import images  # noqa: F401  (registers "images", the user's own files)
