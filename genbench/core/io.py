"""The results store: run directories, atomic file writes, environment fingerprints.

Every file is written to ``<name>.partial`` in the same directory, flushed, fsynced and then
renamed over its final name, so a run killed at any moment leaves each result file either
complete or absent (a stray ``*.partial`` is the only possible leftover). Log lines are
appended with a single ``write`` system call each, so a kill never leaves half a line.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

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
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_with_atomic(path: Path, writer: Callable[[Path], None]) -> Path:
    """Atomically create ``path`` with ``writer(tmp_path)`` (for library save functions)."""
    return _atomic(path, writer)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with one ``write`` call (never a torn line on SIGKILL)."""
    line = (json.dumps(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def new_run_dir(out: Path, name: str) -> Path:
    """Create ``out/<name>-<UTC timestamp>-<random>`` and return it."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    run = Path(out) / f"{name}-{stamp}-{secrets.token_hex(2)}"
    run.mkdir(parents=True, exist_ok=False)
    return run


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def git_commit(repo: Path | None = None) -> str | None:
    """The commit of the genbench checkout, or None outside a git checkout."""
    where = repo or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = subprocess.run(
        ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def fingerprint(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: code, libraries, hardware, world size."""
    import torch  # here, not at the top: `bench report` reads results without torch

    info: dict[str, Any] = {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "world_size": 1,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=props.name,
            device_memory_bytes=props.total_memory,
            cudnn=torch.backends.cudnn.version(),
            driver=_nvidia_driver(),
        )
    else:
        info["device_name"] = info["cpu"]
    return info


def _cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None
