"""Tensors out of a foreign Python pickle without running any of its code.

Official checkpoints of some projects (EDM's ``network-snapshot-*.pkl``) are plain pickles
of whole networks whose classes travel as source code inside the file (NVIDIA's
``torch_utils.persistence``): unpickling them normally executes that code. ``load_tensors``
reads such a file with an unpickler that imports nothing: torch's own tensor and storage
rebuilders (storages read with ``torch.load(weights_only=True)``) and ``OrderedDict`` are the
only globals it resolves; every other class or function becomes an inert ``Foreign`` record
of its name and arguments, and persistent objects keep their state but never their source.
The object graph is then flattened into ``{"ema.model.enc.32x32_conv.weight": tensor}``
names, as ``nn.Module.state_dict`` would name them.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path
from typing import Any

import torch


class Foreign:
    """A stand-in for an object of a class genbench does not import: the class's name
    (``name``), the arguments it was rebuilt with and its state."""

    name = "foreign"
    args: tuple[Any, ...] = ()  # defaults too for objects made by NEWOBJ (no __init__ call)
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.state = args, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses (EasyDict)
        if not isinstance(self.state, dict):
            self.state = {}
        self.state[key] = value

    def append(self, value: Any) -> None:  # list subclasses
        if not isinstance(self.state, list):
            self.state = []
        self.state.append(value)

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)

    def __repr__(self) -> str:
        return f"Foreign({self.name})"


_CLASSES: dict[str, type[Foreign]] = {}


def foreign_class(name: str) -> type[Foreign]:
    """An inert class standing for the global ``name`` (``module.qualname``)."""
    if name not in _CLASSES:
        _CLASSES[name] = type("Foreign", (Foreign,), {"name": name})
    return _CLASSES[name]


def _storage_from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True)


def _persistent(meta: dict[str, Any]) -> Foreign:
    """``torch_utils.persistence._reconstruct_persistent_obj``: the state, not the source."""
    name = str(meta.get("class_name", "persistent")) if isinstance(meta, dict) else "persistent"
    obj = foreign_class(name)()
    obj.state = meta.get("state") if isinstance(meta, dict) else None
    return obj


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        known = _ALLOWED.get((module, name))
        return known if known is not None else foreign_class(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids (torch.save archives) are not read here")


def load_object(path: Path) -> Any:
    """The object graph of the pickle at ``path``, foreign objects inert (see module doc)."""
    with Path(path).open("rb") as fh:
        return _Unpickler(fh).load()


def flatten_tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor reachable from ``obj`` by dict keys and module-like states
    (``_parameters``, ``_buffers``, ``_modules``), named as ``state_dict`` names them."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj.detach()
    elif isinstance(obj, Foreign):
        state = obj.state
        if isinstance(state, dict) and "_modules" in state:
            for part in ("_parameters", "_buffers"):
                for key, value in (state.get(part) or {}).items():
                    if isinstance(value, torch.Tensor):
                        out[f"{prefix}{key}"] = value.detach()
            for key, value in (state.get("_modules") or {}).items():
                out.update(flatten_tensors(value, f"{prefix}{key}."))
        elif isinstance(state, dict):
            out.update(flatten_tensors(state, prefix))
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str):
                out.update(flatten_tensors(value, f"{prefix}{key}."))
    return out


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """``flatten_tensors(load_object(path))``: a foreign pickle's tensors by name."""
    return flatten_tensors(load_object(path))
