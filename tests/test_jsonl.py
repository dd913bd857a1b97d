"""The one JSONL reader: rows with their place, bad lines named with the caller's error type."""

import pytest

from swe_aem.data.instances import DatasetError
from swe_aem.jsonl import read_jsonl, write_jsonl


def test_round_trip_skips_blank_lines_and_names_places(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"a": 1}])
    with path.open("a") as fh:
        fh.write("\n   \n")
    write_jsonl(path, [{"b": [2]}], append=True)
    assert list(read_jsonl(path)) == [(f"{path}:1", {"a": 1}), (f"{path}:4", {"b": [2]})]


def test_bad_line_and_missing_file_raise_the_callers_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ok": 1}\n{"cut": \n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2: not valid JSON"):
        list(read_jsonl(path, error=DatasetError))
    with pytest.raises(ValueError, match="does not exist"):
        list(read_jsonl(tmp_path / "none.jsonl"))
