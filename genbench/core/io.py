"""Atomic file writes and whole-line appends: a process killed at any moment leaves every
file either complete or absent.

Every file is written to ``<name>.partial`` in the same directory, flushed, fsynced and then
renamed over its final name (a stray ``*.partial`` is the only possible leftover). Log lines
are appended with a single ``write`` system call each, so a kill never leaves half a line.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

PARTIAL_SUFFIX = ".partial"


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return _atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None: strict JSON, which
    ``json.dumps`` alone would not write (it writes bare ``NaN``, which strict parsers
    reject). Where such a value means a failure, callers say so before writing."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    """``obj`` as strict JSON (see ``finite_json``)."""
    return json.dumps(finite_json(obj), indent=indent, allow_nan=False)


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON to ``path`` atomically."""
    return write_text_atomic(path, dumps(obj, indent=2) + "\n")


def write_with_atomic(path: Path, writer: Callable[[Path], None]) -> Path:
    """Atomically create ``path`` with ``writer(tmp_path)`` (for library save functions)."""
    return _atomic(path, writer)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with one ``write`` call (never a torn line on SIGKILL)."""
    line = (dumps(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (timestamps of written records)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
