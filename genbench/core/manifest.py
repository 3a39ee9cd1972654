"""The manifest of official checkpoints (``vendor/checkpoints.toml``): where each file genbench
reads is published, its licence, what loads it and, where a public source records one, its
sha256. A run names the entry a loaded checkpoint is (``checkpoint_id``) by that sha256."""

from __future__ import annotations

import functools
import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genbench.core.errors import GenbenchError


class OfficialCheckpoint(BaseModel):
    """One ``[[checkpoint]]`` entry (fields as the file's header describes them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    what: str
    kind: Literal["generator", "extractor"]
    loads_as: str
    spec: str = Field(pattern=r"^$|^[a-z0-9-]+:[a-z0-9_]+$")
    url: str = Field(pattern=r"^https://")
    file: str
    sha256: str = Field(pattern=r"^$|^[0-9a-f]{64}$")
    sha256_source: str = Field(min_length=1)
    licence: str = Field(min_length=1)
    licence_source: str = Field(min_length=1)
    notes: str = ""


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: list[OfficialCheckpoint]


def manifest_path() -> Path:
    """The shipped ``vendor/checkpoints.toml``."""
    return Path(str(resources.files("genbench.vendor") / "checkpoints.toml"))


def load_manifest(path: Path | None = None) -> list[OfficialCheckpoint]:
    """The entries, validated; a malformed file is a one-line ``GenbenchError``."""
    path = path or manifest_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        entries = _File.model_validate(data).checkpoint
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GenbenchError(f"{path}: cannot read the checkpoint manifest ({exc})") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise GenbenchError(f"{path}: {where}: {err['msg']}") from None
    ids = [e.id for e in entries]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate is not None:
        raise GenbenchError(f"{path}: duplicate checkpoint id {duplicate!r}")
    return entries


@functools.cache
def _known() -> dict[str, str]:
    return {e.sha256: e.id for e in load_manifest() if e.sha256}


def identify(sha256: str) -> str | None:
    """The id of the manifest entry with this sha256, if any."""
    return _known().get(sha256)
