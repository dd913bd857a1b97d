"""Instance loading: files in the SWE-bench schema, malformed rows, the hub, the local suite."""

from __future__ import annotations

import json
import re

import pytest

from swe_aem.data import load_instances
from swe_aem.data.instances import DatasetError, Instance, official_image

ROW = {
    "instance_id": "astropy__astropy-12907",
    "repo": "astropy/astropy",
    "base_commit": "d16bfe05a744909de4b27f5875fe0d4ed41ce607",
    "problem_statement": "separability matrix is wrong for nested models",
    "version": "4.3",
    "patch": "diff --git a/x b/x\n",
    "test_patch": "diff --git a/t b/t\n",
    "FAIL_TO_PASS": json.dumps(["t.py::test_a"]),  # the hub stores these as JSON strings
    "PASS_TO_PASS": json.dumps(["t.py::test_b", "t.py::test_c"]),
    "hints_text": "",
    "created_at": "2022-03-03T15:14:54Z",
    "environment_setup_commit": "298ccb478e6bf092953bca67a3d29dc6c35f6752",
    # swebench 5.x columns: the row carries how it is run and graded
    "eval_script": "#!/bin/bash\nset -uxo pipefail\ncd /testbed\n: '>>>>> Start Test Output'\n"
                   "pytest -rA t.py\n: '>>>>> End Test Output'\n",
    "image": "swebench/sweb.eval.x86_64.astropy_1776_astropy-12907:latest",
    "log_parser": "parse_log_astropy",
    "eval_type": "pass_and_fail",
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_jsonl_with_json_string_lists(tmp_path):
    [inst] = load_instances(write_jsonl(tmp_path / "d.jsonl", [ROW]))
    assert isinstance(inst, Instance)
    assert inst.FAIL_TO_PASS == ("t.py::test_a",)
    assert inst.PASS_TO_PASS == ("t.py::test_b", "t.py::test_c")
    assert inst.image == "swebench/sweb.eval.x86_64.astropy_1776_astropy-12907:latest"
    assert inst.extra["environment_setup_commit"] == ROW["environment_setup_commit"]
    row = inst.to_swebench()
    assert row["FAIL_TO_PASS"] == ["t.py::test_a"] and row["environment_setup_commit"]


def test_json_and_parquet_give_the_same_instances(tmp_path):
    import datasets

    rows = [ROW, {**ROW, "instance_id": "x__y-1", "FAIL_TO_PASS": json.dumps([])}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    from_json = load_instances(str(tmp_path / "d.json"))
    from_parquet = load_instances(str(tmp_path / "d.parquet"))
    assert from_json == from_parquet
    assert [i.instance_id for i in from_json] == ["astropy__astropy-12907", "x__y-1"]


def test_real_lists_accepted(tmp_path):
    row = {**ROW, "FAIL_TO_PASS": ["a"], "PASS_TO_PASS": []}
    [inst] = load_instances(write_jsonl(tmp_path / "d.jsonl", [row]))
    assert inst.FAIL_TO_PASS == ("a",) and inst.PASS_TO_PASS == ()


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"repo": None}, "'repo'"),
        ({"base_commit": 7}, "'base_commit'"),
        ({"FAIL_TO_PASS": "[not json"}, "'FAIL_TO_PASS' is not a JSON list"),
        ({"PASS_TO_PASS": json.dumps({"a": 1})}, "'PASS_TO_PASS' must be a list"),
        ({"version": 4.3}, "'version' must be a string"),
    ],
)
def test_malformed_row_names_row_and_field(tmp_path, change, needle):
    bad = {**ROW, "instance_id": "bad__row-2", **change}
    path = write_jsonl(tmp_path / "d.jsonl", [ROW, bad])
    with pytest.raises(DatasetError) as info:
        load_instances(path)
    message = str(info.value)
    assert needle in message
    assert "d.jsonl:2" in message and "bad__row-2" in message


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROW) + "\n{oops\n")
    with pytest.raises(DatasetError, match=r"d\.jsonl:2: not valid JSON"):
        load_instances(str(path))


def test_instance_ids_filter_and_unknown_id(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROW, {**ROW, "instance_id": "b__b-1"}])
    assert [i.instance_id for i in load_instances(path, instance_ids=["b__b-1"])] == ["b__b-1"]
    with pytest.raises(DatasetError, match="no instance.*nope"):
        load_instances(path, instance_ids=["nope"])


def test_duplicate_ids_rejected(tmp_path):
    with pytest.raises(DatasetError, match="appears twice"):
        load_instances(write_jsonl(tmp_path / "d.jsonl", [ROW, ROW]))


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_instances(str(tmp_path / "nothing.jsonl"))


def test_unreachable_hub_says_so(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError, match="Hugging Face hub.*unreachable"):
        load_instances("SWE-bench/SWE-bench_Verified")


def test_official_image_name():
    assert official_image("django__django-11099") == "swebench/sweb.eval.x86_64.django_1776_django-11099:latest"


# ------------------------------------------------------------------ the local suite (no Docker)

def test_local_suite_shape():
    from swebench.harness.constants import END_TEST_OUTPUT, START_TEST_OUTPUT
    from swebench.harness.log_parsers import PARSER_REGISTRY
    from swebench.harness.utils import make_test_spec

    suite = load_instances("local")
    assert len(suite) >= 8
    assert len({i.repo for i in suite}) >= 3
    for inst in suite:
        assert re.fullmatch(r"[0-9a-f]{40}", inst.base_commit)
        assert inst.patch.startswith("diff --git") and inst.test_patch.startswith("diff --git")
        assert inst.FAIL_TO_PASS and inst.PASS_TO_PASS and inst.problem_statement.strip()
        assert inst.log_parser in PARSER_REGISTRY
        assert START_TEST_OUTPUT in inst.eval_script and END_TEST_OUTPUT in inst.eval_script
        assert inst.base_commit in inst.eval_script
        spec = make_test_spec(inst.to_swebench())
        assert spec.image == inst.image and list(spec.FAIL_TO_PASS) == list(inst.FAIL_TO_PASS)
        # the gold patch never touches tests; the test patch touches only tests
        assert "tests/" not in "".join(l for l in inst.patch.splitlines() if l.startswith("+++"))
        assert all("tests/" in l for l in inst.test_patch.splitlines() if l.startswith("+++"))
        # the image tag is a content hash shared by the repo's instances
        assert re.fullmatch(r"swe-aem/sweb\.eval\.x86_64\.[a-z0-9_.-]+:[0-9a-f]{12}", inst.image)


def test_local_base_commit_is_deterministic_and_tracks_content(tmp_path, monkeypatch):
    from swe_aem.data import local_suite

    first = local_suite.materialize_repo("swe-aem/textkit", tmp_path / "a")
    second = local_suite.materialize_repo("swe-aem/textkit", tmp_path / "b")
    assert first == second == local_suite.base_commit("swe-aem/textkit")
    # a different snapshot gives a different commit (and so a different image tag)
    monkeypatch.setattr(local_suite, "repo_dir", lambda repo: tmp_path / "a")
    (tmp_path / "a" / "README.md").write_text("changed\n")
    local_suite.base_commit.cache_clear()
    try:
        assert local_suite.materialize_repo("swe-aem/textkit", tmp_path / "c") != first
    finally:
        local_suite.base_commit.cache_clear()
