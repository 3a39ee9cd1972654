"""The results store: atomic writes, typed versioned records, files of older versions, and
names that never become paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from genbench.benchmarks.spec import read_spec
from genbench.benchmarks.speed import machine_id
from genbench.core import io
from genbench.core.errors import StoreError
from genbench.store import files
from genbench.store.records import SCHEMA_VERSION, Timing
from genbench.store.runs import load_run, load_speed


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "a" / "m.json"
    io.write_json_atomic(path, {"x": 1})
    io.write_json_atomic(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]


def test_failed_write_keeps_previous_content_and_leaves_no_partial(tmp_path):
    path = tmp_path / "m.json"
    io.write_json_atomic(path, {"old": True})

    def half_then_crash(tmp):
        tmp.write_text('{"new": tr')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.write_with_atomic(path, half_then_crash)
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_append_jsonl_writes_whole_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    for i in range(3):
        io.append_jsonl(path, {"step": i, "loss": 0.5 * i})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2]


def test_run_dirs_are_unique(tmp_path):
    a = files.new_run_dir(tmp_path, "x")
    b = files.new_run_dir(tmp_path, "x")
    assert a != b and a.name.startswith("x-") and a.is_dir()


# --------------------------------------------------------------------------- typed records

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "schema_v1"
V1_RUN = FIXTURES / "tiny-20261202-233147-5b5f"
V1_SPEED = FIXTURES / "speed-tiny-20261202-233155-4dd5"


def test_version_1_files_still_load_in_the_current_meaning():
    """Files written before records had a version (commit 70954d3) load as typed records,
    with DDPM's guidance w = 0.5 read as the scale s = 1.5 and its "2,3" sections as "2+3"."""
    run = load_run(V1_RUN)
    assert run.status.complete and list(run.models) == ["dcgan", "ddpm"]
    ddpm = run["ddpm"].metrics
    assert ddpm.schema_version == SCHEMA_VERSION
    assert (ddpm.sample.guidance, ddpm.sample.steps) == (1.5, "2+3")
    assert run.spec["models"]["ddpm"]["sample"]["guidance"] == 1.5
    assert run.spec["models"]["ddpm"]["sample"]["steps"] == "2+3"
    assert "steps" not in run.spec["models"]["dcgan"]["sample"]  # DCGAN has no steps
    dcgan = run["dcgan"]
    assert dcgan.value("fid") == pytest.approx(4198.879158160005)
    assert dcgan.metrics.protocol.reference.count == 1437
    assert set(dcgan.metrics.metrics) == {"fid", "is", "kid", "pr"}
    assert dcgan.metrics.metrics["pr"].k == 3
    assert [e.step for e in dcgan.train_log] == [2, 4] and "loss_d" in dcgan.train_log[0].losses
    assert dcgan.timing.batch_size == 8 and len(dcgan.timing.raw_s) == 2
    assert run.environment.torch.startswith("2.14.1")
    speed = load_speed(V1_SPEED)
    (result,) = speed.run.results
    assert result.model == "dcgan" and len(result.raw_s) == 10
    # the machine keeps its id across schema versions
    assert machine_id(speed.run.environment) == result.machine
    assert [r.model for r in files.read_speed_history(FIXTURES / "speed_history.jsonl")] == [
        "dcgan"
    ]
    evaluated = files.read_eval(FIXTURES / "eval.json")
    assert evaluated.value("fid") == pytest.approx(73.19218029471057)
    assert evaluated.protocol.fake.path == "b.npz"


def test_a_version_1_run_renders_and_resumes_its_spec_in_the_current_meaning(cli, tmp_path):
    report = cli("report", str(V1_RUN), str(V1_SPEED))
    assert report.code == 0, report.err
    assert "4,198.88" in report.out and "| dcgan |" in report.out
    spec, _ = read_spec(str(V1_RUN / "spec.toml"), version=1)
    assert spec.models["ddpm"].sample["guidance"] == 1.5
    assert spec.models["ddpm"].sample["steps"] == "2+3"


def test_version_2_accumulation_and_ddgan_recipe_keep_their_meaning():
    """Version 3 moved accumulation from each generator's config to ``[train] grad_accum``
    and gave DDGAN the paper's cosine decay and flips: a version-2 file means what it did."""
    from genbench.store.versions import upgrade_model_metrics, upgrade_spec

    spec = {
        "schema_version": 2,
        "models": {
            "ddgan": {"generator": "ddgan", "config": {"grad_accum": 4}, "train": {"steps": 9}},
            "vdpm": {"generator": "vdpm", "config": {"num_accum": 2}},
            "edm": {"generator": "edm", "config": {"grad_accum": 1, "lr": 1e-3}},
        },
    }
    up = upgrade_spec(spec, 2)["models"]
    assert up["ddgan"]["config"] == {"lr_decay": "constant", "hflip": False}
    assert up["ddgan"]["train"] == {"steps": 9, "grad_accum": 4}
    assert up["vdpm"] == {"generator": "vdpm", "config": {}, "train": {"grad_accum": 2}}
    assert up["edm"]["config"] == {"lr": 1e-3} and up["edm"]["train"] == {"grad_accum": 1}
    assert spec["models"]["ddgan"]["config"] == {"grad_accum": 4}  # the input is not changed
    metrics = upgrade_model_metrics(
        {"schema_version": 2, "generator": "ddgan", "config": {"grad_accum": 3, "nz": 8}}
    )
    assert metrics["grad_accum"] == 3 and metrics["schema_version"] == SCHEMA_VERSION
    assert metrics["config"] == {"nz": 8, "lr_decay": "constant", "hflip": False}


def test_a_file_of_an_unknown_schema_version_is_a_one_line_error(cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(V1_RUN, run)
    metrics = run / "dcgan" / "metrics.json"
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "schema_version": 99}))
    result = cli("report", str(run))
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert f"{metrics}: written by results schema version 99" in result.err
    assert "reads versions 1 to 3" in result.err
    with pytest.raises(StoreError, match="schema version 99"):
        load_run(run)


def test_records_round_trip_and_refuse_unknown_keys(tmp_path):
    run = load_run(V1_RUN)
    for record in (run["ddpm"].metrics, run["dcgan"].timing, run.status, run.environment):
        path = files.write_record(tmp_path / "r.json", record)
        assert files.read_record(path, type(record)) == record
    data = json.loads((V1_RUN / "dcgan" / "timing.json").read_text())
    (tmp_path / "bad.json").write_text(json.dumps({**data, "imagse_per_s": 3.0}))
    with pytest.raises(StoreError, match="imagse_per_s: Extra inputs are not permitted"):
        files.read_record(tmp_path / "bad.json", Timing)


@pytest.mark.parametrize("name", ["../../x", "", "/abs/dir", ".hidden", "a/b", "-rf", "x" * 200])
def test_names_from_specs_never_become_paths(name, tmp_path):
    with pytest.raises(StoreError, match="cannot name a results folder"):
        files.model_dir(tmp_path, name)
    with pytest.raises(StoreError, match="cannot name a results folder"):
        files.new_run_dir(tmp_path, name)
    assert list(tmp_path.iterdir()) == []
