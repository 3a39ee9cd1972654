"""Schema versions of the results store, and how files of an earlier version are upgraded.

A file without ``schema_version`` is version 1 (written before records had one). Version 2
changed what two sampling settings mean, so reading a version-1 file converts them:

- ``guidance``: version 1 stored Ho & Salimans' strength w for DDPM and VDPM (EDM already
  used the scale s); version 2 stores the classifier-free guidance scale s = w + 1
  everywhere (diffusers' ``guidance_scale``). VDPM's config field ``w_guide`` became
  ``guidance``.
- DDPM's step sections: ``"10,15,20"`` became ``"10+15+20"`` (commas separate lists of
  settings, as in ``bench speed --steps``).
- DCGAN and DDGAN have no sampling settings: version 1 ignored their ``steps`` and
  ``guidance`` (DDGAN's steps had to equal its T), version 2 refuses them, so they are
  dropped.

Version 3 moved training into the harness's Trainer:

- gradient accumulation is the ``[train]`` setting ``grad_accum``, no longer a generator
  config field (DDPM, EDM and DDGAN ``grad_accum``, VDPM ``num_accum``);
- DDGAN gained its authors' cosine learning-rate decay and random flips, on by default; a
  version-2 DDGAN config trained without them, so its upgrade says ``lr_decay =
  "constant"`` and ``hflip = false``.

The upgrade works on the raw JSON (or TOML) data, before validation, so the records in
``genbench.store.records`` only ever describe the current version.
"""

from __future__ import annotations

import re
from typing import Any

from genbench.store.records import SCHEMA_VERSION

OLDEST = 1
_W_GENERATORS = ("ddpm", "vdpm")  # generators whose version-1 guidance was w
_NO_SETTINGS = ("dcgan", "gan", "ddgan")  # version 1 ignored their steps and guidance
_SECTIONS = re.compile(r"^\s*\d+(\s*,\s*\d+)+\s*$")


def version_of(data: dict[str, Any]) -> int | None:
    """The schema version a file's data declares (1 when it declares none); None when it
    is not an int."""
    version = data.get("schema_version", OLDEST)
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def readable(version: int | None) -> bool:
    return version is not None and OLDEST <= version <= SCHEMA_VERSION


def _steps_v2(steps: Any) -> Any:
    """DDPM sections "10,15,20" -> "10+15+20"; anything else unchanged."""
    if isinstance(steps, str) and _SECTIONS.match(steps):
        return "+".join(part.strip() for part in steps.split(","))
    return steps


def _w_to_scale(w: Any) -> Any:
    return w + 1.0 if isinstance(w, int | float) and not isinstance(w, bool) else w


def _config_v2(generator: str | None, config: dict[str, Any]) -> dict[str, Any]:
    config = dict(config)
    if generator == "vdpm" and "w_guide" in config:
        config["guidance"] = _w_to_scale(config.pop("w_guide"))
    if generator == "ddpm" and "sample_steps" in config:
        config["sample_steps"] = _steps_v2(config["sample_steps"])
    return config


_ACCUM_FIELDS = ("grad_accum", "num_accum")


def _config_v3(generator: str | None, config: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """A version-2 config in version 3's meaning, and the accumulation it held (or None)."""
    config = dict(config)
    accum = None
    for key in _ACCUM_FIELDS:
        if key in config:
            accum = config.pop(key)
    if generator == "ddgan":
        config.setdefault("lr_decay", "constant")
        config.setdefault("hflip", False)
    return config, accum


def _sample_v2(generator: str | None, sample: dict[str, Any]) -> dict[str, Any]:
    sample = dict(sample)
    if generator in _NO_SETTINGS:
        sample.pop("steps", None)
        sample.pop("guidance", None)
    if generator in _W_GENERATORS and sample.get("guidance") is not None:
        sample["guidance"] = _w_to_scale(sample["guidance"])
    if "steps" in sample:
        sample["steps"] = _steps_v2(sample["steps"])
    return sample


def upgrade_model_metrics(data: dict[str, Any]) -> dict[str, Any]:
    """A ``metrics.json`` of any readable version as the current version's data."""
    if version_of(data) == 1:
        data = dict(data)
        generator = data.get("generator")
        if isinstance(data.get("config"), dict):
            data["config"] = _config_v2(generator, data["config"])
        if isinstance(data.get("sample"), dict):
            data["sample"] = _sample_v2(generator, data["sample"])
    if (version_of(data) or 0) <= 2 and isinstance(data.get("config"), dict):
        data = dict(data)
        data["config"], accum = _config_v3(data.get("generator"), data["config"])
        if accum is not None:
            data.setdefault("grad_accum", accum)
    return _stamp(data)


def upgrade_timing(data: dict[str, Any]) -> dict[str, Any]:
    """A ``timing.json`` or speed result of any readable version as the current one's."""
    if version_of(data) == 1 and "steps" in data:
        data = {**data, "steps": _steps_v2(data["steps"])}
    return _stamp(data)


def upgrade_speed_run(data: dict[str, Any]) -> dict[str, Any]:
    """A ``speed.json`` of any readable version: its results upgraded one by one."""
    data = dict(data)
    version = version_of(data)
    results = data.get("results")
    if isinstance(results, list):
        data["results"] = [
            upgrade_timing({"schema_version": version, **r}) if isinstance(r, dict) else r
            for r in results
        ]
    if isinstance(data.get("environment"), dict):
        data["environment"] = _stamp(dict(data["environment"]))
    return _stamp(data)


def upgrade_run_status(data: dict[str, Any]) -> dict[str, Any]:
    """A ``run.json``: its resumptions' environments are records of their own."""
    data = dict(data)
    resumed = data.get("resumed")
    if isinstance(resumed, list):
        data["resumed"] = [
            {**r, "environment": _stamp(dict(r["environment"]))}
            if isinstance(r, dict) and isinstance(r.get("environment"), dict)
            else r
            for r in resumed
        ]
    return _stamp(data)


def upgrade_plain(data: dict[str, Any]) -> dict[str, Any]:
    """Records whose content did not change between versions."""
    return _stamp(data)


def upgrade_spec(data: dict[str, Any], version: int) -> dict[str, Any]:
    """A run's resolved ``spec.toml`` (as parsed TOML) written under ``version``, in the
    current meaning (``bench resume`` of an older run)."""
    if version >= SCHEMA_VERSION:
        return data
    data = dict(data)
    models = data.get("models")
    if isinstance(models, dict):
        upgraded = {}
        for name, entry in models.items():
            entry = dict(entry) if isinstance(entry, dict) else entry
            if isinstance(entry, dict):
                generator = entry.get("generator")
                if version == 1 and isinstance(entry.get("config"), dict):
                    entry["config"] = _config_v2(generator, entry["config"])
                if version == 1 and isinstance(entry.get("sample"), dict):
                    entry["sample"] = _sample_v2(generator, entry["sample"])
                if isinstance(entry.get("config"), dict):
                    entry["config"], accum = _config_v3(generator, entry["config"])
                    if accum is not None:
                        train = entry.get("train")
                        entry["train"] = {
                            **(train if isinstance(train, dict) else {}),
                            "grad_accum": accum,
                        }
            upgraded[name] = entry
        data["models"] = upgraded
    if "schema_version" in data:
        data["schema_version"] = SCHEMA_VERSION
    return data


def _stamp(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "schema_version": SCHEMA_VERSION}
