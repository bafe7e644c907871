"""platform/files.py: a file is replaced whole or not at all."""

import json

import pytest

from platform.files import write_atomic, write_json_atomic


def test_write_json_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("old")
    write_json_atomic(path, {"a": 1, "p": tmp_path})
    assert path.read_text(encoding="utf-8") == json.dumps({"a": 1, "p": str(tmp_path)}, indent=1)
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "table.parquet"
    path.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(path, fail)
    assert path.read_text() == "old"
