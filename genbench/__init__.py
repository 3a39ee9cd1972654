"""genbench: benchmark image generative models side by side.

The Python API, as torch-fidelity's and clean-fid's, is a few calls::

    import genbench

    result = genbench.evaluate("samples/", "cifar10:train", metrics=("fid", "is"))
    plan = genbench.load_spec("smoke", models=["gan"], train_steps=200)
    run = genbench.run(plan)                       # or genbench.load_run("runs/<run-id>")
    gen = genbench.build("ddpm", config={...}, data="digits")
    trainer = genbench.trainer(gen, batch_size=64, steps=100)  # .train_step(batch)

``evaluate`` returns an ``EvalResult``, ``run`` / ``load_run`` a ``RunResult`` (typed
records of ``genbench.store``). The ``bench`` command line is a shell over these.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Where each public name lives. They load on first use: `import genbench` (and every
# `import genbench.<layer>`, which runs this file first) must not pull in torch, the
# generators or diffusers; `bench report` imports only what reading results needs.
_EXPORTS = {
    "evaluate": "genbench.eval.evaluate",
    "load_spec": "genbench.api",
    "run": "genbench.api",
    "resume": "genbench.api",
    "build": "genbench.api",
    "trainer": "genbench.api",
    "load_run": "genbench.store.runs",
    "RunResult": "genbench.store.runs",
    "ModelResult": "genbench.store.runs",
    "EvalResult": "genbench.store.records",
    "GenbenchError": "genbench.core.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'genbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
