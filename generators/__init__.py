"""Plugin generators. Importing this package registers every built-in generator."""

from genbench.generators import (
    cascade,  # noqa: F401  (registers "cascade")
    cold,  # noqa: F401  (registers "cold")
    dcgan,  # noqa: F401  (registers "dcgan" / "gan")
    ddgan,  # noqa: F401  (registers "ddgan")
    ddpm,  # noqa: F401  (registers "ddpm")
    edm,  # noqa: F401  (registers "edm")
    vdpm,  # noqa: F401  (registers "vdpm")
)
from genbench.generators.base import (
    GENERATORS,
    Batch,
    DataShape,
    Generator,
    GeneratorConfig,
    SampleSettings,
)

__all__ = ["GENERATORS", "Batch", "DataShape", "Generator", "GeneratorConfig", "SampleSettings"]
