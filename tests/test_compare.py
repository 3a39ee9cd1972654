"""``bench compare``: the two-condition regression rule, result files, git revisions."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from genbench.benchmarks.compare.git import default_base
from genbench.benchmarks.compare.revisions import REPEATS, load_results
from genbench.benchmarks.compare.stats import compare_records, compare_samples, decide
from genbench.benchmarks.timing import summarize
from genbench.core.errors import GenbenchError
from genbench.store.records import SpeedResult

ROOT = Path(__file__).resolve().parent.parent


def realistic(rng: np.random.Generator, n: int, scale: float) -> list[float]:
    """Timing noise as seen on a shared CPU: 5% log-normal jitter plus, one repeat in
    twenty, an outlier 1.2-2x slower (another process took the core)."""
    x = scale * rng.lognormal(0.0, 0.05, n)
    spikes = rng.random(n) < 0.05
    x[spikes] *= rng.uniform(1.2, 2.0, spikes.sum())
    return x.tolist()


def test_flags_a_30_percent_slowdown_in_realistic_noise():
    rng = np.random.default_rng(0)
    trials = 300
    flagged = sum(
        decide(realistic(rng, REPEATS, 1.0), realistic(rng, REPEATS, 1.3))[2] == "regression"
        for _ in range(trials)
    )
    assert flagged / trials >= 0.97


def test_false_alarm_rate_of_one_distribution_is_below_alpha():
    rng = np.random.default_rng(1)
    trials = 1000
    alarms = naive = 0
    for _ in range(trials):
        base, head = realistic(rng, REPEATS, 1.0), realistic(rng, REPEATS, 1.0)
        alarms += decide(base, head)[2] == "regression"
        naive += head[0] / base[0] > 1.10  # one sample per side against the same threshold
    assert alarms / trials <= 0.002
    # what a single-point alert (github-action-benchmark style) would have raised
    assert naive / trials > 0.05


def test_improvement_and_small_changes():
    rng = np.random.default_rng(2)
    base = realistic(rng, REPEATS, 1.0)
    assert decide(base, realistic(rng, REPEATS, 0.6))[2] == "improvement"
    # 5% slower: significant with tight noise, but below the 10% threshold
    tight = np.random.default_rng(3)
    b = (1.0 + 0.002 * tight.standard_normal(20)).tolist()
    h = (1.05 + 0.002 * tight.standard_normal(20)).tolist()
    ratio, p, verdict = decide(b, h)
    assert p < 0.002 and ratio == pytest.approx(1.05, abs=0.01) and verdict == "unchanged"
    # 50% slower but two samples each: never significant at 0.002
    assert decide([1.0, 1.01], [1.5, 1.52])[2] == "unchanged"


def test_comparison_fields_and_confidence_interval():
    rng = np.random.default_rng(4)
    base, head = realistic(rng, 40, 1.0), realistic(rng, 40, 1.3)
    c = compare_samples(base, head, key={"model": "m"})
    assert c.verdict == "regression" and c.key == {"model": "m"}
    assert c.ratio == pytest.approx(np.median(head) / np.median(base))
    assert c.ci_low < c.ratio < c.ci_high
    assert c.ci_low > 1.15 and c.ci_high < 1.45  # the true ratio 1.3 is inside
    assert (c.n_base, c.n_head) == (40, 40) and c.p_value < 1e-6


# --------------------------------------------------------------------------- files


def record(model: str, raw: list[float], **extra) -> SpeedResult:
    r = {
        "model": model,
        "generator": "dcgan",
        "batch_size": 64,
        "nfe": 1,
        "steps": None,
        "precision": "fp32",
        "channels_last": False,
        "compile": "none",
        "cuda_graphs": False,
        "device": "cpu",
        "raw_s": raw,
        **summarize(raw, 64, 1),
    }
    r.update(extra)
    return SpeedResult.model_validate(r)


def write_speed(path: Path, records: list[SpeedResult]) -> Path:
    results = [r.model_dump(mode="json") for r in records]
    path.write_text(json.dumps({"kind": "speed", "environment": {}, "results": results}))
    return path


def test_records_are_matched_by_case(tmp_path):
    rng = np.random.default_rng(5)
    base = [record("a", realistic(rng, 20, 1.0)), record("gone", realistic(rng, 20, 1.0))]
    head = [
        record("a", realistic(rng, 20, 1.4)),
        record("a", realistic(rng, 20, 0.5), precision="bf16"),  # a different case
        record("new", realistic(rng, 20, 1.0)),
    ]
    rows, notes = compare_records(base, head)
    assert [(r.key["model"], r.key["precision"], r.verdict) for r in rows] == [
        ("a", "fp32", "regression")
    ]
    assert sorted(n.split(":")[0] for n in notes) == [
        "only in base (not compared)",
        "only in head (not compared)",
        "only in head (not compared)",
    ]


def test_a_changed_network_is_noted_not_gated():
    """Another parameter count is another architecture: its speed is different work."""
    rng = np.random.default_rng(7)
    base = [record("a", realistic(rng, 20, 1.0), parameters=1000)]
    rows, notes = compare_records(base, [record("a", realistic(rng, 20, 1.5), parameters=1200)])
    assert rows == [] and notes[0].startswith("network changed (not compared)")
    assert "1,000 -> 1,200 parameters" in notes[0]
    same = [record("a", realistic(rng, 20, 1.5), parameters=1000)]
    (row,) = compare_records(base, same)[0]
    assert row.verdict == "regression"  # the same network, slower: still caught


def test_cli_exit_codes_on_files(cli, tmp_path):
    rng = np.random.default_rng(6)
    base = write_speed(tmp_path / "base.json", [record("a", realistic(rng, 20, 1.0))])
    slow = write_speed(tmp_path / "slow.json", [record("a", realistic(rng, 20, 1.3))])
    same = write_speed(tmp_path / "same.json", [record("a", realistic(rng, 20, 1.0))])
    result = cli("compare", str(base), str(slow))
    assert result.code == 1, result.err
    assert "REGRESSION" in result.out and "compare: FAIL, 1 of 1 cases regressed" in result.out
    assert "ratio [95% CI]" in result.out
    assert result.err.startswith("bench: error: 1 of 1 cases regressed: a batch 64")
    result = cli("compare", str(base), str(same))
    assert result.code == 0, result.err
    assert "unchanged" in result.out and "compare: PASS" in result.out
    # a directory holding speed.json works as well
    (tmp_path / "run").mkdir()
    write_speed(tmp_path / "run" / "speed.json", [record("a", realistic(rng, 20, 1.0))])
    assert cli("compare", str(base), str(tmp_path / "run")).code == 0


def test_cli_rejects_a_file_that_is_not_a_speed_result(cli, tmp_path):
    bad = tmp_path / "timing.json"
    bad.write_text(json.dumps({"raw_s": [1.0]}))
    good = write_speed(tmp_path / "ok.json", [])
    result = cli("compare", str(bad), str(good))
    assert result.code == 2
    assert result.err.strip().startswith("bench: error: ") and "not a bench speed result" in (
        result.err
    )
    with pytest.raises(GenbenchError):
        load_results(tmp_path / "missing.json")


# --------------------------------------------------------------------------- git revisions


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def test_default_base_is_merge_base_else_parent(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "f").write_text("1")
    first = commit(repo, "one")
    assert default_base(repo) is None  # no parent, no remote: nothing to compare
    (repo / "f").write_text("2")
    second = commit(repo, "two")
    assert default_base(repo) == first  # on main without origin: HEAD~1
    git(repo, "update-ref", "refs/remotes/origin/main", second)
    assert default_base(repo) == first  # on origin/main itself: HEAD~1
    git(repo, "checkout", "-q", "-b", "feature")
    (repo / "f").write_text("3")
    commit(repo, "three")
    (repo / "f").write_text("4")
    commit(repo, "four")
    assert default_base(repo) == second  # a branch: its merge base with origin/main


SLOW_PATCH = """

import time as _time

_fast_sample = DCGAN.sample


def _slow_sample(self, *args, **kwargs):
    _time.sleep(0.25)  # dwarfs a tiny batch's compute even on a loaded machine
    return _fast_sample(self, *args, **kwargs)


DCGAN.sample = _slow_sample
"""


@pytest.mark.slow
def test_compare_revisions_end_to_end(cli, tmp_path, tiny_spec, monkeypatch):
    """Three commits: before bench speed, with it, with a slower DCGAN. Workers run each
    revision's own code, interleaved; the first pair passes with a reason, the second
    fails with exit 1, and the same code compares as nothing."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for pkg in ("genbench", "benchmarks", "generators", "eval", "reports", "vendor"):
        shutil.copytree(  # genbench/<folder> are symlinks to the folders: keep them links
            ROOT / pkg, repo / pkg, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    git(repo, "init", "-q", "-b", "main")
    speed_py = (repo / "benchmarks" / "speed_worker.py").read_text()
    (repo / "benchmarks" / "speed_worker.py").unlink()
    before = commit(repo, "before bench speed")
    (repo / "benchmarks" / "speed_worker.py").write_text(speed_py)
    with_speed = commit(repo, "bench speed")
    dcgan = repo / "generators" / "dcgan.py"
    dcgan.write_text(dcgan.read_text() + SLOW_PATCH)
    slower = commit(repo, "slower dcgan")

    spec = str(tiny_spec())
    monkeypatch.chdir(repo)
    # One thread per worker: on a shared, loaded CPU two-thread barriers stall for tens of ms
    # and would swamp the tiny model's compute with noise.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common = ("--spec", spec, "--device", "cpu", "--batch-sizes", "2", "--repeats", "10")
    common += ("--sessions", "2")  # 5 rounds on each of two fresh worker pairs
    common += ("--out", str(tmp_path / "o"))

    result = cli("compare", before, with_speed, *common)
    assert result.code == 0, result.err
    assert "PASS, nothing to compare" in result.out and "no bench speed worker" in result.out

    result = cli("compare", with_speed, with_speed, *common)
    assert result.code == 0 and "same code" in result.out

    result = cli("compare", with_speed, ".", *common)  # "." = the clean working tree
    assert result.code == 1, result.err + result.out
    assert "REGRESSION" in result.out
    (where,) = (tmp_path / "o").glob("compare-*")
    doc = json.loads((where / "compare.json").read_text())
    assert doc["base"] == with_speed and doc["head"] == "."
    (row,) = doc["rows"]
    assert row["verdict"] == "regression" and row["ratio"] > 1.1 and row["p_value"] < 0.002
    for side, commit_id in (("base", with_speed), ("head", slower)):
        (result,) = json.loads((where / f"{side}.json").read_text())["results"]
        assert len(result["raw_s"]) == 10 and result["commit"] == commit_id
        assert result["sessions"] == 2 and result["median_s"] == np.median(result["raw_s"])


def test_worker_reports_only_the_cases_both_revisions_timed(tiny_spec):
    """A model one revision lacks (say, a generator new in head) is never timed by the
    driver; the other worker must still finish and report only its timed cases."""
    from genbench.benchmarks.speed_worker import Worker

    extra = '\n[models.other]\ngenerator = "dcgan"\nconfig = { ngf = 4, ndf = 4, nz = 8 }\n'
    worker = Worker()
    setup = worker.handle(
        {
            "op": "setup",
            "spec": str(tiny_spec(extra=extra)),
            "models": ["dcgan", "other"],
            "device": "cpu",
            "batch_sizes": [2],
            "steps": None,
            "fast": {},
            "warmup": 0,
        }
    )
    assert [c["model"] for c in setup["cases"]] == ["dcgan", "other"]
    assert len(worker.handle({"op": "time", "case": 1, "n": 3})["raw_s"]) == 3
    (record,) = worker.handle({"op": "finish"})["records"]
    assert record["model"] == "other" and len(record["raw_s"]) == 3
