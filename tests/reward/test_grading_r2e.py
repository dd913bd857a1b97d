"""The R2E-Gym and SWE-smith graders: their rules on logs, and both end to end on real containers.

The container test builds a tiny R2E-Gym-style image here, FROM a local suite image:
root-owned /testbed with a venv in /testbed/.venv, /testbed/run_tests.sh and
/testbed/r2e_tests (a real pytest file). Gold must score 1, a wrong patch 0, a patch
that edits r2e_tests is rejected. The SWE-smith one is built FROM the official-layout
stand-in (conda-style env): the original repo plus a bug commit, as SWE-smith's images
and rows have them.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
from helpers import add_text

from swe_aem.reward import r2e, swesmith

SHARED = Path(__file__).parents[3] / "shared" / "datasets"

SUMMARY = "=========================== short test summary info ============================\n"


# ---------------------------------------------------------------- R2E-Gym's rule

def test_r2e_parser_keys_and_statuses():
    log = ("collected 3 items\nr2e_tests/test_1.py::TestA::test_x PASSED\n" + SUMMARY
           + "PASSED r2e_tests/test_1.py::TestA::test_x\n"
           + "FAILED r2e_tests/test_1.py::TestA::test_y - AssertionError: boom\n"
           + "ERROR r2e_tests/test_2.py::test_z - fixture missing\n"
           + "========================= 1 failed, 1 passed, 1 error in 0.1s =========================\n")
    assert r2e.parse_log(log) == {"TestA.test_x": "PASSED", "TestA.test_y": "FAILED", "test_z": "ERROR"}
    assert r2e.parse_log("no summary here\nFAILED a::b") == {}


def test_r2e_reward_is_an_exact_match_of_the_status_map():
    expected = {"TestA.test_x": "PASSED", "TestA.test_y": "FAILED"}
    both = SUMMARY + "PASSED r2e_tests/t.py::TestA::test_x\nFAILED r2e_tests/t.py::TestA::test_y - err\n"
    assert r2e.verdict(both, expected)["resolved"]
    # colour codes and carriage returns do not matter (rllm strips them)
    coloured = both.replace("PASSED", "\x1b[32mPASSED\x1b[0m").replace("\n", "\r\n")
    assert r2e.verdict(coloured, expected)["resolved"]
    # a FAILED test that now passes is a mismatch too: the whole map must match
    flipped = SUMMARY + "PASSED r2e_tests/t.py::TestA::test_x\nPASSED r2e_tests/t.py::TestA::test_y\n"
    result = r2e.verdict(flipped, expected)
    assert not result["resolved"] and "TestA.test_y: PASSED (expected FAILED)" in result["reason"]
    fewer = r2e.verdict(SUMMARY + "PASSED r2e_tests/t.py::TestA::test_x\n", expected)
    assert not fewer["resolved"] and "1 test(s), 2 expected" in fewer["reason"]
    extra = both + "PASSED r2e_tests/t.py::TestA::test_new\n"
    assert not r2e.verdict(extra, expected)["resolved"]
    assert "no pytest short test summary" in r2e.verdict("crashed", expected)["reason"]


# ---------------------------------------------------------------- SWE-smith's rule

def smith_log(body: str) -> str:
    return f"+ cd /testbed\n+ : '>>>>> Start Test Output'\n{body}+ : '>>>>> End Test Output'\n"


def test_swesmith_verdict():
    f2p, p2p = ["t.py::test_a"], ["t.py::test_b", "t.py::test_c"]
    ok = smith_log("t.py::test_a PASSED [ 33%]\nt.py::test_b PASSED\nt.py::test_c XFAIL\n")
    assert swesmith.verdict(ok, f2p, p2p)["resolved"]
    bad = swesmith.verdict(smith_log("t.py::test_a FAILED\nt.py::test_b PASSED\nt.py::test_c PASSED\n"), f2p, p2p)
    assert not bad["resolved"] and bad["tests_status"]["FAIL_TO_PASS"]["failure"] == ["t.py::test_a"]
    # swesmith 0.0.9: a test missing from the log fails (a file that no longer collects pays nothing)
    absent = swesmith.verdict(smith_log("t.py::test_a PASSED\nt.py::test_b PASSED\n"), f2p, p2p)
    assert not absent["resolved"] and absent["tests_status"]["PASS_TO_PASS"]["failure"] == ["t.py::test_c"]
    # only the marked section counts; no markers or a timeout: nothing to grade
    outside = "t.py::test_c PASSED\n" + smith_log("t.py::test_a PASSED\nt.py::test_b PASSED\n")
    assert not swesmith.verdict(outside, f2p, p2p)["resolved"]
    assert not swesmith.verdict("t.py::test_a PASSED\n", f2p, p2p)["patch_successfully_applied"]
    assert swesmith.test_output(ok + "\n>>>>> Tests Timed Out\n") is None


# ---------------------------------------------------------------- R2E-Gym on a real container

R2E_TESTS = '''import sys

from textkit.slug import slugify


class TestSlug:
    def test_runs_in_image_venv(self):
        assert sys.prefix == "/testbed/.venv"

    def test_punctuation_runs_collapse(self):
        assert slugify("Hello,  World!") == "hello-world"

    def test_max_length_never_ends_with_separator(self):
        assert slugify("Hello, World", max_length=7) == "hello"
'''
RUN_TESTS = "#!/bin/bash\ncd /testbed\npython -m pytest -rA -p no:cacheprovider r2e_tests\n"
DOCKERFILE = """FROM {base}
USER root
COPY run_tests.sh /testbed/run_tests.sh
COPY r2e_tests /testbed/r2e_tests
RUN chown -R root:root /testbed && python3 -m venv --system-site-packages --without-pip /testbed/.venv
WORKDIR /testbed
"""


@pytest.fixture(scope="module")
def r2e_image(docker_client, local_instance):
    """An R2E-Gym-style image on top of the textkit image (removed afterwards)."""
    tag = f"swe-aem/test-r2e-textkit:{uuid.uuid4().hex[:8]}"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        add_text(tar, "Dockerfile", DOCKERFILE.format(base=local_instance.image))
        add_text(tar, "run_tests.sh", RUN_TESTS)
        add_text(tar, "r2e_tests/test_1.py", R2E_TESTS)
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True,
                               network_mode="none", pull=False)
    yield tag
    docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def r2e_instance(r2e_image, local_instance, tmp_path_factory):
    """The R2E-Gym row for that image (gold from the commit's file contents), loaded as users do."""
    from swe_aem.data import load_instances
    from swe_aem.data.local_suite import materialize_repo

    work = tmp_path_factory.mktemp("textkit") / "repo"
    base = materialize_repo(local_instance.repo, work)
    old = (work / "textkit/slug.py").read_text()
    subprocess.run(["git", "apply", "-"], cwd=work, input=local_instance.patch, text=True, check=True)
    commit = {"old_commit_hash": base, "new_commit_hash": "f" * 40, "commit_message": "slug fix",
              "file_diffs": [{"header": {"file": {"path": "textkit/slug.py"}}, "hunks": [],
                              "old_file_content": old,
                              "new_file_content": (work / "textkit/slug.py").read_text()}]}
    expected = {f"TestSlug.{t}": "PASSED" for t in (
        "test_runs_in_image_venv", "test_punctuation_runs_collapse", "test_max_length_never_ends_with_separator")}
    row = {"repo_name": "textkit", "docker_image": r2e_image, "commit_hash": "f" * 40,
           "parsed_commit_content": json.dumps(commit), "execution_result_content": "{}",
           "modified_files": ["textkit/slug.py"], "modified_entity_summaries": [],
           "relevant_files": ["textkit/slug.py"], "num_non_test_files": 1, "num_non_test_func_methods": 1,
           "num_non_test_lines": 6, "prompt": "", "problem_statement": "[ISSUE]" + local_instance.problem_statement
           + "[/ISSUE]", "expected_output_json": json.dumps(expected)}
    path = tmp_path_factory.mktemp("r2e") / "r2e.jsonl"
    path.write_text(json.dumps(row) + "\n")
    [inst] = load_instances(str(path), dataset_format="r2e-gym")
    return inst


@pytest.mark.slow
@pytest.mark.docker
def test_r2e_grader_on_a_real_container(r2e_instance, sandbox_pool, local_instance):
    from swe_aem.reward import grade_patch
    from swe_aem.sandbox.setup_script import prepare

    # the set-up hides the runner and tests from the work tree's diff
    with sandbox_pool.sandbox(r2e_instance) as box:
        prepare(box, r2e_instance)
        assert box.exec("test -f /root/run_tests.sh && test -L /testbed/r2e_tests").exit_code == 0
        assert box.diff() == ""
    gold = grade_patch(r2e_instance, r2e_instance.patch, pool=sandbox_pool, timeout=300)
    assert (gold.status, gold.reward) == ("resolved", 1.0), gold.reason
    assert gold.report["tests_status"] == r2e_instance.extra["expected_output"]
    # only half the fix: one expected PASSED test fails
    wrong = local_instance.patch.replace('+    slug = re.sub(r"[^a-z0-9]+"', '+    slug = re.sub(r"[^a-z0-9]"', 1)
    assert wrong != local_instance.patch
    bad = grade_patch(r2e_instance, wrong, pool=sandbox_pool, timeout=300)
    assert (bad.status, bad.reward) == ("unresolved", 0.0), bad.reason
    assert "expected PASSED" in bad.reason
    # editing the hidden tests is refused before anything runs
    cheat = r2e_instance.patch + (
        "diff --git a/r2e_tests/test_1.py b/r2e_tests/test_1.py\n--- a/r2e_tests/test_1.py\n"
        "+++ b/r2e_tests/test_1.py\n@@ -1 +1 @@\n-import sys\n+import os\n")
    rejected = grade_patch(r2e_instance, cheat, pool=sandbox_pool, timeout=300)
    assert (rejected.status, rejected.reward) == ("rejected", 0.0) and "r2e_tests/test_1.py" in rejected.reason


@pytest.mark.slow
@pytest.mark.docker
def test_rows_whose_images_are_absent_fail_clearly(docker_client):
    """Every family's sample row, graded with pulls off: a clear 'image not available', no crash."""
    from swe_aem.data import load_instances
    from swe_aem.reward import grade_patch
    from swe_aem.sandbox import SandboxPool
    from swe_aem.sandbox.image_store import ImageStore

    if not SHARED.is_dir():
        pytest.skip("needs ../shared/datasets (sample rows from public repositories, not committed)")
    names = ["swebench_verified_v5.sample.jsonl", "swe_gym.sample.jsonl", "swe_smith.sample.jsonl"]
    insts = [load_instances(str(SHARED / n))[0] for n in names]
    with SandboxPool(max_concurrency=1, images=ImageStore(pull_missing=False)) as pool:
        for inst in insts:
            result = grade_patch(inst, inst.patch, pool=pool, timeout=60)
            assert result.reward == 0.0 and result.status in ("error", "infra_failure"), result
            assert inst.image in result.reason and "not" in result.reason, result.reason


# ---------------------------------------------------------------- SWE-smith on a real container

LAYOUT = Path(__file__).resolve().parents[2] / "sandboxes" / "official-layout"
SMITH_DOCKERFILE = """
RUN printf '#!/bin/sh\\nexec python -m pytest "$@"\\n' > /opt/miniconda3/envs/testbed/bin/pytest \\
 && chmod +x /opt/miniconda3/envs/testbed/bin/pytest
COPY fixed.patch bug.patch /tmp/
RUN chown -R root:root /testbed && cd /testbed && export GIT_AUTHOR_NAME=s GIT_AUTHOR_EMAIL=s@s \\
    GIT_COMMITTER_NAME=s GIT_COMMITTER_EMAIL=s@s && git apply /tmp/fixed.patch && git add -A \\
 && git commit -qm original && git apply /tmp/bug.patch && git commit -qam bug \\
 && git branch {branch} && git checkout -q HEAD~1 && rm /tmp/*.patch
"""
SMITH_KEY = "swe-aem__textkit.5ca1ab1e"


@pytest.fixture(scope="module")
def smith_instance(docker_client, local_instance, tmp_path_factory, monkeypatch_module):
    """A SWE-smith-style task on the textkit repo: the image holds the original (fixed) repo
    plus a bug commit; the row's patch is the bug, base_commit the bug commit."""
    from swe_aem.data import families, load_instances
    from swe_aem.data.local_suite import materialize_repo

    work = tmp_path_factory.mktemp("smith") / "repo"
    materialize_repo(local_instance.repo, work)
    git = ["git", "-c", "user.name=s", "-c", "user.email=s@s"]
    for patch in (local_instance.patch, local_instance.test_patch):
        subprocess.run(["git", "apply", "-"], cwd=work, input=patch, text=True, check=True)
    fixed = subprocess.run(["git", "diff", "HEAD"], cwd=work, capture_output=True, text=True, check=True).stdout
    subprocess.run([*git, "commit", "-qam", "original"], cwd=work, check=True)
    subprocess.run(["git", "apply", "-R", "-"], cwd=work, input=local_instance.patch, text=True, check=True)
    bug = subprocess.run(["git", "diff", "HEAD"], cwd=work, capture_output=True, text=True, check=True).stdout
    iid = f"{SMITH_KEY}.reverse_gold"
    tag = f"swe-aem/swesmith.x86_64.swe-aem_1776_textkit.5ca1ab1e:{uuid.uuid4().hex[:8]}"
    dockerfile = (LAYOUT / "Dockerfile.in").read_text().format(base=local_instance.image)
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        add_text(tar, "Dockerfile", dockerfile + SMITH_DOCKERFILE.format(branch=iid))
        add_text(tar, "activate", (LAYOUT / "activate").read_text())
        add_text(tar, "fixed.patch", fixed)
        add_text(tar, "bug.patch", bug)
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True,
                               network_mode="none", pull=False)
    base = docker_client.containers.run(tag, ["git", "rev-parse", iid], remove=True).decode().strip()
    row = {"instance_id": iid, "repo": f"swesmith/{SMITH_KEY}", "patch": bug, "image_name": tag,
           "FAIL_TO_PASS": list(local_instance.FAIL_TO_PASS), "PASS_TO_PASS": list(local_instance.PASS_TO_PASS),
           "created_at": "2026-11-27", "base_commit": base, "problem_statement": local_instance.problem_statement}
    path = tmp_path_factory.mktemp("smith-row") / "swe_smith.jsonl"
    path.write_text(json.dumps(row) + "\n")
    # register the test repo's profile beside the real ones (default pytest command)
    monkeypatch_module.setattr(families, "SWE_SMITH_PROFILES", families.SWE_SMITH_PROFILES | {SMITH_KEY})
    [inst] = load_instances(str(path))
    yield inst
    docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patcher:
        yield patcher


@pytest.mark.slow
@pytest.mark.docker
def test_swesmith_grader_on_a_real_container(smith_instance, sandbox_pool, local_instance, make_patch):
    from swe_aem.reward import grade_patch

    assert smith_instance.grader == "swesmith" and smith_instance.patch.startswith("diff --git")
    gold = grade_patch(smith_instance, smith_instance.patch, pool=sandbox_pool, timeout=300)
    assert (gold.status, gold.reward) == ("resolved", 1.0), (gold.reason, gold.test_output[-1500:])
    assert sorted(gold.report["tests_status"]["FAIL_TO_PASS"]["success"]) == sorted(local_instance.FAIL_TO_PASS)
    wrong = smith_instance.patch.replace('+    slug = re.sub(r"[^a-z0-9]+"', '+    slug = re.sub(r"[^a-z0-9]"', 1)
    assert wrong != smith_instance.patch
    bad = grade_patch(smith_instance, wrong, pool=sandbox_pool, timeout=300)
    assert (bad.status, bad.reward) == ("unresolved", 0.0) and "test_punctuation_runs_collapse" in bad.reason
    # a patch that stops the tests from being collected: absent tests fail (swesmith 0.0.9)
    broken = make_patch(local_instance, {"textkit/__init__.py": lambda t: t + "raise ImportError('broken')\n"},
                        gold=False)
    crash = grade_patch(smith_instance, smith_instance.patch + broken, pool=sandbox_pool, timeout=300)
    assert (crash.status, crash.reward) == ("unresolved", 0.0), crash.reason
    assert "FAIL_TO_PASS failing" in crash.reason and "PASS_TO_PASS failing" in crash.reason
