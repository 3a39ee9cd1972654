"""`bench resume`: an interrupted run is finished in place without touching finished models."""

from __future__ import annotations

import json
from pathlib import Path

SECOND = '\n[models.small]\ngenerator = "dcgan"\nconfig = { ngf = 4, ndf = 4, nz = 8 }\n'


def _fid(model_dir: Path) -> float:
    return json.loads((model_dir / "metrics.json").read_text())["metrics"]["fid"]["value"]


def _complete_run(cli, tiny_spec, tmp_path) -> Path:
    out = tmp_path / "runs"
    spec = tiny_spec(steps=10, num_samples=64, extra=SECOND)
    result = cli("run", str(spec), "--out", str(out))
    assert result.code == 0, result.err
    (run_dir,) = out.iterdir()
    return run_dir


def _losses(log: str) -> list[dict]:
    """A training log without its clock readings."""
    rows = [json.loads(line) for line in log.splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time_s", "images_per_s")} for r in rows]


def _interrupt(run_dir: Path) -> None:
    """What a kill leaves: run.json still 'running', a temp file of an atomic write."""
    status = json.loads((run_dir / "run.json").read_text())
    status["status"] = "running"
    status.pop("finished")
    (run_dir / "run.json").write_text(json.dumps(status))
    (run_dir / "report.md.partial").write_text("torn")
    (run_dir / "report.md").unlink()


def test_resume_reruns_unfinished_models_and_keeps_finished_ones(cli, tiny_spec, tmp_path):
    run_dir = _complete_run(cli, tiny_spec, tmp_path)
    fid = {name: _fid(run_dir / name) for name in ("dcgan", "small")}
    kept = {p.name: p.stat().st_mtime_ns for p in (run_dir / "dcgan").iterdir()}
    log = (run_dir / "small" / "train_log.jsonl").read_text()
    _interrupt(run_dir)
    # "small" was killed while training: no metrics, a torn log, no finished checkpoint.
    for name in ("metrics.json", "timing.json", "samples.png", "checkpoint.safetensors"):
        (run_dir / "small" / name).unlink()
    (run_dir / "small" / "train_log.jsonl").write_text(log.splitlines()[0] + "\n")

    result = cli("resume", str(run_dir))
    assert result.code == 0, result.err
    assert "resume: dcgan: kept" in result.out and "resume: small: run again" in result.out
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "dcgan").iterdir()} == kept
    assert _fid(run_dir / "small") == fid["small"]  # same seeds: the uninterrupted result
    again = _losses((run_dir / "small" / "train_log.jsonl").read_text())
    assert again == _losses(log)  # the same training, started afresh, not appended to
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "complete" and len(status["resumed"]) == 1
    assert status["resumed"][0]["actions"] == {"dcgan": "kept", "small": "run"}
    assert (run_dir / "report.md").is_file() and not list(run_dir.glob("*.partial"))
    assert "small" in (run_dir / "report.md").read_text()


def test_resume_evaluates_a_finished_checkpoint_without_training(cli, tiny_spec, tmp_path):
    run_dir = _complete_run(cli, tiny_spec, tmp_path)
    metrics = json.loads((run_dir / "small" / "metrics.json").read_text())
    ckpt = run_dir / "small" / "checkpoint.safetensors"
    stamp = ckpt.stat().st_mtime_ns
    log = (run_dir / "small" / "train_log.jsonl").read_text()
    _interrupt(run_dir)
    (run_dir / "small" / "metrics.json").unlink()  # killed while evaluating

    result = cli("resume", str(run_dir))
    assert result.code == 0, result.err
    assert "resume: small: evaluated from its checkpoint" in result.out
    again = json.loads((run_dir / "small" / "metrics.json").read_text())
    assert ckpt.stat().st_mtime_ns == stamp  # loaded, not trained and written again
    assert (run_dir / "small" / "train_log.jsonl").read_text() == log
    assert again["metrics"]["fid"]["value"] == metrics["metrics"]["fid"]["value"]
    assert again["train_steps"] == 10 and again["train_time_s"] == metrics["train_time_s"]


def test_resume_of_a_complete_run_changes_nothing(cli, tiny_spec, tmp_path):
    run_dir = _complete_run(cli, tiny_spec, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    result = cli("resume", str(run_dir))
    assert result.code == 0 and "already complete" in result.out
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_resume_of_something_else_is_a_usage_error(cli, tmp_path):
    result = cli("resume", str(tmp_path))
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert "not a run directory" in result.err and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- hostile names

VICTIM_FILES = ("notes.txt", "metrics.json", "train_log.jsonl", "timing.json")


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in VICTIM_FILES:
        (victim / name).write_text("precious")
    return victim


def test_resume_of_a_spec_naming_a_directory_deletes_nothing(cli, tiny_spec, tmp_path):
    """A run directory handed over by someone else, whose spec.toml names an absolute
    directory (or the run itself, or a parent) as a model: resume refuses in one line and
    every file stays where it was."""
    run_dir = _complete_run(cli, tiny_spec, tmp_path)
    _interrupt(run_dir)
    victim = _victim(tmp_path)
    spec = (run_dir / "spec.toml").read_text()
    for key in (str(victim), "", "..", "../victim"):
        (run_dir / "spec.toml").write_text(spec.replace("[models.small", f'[models."{key}"'))
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        result = cli("resume", str(run_dir))
        assert result.code == 2, (key, result.err)
        assert "cannot name a results folder" in result.err
        assert len(result.err.strip().splitlines()) == 1
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert all((victim / name).read_text() == "precious" for name in VICTIM_FILES)


def test_a_spec_cannot_write_outside_out(cli, tiny_spec, tmp_path):
    text = tiny_spec(steps=2, num_samples=32).read_text()
    out = tmp_path / "deep" / "runs"
    for old, new in (
        ("[models.dcgan]", '[models."../../escape"]'),
        ("[models.dcgan]", f'[models."{tmp_path / "abs"}"]'),
        ('name = "tiny"', 'name = "../../escape"'),
    ):
        spec = tmp_path / "hostile.toml"
        spec.write_text(text.replace(old, new))
        result = cli("run", str(spec), "--out", str(out))
        assert result.code == 2 and "cannot name a results folder" in result.err, result.err
        assert not out.exists() and not (tmp_path / "escape").exists()
        assert not (tmp_path / "abs").exists()
