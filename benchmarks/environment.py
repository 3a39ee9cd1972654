"""The environment fingerprint stored with every result: code, libraries, hardware."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from genbench.store.records import Environment

_CHECKOUT = Path(__file__).resolve().parent.parent  # the repository, in a source checkout


def git_commit(repo: Path | None = None) -> str | None:
    """The commit of the genbench checkout (``-dirty`` with uncommitted changes), or None
    outside a git checkout (an installed wheel)."""
    where = repo or _CHECKOUT
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


def fingerprint(device: torch.device, world_size: int = 1) -> Environment:
    """What the numbers were measured on: code, libraries, hardware, world size."""
    info = Environment(
        git_commit=git_commit(),
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        platform=platform.platform(),
        cpu=_cpu_name(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        device=str(device),
        world_size=world_size,
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return info.model_copy(
            update={
                "device_name": props.name,
                "device_memory_bytes": props.total_memory,
                "cudnn": torch.backends.cudnn.version(),
                "driver": _nvidia_driver(),
            }
        )
    return info.model_copy(update={"device_name": info.cpu})


def machine_id(env: Environment) -> str:
    """A short hash of everything in the fingerprint but the code version: same machine,
    same libraries, same device and thread count give the same id."""
    hardware = {k: v for k, v in env.fingerprint().items() if k != "git_commit"}
    blob = json.dumps(hardware, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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
