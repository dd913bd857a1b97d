"""Dataset families on real sample rows (../shared/datasets) and on R2E-Gym rows built from its schema.

Each family's mapping is checked field by field, with its official image name and the
exact eval commands its own harness would run; bad rows fail with a DatasetError that
names the row and the reason. No Docker here (see test_grading_r2e.py for containers).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from swe_aem.data import DatasetError, families, load_instances
from swe_aem.data.families import R2E_ACTIVATE, detect_format, reverse_patch
from swe_aem.data.instances import official_image

SHARED = Path(__file__).parents[3] / "shared" / "datasets"


def shared(name: str) -> Path:
    if not SHARED.is_dir():
        pytest.skip("needs ../shared/datasets (sample rows from public repositories, not committed)")
    return SHARED / name


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in shared(name).read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, items: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return str(path)


# ---------------------------------------------------------------- SWE-bench 5.x

def test_swebench_v5_rows_map_field_by_field():
    from swebench.harness.utils import make_test_spec

    raw = rows("swebench_verified_v5.sample.jsonl")
    insts = load_instances(str(shared("swebench_verified_v5.sample.jsonl")))
    assert [i.instance_id for i in insts] == [r["instance_id"] for r in raw]
    for row, inst in zip(raw, insts):
        for name in ("instance_id", "repo", "base_commit", "problem_statement", "version", "patch",
                     "test_patch", "eval_script", "log_parser", "eval_type", "image", "created_at"):
            assert getattr(inst, name) == row[name], name
        assert inst.FAIL_TO_PASS == tuple(json.loads(row["FAIL_TO_PASS"]))
        assert inst.PASS_TO_PASS == tuple(json.loads(row["PASS_TO_PASS"]))
        assert inst.extra["environment_setup_commit"] == row["environment_setup_commit"]
        assert inst.image == official_image(row["instance_id"])
        # no environment assumed from the family: the sandbox reads it from the image
        assert (inst.grader, inst.env_activate, inst.setup_script) == ("swebench", "", "")
        # what the 5.x harness runs for the raw row is what we run
        assert make_test_spec(inst.to_swebench()).eval_script == make_test_spec(row).eval_script


def test_classic_swebench_rows_are_refused_naming_columns():
    path = shared("swebench_verified_classic.sample.jsonl")
    for fmt in (None, "swe-bench"):
        with pytest.raises(DatasetError) as info:
            load_instances(str(path), dataset_format=fmt)
        message = str(info.value)
        assert "swebench_verified_classic.sample.jsonl:1" in message and "pallets__flask-5014" in message
        assert "eval_script, image, log_parser, eval_type" in message and "5.x export" in message


@pytest.mark.parametrize("change,needle", [
    ({"log_parser": "parse_log_nothing"}, "log_parser 'parse_log_nothing'"),
    ({"eval_type": "sometimes"}, "eval_type 'sometimes'"),
    ({"eval_script": "#!/bin/bash\npytest -rA\n"}, "no test-output markers"),
    ({"eval_script": "   "}, "eval_script"),
])
def test_v5_row_whose_tests_cannot_run_is_refused(tmp_path, change, needle):
    good, bad = rows("swebench_verified_v5.sample.jsonl")[:2]
    path = write_jsonl(tmp_path / "d.jsonl", [good, {**bad, **change}])
    with pytest.raises(DatasetError) as info:
        load_instances(path)
    assert needle in str(info.value) and "d.jsonl:2" in str(info.value)
    assert bad["instance_id"] in str(info.value)


def test_local_suite_keeps_its_own_eval_scripts():
    for inst in load_instances("local"):
        assert inst.grader == "swebench" and inst.env_activate == "" and inst.setup_script == ""
        assert inst.eval_script.startswith("#!/bin/bash") and inst.base_commit in inst.eval_script


# ---------------------------------------------------------------- SWE-Gym

def test_swe_gym_rows_map_and_build_swebench_style_scripts():
    from swebench.harness.log_parsers import PARSER_REGISTRY
    from swebench.harness.utils import make_test_spec

    raw = {r["instance_id"]: r for r in rows("swe_gym.sample.jsonl")}
    insts = {i.instance_id: i for i in load_instances(str(shared("swe_gym.sample.jsonl")))}
    assert sorted(insts) == sorted(raw)
    for iid, inst in insts.items():
        row = raw[iid]
        for name in ("repo", "base_commit", "problem_statement", "version", "patch", "test_patch",
                     "hints_text", "created_at"):
            assert getattr(inst, name) == row[name], name
        assert inst.FAIL_TO_PASS == tuple(row["FAIL_TO_PASS"]) and inst.PASS_TO_PASS == tuple(row["PASS_TO_PASS"])
        assert (inst.grader, inst.log_parser, inst.eval_type) == ("swebench", "parse_log_pytest", "pass_and_fail")
        assert inst.log_parser in PARSER_REGISTRY and inst.env_activate == ""
        make_test_spec(inst.to_swebench())
    assert insts["getmoto__moto-7365"].image == "xingyaoww/sweb.eval.x86_64.getmoto_s_moto-7365:latest"
    # SWE-Gym's fork: conda env, `make init` for moto, tests reset, test_patch applied, then
    # moto's `pytest -n0 -rA` on the test files (not on .txt fixtures) between the markers
    inst, row = insts["getmoto__moto-4986"], raw["getmoto__moto-4986"]
    base = row["base_commit"]
    reset = (f"git checkout {base} tests/terraform-tests.success.txt tests/test_eks/test_eks_constants.py "
             "tests/test_eks/test_server.py")
    expected = [
        "#!/bin/bash", "set -uxo pipefail", "source /opt/miniconda3/bin/activate", "conda activate testbed",
        "cd /testbed", "git config --global --add safe.directory /testbed", "cd /testbed", "git status",
        "git show", f"git -c core.fileMode=false diff {base}", "source /opt/miniconda3/bin/activate",
        "conda activate testbed", "make init", reset,
        f"git apply -v - <<'EOF_114329324912'\n{row['test_patch']}\nEOF_114329324912",
        ": '>>>>> Start Test Output'",
        "pytest -n0 -rA tests/test_eks/test_eks_constants.py tests/test_eks/test_server.py",
        ": '>>>>> End Test Output'", reset]
    assert inst.eval_script == "\n".join(expected) + "\n"


def test_swe_gym_unknown_repo_is_refused(tmp_path):
    row = {**rows("swe_gym.sample.jsonl")[0], "repo": "someone/unknown", "instance_id": "someone__unknown-1"}
    with pytest.raises(DatasetError, match=r"someone__unknown-1.*no SWE-Gym test spec for repo 'someone/unknown'"):
        load_instances(write_jsonl(tmp_path / "gym.jsonl", [row]), dataset_format="swe-gym")


# ---------------------------------------------------------------- SWE-smith

def test_swe_smith_row_maps_to_its_profile_command():
    [row] = rows("swe_smith.sample.jsonl")
    [inst] = load_instances(str(shared("swe_smith.sample.jsonl")))
    for name in ("instance_id", "repo", "base_commit", "problem_statement", "created_at"):
        assert getattr(inst, name) == row[name], name
    assert inst.image == row["image_name"] == "swesmith.x86_64.pandas-dev__pandas.95280573"
    assert inst.FAIL_TO_PASS == tuple(row["FAIL_TO_PASS"]) and inst.PASS_TO_PASS == tuple(row["PASS_TO_PASS"])
    assert (inst.grader, inst.env_activate) == ("swesmith", "")
    assert inst.extra["bug_patch"] == row["patch"] and inst.patch == reverse_patch(row["patch"])
    assert f"git checkout -q -f {row['base_commit']}" in inst.setup_script
    # swesmith 0.0.9: PythonProfile.test_cmd + F2P files + P2P files (min_testing), in its eval.sh
    f = "pandas/tests/indexing/test_datetime.py"
    assert inst.eval_script == (
        "#!/bin/bash\nset -uxo pipefail\ncd /testbed\n: '>>>>> Start Test Output'\n"
        "source /opt/miniconda3/bin/activate; conda activate testbed; "
        f"pytest --disable-warnings --color=no --tb=no --verbose {f} {f}\n"
        ": '>>>>> End Test Output'\n")


def test_swe_smith_image_forms_and_bad_rows(tmp_path):
    [row] = rows("swe_smith.sample.jsonl")
    new = {**row, "image_name": "jyangballin/swesmith.x86_64.pandas-dev_1776_pandas.95280573"}
    [inst] = load_instances(write_jsonl(tmp_path / "a.jsonl", [new]), dataset_format="swe-smith")
    assert inst.image == new["image_name"]
    for change, needle in [({"image_name": "pandas:latest"}, "neither swesmith"),
                           ({"repo": "swesmith/foo__bar.12345678", "instance_id": "foo__bar.12345678.x"},
                            "no SWE-smith repo profile for 'foo__bar.12345678'")]:
        path = write_jsonl(tmp_path / "b.jsonl", [{**row, **change}])
        with pytest.raises(DatasetError) as info:
            load_instances(path, dataset_format="swe-smith")
        assert needle in str(info.value) and "b.jsonl:1" in str(info.value)


def _git(cwd: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                          input=stdin, capture_output=True, text=True, check=True).stdout


def test_reverse_patch_undoes_a_real_git_diff(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("one\ntwo\nthree\nfour\n")
    (repo / "gone.py").write_text("bye\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    (repo / "a.py").write_text("one\n2\nthree\nfour\nfive\n")
    (repo / "gone.py").unlink()
    (repo / "new.py").write_text("hello\n")
    _git(repo, "add", "-A")
    bug = _git(repo, "diff", "--cached")
    _git(repo, "commit", "-qm", "bug")
    _git(repo, "apply", "--index", "-", stdin=reverse_patch(bug))
    assert _git(repo, "diff", "--cached", "HEAD~1") == ""  # back at base
    assert reverse_patch(reverse_patch(bug)) == bug
    [row] = rows("swe_smith.sample.jsonl")
    assert reverse_patch(reverse_patch(row["patch"])) == row["patch"]


# ---------------------------------------------------------------- R2E-Gym (rows built from the schema)

def r2e_row(**change) -> dict:
    """A row with R2E-Gym's 14 columns (README section 4); no real row exists to copy."""
    commit = {"old_commit_hash": "a" * 40, "new_commit_hash": "b" * 40, "commit_message": "fix",
              "file_diffs": [
                  {"header": {"file": {"path": "pkg/core.py"}}, "hunks": [],
                   "old_file_content": "def f():\n    return 1\n", "new_file_content": "def f():\n    return 2\n"},
                  {"header": {"file": {"path": "tests/test_core.py"}}, "hunks": [],
                   "old_file_content": "", "new_file_content": "def test_f(): pass\n"}]}
    row = {"repo_name": "orange3", "docker_image": "namanjain12/orange3_final:" + "b" * 40,
           "commit_hash": "b" * 40, "parsed_commit_content": json.dumps(commit),
           "execution_result_content": json.dumps({"repo_name": "orange3"}), "modified_files": ["pkg/core.py"],
           "modified_entity_summaries": [], "relevant_files": ["pkg/core.py"], "num_non_test_files": 1,
           "num_non_test_func_methods": 1, "num_non_test_lines": 2, "prompt": "",
           "problem_statement": "[ISSUE]\nf returns 1\n[/ISSUE]",
           "expected_output_json": json.dumps({"TestF.test_two": "PASSED", "TestF.test_other": "FAILED"})}
    return {**row, **change}


def test_r2e_row_maps_to_its_runtime(tmp_path):
    [inst] = load_instances(write_jsonl(tmp_path / "R2E-Gym-Subset.jsonl", [r2e_row()]))
    assert inst.instance_id == "orange3__" + "b" * 12 and inst.repo == "orange3"
    assert inst.image == "namanjain12/orange3_final:" + "b" * 40 and inst.base_commit == "a" * 40
    assert inst.problem_statement == "f returns 1"
    assert (inst.grader, inst.env_activate) == ("r2e", R2E_ACTIVATE)
    assert inst.extra["expected_output"] == {"TestF.test_two": "PASSED", "TestF.test_other": "FAILED"}
    assert "bash /root/run_tests.sh" in inst.eval_script and "cd /testbed" in inst.eval_script
    assert "mv \"/testbed/$f\" \"/root/$f\"" in inst.setup_script
    assert "ln -s /root/r2e_tests /testbed/r2e_tests" in inst.setup_script
    # the gold patch is the commit's non-test change, and it applies
    assert "tests/test_core.py" not in inst.patch
    repo = tmp_path / "r"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "core.py").write_text("def f():\n    return 1\n")
    _git(repo, "init", "-q")
    _git(repo, "apply", "-", stdin=inst.patch)
    assert (repo / "pkg" / "core.py").read_text() == "def f():\n    return 2\n"


@pytest.mark.parametrize("change,needle", [
    ({"expected_output_json": json.dumps({"a": "MAYBE"})}, "statuses other than"),
    ({"expected_output_json": "{not json"}, "not valid JSON"),
    ({"parsed_commit_content": json.dumps({"file_diffs": []})}, "no old_commit_hash"),
    ({"docker_image": ""}, "'docker_image'"),
])
def test_bad_r2e_rows_are_refused(tmp_path, change, needle):
    path = write_jsonl(tmp_path / "d.jsonl", [r2e_row(), r2e_row(commit_hash="c" * 40, **change)])
    with pytest.raises(DatasetError) as info:
        load_instances(path, dataset_format="r2e-gym")
    assert needle in str(info.value) and "d.jsonl:2" in str(info.value)


# ---------------------------------------------------------------- choosing the family

def test_format_from_name_or_columns(tmp_path):
    assert detect_format("SWE-Gym/SWE-Gym", {}) == "swe-gym"
    assert detect_format("SWE-bench/SWE-smith", {}) == "swe-smith"
    assert detect_format("R2E-Gym/R2E-Gym-Subset", {}) == "r2e-gym"
    assert detect_format("SWE-bench/SWE-bench_Verified", {}) == "swe-bench"
    assert detect_format("rows.jsonl", r2e_row()) == "r2e-gym"
    assert detect_format("rows.jsonl", rows("swe_smith.sample.jsonl")[0]) == "swe-smith"
    assert detect_format("rows.jsonl", rows("swe_gym.sample.jsonl")[0]) == "swe-gym"
    assert detect_format("rows.jsonl", rows("swebench_verified_v5.sample.jsonl")[0]) == "swe-bench"
    assert detect_format("rows.jsonl", rows("swebench_verified_classic.sample.jsonl")[0]) == "swe-bench"
    with pytest.raises(DatasetError, match="unknown dataset format 'swe-foo'"):
        load_instances(str(shared("swe_gym.sample.jsonl")), dataset_format="swe-foo")
    assert families.FORMATS == ("swe-bench", "swe-gym", "swe-smith", "r2e-gym", "swe-rebench",
                                "swe-bench-pro", "multi-swe-bench")
    assert detect_format("nebius/SWE-rebench-V2", {}) == "swe-rebench"
    assert detect_format("ScaleAI/SWE-bench_Pro", {}) == "swe-bench-pro"
    assert detect_format("ByteDance-Seed/Multi-SWE-RL", {}) == "multi-swe-bench"
    assert detect_format("rows.jsonl", rows("swe_rebench_v2.sample.jsonl")[0]) == "swe-rebench"
    assert detect_format("rows.jsonl", rows("swe_bench_pro.sample.jsonl")[0]) == "swe-bench-pro"
    assert detect_format("rows.jsonl", rows("multi_swe_bench.sample.jsonl")[0]) == "multi-swe-bench"


# ---------------------------------------------------------------- the 2026 families (issue 31)

def _adapted(fmt: str, row: dict, where: str = "row"):
    from swe_aem.data.instances import instance_from_row

    return instance_from_row(families.adapt(fmt, row), where)


def test_swe_rebench_v2_row_maps_field_by_field():
    [raw] = rows("swe_rebench_v2.sample.jsonl")
    [inst] = load_instances(str(shared("swe_rebench_v2.sample.jsonl")))  # format from the columns
    assert inst.instance_id == "unidata__netcdf-c-1925" and inst.repo == "Unidata/netcdf-c"
    assert inst.image == "docker.io/swerebenchv2/unidata-netcdf-c:1925-ad6bff3" == raw["image_name"]
    assert inst.workdir == "/netcdf-c" and inst.base_commit == raw["base_commit"]
    assert (inst.grader, inst.log_parser, inst.eval_type) == ("swe-rebench", "parse_log_jq", "f2p_p2p_passed")
    assert inst.FAIL_TO_PASS == tuple(raw["FAIL_TO_PASS"]) and inst.PASS_TO_PASS == tuple(raw["PASS_TO_PASS"])
    assert inst.created_at == "2020-12-30T03:14:33Z"  # 1609298073000 ms after the epoch
    assert inst.patch == raw["patch"] and inst.extra["language"] == "c"
    assert inst.extra["rebench_version"] == "v2" and inst.extra["meta"] == raw["meta"]
    script = inst.eval_script
    assert script.startswith("#!/bin/bash\ncd /netcdf-c\nset -e\n")
    assert raw["test_patch"] in script and "git apply -v --3way --recount --ignore-space-change" in script
    assert script.index(families.START) < script.index("make check") < script.index(families.END)
    # install_config as JSON text (a parquet export) reads the same
    same = _adapted("swe-rebench", {**raw, "install_config": json.dumps(raw["install_config"])})
    assert same.eval_script == script


def test_swe_rebench_v1_rows_from_the_schema():
    """No verbatim V1 row is public (FAMILIES-2026.md 1d): a row built from the schema, on a real
    SWE-bench row's fields, with V1's install_config keys."""
    base = rows("swebench_verified_v5.sample.jsonl")[0]
    row = {k: base[k] for k in ("instance_id", "repo", "base_commit", "patch", "test_patch",
                                "problem_statement", "FAIL_TO_PASS", "PASS_TO_PASS", "created_at",
                                "version", "environment_setup_commit", "hints_text")}
    row["install_config"] = {"python": "3.9", "packages": "requirements.txt", "install": "pip install -e .",
                             "test_cmd": "pytest --no-header -rA --tb=no -p no:cacheprovider",
                             "log_parser": "parse_log_pytest"}
    inst = _adapted("swe-rebench", row)
    assert inst.image == "swerebench/sweb.eval.x86_64." + row["instance_id"].lower().replace("__", "_1776_") + ":latest"
    assert (inst.grader, inst.workdir, inst.log_parser) == ("swebench", "/testbed", "parse_log_pytest")
    assert "LANG=C.UTF-8 LC_ALL=C.UTF-8 pytest --no-header -rA" in inst.eval_script
    assert "LANG=C.UTF-8 LC_ALL=C.UTF-8 pip install -e ." in inst.eval_script
    with pytest.raises(families.FormatError, match="log_parser 'parse_log_gotest', not one of the V1 parsers"):
        families.adapt("swe-rebench", {**row, "install_config": {**row["install_config"], "log_parser": "parse_log_gotest"}})


@pytest.mark.parametrize(("change", "column"), [
    ({"install_config": "not json"}, "'install_config' is not valid JSON"),
    ({"install_config": {"test_cmd": ["make check"], "log_parser": "parse_log_nope", "base_image_name": "c"}},
     "log_parser 'parse_log_nope', not one of the V2 parsers"),
    ({"install_config": {"log_parser": "parse_log_jq", "base_image_name": "c"}}, "has no test_cmd"),
    ({"base_commit": "main"}, "column 'base_commit' must be a 40-hex"),
    ({"image_name": ""}, "column 'image_name'"),
    ({"created_at": [1]}, "column 'created_at'"),
])
def test_bad_swe_rebench_rows_name_the_row_and_column(tmp_path, change, column):
    [raw] = rows("swe_rebench_v2.sample.jsonl")
    path = write_jsonl(tmp_path / "r.jsonl", [raw, {**raw, "instance_id": "x__y-2", **change}])
    with pytest.raises(DatasetError) as err:
        load_instances(path)
    assert "r.jsonl:2 (instance_id='x__y-2', format swe-rebench)" in str(err.value) and column in str(err.value)


def test_swe_bench_pro_rows_map_field_by_field():
    raws = rows("swe_bench_pro.sample.jsonl")
    insts = [_adapted("swe-bench-pro", r) for r in raws]
    assert [i.image.split(":", 1)[1] for i in insts] == [  # FAMILIES-2026.md 2a, derived by image_uri.py
        "flipt-io.flipt-flipt-io__flipt-a0cbc0cb65ae601270bdbe3f5313e2dfd49c80e4",
        ("qutebrowser.qutebrowser-qutebrowser__qutebrowser-6dd402c0d0f7665d32a74c43c5b4cf5dc8aff28d-"
         "v5fc38aaf22415ab0b70567368332beee7955b"),
        "nodebb.nodebb-NodeBB__NodeBB-97c8569a798075c50e93e585ac741ab55cb7c28b-vf2cf3cbd463b7ad942381f1c6d077626485a1e9e"]
    assert all(i.image.startswith("jefzda/sweap-images:") and len(i.image.split(":", 1)[1]) <= 128 for i in insts)
    flipt, qute, nodebb = insts
    assert (flipt.workdir, flipt.base_commit, flipt.gold_commit) == (
        "/app", "fee220d0a20adfb21686685bef2a1d6c2ff6fc17", "a0cbc0cb65ae601270bdbe3f5313e2dfd49c80e4")
    assert flipt.extra["gold_test_files"] == ["internal/config/config_test.go"]
    assert flipt.FAIL_TO_PASS == ("TestLoad",) and flipt.PASS_TO_PASS == ()  # Python literal and JSON forms
    assert qute.FAIL_TO_PASS == ("tests/unit/components/test_braveadblock.py::test_corrupt_cache_handling",)
    assert len(nodebb.PASS_TO_PASS) == len(json.loads(raws[2]["pass_to_pass"]))
    # the JSON-encoded prose is decoded: no quotes or \n escapes left
    assert flipt.problem_statement.startswith("## Title: Cannot reference environment variables")
    assert json.loads(raws[0]["problem_statement"]) == flipt.extra["issue_text"]
    assert "\nRequirements:\n- Ensure YAML" in flipt.problem_statement and "\\n" not in flipt.problem_statement
    assert [i.extra["language"] for i in insts] == ["go", "python", "js"]
    assert flipt.extra["selected_test_files_to_run"] == ["TestLoad"]
    # a row with the current dockerhub_tag column uses it as it is
    tagged = _adapted("swe-bench-pro", {**raws[0], "dockerhub_tag": "navidrome.navidrome-x"})
    assert tagged.image == "jefzda/sweap-images:navidrome.navidrome-x"
    assert families.swe_bench_pro_tag("element-hq/element-web", "instance_element-hq__element-web-ab-vnan") \
        == "element-hq.element-element-hq__element-web-ab"
    # they load graded by a runner of the project's (tests/reward/test_grading_swebench_pro.py)
    loaded = load_instances(str(shared("swe_bench_pro.sample.jsonl")))
    assert [i.log_parser for i in loaded] == ["go_test", "pytest", "mocha_json"]


@pytest.mark.parametrize(("change", "column"), [
    ({"fail_to_pass": "['unclosed"}, "column 'fail_to_pass' is not a list literal"),
    ({"pass_to_pass": "[1, 2]"}, "column 'pass_to_pass' must be a list of strings"),
    ({"before_repo_set_cmd": "git reset --hard HEAD"}, "column 'before_repo_set_cmd' does not end with"),
    ({"instance_id": "flipt-1"}, "column 'instance_id' must start with 'instance_'"),
    ({"problem_statement": 3}, "column 'problem_statement' must be a non-empty string"),
    ({"dockerhub_tag": "x" * 129}, "column 'dockerhub_tag'"),
])
def test_bad_swe_bench_pro_rows_name_the_row_and_column(tmp_path, change, column):
    raw = rows("swe_bench_pro.sample.jsonl")[0]
    path = write_jsonl(tmp_path / "p.jsonl", [{**raw, **change}])
    with pytest.raises(DatasetError) as err:
        load_instances(path, dataset_format="swe-bench-pro")
    assert "p.jsonl:1 (instance_id=" in str(err.value) and column in str(err.value)


def test_multi_swe_bench_rows_map_field_by_field():
    raws = rows("multi_swe_bench.sample.jsonl")
    gson, gson2, dubbo = (_adapted("multi-swe-bench", r) for r in raws)
    assert (gson.instance_id, gson.repo, gson.image, gson.workdir) == (
        "google__gson-1093", "google/gson", "mswebench/google_m_gson:pr-1093", "/home/gson")
    assert dubbo.image == "mswebench/apache_m_dubbo:pr-7041" and dubbo.workdir == "/home/dubbo"
    assert gson.base_commit == raws[0]["base"]["sha"] and gson.patch == raws[0]["fix_patch"]
    assert gson.FAIL_TO_PASS == ("com.google.gson.stream.JsonWriterTest",) and len(gson.PASS_TO_PASS) == 87
    assert gson2.FAIL_TO_PASS == () and len(gson2.extra["n2p_tests"]) == 8  # n2p kept for the report check
    assert gson.extra["run_result"] == raws[0]["run_result"]
    assert gson.extra["test_patch_result"]["failed_count"] == 4
    assert gson.problem_statement.startswith(raws[0]["resolved_issues"][0]["title"])
    assert gson.history_remove_paths == ("/home/fix.patch", "/home/test.patch")
    # graded now (tests/reward/test_grading_multi_swe_bench.py): the rows load
    assert [i.instance_id for i in load_instances(str(shared("multi_swe_bench.sample.jsonl")))] == [
        gson.instance_id, gson2.instance_id, dubbo.instance_id]


@pytest.mark.parametrize(("change", "column"), [
    ({"number": "1093"}, "column 'number' must be an integer"),
    ({"base": {"sha": "nope"}}, "column 'base.sha' must be a 40-hex"),
    ({"p2p_tests": {"T": {"run": "PASS", "test": "OK", "fix": "PASS"}}}, "column 'p2p_tests': test 'T'"),
    ({"run_result": {"passed_count": 1}}, "column 'run_result' must be an object"),
    ({"fix_patch": ""}, "column 'fix_patch' must be a non-empty diff"),
])
def test_bad_multi_swe_bench_rows_name_the_row_and_column(tmp_path, change, column):
    raw = rows("multi_swe_bench.sample.jsonl")[0]
    path = write_jsonl(tmp_path / "m.jsonl", [{**raw, **change}])
    with pytest.raises(DatasetError) as err:
        load_instances(path)
    assert "m.jsonl:1 (instance_id='google__gson-1093', format multi-swe-bench)" in str(err.value)
    assert column in str(err.value)


def test_swe_rebench_v2_verdict_follows_its_harness():
    """V2's rule on a jq-style log (the parser its real row names): ANSI codes and timing
    suffixes do not change a name; every F2P and P2P must pass; eval.py's exact rule also
    refuses extra passing tests."""
    from swe_aem.reward import rebench

    log = ("Applied patch tests/x.test cleanly.\n" + rebench.START + "\n"
           "\x1b[32mPASS\x1b[0m: tests/one.test\r\nPASS: tests/two.test [1.34 ms]\nFAIL: tests/three.test\n"
           "PASS: tests/extra.test\n" + rebench.END + "\n")
    ok = rebench.verdict(log, "parse_log_jq", "f2p_p2p_passed", ["tests/one.test"], ["tests/two.test"])
    assert ok["resolved"] and ok["tests_status"]["FAIL_TO_PASS"] == {"success": ["tests/one.test"], "failure": []}
    bad = rebench.verdict(log, "parse_log_jq", "f2p_p2p_passed", ["tests/three.test"], ["tests/two.test"])
    assert not bad["resolved"] and "FAIL_TO_PASS not passing: tests/three.test" in bad["reason"]
    exact = rebench.verdict(log, "parse_log_jq", "exact_passed_set", ["tests/one.test"], ["tests/two.test"])
    assert not exact["resolved"] and "tests/extra.test" in exact["reason"]
    missing = rebench.verdict("no markers, no tests\n", "parse_log_jq", "f2p_p2p_passed", ["tests/one.test"], [])
    assert not missing["resolved"]
    # the row's own script echoes the markers the verdict reads between
    [inst] = load_instances(str(shared("swe_rebench_v2.sample.jsonl")))
    assert f'echo "{families.START}"' in inst.eval_script and f'echo "{families.END}"' in inst.eval_script


def test_a_decontaminated_set_keeps_the_rows_created_after_the_date_and_names_their_language():
    """--created-after on the families whose rows carry a date (SWE-rebench V2 in epoch
    milliseconds, Verified and SWE-Gym as date strings), refused naming the column on those
    without (SWE-bench Pro, Multi-SWE-bench); each row's language as its family names it."""
    from datetime import timedelta

    from swe_aem.data.instances import created_time, decontaminated, instance_language

    v2 = load_instances(str(shared("swe_rebench_v2.sample.jsonl")))
    verified = load_instances(str(shared("swebench_verified_v5.sample.jsonl")))
    gym = load_instances(str(shared("swe_gym.sample.jsonl")))
    for insts, name in ((v2, "v2"), (verified, "verified"), (gym, "gym")):
        times = sorted(created_time(i.created_at) for i in insts)
        before = (times[0] - timedelta(seconds=1)).isoformat()
        assert decontaminated(insts, before, name) == insts  # every row is newer
        if times[0] < times[-1]:  # strictly after the oldest: the oldest goes, the newer stay
            kept = decontaminated(insts, times[0].isoformat(), name)
            assert {i.instance_id for i in kept} == {i.instance_id for i in insts if created_time(i.created_at) > times[0]}
        with pytest.raises(DatasetError, match="none of the .* is newer"):
            decontaminated(insts, times[-1].isoformat(), name)
    assert created_time("1609298073000").year == 2020  # V2's milliseconds
    assert created_time("2024-02-19 20:29:03").tzinfo is not None  # no zone: UTC
    with pytest.raises(DatasetError, match="not an ISO 8601 date"):
        decontaminated(v2, "last spring", "v2")
    for sample in ("swe_bench_pro.sample.jsonl", "multi_swe_bench.sample.jsonl"):
        with pytest.raises(DatasetError, match="no 'created_at' column value"):
            decontaminated(load_instances(str(shared(sample))), "2020-01-01", sample)
    assert {instance_language(i) for i in verified} == {"python"}
    assert instance_language(v2[0]) == rows("swe_rebench_v2.sample.jsonl")[0]["language"].lower()
    pro = load_instances(str(shared("swe_bench_pro.sample.jsonl")))
    assert {instance_language(i) for i in pro} == {r["repo_language"].lower() for r in rows("swe_bench_pro.sample.jsonl")}
    # no `lang` in these rows: the package's folder of each repository's class
    assert {instance_language(i) for i in load_instances(str(shared("multi_swe_bench.sample.jsonl")))} == {"java"}
