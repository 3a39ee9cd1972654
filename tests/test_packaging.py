"""One import name: the wheel installs only ``genbench``, the layers of DESIGN.md hold on
what it installs (import-linter), and nothing in a user's working directory shadows it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CARD_FOLDERS = ("benchmarks", "generators", "eval", "reports", "vendor")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel . --no-deps`` of this checkout (the venv's setuptools: no download)."""
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("genbench-*.whl")
    return found


@pytest.fixture(scope="module")
def tree(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel unpacked, as site-packages would hold it."""
    out = tmp_path_factory.mktemp("tree")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(out)
    return out


def _packages(folder: Path, prefix: str) -> set[str]:
    return {
        prefix + "/" + str(p.parent.relative_to(folder)).replace("\\", "/")
        for p in folder.rglob("__init__.py")
        if "__pycache__" not in p.parts
    }


def test_the_wheel_installs_one_top_level_package(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"genbench"}
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(top_level).decode().split() == ["genbench"]
    # Every package of the checkout is in it, under genbench/, with its data files.
    expected = {p.replace("/.", "") for p in _packages(ROOT / "genbench", "genbench")}
    for folder in CARD_FOLDERS:
        expected |= {p.replace("/.", "") for p in _packages(ROOT / folder, f"genbench/{folder}")}
    shipped = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    assert shipped == expected
    for data in (
        "genbench/benchmarks/specs/smoke.toml",
        "genbench/eval/weights/digits_cnn.safetensors",
        "genbench/reports/templates/report.html.j2",
        "genbench/vendor/published.toml",
    ):
        assert data in names
    assert not any(n.startswith("genbench/tests") for n in names)


def _bench(cwd: Path, *args: str, module: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "genbench"] if module else [_bench_script()]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [*command, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=900
    )


def _bench_script() -> str:
    script = Path(sys.executable).with_name("bench")
    return str(script) if script.exists() else shutil.which("bench") or "bench"


def _fid(out: Path) -> float:
    (metrics,) = out.glob("*/dcgan/metrics.json")
    return json.loads(metrics.read_text())["metrics"]["fid"]["value"]


def test_a_users_eval_py_and_benchmarks_folder_change_nothing(tmp_path: Path):
    """`bench run smoke --models gan --train-steps 20` from a clean folder, and as
    `python -m genbench` (which puts the working directory first on sys.path) from a folder
    holding an eval.py, a generators.py and a benchmarks/ package that break any import of
    those names: both succeed with the same FID (same seeds, same numbers)."""
    hostile = tmp_path / "hostile"
    (hostile / "benchmarks").mkdir(parents=True)
    (hostile / "eval.py").write_text("raise RuntimeError('the user eval.py was imported')\n")
    (hostile / "benchmarks" / "__init__.py").write_text("raise RuntimeError('shadowed')\n")
    (hostile / "generators.py").write_text("raise RuntimeError('shadowed')\n")
    clean = tmp_path / "clean"
    clean.mkdir()
    args = ("run", "smoke", "--models", "gan", "--train-steps", "20", "--device", "cpu")
    fids = []
    for cwd, module in ((clean, False), (hostile, True)):
        out = tmp_path / f"runs-{cwd.name}"
        result = _bench(cwd, *args, "--out", str(out), module=module)
        assert result.returncode == 0, result.stderr[-2000:]
        fids.append(_fid(out))
    assert fids[0] == fids[1]


# --------------------------------------------------------------------------- layers

LINT = ROOT / ".ci" / "lint-layers"


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(LINT), str(tree)], capture_output=True, text=True, env=env, timeout=300
    )


def test_the_import_layers_hold_on_the_installed_tree(tree: Path):
    result = _lint(tree)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 5 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # the bottom layer reaching up into the harness
        ("genbench/core/errors.py", "import genbench.benchmarks.runner", "Layers"),
        # a generator reading the results store
        ("genbench/generators/dcgan.py", "import genbench.store.files", "Generators import"),
        # reports reaching for torch
        ("genbench/reports/fmt.py", "import torch", "Reports read"),
        # a cycle inside the harness: timing <-> speed
        ("genbench/benchmarks/timing.py", "import genbench.benchmarks.speed", "cycles"),
    ],
)
def test_an_inverted_import_breaks_a_contract(tree: Path, tmp_path: Path, module, line, broken):
    scratch = tmp_path / "tree"
    shutil.copytree(tree, scratch)
    target = scratch / module
    target.write_text(target.read_text() + f"\n{line}  # deliberately inverted\n")
    result = _lint(scratch)
    assert result.returncode != 0
    verdicts = {
        line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1]
        for line in result.stdout.splitlines()
        if line.endswith((" KEPT", " BROKEN"))
    }
    (contract,) = [name for name in verdicts if name.startswith(broken) or broken in name]
    assert verdicts[contract] == "BROKEN", result.stdout[-3000:]
    assert list(verdicts.values()).count("BROKEN") >= 1
