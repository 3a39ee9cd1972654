"""The command line's own options and the files a user or packager looks for."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_version_prints_the_installed_version(cli):
    result = cli("--version")
    assert result.code == 0
    assert result.out.strip() == f"bench (genbench) {version('genbench')}"


def test_dash_h_is_help_everywhere(cli):
    top = cli("-h")
    assert top.code == 0 and "Usage: bench" in top.out and "run" in top.out
    sub = cli("run", "-h")
    assert sub.code == 0 and "--checkpoint" in sub.out and "--reference-stats" in sub.out


def test_bench_alone_shows_the_help_not_errors(cli):
    """No command: the help on stderr, plain (not as `bench: error:` lines), exit 2."""
    result = cli()
    assert result.code == 2 and result.err.startswith("Usage: bench")
    assert "bench: error" not in result.err and "run" in result.err


def test_license_and_citation_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    license_text = (ROOT / "LICENSE").read_text()
    assert project["license"] == "MIT" and license_text.startswith("MIT License")
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["version"] == project["version"] and citation["license"] == "MIT"
    assert citation["title"] and citation["authors"]


def test_a_real_run_prints_no_third_party_warnings(tiny_spec, tmp_path) -> None:
    # In its own process (pytest would swallow warnings in-process): a run that trains,
    # samples, times and evaluates writes progress bars and results, never a library's
    # DeprecationWarning / UserWarning / FutureWarning.
    from tests import spawn

    run = spawn.bench("run", str(tiny_spec(steps=3, num_samples=64)), "--out", str(tmp_path / "r"))
    assert run.wait() == 0, run.stderr()
    noisy = [line for line in run.stderr().splitlines() if "Warning" in line or "warn(" in line]
    assert noisy == [], noisy
    (done,) = (tmp_path / "r").iterdir()
    assert (done / "dcgan" / "metrics.json").is_file()
