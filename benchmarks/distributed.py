"""Several processes: what launched us, the process group, and the few collectives the
harness needs, all through ``torch.distributed`` (NCCL on GPUs, Gloo on CPUs).

One code path for every launcher. ``detect`` reads, in order: torchrun's variables
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); else an MPI
launcher's (Open MPI's ``OMPI_COMM_WORLD_*``, MPICH / PMI's ``PMI_RANK`` / ``PMI_SIZE``),
where mpi4py broadcasts rank 0's host and a port it found free; else Slurm's
(``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``, the first host of
``SLURM_NODELIST``); else one process. ``session`` sets up the process group for the
duration of a command and a liveness watchdog that ends every rank, with one line naming
the failed rank, when another rank dies or raises (see ``Watchdog``).

Only rank 0 writes (``is_main``); the others compute their shard and take part in the
collectives. Run directories must be on a file system every rank sees (as torchrun's own
checkpoints must be): the other ranks read the checkpoints and training states rank 0
writes.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import torch
import torch.distributed as dist

from genbench.core.errors import GenbenchError
from genbench.core.progress import show_progress

LAUNCHERS = ("torchrun", "mpi", "slurm", "single")

HEARTBEAT_TIMEOUT_ENV = "GENBENCH_HEARTBEAT_TIMEOUT"
"""Seconds without a heartbeat after which a rank is declared dead (default 30)."""
COLLECTIVE_TIMEOUT_ENV = "GENBENCH_COLLECTIVE_TIMEOUT"
"""Seconds a collective may wait for a live but stuck rank (default 1800: rank 0 may compute
reference statistics while the others wait)."""


@dataclasses.dataclass(frozen=True)
class Launch:
    """Who this process is among the processes of one job, and how to meet the others."""

    launcher: str
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process (a process group is needed)."""
        return self.world_size > 1


def _int(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise GenbenchError(f"environment variable {name}={value!r} is not an integer") from None


def _first(env: Mapping[str, str], *names: str, default: int | None = None) -> int | None:
    for name in names:
        if name in env:
            return _int(env, name)
    return default


def first_host(nodelist: str, scontrol: str | None = None) -> str:
    """The first host of a Slurm node list (``node[03-05,9],gpu1`` -> ``node03``): from
    ``scontrol show hostnames`` when Slurm's tools are here, else parsed (the common forms)."""
    scontrol = scontrol if scontrol is not None else shutil.which("scontrol")
    if scontrol:
        try:
            out = subprocess.run(
                [scontrol, "show", "hostnames", nodelist],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass  # fall back to parsing
    match = re.match(r"^([^,\[]+)(?:\[([0-9]+)[^\]]*\])?", nodelist.strip())
    if not match:
        raise GenbenchError(f"SLURM_NODELIST={nodelist!r}: cannot read its first host")
    return match.group(1) + (match.group(2) or "")


def _mpi_rendezvous() -> tuple[str, int]:
    """Rank 0's host name and a port free on it, broadcast to every rank by mpi4py."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise GenbenchError(
            "launched by MPI, but mpi4py is not installed; install it: pip install 'genbench[mpi]'"
        ) from None
    comm = MPI.COMM_WORLD
    found = None
    if comm.Get_rank() == 0:
        with socket.socket() as s:  # the port is free now; rank 0's store binds it next
            s.bind(("", 0))
            found = (socket.gethostname(), s.getsockname()[1])
    host, port = comm.bcast(found, root=0)
    return host, int(port)


def _slurm_port(env: Mapping[str, str]) -> int:
    if "MASTER_PORT" in env:
        return _int(env, "MASTER_PORT")
    # Every task of a job derives the same port from the job id without talking; two jobs
    # sharing a first node get different ports unless their ids are 20000 apart.
    job = _first(env, "SLURM_JOB_ID", "SLURM_JOBID", default=0) or 0
    return 20000 + job % 20000


def _slurm_local_size(env: Mapping[str, str]) -> int:
    if "SLURM_NTASKS_PER_NODE" in env:
        return _int(env, "SLURM_NTASKS_PER_NODE")
    # SLURM_TASKS_PER_NODE reads like "2(x3),1": this node's count is not named; the first
    # is right for the usual equal split.
    match = re.match(r"^(\d+)", env.get("SLURM_TASKS_PER_NODE", ""))
    return int(match.group(1)) if match else 1


def detect(env: Mapping[str, str] | None = None) -> Launch:
    """What launched this process (see the module docstring); one process if nothing did."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if n not in env]
        if missing and _int(env, "WORLD_SIZE") > 1:
            raise GenbenchError(
                f"RANK and WORLD_SIZE are set but {' and '.join(missing)} not; launch with "
                "torchrun, or set all four"
            )
        return Launch(
            "torchrun",
            rank=_int(env, "RANK"),
            local_rank=_first(env, "LOCAL_RANK", default=0) or 0,
            world_size=_int(env, "WORLD_SIZE"),
            local_world_size=_first(env, "LOCAL_WORLD_SIZE", default=1) or 1,
            master_addr=env.get("MASTER_ADDR"),
            master_port=_first(env, "MASTER_PORT"),
        )
    rank = _first(env, "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
    size = _first(env, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
    if rank is not None and size is not None:
        local = _first(env, "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", default=0) or 0
        local_size = _first(env, "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", default=1)
        addr, port = _mpi_rendezvous() if size > 1 and env is os.environ else (None, None)
        return Launch("mpi", rank, local, size, local_size or 1, addr, port)
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        # srun gives its step's own task count, which may be fewer than the job's.
        step = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        size = _int(env, step)
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or ""
        return Launch(
            "slurm",
            rank=_int(env, "SLURM_PROCID"),
            local_rank=_first(env, "SLURM_LOCALID", default=0) or 0,
            world_size=size,
            local_world_size=_slurm_local_size(env),
            master_addr=env.get("MASTER_ADDR") or (first_host(nodelist) if nodelist else None),
            master_port=_slurm_port(env),
        )
    return Launch("single")


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, Gloo for CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device, launch: Launch) -> torch.device:
    """The device of this rank: ``cuda`` means the GPU of this rank's local index (one GPU
    per process, as torchrun, mpirun and srun place them); CPUs are shared."""
    if device.type != "cuda" or not launch.distributed or device.index is not None:
        return device
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise GenbenchError(
            f"local rank {launch.local_rank} has no GPU: this node has {count}; start at most "
            f"{count} processes per node"
        )
    return torch.device("cuda", launch.local_rank)


def _seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise GenbenchError(f"{name}={value!r}: expected seconds, e.g. 30") from None
    if seconds <= 0:
        raise GenbenchError(f"{name}={value!r}: must be positive")
    return seconds


# ---------------------------------------------------------------- the state of this process

_launch = Launch("single")


def current() -> Launch:
    """How this process was launched, as the last ``session`` found (one process before)."""
    return _launch


def is_main() -> bool:
    """Whether this process writes and prints results: rank 0, or the only process (also
    after its session ended, so a command prints its results once)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return _launch.rank == 0


# ---------------------------------------------------------------- liveness


class Watchdog:
    """Ends this process when another rank dies or fails, within ``timeout`` seconds.

    Each rank increments its own counter in the rendezvous store (the TCP store that
    ``torch.distributed`` already runs on rank 0's host) every second and watches the
    others'. A rank that fails with an error writes it there before it exits; a counter
    that stops moving for ``timeout`` seconds means a rank that died (SIGKILL, out of
    memory, a lost node). Either way every other rank prints one line naming it and exits
    with status 1, even in the middle of a long computation that would reach the next
    collective only much later. A rank that ends normally says so (``finish``) first.
    """

    PREFIX = "genbench/"

    def __init__(self, launch: Launch, timeout: float, interval: float = 1.0) -> None:
        assert launch.master_addr is not None and launch.master_port is not None
        self.launch, self.timeout, self.interval = launch, timeout, interval
        self.store = dist.TCPStore(
            launch.master_addr,
            launch.master_port,
            launch.world_size,
            is_master=False,
            timeout=datetime.timedelta(seconds=max(timeout, 30)),
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="genbench-watchdog", daemon=True)

    def _key(self, kind: str, r: int) -> str:
        return f"{self.PREFIX}{kind}/{r}"

    def start(self) -> None:
        """Start beating and watching (every rank calls it after the process group exists)."""
        self.store.add(self._key("beat", self.launch.rank), 1)
        self._thread.start()

    def _loop(self) -> None:
        me, n = self.launch.rank, self.launch.world_size
        others = [r for r in range(n) if r != me]
        seen = {r: (-1, time.monotonic()) for r in others}
        while not self._stop.wait(self.interval):
            try:
                self.store.add(self._key("beat", me), 1)
                for r in others:
                    if self.store.check([self._key("failed", r)]):
                        why = self.store.get(self._key("failed", r)).decode(errors="replace")
                        self._end(f"rank {r} failed: {why}")
                    if self.store.check([self._key("done", r)]):
                        continue
                    count = self.store.add(self._key("beat", r), 0)
                    if count != seen[r][0]:
                        seen[r] = (count, time.monotonic())
                    elif time.monotonic() - seen[r][1] > self.timeout:
                        self._end(
                            f"rank {r} stopped responding "
                            f"({self.timeout:g} s without a sign of life)"
                        )
            except Exception as exc:  # the store lives with rank 0: losing it, rank 0 is gone
                if self._stop.is_set():
                    return
                self._end(f"rank 0 is unreachable (it holds the rendezvous store): {exc}")

    def _end(self, why: str) -> None:
        print(
            f"bench: error: {why}; rank {self.launch.rank} of {self.launch.world_size} stops",
            file=sys.stderr,
            flush=True,
        )
        # A thread cannot raise into the main thread, which may be blocked in a collective
        # for as long as the collective timeout: end the process here, never hang.
        os._exit(1)

    def fail(self, why: str) -> None:
        """Tell the other ranks that this one fails with ``why`` (it exits next)."""
        self._stop.set()
        # If rank 0, holding the store, is gone, the others notice that themselves.
        with suppress(Exception):
            self.store.set(self._key("failed", self.launch.rank), why[:500])

    def finish(self) -> None:
        """This rank is done: stop beating without alarming the others."""
        self._stop.set()
        self._thread.join(timeout=5 * self.interval)
        with suppress(Exception):
            self.store.set(self._key("done", self.launch.rank), "1")


_watchdog: Watchdog | None = None


def _threads_per_process(launch: Launch) -> None:
    # torchrun sets OMP_NUM_THREADS=1 for several processes; mpirun and srun do not. Without
    # it, N processes of a node each start one thread per core and slow each other down.
    if launch.local_world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:
            cpus = os.cpu_count() or 1
        torch.set_num_threads(max(1, cpus // launch.local_world_size))


class ProcessFailed(GenbenchError):
    """A collective failed because another rank is gone or stuck (exit status 1)."""

    exit_code = 1


def _init_method(launch: Launch) -> str:
    # Under torchrun the agent already serves the store at MASTER_ADDR:MASTER_PORT; env://
    # joins it (TORCHELASTIC_USE_AGENT_STORE). MPI and Slurm: rank 0 serves it.
    if launch.launcher == "torchrun":
        return "env://"
    return f"tcp://{launch.master_addr}:{launch.master_port}"


_COMMUNICATION = ("gloo", "nccl", "connection", "process group", "processgroup", "c10d")


def _broken_collective(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a collective whose peer is gone (torch raises DistError
    subclasses, or, from inside autograd and DDP, a RuntimeError naming the backend)."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(word in text for word in _COMMUNICATION)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


@contextmanager
def session(device: torch.device, launch: Launch | None = None) -> Iterator[torch.device]:
    """Set up the process group (when launched with several processes) for a command; yields
    this rank's device. On a clean exit every rank waits for the others, then the group ends;
    on an error the other ranks are told (``Watchdog``) and end too."""
    global _launch, _watchdog
    launch = detect() if launch is None else launch
    if not launch.distributed or (dist.is_available() and dist.is_initialized()):
        yield local_device(device, launch)
        return
    if not dist.is_available():
        raise GenbenchError("this torch build has no torch.distributed; run one process")
    mine = local_device(device, launch)
    if mine.type == "cuda":
        torch.cuda.set_device(mine)
    _threads_per_process(launch)
    heartbeat = _seconds(HEARTBEAT_TIMEOUT_ENV, 30.0)
    dist.init_process_group(
        backend_for(mine),
        init_method=_init_method(launch),
        rank=launch.rank,
        world_size=launch.world_size,
        timeout=datetime.timedelta(seconds=_seconds(COLLECTIVE_TIMEOUT_ENV, 1800.0)),
    )
    _launch = launch
    show_progress(launch.rank == 0)
    watchdog = _watchdog = Watchdog(launch, heartbeat)
    watchdog.start()
    try:
        yield mine
    except Exception as exc:
        if not _broken_collective(exc):
            watchdog.fail(_one_line(exc))
            if launch.rank == 0:  # the store lives here: let the others read why before it goes
                time.sleep(3 * watchdog.interval)
            raise
        # A collective broke: usually another rank died. The watchdog names it (and ends
        # this process) within its timeout; only if it finds nothing is this the error.
        deadline = time.monotonic() + heartbeat + 5 * watchdog.interval
        while time.monotonic() < deadline:
            time.sleep(watchdog.interval)
        why = f"rank {launch.rank}: a collective failed: {_one_line(exc)}"
        watchdog.fail(why)
        raise ProcessFailed(why) from None
    except BaseException as exc:  # Ctrl-C, SystemExit
        watchdog.fail(_one_line(exc))
        raise
    else:
        # Stop watching first: a rank that finishes and exits early must not look dead.
        watchdog.finish()
        dist.barrier()
        dist.destroy_process_group()
    finally:
        _watchdog = None
        show_progress(True)


def describe(launch: Launch, device: torch.device) -> dict[str, Any]:
    """What ``bench env`` prints: launcher, ranks, rendezvous, backend, device."""
    return {
        "launcher": launch.launcher,
        "rank": launch.rank,
        "local_rank": launch.local_rank,
        "world_size": launch.world_size,
        "local_world_size": launch.local_world_size,
        "master": (
            f"{launch.master_addr}:{launch.master_port}" if launch.master_addr is not None else None
        ),
        "backend": backend_for(device) if launch.distributed else None,
        "device": str(local_device(device, launch)),
        "threads": torch.get_num_threads(),
    }
