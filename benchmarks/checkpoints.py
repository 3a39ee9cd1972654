"""Checkpoints: a generator's network tensors as safetensors, with what made them in the
metadata (generator, config, training info), written atomically.

A checkpoint given to a run may also be a torch state dict that another code base wrote
(an improved-diffusion ``model*.pt``): it is read with ``torch.load(weights_only=True)``,
which runs no pickled code, and the generator maps it onto its networks
(``Generator.import_state``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from genbench.benchmarks.plan import ResolvedModel
from genbench.core import io, safe_pickle
from genbench.core.download import one_line
from genbench.core.errors import CheckpointError
from genbench.core.manifest import identify
from genbench.generators import Generator


def save_checkpoint(
    gen: Generator,
    path: Path,
    model: ResolvedModel,
    steps: int,
    train_info: dict[str, Any] | None = None,
) -> None:
    """Write ``gen``'s state atomically; ``train_info`` (steps, time, EMA) goes into the
    metadata so that ``bench resume`` can evaluate the checkpoint without training again."""
    state = {k: v.detach().contiguous().cpu() for k, v in gen.state_dict().items()}
    meta = {
        "generator": model.generator,
        "config": json.dumps(model.config.model_dump(mode="json")),
        "train_steps": str(steps),
    }
    if train_info is not None:
        meta["train_info"] = json.dumps(train_info)
    io.write_with_atomic(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def checkpoint_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors checkpoint; ``CheckpointError`` if it is not one."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from None


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` is a safetensors file (its 8-byte header length, then the JSON
    header), not, say, a torch.save zip or pickle."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return len(head) == 9 and head[8:9] == b"{"


def _pickle_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a plain Python pickle of whole networks (EDM's ``.pkl``), read by
    ``genbench.core.safe_pickle``: no class of the file is imported, no code of it runs."""
    try:
        state = safe_pickle.load_tensors(path)
    except Exception as exc:  # a foreign, possibly broken file: one line
        raise CheckpointError(f"{path}: not a readable pickle ({one_line(exc)})") from None
    if not state:
        raise CheckpointError(f"{path}: a pickle without any network tensors")
    return state


def _torch_state(path: Path) -> dict[str, torch.Tensor]:
    """A flat dict of tensors written by ``torch.save``, read without running pickled code
    (memory-mapped when the file allows: a published model may be gigabytes); a ``.pkl``
    is a plain pickle (``_pickle_state``)."""
    if path.suffix.lower() == ".pkl":
        return _pickle_state(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # the old format
    except Exception as exc:  # torch.load raises many types; the user needs one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"{path}: neither a safetensors checkpoint nor a torch state dict ({first})"
        ) from None
    if not (
        isinstance(obj, dict)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise CheckpointError(
            f"{path}: holds no state dict (a flat dict of tensors, as "
            "torch.save(model.state_dict()) writes it)"
        )
    return obj


def imported_state(gen: Generator, path: Path) -> dict[str, torch.Tensor]:
    """``gen``'s state from the torch state dict at ``path`` (``Generator.import_state``),
    floating tensors cast to the network's dtypes (checkpoints trained in fp16 hold fp16)."""
    try:
        state = gen.import_state(_torch_state(path))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    expected = gen.state_dict()
    return {
        key: value.to(expected[key].dtype)
        if key in expected and value.is_floating_point() and expected[key].is_floating_point()
        else value
        for key, value in state.items()
    }


def _misfit(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: does not fit this model's config ({detail}); use the config it was trained with"
    )


def _check_tensors(gen: Generator, state: dict[str, torch.Tensor], path: Path) -> None:
    """Every tensor of the checkpoint has the dtype the network expects and, for floats,
    only finite values: a checkpoint of int8 weights or of a diverged training is refused
    instead of sampling garbage."""
    expected = gen.state_dict()
    for key, value in state.items():
        if value.is_meta:  # a network's own tensor (built on "meta" to check), not the file's
            continue
        want = expected.get(key)
        if want is not None and value.dtype != want.dtype:
            raise CheckpointError(
                f"{path}: tensor {key} is {value.dtype}, the network holds {want.dtype}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: tensor {key} holds NaN or infinite values")


def load_checkpoint(gen: Generator, path: Path, generator: str) -> None:
    """Load ``path`` into ``gen``; a checkpoint of another generator or config, or with
    tensors of the wrong dtype or not finite, is a one-line ``CheckpointError``. A torch
    state dict is imported (``imported_state``)."""
    if not is_safetensors(path):
        state = imported_state(gen, path)
        _check_tensors(gen, state, path)
        try:
            gen.load_state_dict({k: v.to(gen.device) for k, v in state.items()})
        except (RuntimeError, KeyError) as exc:
            raise _misfit(path, str(exc).strip().splitlines()[0][:200]) from None
        return
    meta = checkpoint_metadata(path)
    if meta.get("generator") not in (None, generator):
        raise CheckpointError(
            f"{path}: checkpoint of generator {meta['generator']!r}, not {generator!r}"
        )
    try:
        state = load_file(str(path), device=str(gen.device))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    _check_tensors(gen, state, path)
    try:
        gen.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise _misfit(path, str(exc).strip().splitlines()[0][:200]) from None


def check_checkpoint(model: ResolvedModel) -> None:
    """Before anything is written: ``model.checkpoint`` is a readable checkpoint of its
    generator whose tensors fit its config in name, shape and dtype and hold only finite
    values (the network is built on the "meta" device, where it costs no memory)."""
    path = model.checkpoint
    if path is None:
        return
    if not is_safetensors(path):
        _check_import(model, path)
        return
    meta = checkpoint_metadata(path)
    if meta.get("generator") not in (None, model.generator):
        raise CheckpointError(
            f"{path}: checkpoint of generator {meta['generator']!r}, not {model.generator!r}"
        )
    try:
        with safe_open(str(path), framework="pt") as fh:
            shapes = {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    try:
        with torch.device("meta"):
            gen = model.generator_class(model.config, model.data_shape, torch.device("meta"))
            expected = {key: tuple(v.shape) for key, v in gen.state_dict().items()}
    except Exception:  # a network the meta device cannot build: the load checks it
        return
    missing = sorted(expected.keys() - shapes.keys())
    unexpected = sorted(shapes.keys() - expected.keys())
    if missing or unexpected:
        names = ", ".join([*missing[:2], *unexpected[:2]])
        raise _misfit(
            path, f"{len(missing)} missing and {len(unexpected)} unexpected tensors: {names}"
        )
    for key, shape in shapes.items():
        if shape != expected[key]:
            raise _misfit(
                path, f"tensor {key} is {list(shape)}, the network's {list(expected[key])}"
            )
    _check_tensors(gen, load_file(str(path)), path)


def _check_import(model: ResolvedModel, path: Path) -> None:
    """``check_checkpoint`` for a torch state dict: it imports onto the network built on the
    meta device, names and shapes complete, every value finite."""
    try:
        with torch.device("meta"):
            gen = model.generator_class(model.config, model.data_shape, torch.device("meta"))
    except Exception:  # a network the meta device cannot build: the load checks it
        return
    state = imported_state(gen, path)
    expected = gen.state_dict()
    missing = sorted(expected.keys() - state.keys())
    if missing:
        raise _misfit(path, f"{len(missing)} tensors of the network are not filled: {missing[0]}")
    _check_tensors(gen, state, path)


def finished_training(model: ResolvedModel, model_dir: Path) -> dict[str, Any] | None:
    """The train info of ``model_dir``'s checkpoint when it holds the finished training of
    ``model`` (it is written after the last update), else None."""
    path = model_dir / "checkpoint.safetensors"
    if not path.is_file():
        return None
    try:
        meta = checkpoint_metadata(path)
        info = json.loads(meta["train_info"])
    except (CheckpointError, KeyError, ValueError):
        return None  # unreadable, or from a version that did not record its training
    if meta.get("generator") != model.generator or not isinstance(info, dict):
        return None
    steps = info.get("train_steps")
    if model.train.time_budget is None and steps != (model.train.steps or 0):
        return None
    return info


DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
"""A diffusers folder's weights file names, the one that identifies it first."""


def checkpoint_provenance(model: ResolvedModel) -> dict[str, str]:
    """``checkpoint_sha256`` of what a model starts from (its ``--checkpoint`` file, or the
    weights file of its pretrained diffusers folder) and, when ``vendor/checkpoints.toml``
    lists that sha256, the entry's ``checkpoint_id``; empty when it starts from scratch."""
    path = model.checkpoint or getattr(model.config, "pretrained", None)
    if path is None:
        return {}
    path = Path(path)
    if path.is_dir():
        inside = [path / sub / name for sub in ("unet", ".") for name in DIFFUSERS_WEIGHTS]
        path = next((p for p in inside if p.is_file()), None)
        if path is None:
            return {}
    try:
        sha256 = io.file_sha256(path)
    except OSError:  # moved or unreadable since it loaded: the results are not lost for it
        return {}
    known = identify(sha256)
    return {"checkpoint_sha256": sha256} | ({"checkpoint_id": known} if known else {})
