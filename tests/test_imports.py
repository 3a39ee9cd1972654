"""What each command loads: ``bench eval`` never imports the generators or diffusers,
``bench report`` not even torch, ``import genbench`` nothing heavy until it is used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "schema_v1"

PROBE = """
import json, sys
from genbench.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _loaded(*args: str, cwd: Path) -> tuple[int, set[str]]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["code"], set(result["modules"])


def _heavy(modules: set[str], *names: str) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_bench_eval_imports_neither_the_generators_nor_diffusers(tmp_path: Path):
    rng = np.random.default_rng(0)
    for name in ("real", "fake"):
        np.savez(tmp_path / f"{name}.npz", rng.integers(0, 256, (24, 16, 16, 1), dtype=np.uint8))
    code, modules = _loaded(
        "eval", "real.npz", "fake.npz", "--extractor", "digits", "--device", "cpu",
        "--metrics", "fid,is", "--num-workers", "0", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0 and (tmp_path / "eval.json").is_file()
    assert "genbench.eval.evaluate" in modules and "torch" in modules  # it did evaluate
    assert _heavy(modules, "genbench.generators", "diffusers") == []
    # Of the harness only the launch detection (several processes), which needs core alone.
    assert _heavy(modules, "genbench.benchmarks") == [
        "genbench.benchmarks",
        "genbench.benchmarks.distributed",
    ]


def test_bench_report_imports_no_torch(tmp_path: Path):
    code, modules = _loaded("report", str(FIXTURES / "tiny-20261202-233147-5b5f"), cwd=tmp_path)
    assert code == 0 and "genbench.reports.report" in modules
    assert _heavy(modules, "torch", "genbench.generators", "genbench.eval", "diffusers") == []


def test_import_genbench_is_light_until_used():
    probe = (
        "import sys, genbench; before = 'torch' in sys.modules; genbench.load_run; "
        "print(before, 'torch' in sys.modules, 'genbench.generators' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False", "False"], out.stderr
