"""A run killed with SIGKILL at any moment leaves only complete, parseable result files."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from tests import spawn

pytestmark = pytest.mark.slow


def _check_every_file(root: Path) -> int:
    """Parse every result file under ``root``; returns how many were checked."""
    checked = 0
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            text = path.read_text()
            assert text.endswith("\n"), f"{path} ends in a torn line"
            for line in text.splitlines():
                json.loads(line)
        elif path.suffix == ".png":
            with Image.open(path) as img:
                img.verify()
        elif path.suffix == ".safetensors":
            load_file(str(path))
        elif path.suffix == ".html":
            assert path.read_text().rstrip().endswith("</html>"), f"{path} is cut short"
        elif path.suffix == ".md":
            assert path.read_text().startswith("#"), f"{path} is not a report"
        elif path.suffix == ".toml":
            import tomllib

            tomllib.loads(path.read_text())
        else:
            # A temp file of an atomic write, or the dead run's lock (taken over on resume).
            assert path.name.endswith(".partial") or path.name == ".lock", f"unexpected {path}"
            continue
        checked += 1
    return checked


def _kill_when(spec: Path, out: Path, trigger: str | None, delay: float) -> None:
    """Start a run; SIGKILL it ``delay`` s after file ``trigger`` appears (or after start).

    It waits on the run's progress, never on a clock: on a loaded machine the file just
    appears later (the loop ends anyway when the run does)."""
    proc = spawn.bench("run", str(spec), "--out", str(out))
    try:
        while trigger is not None and proc.poll() is None:
            if any(out.rglob(trigger)):
                break
            time.sleep(0.002)
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


# Kill moments spread over start-up, training, checkpointing, sampling, timing and the end:
# right after each kind of file first appears, while the next one is being produced.
MOMENTS = [
    ("environment.json", 0.0),
    ("train_log.jsonl", 0.3),
    ("checkpoint.safetensors", 0.0),
    ("samples.png", 0.0),
    ("timing.json", 0.0),
]


def _fid(out: Path) -> float:
    (metrics,) = out.rglob("metrics.json")
    return json.loads(metrics.read_text())["metrics"]["fid"]["value"]


def test_sigkill_at_many_moments_leaves_no_truncated_file_and_resume_finishes(
    cli, tiny_spec, tmp_path
):
    spec = tiny_spec(steps=150, num_samples=300)
    seen: set[str] = set()
    interrupted = 0
    resumed_fids = []
    for i, (trigger, delay) in enumerate(MOMENTS):
        out = tmp_path / f"runs{i}"
        _kill_when(spec, out, trigger, delay)
        assert out.exists(), f"the run was killed before writing anything (trigger {trigger})"
        _check_every_file(out)
        seen |= {p.name for p in out.rglob("*") if p.is_file()}
        status_files = list(out.rglob("run.json"))  # absent if killed before it was written
        done = status_files and json.loads(status_files[0].read_text())["status"] == "complete"
        interrupted += not done
        (run_dir,) = out.iterdir()
        if not done and (run_dir / "spec.toml").is_file():
            result = cli("resume", str(run_dir))
            assert result.code == 0, (trigger, result.err)
            _check_every_file(out)
            status = json.loads((run_dir / "run.json").read_text())
            assert status["status"] == "complete" and (run_dir / "report.html").is_file()
            resumed_fids.append(_fid(out))
    # the last moments race the final writes; most kills must land mid-run
    assert interrupted >= len(MOMENTS) - 1
    assert {"spec.toml", "train_log.jsonl", "checkpoint.safetensors", "samples.png"} <= seen
    # Retrained from scratch or evaluated from the finished checkpoint, every resumed run
    # ends where an uninterrupted one does.
    reference = cli("run", str(spec), "--out", str(tmp_path / "whole"))
    assert reference.code == 0, reference.err
    assert len(resumed_fids) >= len(MOMENTS) - 2
    assert resumed_fids == [_fid(tmp_path / "whole")] * len(resumed_fids)
