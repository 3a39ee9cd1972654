"""A diffusers pipeline folder's scheduler as DDPM settings.

A ``DDPMPipeline`` (or ``DDIMPipeline``) folder holds ``unet/`` and
``scheduler/scheduler_config.json``; the scheduler says how the UNet was trained: the beta
schedule, the number of training steps, what the network predicts, the variance and the
clipping. ``config_from_scheduler`` maps every field onto ``DDPMConfig`` or refuses the
whole file in one line naming the first field genbench cannot honour, so a checkpoint is
never sampled under a process it was not trained for.

Honoured: ``num_train_timesteps``, ``beta_schedule`` (``linear``, ``scaled_linear``,
``squaredcos_cap_v2``) with ``beta_start`` / ``beta_end``, ``prediction_type``
(``epsilon``, ``v_prediction``, ``sample``), ``variance_type`` (``fixed_small``,
``fixed_large``, ``learned_range``), ``clip_sample`` (range 1). Accepted at their no-op
values only: ``trained_betas`` (null), ``thresholding`` (false), ``rescale_betas_zero_snr``
(false), ``set_alpha_to_one`` (true). Ignored, because genbench chooses the sampling steps
itself (``steps``): ``timestep_spacing``, ``steps_offset``, and the thresholding-only
``sample_max_value`` and ``dynamic_thresholding_ratio``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler")
_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
_PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v", "sample": "x0"}
_VARIANCES = ("fixed_small", "fixed_large", "learned_range")
_NO_OPS = {
    "trained_betas": None,
    "thresholding": False,
    "rescale_betas_zero_snr": False,
    "set_alpha_to_one": True,
    "clip_sample_range": 1.0,
}
_IGNORED = frozenset(
    {
        "_class_name",
        "_diffusers_version",
        "timestep_spacing",
        "steps_offset",
        "sample_max_value",
        "dynamic_thresholding_ratio",
    }
)
_MAPPED = frozenset(
    {
        "num_train_timesteps",
        "beta_schedule",
        "beta_start",
        "beta_end",
        "prediction_type",
        "variance_type",
        "clip_sample",
    }
)


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def local_folder(value: str | Path) -> Path:
    """``value`` as a local folder: an existing path, or a Hugging Face Hub id
    (``google/ddpm-cifar10-32``) found in the local Hugging Face cache, never downloaded
    (``ValueError`` saying how to get it otherwise)."""
    path = Path(value).expanduser()
    if path.exists() or not _HUB_ID.match(str(value)):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(value), local_files_only=True))
    except LocalEntryNotFoundError:
        raise ValueError(
            f"{value} is no folder here and not in the local Hugging Face cache, and genbench "
            f"does not download: run `huggingface-cli download {value}` where there is "
            "network (HF_HUB_CACHE), or pass the folder"
        ) from None


def scheduler_file(path: Path) -> Path | None:
    """The scheduler config of a pipeline folder (``scheduler/scheduler_config.json``, or
    one beside a UNet's ``config.json``); None when there is none."""
    for candidate in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json"):
        if candidate.is_file():
            return candidate
    return None


def read_scheduler(file: Path) -> dict[str, Any]:
    """The JSON of ``file``; ``ValueError`` (one line) when unreadable."""
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file}: not a readable scheduler config ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{file}: a scheduler config is a JSON object")
    return doc


def config_from_scheduler(doc: dict[str, Any], where: str) -> dict[str, Any]:
    """``DDPMConfig`` fields that reproduce the process of scheduler config ``doc``;
    ``ValueError`` naming the first unsupported field (and ``where``) otherwise."""
    kind = doc.get("_class_name", "DDPMScheduler")
    if kind not in SCHEDULER_CLASSES:
        raise ValueError(
            f"{where}: _class_name {kind!r} is no scheduler genbench's DDPM reproduces "
            f"({', '.join(SCHEDULER_CLASSES)})"
        )
    for key in doc:
        if key not in _MAPPED and key not in _IGNORED and key not in _NO_OPS:
            raise ValueError(f"{where}: unsupported scheduler field {key!r}")
    for key, value in _NO_OPS.items():
        if key in doc and doc[key] != value:
            raise ValueError(
                f"{where}: unsupported scheduler field {key} = {json.dumps(doc[key])} "
                f"(genbench's DDPM has only {json.dumps(value)})"
            )
    schedule = doc.get("beta_schedule", "linear")
    if schedule not in _SCHEDULES:
        raise ValueError(
            f"{where}: unsupported scheduler field beta_schedule = {schedule!r} "
            f"(supported: {', '.join(_SCHEDULES)})"
        )
    prediction = doc.get("prediction_type", "epsilon")
    if prediction not in _PREDICTIONS:
        raise ValueError(
            f"{where}: unsupported scheduler field prediction_type = {prediction!r} "
            f"(supported: {', '.join(_PREDICTIONS)})"
        )
    # diffusers' DDPMScheduler defaults to fixed_small; DDIM has no variance (eta decides).
    variance = doc.get("variance_type") or "fixed_small"
    if variance not in _VARIANCES:
        raise ValueError(
            f"{where}: unsupported scheduler field variance_type = {variance!r} "
            f"(supported: {', '.join(_VARIANCES)})"
        )
    fields: dict[str, Any] = {
        "num_timesteps": int(doc.get("num_train_timesteps", 1000)),
        "schedule": _SCHEDULES[schedule],
        "prediction": _PREDICTIONS[prediction],
        "variance": variance,
        "clip_denoised": bool(doc.get("clip_sample", True)),
        # diffusers' pipelines feed the UNet the timestep itself, never t x 1000 / T.
        "rescale_timesteps": False,
    }
    if schedule != "squaredcos_cap_v2":
        fields["beta_start"] = float(doc.get("beta_start", 0.0001))
        fields["beta_end"] = float(doc.get("beta_end", 0.02))
    return fields
