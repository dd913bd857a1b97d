"""SWE-bench Pro rows graded as its harness grades them (swe_aem/reward/swebench_pro.py,
swe_aem/data/pro_runners.py): the project's own per-language runners, or a harness checkout's
per-instance run script and parser (--harness-dir).

- The shared rows (../shared/datasets, real rows; skipped where that folder is absent) load
  field by field: the image tag as the harness derives it, /app, the tests, the language,
  the runner and the entry script the grader writes; a malformed row, or one no runner of
  the project's covers, is refused naming the row and the column.
- The readers: pytest on a log pytest writes here, go test, mocha's and jest's JSON, the
  harness parser's output.json; the pass rule.
- On real containers: a small Go repository in Pro's layout (at /app, the fix's commit in
  its history, bash the image's command, no python3), built FROM the Go base image
  (sandboxes/base-go): the gold patch 1, a patch that breaks a P2P test 0, the unfixed
  repository 0. A small Python repository in the same layout FROM the base image, graded by
  the project's pytest runner and by a checkout laid out as the harness's (--harness-dir)
  with a run script and parser written here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from helpers import SHARED, add_text, shared_rows, write_rows

from swe_aem.data import DatasetError, load_instances, pro_runners
from swe_aem.reward import swebench_pro as pro

SAMPLE = "swe_bench_pro.sample.jsonl"
IDS = ["instance_flipt-io__flipt-a0cbc0cb65ae601270bdbe3f5313e2dfd49c80e4",
       "instance_qutebrowser__qutebrowser-6dd402c0d0f7665d32a74c43c5b4cf5dc8aff28d-v5fc38aaf22415ab0b70567368332beee7955b367",
       "instance_NodeBB__NodeBB-97c8569a798075c50e93e585ac741ab55cb7c28b-vf2cf3cbd463b7ad942381f1c6d077626485a1e9e"]


@pytest.fixture(autouse=True)
def _no_harness_dir(monkeypatch):
    """No checkout of the harness unless a test names one (use_harness_dir sets the variable;
    monkeypatch puts it back)."""
    monkeypatch.setenv(pro_runners.HARNESS_DIR_ENV, "")


# ---------------------------------------------------------------- the shared rows

def test_shared_rows_load_field_by_field():
    import ast

    raws = shared_rows(SAMPLE)
    insts = load_instances(str(SHARED / SAMPLE))  # the family from the columns
    assert [i.instance_id for i in insts] == IDS
    tags = ["flipt-io.flipt-flipt-io__flipt-a0cbc0cb65ae601270bdbe3f5313e2dfd49c80e4",  # image_uri.py's
            ("qutebrowser.qutebrowser-qutebrowser__qutebrowser-6dd402c0d0f7665d32a74c43c5b4cf5dc8aff28d-"
             "v5fc38aaf22415ab0b70567368332beee7955b"),
            "nodebb.nodebb-NodeBB__NodeBB-97c8569a798075c50e93e585ac741ab55cb7c28b-vf2cf3cbd463b7ad942381f1c6d077626485a1e9e"]
    for raw, inst, tag in zip(raws, insts, tags):
        assert inst.image == f"jefzda/sweap-images:{tag}" and len(tag) <= 128
        assert (inst.repo, inst.base_commit, inst.workdir) == (raw["repo"], raw["base_commit"], "/app")
        assert inst.FAIL_TO_PASS == tuple(ast.literal_eval(raw["fail_to_pass"]))
        assert inst.PASS_TO_PASS == tuple(ast.literal_eval(raw["pass_to_pass"]))
        assert inst.extra["selected_test_files_to_run"] == json.loads(raw["selected_test_files_to_run"])
        assert inst.extra["language"] == raw["repo_language"]
        assert (inst.patch, inst.test_patch) == (raw["patch"], raw["test_patch"])
        assert (inst.grader, inst.eval_script) == ("swe-bench-pro", pro_runners.EVAL_SCRIPT)
        gold, files = raw["before_repo_set_cmd"].strip().splitlines()[-1].split(" -- ")
        assert gold == f"git checkout {inst.gold_commit}" and inst.extra["gold_test_files"] == files.split()
    flipt, qute, nodebb = insts
    assert [i.log_parser for i in insts] == ["go_test", "pytest", "mocha_json"]
    assert len(qute.image.split(":", 1)[1]) == 128  # cut to Docker's limit, as the harness cuts it
    # the harness's entry script around each runner's command
    script = pro.entry_script(flipt, "abc123")
    lines = script.splitlines()
    assert lines[2:7] == ["cd /app", f"git reset --hard {flipt.base_commit}", f"git checkout {flipt.base_commit}",
                          "git apply -v /workspace/patch.diff || echo '>>>>> swe-aem pro abc123 git-apply-failed'",
                          f"git checkout {flipt.gold_commit} -- internal/config/config_test.go"]
    assert "go test -v -run '^(TestLoad)$' ./..." in script
    assert "> /workspace/stdout.log 2> /workspace/stderr.log" in script
    qute_script = pro.entry_script(qute, "abc123")
    assert "QT_QPA_PLATFORM=offscreen" in qute_script and "dbus-run-session" in qute_script
    assert '$WRAP "$PY" -bb -m pytest -v --tb=short -p no:cacheprovider tests/unit/components/test_braveadblock.py' \
        in qute_script
    node_script = pro.entry_script(nodebb, "abc123")
    assert "redis-server --daemonize yes" in node_script
    assert "npx mocha --reporter=json --bail=false --timeout=10000 test/user.js" in node_script


@pytest.mark.parametrize(("change", "column"), [
    ({"repo_language": "rust"}, "column 'repo_language' 'rust' of repo 'NodeBB/NodeBB': no test runner"),
    ({"repo": "tutao/tutanota", "repo_language": "ts"}, "column 'repo_language' 'ts' of repo 'tutao/tutanota'"),
    ({"fail_to_pass": "['unclosed"}, "column 'fail_to_pass' is not a list literal"),
    ({"selected_test_files_to_run": "[1]"}, "column 'selected_test_files_to_run' must be a list of strings"),
    ({"before_repo_set_cmd": "git reset --hard HEAD"}, "column 'before_repo_set_cmd' does not end with"),
    ({"base_commit": "main"}, "column 'base_commit' must be a 40-hex"),
    ({"repo": 3}, "column 'repo' must be owner/name"),
])
def test_malformed_rows_are_refused_naming_the_row_and_column(tmp_path, change, column):
    raws = shared_rows(SAMPLE)
    path = write_rows(tmp_path / "p.jsonl", [raws[0], {**raws[2], **change}])
    with pytest.raises(DatasetError) as err:
        load_instances(path, dataset_format="swe-bench-pro")
    assert f"p.jsonl:2 (instance_id={IDS[2]!r}, format swe-bench-pro)" in str(err.value)
    assert column in str(err.value)
    if "no test runner" in column:  # the runners there are, and the way to the harness's own
        assert "python: pytest -v; go: go test -v -run" in str(err.value) and "--harness-dir" in str(err.value)


def _checkout(root: Path, ids: list[str], *, run_script: str = "#!/bin/bash\n", parser: str = "",
              env: str = "") -> Path:
    """A folder in the harness's layout: run_scripts/<id>/{run_script.sh,parser.py} and the
    two Dockerfiles whose ENV lines it exports."""
    for iid in ids:
        (root / "run_scripts" / iid).mkdir(parents=True)
        (root / "run_scripts" / iid / "run_script.sh").write_text(run_script)
        (root / "run_scripts" / iid / "parser.py").write_text(parser)
        for kind, text in (("base", "FROM debian\nWORKDIR /app\n"), ("instance", f"FROM base_x\n{env}RUN true\n")):
            (root / "dockerfiles" / f"{kind}_dockerfile" / iid).mkdir(parents=True)
            (root / "dockerfiles" / f"{kind}_dockerfile" / iid / "Dockerfile").write_text(text)
    return root


def test_harness_dir_uses_the_checkouts_files_and_refuses_what_it_lacks(tmp_path):
    shared_rows(SAMPLE)
    root = _checkout(tmp_path / "SWE-bench_Pro-os", IDS[:2], env='ENV PYTEST_ADDOPTS="--tb=short -v"\n')
    with pytest.raises(ValueError, match="has no run_scripts/ folder"):
        pro_runners.use_harness_dir(tmp_path)
    assert pro_runners.use_harness_dir(root) == root.resolve()
    assert os.environ[pro_runners.HARNESS_DIR_ENV] == str(root.resolve())
    with pytest.raises(DatasetError) as err:  # the NodeBB row is not in this checkout
        load_instances(str(SHARED / SAMPLE))
    assert f"{SAMPLE}:3 (instance_id={IDS[2]!r}" in str(err.value)
    assert f"no run_scripts/{IDS[2]}/run_script.sh or parser.py there" in str(err.value)
    flipt, qute = load_instances(write_rows(tmp_path / "two.jsonl", shared_rows(SAMPLE)[:2]))
    assert (flipt.log_parser, flipt.extra["harness_dir"]) == ("harness", str(root.resolve()))
    script = pro.entry_script(flipt, "abc123")
    # the Dockerfiles' ENV lines exported, the run script on the comma-joined selection, its parser
    assert script.splitlines()[2] == 'export PYTEST_ADDOPTS="--tb=short -v"'
    assert "bash /workspace/run_script.sh TestLoad\n" in script
    assert ('"$PY" /workspace/parser.py /workspace/stdout.log /workspace/stderr.log /workspace/output.json'
            in script)
    assert "bash /workspace/run_script.sh tests/unit/components/test_braveadblock.py" in pro.entry_script(qute, "n")


def test_harness_dir_on_the_commands_is_checked(tmp_path, capsys):
    from swe_aem.cli import main

    preds = tmp_path / "p.jsonl"
    preds.write_text('{"instance_id": "a", "model_name_or_path": "m", "model_patch": "x"}\n')
    code = main(["grade", "--dataset", "local", "--predictions", str(preds), "--report-dir",
                 str(tmp_path / "r"), "--harness-dir", str(tmp_path / "nothing")])
    assert code == 1 and "is not a checkout of scaleapi/SWE-bench_Pro-os" in " ".join(capsys.readouterr().err.split())


# ---------------------------------------------------------------- the readers

PYTEST_FILE = '''import pytest

@pytest.fixture
def broken():
    raise RuntimeError("no fixture")

def test_pass():
    pass

def test_fail():
    assert 1 == 2

@pytest.mark.skip(reason="later")
def test_skip():
    pass

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False

@pytest.mark.xfail(reason="fixed now")
def test_xpass():
    pass

def test_error(broken):
    pass

@pytest.mark.parametrize("text", ["Hello World", "x"])
def test_param(text):
    assert text

class TestGroup:
    def test_method(self):
        pass
'''


def test_pytest_reader_on_a_pytest_log(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_log.py").write_text(PYTEST_FILE)
    done = subprocess.run([sys.executable, "-m", "pytest", "-v", "--tb=short", "-p", "no:cacheprovider",
                           "tests/test_log.py"], check=False, cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTEST_ADDOPTS": "", "NO_COLOR": "1"})
    f = "tests/test_log.py::"
    assert pro.statuses(pro.parse_pytest(done.stdout)) == {
        f + "test_pass": "PASSED", f + "test_fail": "FAILED", f + "test_skip": "SKIPPED",
        f + "test_xfail": "PASSED", f + "test_xpass": "FAILED", f + "test_error": "ERROR",
        f + "test_param[Hello World]": "PASSED", f + "test_param[x]": "PASSED",
        f + "TestGroup::test_method": "PASSED"}, done.stdout
    # xdist's and the -rA summary's form, colour codes, a rerun that passed
    log = ("\x1b[32m[gw0] [ 50%] PASSED tests/a.py::test_one \x1b[0m\n"
           "[gw1] [100%] FAILED tests/a.py::test_two[a b] \n"
           "FAILED tests/a.py::test_three - AssertionError: assert 1 == 2\n"
           "tests/a.py::test_four RERUN                                  [ 90%]\n"
           "tests/a.py::test_four PASSED                                 [100%]\n")
    assert pro.statuses(pro.parse_pytest(log)) == {
        "tests/a.py::test_one": "PASSED", "tests/a.py::test_two[a b]": "FAILED",
        "tests/a.py::test_three": "FAILED", "tests/a.py::test_four": "PASSED"}


def test_go_mocha_jest_and_harness_readers():
    go_log = ("=== RUN   TestLoad\n=== RUN   TestLoad/defaults\n    --- PASS: TestLoad/defaults (0.00s)\n"
              "--- FAIL: TestLoad (0.01s)\n    config_test.go:12: boom\n--- SKIP: TestSlow (0.00s)\n"
              "--- PASS: TestLoad (0.00s)\nFAIL\tgo.flipt.io/flipt/internal/config\t0.02s\n")
    # TestLoad failed in one package and passed in another: passed, as the harness's set has it
    assert pro.statuses(pro.parse_go_test(go_log)) == {
        "TestLoad/defaults": "PASSED", "TestLoad": "PASSED", "TestSlow": "SKIPPED"}
    mocha = {"stats": {"tests": 3}, "tests": [],
             "passes": [{"title": "t1", "fullTitle": "User should hide email", "file": "/app/test/user.js"}],
             "failures": [{"title": "t2", "fullTitle": "test/meta.js::Meta should save", "file": "/app/test/x.js"}],
             "pending": [{"title": "t3", "fullTitle": "User later", "file": "/app/test/user.js"}]}
    out = "console noise {not json}\n" + json.dumps(mocha, indent=2) + "\nmore noise\n"
    assert pro.parse_mocha_json(out) == [("test/user.js | User should hide email", "PASSED"),
                                         ("test/meta.js | Meta should save", "FAILED"),
                                         ("test/user.js | User later", "SKIPPED")]
    jest = {"numTotalTestSuites": 2, "testResults": [
        {"name": "/app/test/SecurityManager-test.ts", "status": "passed", "assertionResults": [
            {"ancestorTitles": ["SecurityManager", "accessSecretStorage", "expecting errors"],
             "title": "throws if crypto is unavailable", "status": "passed"},
            {"ancestorTitles": [], "title": "top", "status": "pending"}]},
        {"name": "/app/test/Broken-test.ts", "status": "failed", "assertionResults": []}]}
    assert pro.parse_jest_json(json.dumps(jest)) == [
        ("test/SecurityManager-test.ts | SecurityManager | accessSecretStorage | expecting errors | throws if crypto is "
         + "unavailable", "PASSED"),
        ("test/SecurityManager-test.ts | top", "SKIPPED"), ("test/Broken-test.ts | Test suite failed to run", "ERROR")]
    assert pro.parse_harness_output('{"tests": [{"name": "TestLoad", "status": "PASSED"}]}') == [("TestLoad", "PASSED")]
    assert pro.parse_harness_output("") is None


def test_binary_hunks_are_dropped_as_the_harness_drops_them():
    text = "diff --git a/a.go b/a.go\n--- a/a.go\n+++ b/a.go\n@@ -1 +1 @@\n-x\n+y\n"
    binary = "diff --git a/logo.png b/logo.png\nindex 1..2 100644\nGIT binary patch\nliteral 3\nabc\n"
    differ = "diff --git a/b.bin b/b.bin\nBinary files a/b.bin and b/b.bin differ\n"
    assert pro.strip_binary_hunks(binary + text + differ) == text


def _output(nonce: str, stdout: str, *, applied: bool = True, end: bool = True) -> str:
    mark = f">>>>> swe-aem pro {nonce}"
    return "\n".join([f"{mark} begin go_test", "HEAD is now at fee220d", *([] if applied else [f"{mark} git-apply-failed"]),
                      f"{mark} stdout", stdout, f"{mark} stderr", "", *([f"{mark} end"] if end else [])]) + "\n"


def test_verdict_is_the_harness_pass_rule():
    from swe_aem.data.instances import Instance

    inst = Instance(instance_id="instance_a__b-1", repo="a/b", base_commit="0" * 40, problem_statement="p",
                    FAIL_TO_PASS=("TestNew",), PASS_TO_PASS=("TestOld",), grader="swe-bench-pro",
                    log_parser="go_test", workdir="/app")
    ok = pro.verdict(inst, _output("1a", "--- PASS: TestNew (0.00s)\n--- PASS: TestOld (0.00s)\n--- FAIL: TestOther (0s)"))
    assert ok["resolved"] and ok["pass_rule"] == pro.PASS_RULE and ok["runner"] == "go_test"
    assert ok["tests_status"]["FAIL_TO_PASS"] == {"success": ["TestNew"], "failure": []}  # others do not count
    # the tests' own output cannot fake a marker: it has not the nonce
    fake = ">>>>> swe-aem pro 2b stdout\n--- PASS: TestNew (0.00s)\n--- PASS: TestOld (0.00s)\n"
    bad = pro.verdict(inst, _output("1a", fake + "--- FAIL: TestOld (0.00s)"))
    assert bad["resolved"] and ">>>>>" not in "".join(bad["tests_status"]["PASS_TO_PASS"]["success"])
    broken = pro.verdict(inst, _output("1a", "--- PASS: TestNew (0.00s)\n--- FAIL: TestOld (0.00s)"))
    assert not broken["resolved"] and broken["reason"] == "PASS_TO_PASS not passing: TestOld (FAILED)"
    refused = pro.verdict(inst, _output("1a", "--- PASS: TestOld (0.00s)", applied=False, end=False))
    assert not refused["resolved"] and not refused["patch_successfully_applied"]
    assert refused["reason"] == ("FAIL_TO_PASS not passing: TestNew (not run); the harness's `git apply -v` "
                                 "refused the patch, so the tests ran without it; the output stops before "
                                 "the entry script's end (killed or cut)")
    assert not pro.verdict(inst, "bash: /workspace/swe_aem_entry.sh: No such file")["resolved"]


def test_the_grading_timeout_defaults_to_the_harness_hour_for_pro_rows():
    from swe_aem.data.instances import Instance

    rows = [Instance(instance_id="i", repo="a/b", base_commit="0" * 40, problem_statement="p", grader=g)
            for g in ("swebench", "swe-bench-pro")]
    assert pro.default_timeout(rows[:1], 1800.0) == 1800.0
    assert pro.default_timeout(rows, 1800.0) == pro.TIMEOUT_S == 3600.0
    assert pro.GRADED_PATCH == __import__("swe_aem.reward.grading", fromlist=["x"]).PATCH_FILE


# ---------------------------------------------------------------- repositories in Pro's layout, on containers

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "swe-aem", "GIT_AUTHOR_EMAIL": "swe-aem@localhost",
           "GIT_COMMITTER_NAME": "swe-aem", "GIT_COMMITTER_EMAIL": "swe-aem@localhost",
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00+0000", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00+0000",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}

GO_REPO = {
    "go.mod": "module example.com/textfmt\n\ngo 1.19\n",
    "README.md": "# textfmt\n\nWords for the command line.\n",
    "text/text.go": '''// Package text formats the words a command line prints.
package text

import "fmt"

// Truncate cuts s to at most max runes, ending with "..." when it was cut.
func Truncate(max int, s string) string {
	r := []rune(s)
	if len(r) <= max {
		return s
	}
	return string(r[:max-3]) + "..."
}

// Pluralize says how many things there are: "2 issues".
func Pluralize(num int, thing string) string {
	return fmt.Sprintf("%d %ss", num, thing)
}
''',
    "text/text_test.go": '''package text

import "testing"

func TestTruncate(t *testing.T) {
	if got := Truncate(8, "a long issue title"); got != "a lon..." {
		t.Errorf("Truncate = %q", got)
	}
}

func TestPluralizeMany(t *testing.T) {
	if got := Pluralize(2, "issue"); got != "2 issues" {
		t.Errorf("Pluralize = %q", got)
	}
}
''',
    "count/count.go": '''// Package count counts words.
package count

import "strings"

// Words is the number of words of s.
func Words(s string) int { return len(strings.Fields(s)) }
''',
    "count/count_test.go": '''package count

import "testing"

func TestWords(t *testing.T) {
	if got := Words("one two  three"); got != 3 {
		t.Errorf("Words = %d", got)
	}
}
''',
}
GO_FIX = {"text/text.go": ('\treturn fmt.Sprintf("%d %ss", num, thing)\n',
                           ('\tif num == 1 {\n\t\treturn fmt.Sprintf("%d %s", num, thing)\n\t}\n'
                            '\treturn fmt.Sprintf("%d %ss", num, thing)\n'))}
GO_TESTS = {"text/text_test.go": ("", '''
func TestPluralize(t *testing.T) {
	t.Run("one", func(t *testing.T) {
		if got := Pluralize(1, "issue"); got != "1 issue" {
			t.Errorf("Pluralize = %q", got)
		}
	})
	t.Run("many", func(t *testing.T) {
		if got := Pluralize(3, "issue"); got != "3 issues" {
			t.Errorf("Pluralize = %q", got)
		}
	})
}
''')}
GO_BREAK_TRUNCATE = {"text/text.go": ('return string(r[:max-3]) + "..."', 'return string(r[:max]) + "..."')}
GO_F2P = ["TestPluralize", "TestPluralize/one", "TestPluralize/many"]
GO_P2P = ["TestTruncate", "TestPluralizeMany", "TestWords"]

PY_REPO = {
    "README.md": "# pyfmt\n",
    "pyfmt/__init__.py": '''"""Formatting helpers."""


def title_case(text):
    return " ".join(w.capitalize() for w in text.split())


def slug(text):
    return text.lower()
''',
    "tests/__init__.py": "",
    "tests/test_core.py": '''from pyfmt import title_case


def test_title_case():
    assert title_case("hello world") == "Hello World"
''',
}
PY_FIX = {"pyfmt/__init__.py": ("    return text.lower()\n", '    return "-".join(text.lower().split())\n')}
PY_TESTS = {"tests/test_core.py": ("from pyfmt import title_case\n", '''from pyfmt import slug, title_case
import pytest


@pytest.mark.parametrize(("text", "want"), [("Hello World", "hello-world"), ("x", "x")])
def test_slug(text, want):
    assert slug(text) == want
''')}
PY_F2P = ["tests/test_core.py::test_slug[Hello World-hello-world]", "tests/test_core.py::test_slug[x-x]"]
PY_P2P = ["tests/test_core.py::test_title_case"]

# the checkout's own files for the Python row, in the harness's contract (written here)
HARNESS_RUN_SCRIPT = '''#!/bin/bash
set -e
echo "mark=$PRO_MARK"
if [ $# -eq 0 ]; then python -m pytest -v tests; exit $?; fi
IFS=',' read -r -a FILES <<< "$1"
python -m pytest -v "${FILES[@]}"
'''
HARNESS_PARSER = '''import json, re, sys
tests = []
for line in open(sys.argv[1]):
    m = re.match(r"^(tests/\\S+?::.*?)\\s+(PASSED|FAILED|SKIPPED|ERROR)", line.strip())
    if m:
        tests.append({"name": m.group(1), "status": m.group(2)})
json.dump({"tests": tests}, open(sys.argv[3], "w"))
'''


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, env=GIT_ENV,
                          capture_output=True, text=True, check=True).stdout


def _edit(repo: Path, edits: dict) -> None:
    """(old, new) per file: old "" appends, else it must occur once and is replaced."""
    for rel, (old, new) in edits.items():
        path = repo / rel
        text = path.read_text()
        assert not old or text.count(old) == 1, f"{old!r} must occur once in {rel}"
        path.write_text(text.replace(old, new) if old else text + new)


def _patch(repo: Path, *edit_sets: dict) -> str:
    """The diff of the edits against the checked-out commit; the work tree is left clean."""
    for edits in edit_sets:
        _edit(repo, edits)
    _git(repo, "add", "-A")
    diff = _git(repo, "diff", "--cached")
    _git(repo, "reset", "-q", "--hard")
    return diff


@dataclasses.dataclass
class ProCase:
    inst: object
    repo: Path
    row: dict
    timings: dict


def _pro_case(docker_client, work: Path, name: str, files: dict, fix: dict, tests: dict, f2p: list, p2p: list,
              selected: list, language: str, base_image: str, prewarm: str) -> ProCase:
    """A repository in Pro's layout: the base commit checked out at /app, the fix's commit (fix +
    tests) in its history on a branch, as Pro images hold it; its row in Pro's text columns;
    its image FROM `base_image` (bash its command), kept under a content-hash tag."""
    from swe_aem.sandbox.image_store import image_exists

    repo = work / name
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", f"{name} at its base")
    base = _git(repo, "rev-parse", "HEAD").strip()
    gold_patch, test_patch = _patch(repo, fix), _patch(repo, tests)
    _git(repo, "checkout", "-qb", "pr")
    _edit(repo, fix)
    _edit(repo, tests)
    _git(repo, "commit", "-qam", "the fix and its tests")
    gold = _git(repo, "rev-parse", "HEAD").strip()
    _git(repo, "checkout", "-q", "main")
    iid = f"instance_swe-aem__{name}-{gold}"
    row = {"repo": f"swe-aem/{name}", "instance_id": iid, "base_commit": base, "patch": gold_patch,
           "test_patch": test_patch, "problem_statement": json.dumps(f"## Title: fix {name}"),
           "requirements": "", "interface": "", "repo_language": language,
           "fail_to_pass": repr(f2p), "pass_to_pass": json.dumps(p2p), "issue_specificity": '["minor_bug"]',
           "issue_categories": '["back_end_knowledge"]',
           "before_repo_set_cmd": f"git reset --hard {base}\ngit clean -fd \ngit checkout {base} \n"
                                  f"git checkout {gold} -- {' '.join(sorted(tests))}",
           "selected_test_files_to_run": json.dumps(selected)}
    dockerfile = (f"FROM {base_image}\nUSER root\nCOPY {name} /app\nWORKDIR /app\n"
                  f"RUN {prewarm}\nCMD [\"/bin/bash\"]\n")
    digest = hashlib.sha256(json.dumps([base_image, dockerfile, files, fix, tests]).encode()).hexdigest()[:12]
    tag = f"swe-aem/test-pro-{name}:{digest}"
    start = time.monotonic()
    if not image_exists(docker_client, tag):
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            add_text(tar, "Dockerfile", dockerfile, mode=0o644)
            tar.add(repo, arcname=name)
        context.seek(0)
        docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True,
                                   network_mode="none", pull=False)
    timings = {"image_s": time.monotonic() - start}
    path = work / f"{name}.jsonl"
    path.write_text(json.dumps(row) + "\n")
    [inst] = load_instances(str(path))  # the family from the columns
    assert inst.image == f"jefzda/sweap-images:swe-aem.{name}-swe-aem__{name}-{gold}"  # the harness's name
    return ProCase(dataclasses.replace(inst, image=tag), repo, row, timings)


@pytest.fixture(scope="module")
def go_case(docker_client, tmp_path_factory):
    from swe_aem.sandbox.image_store import build_base

    start = time.monotonic()
    base_image = build_base(docker_client, recipe="base-go")  # built once, cached by its recipe's hash
    base_s = time.monotonic() - start
    case = _pro_case(docker_client, tmp_path_factory.mktemp("pro-go"), "textfmt", GO_REPO, GO_FIX, GO_TESTS,
                     GO_F2P, GO_P2P, [*GO_F2P, *GO_P2P], "go", base_image,
                     "go test -count=1 -run '^$' ./... >/dev/null")  # Go's build cache warm, as Pro's builds leave it
    case.timings["base_image_s"] = base_s
    yield case
    print(f"\nswe-bench-pro go case: {json.dumps({k: round(v, 1) for k, v in case.timings.items()})}")


@pytest.fixture(scope="module")
def py_case(docker_client, tmp_path_factory):
    from swe_aem.sandbox.image_store import build_base

    base_image = build_base(docker_client)
    case = _pro_case(docker_client, tmp_path_factory.mktemp("pro-py"), "pyfmt", PY_REPO, PY_FIX, PY_TESTS,
                     PY_F2P, PY_P2P, ["tests/test_core.py"], "python", base_image, "python -m pytest --version")
    yield case
    print(f"\nswe-bench-pro python case: {json.dumps({k: round(v, 1) for k, v in case.timings.items()})}")


@pytest.mark.slow
@pytest.mark.docker
def test_go_gold_resolves_and_breaking_or_unfixed_patches_do_not(go_case, sandbox_pool):
    from concurrent.futures import ThreadPoolExecutor

    from swe_aem.reward import grade_patch

    inst, repo = go_case.inst, go_case.repo
    assert (inst.log_parser, inst.workdir, inst.FAIL_TO_PASS, inst.PASS_TO_PASS) == (
        "go_test", "/app", tuple(GO_F2P), tuple(GO_P2P))
    with sandbox_pool.sandbox(inst, shell_env=False) as box:  # Pro's layout, as the grader sees it
        assert box.exec("command -v python3 python", timeout=30).exit_code != 0
        assert box.exec(f"git cat-file -e {inst.gold_commit}^{{commit}} && git rev-parse HEAD",
                        timeout=30).output.strip() == inst.base_commit
    patches = {"gold": inst.patch, "broken": _patch(repo, GO_FIX, GO_BREAK_TRUNCATE),
               "unfixed": _patch(repo, {"README.md": ("", "\nMore words.\n")})}
    start = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        graded = dict(zip(patches, pool.map(lambda p: grade_patch(inst, p, pool=sandbox_pool, timeout=300),
                                            patches.values())))
    go_case.timings["grade_3_patches_s"] = time.monotonic() - start
    gold, broken, unfixed = graded["gold"], graded["broken"], graded["unfixed"]
    assert (gold.status, gold.reward) == ("resolved", 1.0), (gold.reason, gold.test_output[-3000:])
    assert gold.report["pass_rule"] == pro.PASS_RULE and gold.report["runner"] == "go_test"
    assert gold.report["tests_status"]["FAIL_TO_PASS"] == {"success": GO_F2P, "failure": []}
    assert "--- PASS: TestPluralize/one" in gold.test_output and "--- PASS: TestWords" in gold.test_output
    assert (broken.status, broken.reward) == ("unresolved", 0.0), broken.reason
    assert broken.reason == "PASS_TO_PASS not passing: TestTruncate (FAILED)"
    assert (unfixed.status, unfixed.reward) == ("unresolved", 0.0), unfixed.reason
    assert unfixed.reason == ("FAIL_TO_PASS not passing: TestPluralize (FAILED), TestPluralize/one (FAILED)")


@pytest.mark.slow
@pytest.mark.docker
def test_python_row_by_the_pytest_runner_and_by_a_harness_checkout(py_case, sandbox_pool, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from swe_aem.reward import grade_patch

    inst = py_case.inst
    # a checkout in the harness's layout: its run script and parser run instead, the ENV lines exported
    root = _checkout(tmp_path / "harness", [inst.instance_id], run_script=HARNESS_RUN_SCRIPT,
                     parser=HARNESS_PARSER, env="ENV PRO_MARK=from-the-dockerfile\n")
    pro_runners.use_harness_dir(root)
    [loaded] = load_instances(write_rows(tmp_path / "row.jsonl", [py_case.row]))
    harnessed = dataclasses.replace(loaded, image=inst.image)
    assert (inst.log_parser, harnessed.log_parser) == ("pytest", "harness")
    runs = [(inst, inst.patch), (harnessed, inst.patch),
            (harnessed, _patch(py_case.repo, {"README.md": ("", "more\n")}))]
    start = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        own, gold, unfixed = pool.map(lambda r: grade_patch(*r, pool=sandbox_pool, timeout=300), runs)
    py_case.timings["grade_3_patches_s"] = time.monotonic() - start
    assert (own.status, own.report["runner"]) == ("resolved", "pytest"), (own.reason, own.test_output[-3000:])
    assert own.report["tests_status"]["FAIL_TO_PASS"]["success"] == PY_F2P
    assert (gold.status, gold.reward) == ("resolved", 1.0), (gold.reason, gold.test_output[-3000:])
    assert gold.report["runner"] == "harness" and gold.report["harness"] == str(root.resolve())
    assert "mark=from-the-dockerfile" in gold.test_output
    assert (unfixed.status, unfixed.reward) == ("unresolved", 0.0), unfixed.reason
    assert unfixed.reason.startswith("FAIL_TO_PASS not passing: tests/test_core.py::test_slug[Hello World-hello-world]")


@pytest.mark.slow
@pytest.mark.docker
def test_an_image_with_bash_as_its_entrypoint_starts(go_case, docker_client, sandbox_pool):
    from swe_aem.sandbox.image_store import image_exists

    tag = go_case.inst.image.replace("test-pro-textfmt:", "test-pro-textfmt:entrypoint-")
    if not image_exists(docker_client, tag):
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            add_text(tar, "Dockerfile", f'FROM {go_case.inst.image}\nENTRYPOINT ["/bin/bash"]\n', mode=0o644)
        context.seek(0)
        docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True,
                                   network_mode="none", pull=False)
    with sandbox_pool.sandbox(dataclasses.replace(go_case.inst, image=tag), shell_env=False) as box:
        assert box.exec("pwd", timeout=30).output.strip() == "/app"
