"""Plugin generators. Importing this package registers every built-in generator."""

from generators import dcgan  # noqa: F401  (registers "dcgan" / "gan")
from generators.base import GENERATORS, Batch, DataShape, Generator, GeneratorConfig

__all__ = ["GENERATORS", "Batch", "DataShape", "Generator", "GeneratorConfig"]
