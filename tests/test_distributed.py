"""Several processes: launcher detection, and real multi-process runs on CPU (Gloo) under
torchrun, mpirun (MPICH) and Slurm's variables.

The launches are real: ``torchrun --standalone`` and ``mpirun -n N`` start ``bench``
processes that form a process group. Every launch pins one thread per process (torchrun's
default for several processes, set here for the others too) so per-batch arithmetic is
the same in every run and images compare bit for bit.

The ``mpi`` tests need ``mpirun`` and mpi4py (``pip install -e '.[mpi]'``); they skip
without them unless GENBENCH_REQUIRE_MPI is set (CI sets it: there they must run).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genbench.benchmarks import distributed
from genbench.benchmarks.distributed import Launch, detect, first_host
from genbench.cli import main
from genbench.core.collectives import shard
from genbench.core.errors import GenbenchError

BIN = Path(sys.executable).parent
BENCH = str(BIN / "bench")
MPIRUN = shutil.which("mpirun", path=str(BIN)) or shutil.which("mpirun")


def _has_mpi4py() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


HAVE_MPI = MPIRUN is not None and _has_mpi4py()
needs_mpi = pytest.mark.skipif(
    not HAVE_MPI and not os.environ.get("GENBENCH_REQUIRE_MPI"),
    reason="mpirun or mpi4py missing (pip install -e '.[mpi]')",
)

SPEC = """
[benchmark]
name = "dist"
dataset = "digits"
seed = 0
device = "cpu"

[train]
steps = 20
batch_size = 12
log_every = 5
checkpoint_every = 10

[sample]
num_samples = 30
batch_size = 8
grid_size = 16

[evaluate]
extractor = "digits"
metrics = ["fid", "is", "kid"]
kid_subset_size = 10

[timing]
repeats = 2
warmup = 1
batch_size = 8

[models.edm]
generator = "edm"
sample = { steps = 3 }

[models.edm.config]
channels = 8
channel_mult = [1, 2]
num_res_blocks = 1
attn_resolutions = []
dropout = 0.0
norm_groups = 4
time_embed_dim = 32
lr = 2e-3
steps = 3
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_", "OMPI_"))}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env.update(OMP_NUM_THREADS="1", GENBENCH_HEARTBEAT_TIMEOUT="5", **extra)
    return env


def launch(launcher: str, n: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``bench ARGS`` as ``n`` processes started by ``launcher`` (single, torchrun, mpirun)."""
    if launcher == "single":
        cmd = [BENCH, *args]
    elif launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc_per_node", str(n), "--no-python", BENCH, *args]
    else:
        assert MPIRUN, "GENBENCH_REQUIRE_MPI is set but mpirun is not installed"
        cmd = [MPIRUN, "-n", str(n), BENCH, *args]
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


def model_dir(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run / "edm"


def params(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir(out) / "checkpoint.safetensors"))


def metrics(out: Path) -> dict[str, float]:
    data = json.loads((model_dir(out) / "metrics.json").read_text())
    return {k: v["value"] for k, v in data["metrics"].items()}


def grid_hash(out: Path) -> str:
    return hashlib.sha256((model_dir(out) / "samples.png").read_bytes()).hexdigest()


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def in_process(*args: str) -> None:
    """``bench ARGS`` in this process with one thread (as each launched process has)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
            code = main(list(args))
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err.getvalue()[-3000:]


MULTI = ["torchrun2", "torchrun3", pytest.param("mpirun2", marks=[pytest.mark.mpi, needs_mpi])]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process trains 20 steps; torchrun with 2 and 3 processes and mpirun with 2 train
    the same spec (and sample and evaluate what they trained); one process then samples and
    evaluates each of their checkpoints."""
    root = tmp_path_factory.mktemp("dist")
    spec = root / "spec.toml"
    spec.write_text(SPEC)
    out: dict[str, Path] = {"root": root, "single": root / "single"}
    in_process("run", str(spec), "--out", str(out["single"]))
    launches = [("torchrun", 2), ("torchrun", 3)]
    if HAVE_MPI or os.environ.get("GENBENCH_REQUIRE_MPI"):
        launches.append(("mpirun", 2))
    for launcher, n in launches:
        name = f"{launcher}{n}"
        out[name] = root / name
        proc = launch(launcher, n, "run", "spec.toml", "--out", name, cwd=root)
        (root / f"{name}.stdout").write_text(proc.stdout)
        ckpt = model_dir(out[name]) / "checkpoint.safetensors"
        out[f"{name}-one"] = root / f"{name}-one"
        frozen = ("--checkpoint", f"edm={ckpt}", "--train-steps", "0")
        in_process("run", str(spec), "--out", str(out[f"{name}-one"]), *frozen)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", MULTI)
def test_training_matches_one_process(runs, name):
    """20 steps with the same global batch (12: 6 or 4 per process) give the parameters of
    one process."""
    diff = max_diff(params(runs["single"]), params(runs[name]))
    assert diff <= 1e-5, diff
    log = [
        json.loads(x) for x in (model_dir(runs[name]) / "train_log.jsonl").read_text().splitlines()
    ]
    assert [entry["step"] for entry in log] == [5, 10, 15, 20]  # rank 0 alone wrote the log
    stdout = (runs["root"] / f"{name}.stdout").read_text()
    assert stdout.count("results: ") == 1  # rank 0 alone prints the report
    env = json.loads((model_dir(runs[name]).parent / "environment.json").read_text())
    assert env["world_size"] == int(name[-1])
    assert env["launcher"] == name[:-1].replace("mpirun", "mpi")


@pytest.mark.slow
@pytest.mark.parametrize("name", MULTI)
def test_sampling_matches_one_process(runs, name):
    """Sharded by seed, 2 and 3 processes (30 seeds: 4 batches, not divisible by 3) give the
    grid of one process sampling the same weights byte for byte, and its FID, IS and KID."""
    one_process = runs[f"{name}-one"]
    assert grid_hash(runs[name]) == grid_hash(one_process)
    one, many = metrics(one_process), metrics(runs[name])
    assert one.keys() == many.keys() == {"fid", "is", "kid"}
    # float64 sums added in another order: FID agrees to 1e-6 relative (measured: 1e-9)
    assert many["fid"] == pytest.approx(one["fid"], rel=1e-6, abs=1e-6)
    assert many["is"] == pytest.approx(one["is"], rel=1e-9)
    assert many["kid"] == pytest.approx(one["kid"], rel=1e-9)
    record = json.loads((model_dir(runs[name]) / "metrics.json").read_text())
    assert record["sample"]["seeds"] == "0-29"
    assert record["protocol"]["num_samples"] == 30


@pytest.mark.slow
def test_timing_reports_every_rank(runs):
    timing = json.loads((model_dir(runs["torchrun3"]) / "timing.json").read_text())
    rates = timing["per_rank_images_per_s"]
    assert timing["processes"] == 3 and len(rates) == 3 and min(rates) > 0
    assert timing["aggregate_images_per_s"] == pytest.approx(sum(rates))
    alone = timing["single_process_images_per_s"]
    assert timing["scaling_efficiency"] == pytest.approx(sum(rates) / (3 * alone))
    assert timing["straggler_spread"] == pytest.approx((max(rates) - min(rates)) / max(rates))
    single = json.loads((model_dir(runs["single"]) / "timing.json").read_text())
    assert single["processes"] is None
    report = (model_dir(runs["torchrun3"]).parent / "report.md").read_text()
    assert "3 processes" in report and "scaling" in report
    assert "rank 0's while every rank samples at once" in report


@pytest.mark.slow
def test_resume_at_another_world_size(runs):
    """A one-process run stopped after step 10 finishes under torchrun with 2 processes,
    with the parameters of the uninterrupted run."""
    src = model_dir(runs["single"]).parent
    run = runs["root"] / "resumed" / src.name
    shutil.copytree(src, run)
    edm = run / "edm"
    for name in ("metrics.json", "checkpoint.safetensors", "timing.json", "samples.png"):
        (edm / name).unlink()
    states = sorted((edm / "training").glob("state-*.pt"))
    assert [p.name for p in states] == ["state-0000000010.pt"]  # every 10, the last not kept
    status = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**status, "status": "running", "finished": None}))
    proc = launch("torchrun", 2, "resume", str(run), cwd=runs["root"])
    assert "edm: training continued from its newest training state" in proc.stdout
    assert max_diff(params(runs["single"]), load_file(str(edm / "checkpoint.safetensors"))) <= 1e-5
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_eval_sharded_matches_one_process(cli, tmp_path, monkeypatch):
    args = ["eval", "digits:train", "digits:test", "--extractor", "digits"]
    args += ["--metrics", "fid,is", "--num-workers", "0"]
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process has
    try:
        assert cli(*args, "--out", "one.json").code == 0
    finally:
        torch.set_num_threads(threads)
    proc = launch("torchrun", 2, *args, "--out", "two.json", cwd=tmp_path)
    assert proc.stdout.count("| fid |") == 1  # rank 0 alone prints
    assert "images/s, 2 processes" in proc.stdout
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["processes"] == 2 and one["processes"] == 1
    assert abs(one["metrics"]["fid"]["value"] - two["metrics"]["fid"]["value"]) <= 1e-6
    assert two["metrics"]["is"]["value"] == pytest.approx(one["metrics"]["is"]["value"], 1e-9)


# ---------------------------------------------------------------- failure


FAIL_SPEC = SPEC.replace("[models.edm", "[models.first") + SPEC[SPEC.index("[models.edm]") :]
FAIL_SPEC += """
[models.edm.train]
steps = 100
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ranks(n: int, args: list[str], cwd: Path, env_of) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [BENCH, *args],
            cwd=cwd,
            env=_env(**env_of(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(n)
    ]


@pytest.mark.slow
def test_killed_rank_ends_the_job(tmp_path):
    """SIGKILL of rank 1 in the middle of training: rank 0 ends within 60 s, non-zero, with
    a line naming rank 1; the model finished before stays intact; `bench resume` finishes."""
    (tmp_path / "spec.toml").write_text(FAIL_SPEC)
    port = str(free_port())
    env_of = lambda r: dict(  # noqa: E731
        RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
    )  # fmt: skip
    procs = _start_ranks(2, ["run", "spec.toml", "--out", "runs"], tmp_path, env_of)
    try:
        log = None
        while log is None or not log.is_file() or not log.read_text().strip():
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.1)
            found = list((tmp_path / "runs").glob("*/edm/train_log.jsonl"))
            log = found[0] if found else None
        first = log.parent.parent / "first" / "metrics.json"
        before = first.read_bytes()
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        assert time.monotonic() - killed < 60
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[1].wait() == -signal.SIGKILL
    assert procs[0].returncode not in (0, None)
    lines = [x for x in err.splitlines() if x.startswith("bench: error:")]
    assert len(lines) == 1 and "rank 1" in lines[0], err[-2000:]
    assert first.read_bytes() == before
    run = log.parent.parent
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    done = subprocess.run(
        [BENCH, "resume", str(run)], cwd=tmp_path, env=_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "first: kept" in done.stdout
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert first.read_bytes() == before


def _watchdogs(monkeypatch, n: int, timeout: float):
    """``n`` in-process watchdogs on one fresh store; ``_end`` records instead of exiting."""
    import datetime

    port = free_port()
    server = torch.distributed.TCPStore(
        "127.0.0.1",
        port,
        n,
        is_master=True,
        timeout=datetime.timedelta(seconds=30),
        wait_for_workers=False,
    )
    ended: dict[int, str] = {}
    event = threading.Event()

    def record(self, why):
        ended.setdefault(self.launch.rank, why)
        self._stop.set()  # the real one ends the process here
        event.set()

    monkeypatch.setattr(distributed.Watchdog, "_end", record)
    dogs = [
        distributed.Watchdog(
            Launch("torchrun", r, r, n, n, "127.0.0.1", port), timeout=timeout, interval=0.1
        )
        for r in range(n)
    ]
    return server, dogs, ended, event


def test_watchdog_names_a_failed_rank(monkeypatch):
    """A rank that reports a failure is named by the others at once; a rank that finished
    is not mistaken for a dead one."""
    _server, dogs, ended, event = _watchdogs(monkeypatch, 3, timeout=60.0)
    for d in dogs:
        d.start()
    dogs[2].finish()
    time.sleep(0.5)
    assert not ended
    dogs[1].fail("ValueError: bad input")
    assert event.wait(30)
    time.sleep(0.3)
    assert ended == {0: "rank 1 failed: ValueError: bad input"}


def test_watchdog_names_a_silent_rank(monkeypatch):
    """A rank whose heartbeat stops (as after SIGKILL) is named after the timeout."""
    _server, dogs, ended, event = _watchdogs(monkeypatch, 2, timeout=1.0)
    for d in dogs:
        d.start()
    time.sleep(0.5)
    dogs[1]._stop.set()  # its thread stops beating, as a killed process would
    assert event.wait(30)
    assert ended == {0: "rank 1 stopped responding (1 s without a sign of life)"}


# ---------------------------------------------------------------- detection


def test_detect_each_launcher():
    assert detect({}) == Launch("single")
    torchrun = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}
    torchrun |= {"MASTER_ADDR": "node7", "MASTER_PORT": "29400"}
    assert detect(torchrun) == Launch("torchrun", 3, 1, 4, 2, "node7", 29400)
    ompi = {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4"}
    ompi |= {"OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    assert detect(ompi) == Launch("mpi", 2, 0, 4, 2)
    mpich = {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"}
    assert detect(mpich) == Launch("mpi", 1, 1, 2, 2)
    slurm = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"}
    slurm |= {"SLURM_NODELIST": "gpu[07-10],cpu1", "SLURM_JOB_ID": "123456"}
    slurm |= {"SLURM_TASKS_PER_NODE": "2(x4)"}
    found = detect(slurm)
    assert (found.launcher, found.rank, found.local_rank, found.world_size) == ("slurm", 5, 1, 8)
    assert found.local_world_size == 2
    assert found.master_port == 20000 + 123456 % 20000
    if shutil.which("scontrol") is None:
        assert found.master_addr == "gpu07"
    # torchrun's variables win over Slurm's (torchrun inside an sbatch script).
    assert detect(slurm | torchrun).launcher == "torchrun"


def test_first_host_forms(tmp_path):
    assert first_host("node[03-05,9],gpu1", scontrol="") == "node03"
    assert first_host("a1,b2", scontrol="") == "a1"
    assert first_host("solo", scontrol="") == "solo"
    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "alpha\\nbeta\\n"\n')
    fake.chmod(0o755)
    assert first_host("whatever[1-2]", scontrol=str(fake)) == "alpha"


def test_bad_launch_variables_are_one_line_errors():
    with pytest.raises(GenbenchError, match=r"RANK=.x"):
        detect({"RANK": "x", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"})
    with pytest.raises(GenbenchError, match="MASTER_ADDR and MASTER_PORT"):
        detect({"RANK": "0", "WORLD_SIZE": "2"})


def test_shard_covers_every_item_once():
    for count in range(0, 12):
        for parts in range(1, 5):
            pieces = [shard(count, parts, i) for i in range(parts)]
            assert [i for p in pieces for i in p] == list(range(count))
            assert max(map(len, pieces)) - min(map(len, pieces)) <= 1


def test_local_device_per_rank():
    cpu = torch.device("cpu")
    assert distributed.local_device(cpu, Launch("torchrun", 1, 1, 2, 2, "a", 1)) == cpu
    if torch.cuda.device_count() < 4:
        with pytest.raises(GenbenchError, match="local rank 3 has no GPU"):
            distributed.local_device(torch.device("cuda"), Launch("torchrun", 3, 3, 4, 4, "a", 1))


# ---------------------------------------------------------------- bench env


def _env_lines(text: str) -> list[dict[str, str]]:
    rows = [dict(f.split("=", 1) for f in line.split()) for line in text.splitlines()]
    return sorted((r for r in rows if "launcher" in r), key=lambda r: int(r["rank"]))


def test_bench_env_one_process(cli):
    result = cli("env", "--device", "cpu")
    assert result.code == 0
    (row,) = _env_lines(result.out)
    assert row["launcher"] == "single" and row["world_size"] == "1" and row["device"] == "cpu"


@pytest.mark.parametrize(
    "launcher", ["torchrun", pytest.param("mpirun", marks=[pytest.mark.mpi, needs_mpi])]
)
def test_bench_env_under_launchers(launcher, tmp_path):
    proc = launch(launcher, 2, "env", "--device", "cpu", cwd=tmp_path)
    rows = _env_lines(proc.stdout)
    assert [r["rank"] for r in rows] == ["0", "1"]
    assert {r["launcher"] for r in rows} == {"torchrun" if launcher == "torchrun" else "mpi"}
    assert {r["world_size"] for r in rows} == {"2"} and {r["backend"] for r in rows} == {"gloo"}
    assert {r["all_reduce"] for r in rows} == {"ok"}
    assert len({r["master"] for r in rows}) == 1  # mpi4py gave rank 1 rank 0's address


def test_slurm_variables_as_srun_sets_them(tmp_path):
    """Two local processes with the SLURM_* variables srun gives two tasks on one node (and
    a stand-in `scontrol` on PATH): the rank, world size and master are detected, and the
    processes meet there."""
    port = free_port()
    while not 20000 <= port < 40000:
        port = free_port()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text('#!/bin/sh\nprintf "127.0.0.1\\n127.0.0.2\\n"\n')
    (fake / "scontrol").chmod(0o755)
    common = dict(
        SLURM_NTASKS="2", SLURM_NNODES="1", SLURM_NODELIST="vm[1-2]",
        SLURM_JOB_ID=str(port - 20000), SLURM_TASKS_PER_NODE="2",
        PATH=f"{fake}:{os.environ['PATH']}",
    )  # fmt: skip
    procs = _start_ranks(
        2,
        ["env", "--device", "cpu"],
        tmp_path,
        lambda r: common | dict(SLURM_PROCID=str(r), SLURM_LOCALID=str(r)),
    )
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    rows = _env_lines(outs[0][0] + outs[1][0])
    assert [r["rank"] for r in rows] == ["0", "1"]
    assert {r["launcher"] for r in rows} == {"slurm"}
    assert {r["master"] for r in rows} == {f"127.0.0.1:{port}"}
    assert {r["world_size"] for r in rows} == {"2"} and {r["all_reduce"] for r in rows} == {"ok"}
    assert [r["local_rank"] for r in rows] == ["0", "1"]
