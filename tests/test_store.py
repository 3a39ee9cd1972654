"""Atomic writes: a failure mid-write never leaves a truncated file or damages an old one."""

from __future__ import annotations

import json

import pytest

from genbench.core import io
from genbench.store import files


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
