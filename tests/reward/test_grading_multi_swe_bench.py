"""Multi-SWE-bench rows graded as its own harness grades them (swe_aem/reward/multi_swe_bench.py):
the package's per-repository parser and report check, the container run the project's.

- The shared rows (../shared/datasets, real Java rows; skipped where that folder is absent)
  load field by field, also JSON-encoded as some exports store them, and a malformed row is
  refused naming the row and the column. The verdict is checked on Maven logs made from the
  rows' own results (the package's gson parser), n2p-only rows included.
- On a real container: a small Go repository named cli/cli (a name the package knows, so its
  parser is the package's cli/cli class) in the harness's layout, built here from the
  package's own Dockerfiles and scripts with only the FROM replaced: Debian's Go
  (sandboxes/base-go, no python3) instead of golang:latest. Its row is made as the harness
  makes rows (run.sh, test-run.sh, fix-run.sh, the package's report, Dataset.build), then
  graded: the gold patch 1, a patch breaking a p2p test 0, the unfixed repository 0, a
  half fix 0 (the row's f2p test not kept).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from helpers import SHARED, add_text, shared_rows, write_rows

from swe_aem.data import DatasetError, load_instances
from swe_aem.reward import multi_swe_bench as msb

SAMPLE = "multi_swe_bench.sample.jsonl"


# ---------------------------------------------------------------- the shared rows

def test_shared_rows_load_field_by_field():
    raws = shared_rows(SAMPLE)
    insts = load_instances(str(SHARED / SAMPLE))  # the family from the columns
    assert [i.instance_id for i in insts] == ["google__gson-1093", "google__gson-1703", "apache__dubbo-7041"]
    for raw, inst in zip(raws, insts):
        name = raw["repo"]
        assert inst.image == f"mswebench/{raw['org']}_m_{name}:pr-{raw['number']}".lower()
        assert (inst.repo, inst.workdir, inst.base_commit) == (f"{raw['org']}/{name}", f"/home/{name}",
                                                               raw["base"]["sha"])
        assert inst.FAIL_TO_PASS == tuple(sorted(raw["f2p_tests"]))
        assert inst.PASS_TO_PASS == tuple(sorted(raw["p2p_tests"]))
        for col in ("s2p_tests", "n2p_tests", "fixed_tests", "run_result", "test_patch_result", "fix_patch_result"):
            assert inst.extra[col] == raw[col], col
        assert (inst.patch, inst.test_patch) == (raw["fix_patch"], raw["test_patch"])
        # the harness's own command, and the parser of the class its report step creates
        assert inst.eval_script == "#!/bin/bash\nbash /home/fix-run.sh\n"
        assert (inst.grader, inst.log_parser, inst.eval_type) == ("multi-swe-bench", f"{raw['org']}/{name}",
                                                                  "msb_report")
        assert type(msb.harness_instance(inst)).__module__ == \
            f"multi_swe_bench.harness.repos.java.{raw['org']}.{name}"
    gson, gson2, dubbo = insts
    assert gson.FAIL_TO_PASS == ("com.google.gson.stream.JsonWriterTest",) and len(gson.PASS_TO_PASS) == 87
    assert gson2.FAIL_TO_PASS == () and len(gson2.extra["n2p_tests"]) == 8
    assert len(dubbo.PASS_TO_PASS) == 127


def test_json_encoded_columns_are_decoded(tmp_path):
    """An export that stores the objects as JSON text and the prose JSON-quoted gives the same task."""
    raw = shared_rows(SAMPLE)[0]
    encoded = {**raw, **{c: json.dumps(raw[c]) for c in (
        "base", "resolved_issues", "fixed_tests", "p2p_tests", "f2p_tests", "s2p_tests", "n2p_tests",
        "run_result", "test_patch_result", "fix_patch_result")},
        "title": json.dumps(raw["title"]), "fix_patch": json.dumps(raw["fix_patch"])}
    [plain] = load_instances(write_rows(tmp_path / "a.jsonl", [raw]), dataset_format="multi-swe-bench")
    [same] = load_instances(write_rows(tmp_path / "b.jsonl", [encoded]), dataset_format="multi-swe-bench")
    assert same == plain
    assert same.extra["title"] == raw["title"] and same.extra["resolved_issues"] == raw["resolved_issues"]
    assert same.extra["run_result"] == raw["run_result"]


@pytest.mark.parametrize(("change", "column"), [
    ({"org": "nobody", "repo": "nothing"}, "columns 'org' and 'repo': multi-swe-bench 1.1.2 has no log parser"),
    ({"tag": 3}, "column 'tag' must be a string"),
    ({"base": "{not json"}, "'base' is not valid JSON"),
    ({"resolved_issues": "[1, 2]"}, "column 'resolved_issues' must be a list"),
    ({"test_patch_result": json.dumps({"passed_tests": []})}, "column 'test_patch_result' must be an object"),
    ({"n2p_tests": {"T": {"run": "NONE", "test": "NONE"}}}, "column 'n2p_tests': test 'T'"),
    ({"test_patch": "  "}, "column 'test_patch' must be a non-empty diff"),
])
def test_malformed_rows_are_refused_naming_the_row_and_column(tmp_path, change, column):
    raws = shared_rows(SAMPLE)
    path = write_rows(tmp_path / "m.jsonl", [raws[0], {**raws[2], **change}])
    with pytest.raises(DatasetError) as err:
        load_instances(path, dataset_format="multi-swe-bench")
    assert "m.jsonl:2 (instance_id='apache__dubbo-7041', format multi-swe-bench)" in str(err.value)
    assert column in str(err.value)


def surefire(passed, failed=(), skipped=()) -> str:
    """A Maven log in surefire's form, as gson's parser reads it (after a first line: the
    package's parser starts reading at the log's 9th character)."""
    lines = ["[INFO] Scanning for projects..."]
    for name in passed:
        lines += [f"Running {name}", "Tests run: 4, Failures: 0, Errors: 0, Skipped: 0, Time elapsed: 0.1 sec"]
    for name in failed:
        lines += [f"Running {name}",
                  "Tests run: 4, Failures: 1, Errors: 0, Skipped: 0, Time elapsed: 0.1 sec <<< FAILURE!"]
    for name in skipped:
        lines += [f"Running {name}", "Tests run: 4, Failures: 0, Errors: 0, Skipped: 4, Time elapsed: 0.1 sec"]
    return "\n".join(lines) + "\n"


def test_verdict_is_the_packages_report_check_on_the_shared_rows():
    shared_rows(SAMPLE)
    gson, gson2, _ = load_instances(str(SHARED / SAMPLE))
    fixed = gson.extra["fix_patch_result"]
    ok = msb.verdict(gson, surefire(fixed["passed_tests"], fixed["failed_tests"]))
    assert ok["resolved"], ok["reason"]
    assert ok["tests_status"]["FAIL_TO_PASS"] == {"success": list(gson.FAIL_TO_PASS), "failure": []}
    assert (ok["harness"], ok["pass_rule"]) == ("multi-swe-bench 1.1.2", msb.PASS_RULE)
    assert ok["log_parser"] == "multi_swe_bench.harness.repos.java.google.gson.Gson.parse_log"
    # a p2p class failing now: a new failure, the report is invalid
    broken = "com.google.gson.stream.JsonReaderTest"
    bad = msb.verdict(gson, surefire(set(fixed["passed_tests"]) - {broken}, [*fixed["failed_tests"], broken]))
    assert not bad["resolved"] and bad["reason"].startswith("invalid report: Before applying the fix patch")
    assert bad["reason"].endswith(f": {broken} (run PASS, test PASS, fix FAIL)")
    assert bad["tests_status"]["PASS_TO_PASS"]["failure"] == [broken]
    # the f2p class still failing: nothing fixed
    unfixed = msb.verdict(gson, surefire(set(fixed["passed_tests"]) - set(gson.FAIL_TO_PASS),
                                         [*fixed["failed_tests"], *gson.FAIL_TO_PASS]))
    assert not unfixed["resolved"] and "no test cases transitioned from failed to passed" in unfixed["reason"]
    # a p2p class that no longer runs: the report stays valid, the row's p2p is not kept
    gone = msb.verdict(gson, surefire(set(fixed["passed_tests"]) - {broken}, fixed["failed_tests"]))
    assert not gone["resolved"] and gone["reason"] == f"p2p_tests not kept: {broken}"
    nothing = msb.verdict(gson, "BUILD FAILURE\n")
    assert not nothing["resolved"] and "no test results were captured" in nothing["reason"]
    # gson-1703 fixes only by tests that did not run with the test patch (n2p, no f2p)
    fixed2 = gson2.extra["fix_patch_result"]
    assert msb.verdict(gson2, surefire(fixed2["passed_tests"], fixed2["failed_tests"]))["resolved"]
    n2p = min(gson2.extra["n2p_tests"])
    lost = msb.verdict(gson2, surefire(set(fixed2["passed_tests"]) - {n2p}, fixed2["failed_tests"]))
    assert not lost["resolved"] and lost["reason"] == f"n2p_tests not kept: {n2p}"
    assert lost["tests_status"]["NONE_TO_PASS"]["failure"] == [n2p]


def test_graded_patch_path_is_gradings():
    from swe_aem.reward import grading

    assert msb.GRADED_PATCH == grading.PATCH_FILE
    # a removed "-- x" and an added "++ y" line are hunk lines, not file headers
    patch = ("diff --git a/q.sql b/q.sql\n--- a/q.sql\n+++ b/q.sql\n@@ -1,2 +1,2 @@\n--- x\n+++ y\n keep\n"
             "diff --git a/old.go b/new.go\nsimilarity index 100%\nrename from old.go\nrename to new.go\n"
             "diff --git a/n.go b/n.go\nnew file mode 100644\n--- /dev/null\n+++ b/n.go\n@@ -0,0 +1 @@\n+package n\n")
    assert msb._diff_paths(patch) == [("q.sql", "q.sql"), ("old.go", "new.go"), ("/dev/null", "n.go")]


# ---------------------------------------------------------------- a Go repository on a real container

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "swe-aem", "GIT_AUTHOR_EMAIL": "swe-aem@localhost",
           "GIT_COMMITTER_NAME": "swe-aem", "GIT_COMMITTER_EMAIL": "swe-aem@localhost",
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00+0000", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00+0000",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
NUMBER = 1  # the row: cli/cli pr-1
GO_REPO = {
    "go.mod": "module github.com/cli/cli\n\ngo 1.19\n",
    "README.md": "# cli\n\nWords for the command line.\n",
    "pkg/text/text.go": '''// Package text formats the words the command line prints.
package text

import "fmt"

// Truncate cuts s to at most max runes, ending with "..." when it was cut.
func Truncate(max int, s string) string {
	r := []rune(s)
	if len(r) <= max {
		return s
	}
	if max < 4 {
		return string(r[:max])
	}
	return string(r[:max-3]) + "..."
}

// Pluralize says how many things there are: "2 issues".
func Pluralize(num int, thing string) string {
	return fmt.Sprintf("%d %ss", num, thing)
}
''',
    "pkg/text/text_test.go": '''package text

import "testing"

func TestTruncate(t *testing.T) {
	if got := Truncate(8, "a long issue title"); got != "a lon..." {
		t.Errorf("Truncate = %q", got)
	}
	if got := Truncate(20, "short"); got != "short" {
		t.Errorf("Truncate = %q", got)
	}
}

func TestPluralizeMany(t *testing.T) {
	if got := Pluralize(2, "issue"); got != "2 issues" {
		t.Errorf("Pluralize = %q", got)
	}
}
''',
}
PLURAL_FIX = {"pkg/text/text.go": ('\treturn fmt.Sprintf("%d %ss", num, thing)\n',
                                   ('\tif num == 1 {\n\t\treturn fmt.Sprintf("%d %s", num, thing)\n\t}\n'
                                    '\treturn fmt.Sprintf("%d %ss", num, thing)\n'))}
INDENT_FIX = {"pkg/indent/indent.go": (None, '''// Package indent indents blocks of text.
package indent

import "strings"

// Indent puts prefix before every non-empty line of s.
func Indent(s, prefix string) string {
	lines := strings.Split(s, "\\n")
	for i, line := range lines {
		if line != "" {
			lines[i] = prefix + line
		}
	}
	return strings.Join(lines, "\\n")
}
''')}
GOLD = {**PLURAL_FIX, **INDENT_FIX}
TESTS = {  # the PR's tests: one fails before the fix (f2p), one is in a package the fix adds (n2p)
    "pkg/text/text_test.go": ("", '''
func TestPluralizeOne(t *testing.T) {
	if got := Pluralize(1, "issue"); got != "1 issue" {
		t.Errorf("Pluralize = %q", got)
	}
}
'''),
    "pkg/indent/indent_test.go": (None, '''package indent

import "testing"

func TestIndent(t *testing.T) {
	if got := Indent("a\\n\\nb", "  "); got != "  a\\n\\n  b" {
		t.Errorf("Indent = %q", got)
	}
}
'''),
}
BREAK_TRUNCATE = {"pkg/text/text.go": ('return string(r[:max-3]) + "..."', 'return string(r[:max]) + "..."')}


def _git(cwd: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, env=GIT_ENV,
                          input=stdin, capture_output=True, text=True, check=True).stdout


def _patch(repo: Path, *edit_sets: dict) -> str:
    """The diff of the edits (old, new) against the checked-out commit (old None: a new file;
    "" : appended); the work tree is left clean."""
    for edits in edit_sets:
        for rel, (old, new) in edits.items():
            path = repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            text = "" if old is None else path.read_text()
            assert not old or text.count(old) == 1, f"{old!r} must occur once in {rel}"
            path.write_text(new if old is None else text.replace(old, new) if old else text + new)
    _git(repo, "add", "-A")
    diff = _git(repo, "diff", "--cached")
    _git(repo, "reset", "-q", "--hard")
    _git(repo, "clean", "-fdq")
    return diff


def _harness_pr(base: str, fix: str, test_patch: str):
    from multi_swe_bench.harness.pull_request import Base, PullRequest, ResolvedIssue

    issue = ResolvedIssue(number=NUMBER + 1, title='"1 issues" in the issue list',
                          body='`Pluralize(1, "issue")` says "1 issues"; and there is no way to indent a block.')
    return PullRequest(org="cli", repo="cli", number=NUMBER, state="closed", title="Singular counts, indent",
                       body="", base=Base(label="cli:trunk", ref="trunk", sha=base), resolved_issues=[issue],
                       fix_patch=fix, test_patch=test_patch)


@pytest.fixture(scope="module")
def go_case(docker_client, sandbox_pool, tmp_path_factory):
    """(the row as the harness makes it, the loaded instance, the repo, timings), its image
    built once and kept under a content-hash tag (the next run reuses it)."""
    from multi_swe_bench.harness.dataset import Dataset
    from multi_swe_bench.harness.image import Config
    from multi_swe_bench.harness.instance import Instance as HarnessInstance
    from multi_swe_bench.harness.report import generate_report

    from swe_aem.sandbox.image_store import build_base, image_exists

    timings = {}
    start = time.monotonic()
    base_image = build_base(docker_client, recipe="base-go")
    timings["base_image_s"] = time.monotonic() - start
    work = tmp_path_factory.mktemp("msb-cli")
    repo = work / "cli"
    for rel, text in GO_REPO.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "cli at its base")
    base = _git(repo, "rev-parse", "HEAD").strip()
    fix, test_patch = _patch(repo, GOLD), _patch(repo, TESTS)
    pr = _harness_pr(base, fix, test_patch)
    harness = HarnessInstance.create(pr, Config(need_clone=False, global_env=None, clear_env=False))
    image = harness.dependency()
    # the package's two Dockerfiles (base: the repo at /home/cli; pr: the scripts, prepare.sh
    # run), one after the other, FROM Debian's Go instead of golang:latest
    base_file = image.dependency().dockerfile()
    assert base_file.startswith("FROM golang:latest\n")
    dockerfile = (f"FROM {base_image}\n" + base_file.split("\n", 1)[1]
                  + image.dockerfile().split("\n", 1)[1])
    files = {f.name: f.content for f in image.files()}
    digest = hashlib.sha256(json.dumps([base_image, dockerfile, files, base]).encode()).hexdigest()[:12]
    tag = f"swe-aem/test-msb-cli:{digest}"
    start = time.monotonic()
    if not image_exists(docker_client, tag):
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            add_text(tar, "Dockerfile", dockerfile)
            for name, text in files.items():
                add_text(tar, name, text)
            tar.add(repo, arcname="cli")
        context.seek(0)
        docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True,
                                   network_mode="none", pull=False)
    timings["image_s"] = time.monotonic() - start
    # the row as the harness's build_dataset makes it: each stage's log parsed by the package,
    # its report, Dataset.build
    start = time.monotonic()
    logs = {}
    with sandbox_pool.sandbox(_Spec(tag), shell_env=False) as box:
        assert box.exec("command -v python3 python", timeout=30).exit_code != 0  # no python here
        for stage, cmd in (("run", harness.run()), ("test", harness.test_patch_run()),
                           ("fix", harness.fix_patch_run())):
            logs[stage] = box.exec(cmd, timeout=300, output_limit_bytes=8 << 20).output
            box.exec("git checkout -q -- . && git clean -fdq", timeout=60)
    report = generate_report(harness, logs["run"], logs["test"], logs["fix"])
    assert report.valid, (report.error_msg, logs)
    row = json.loads(Dataset.build(pr, report).json())
    timings["row_s"] = time.monotonic() - start
    path = work / "cli.jsonl"
    path.write_text(json.dumps(row) + "\n")
    [inst] = load_instances(str(path), dataset_format="multi-swe-bench")
    assert inst.image == "mswebench/cli_m_cli:pr-1"  # the harness's name; the test runs the local build
    yield row, dataclasses.replace(inst, image=tag), repo, timings
    print(f"\nmulti-swe-bench go case: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")


@dataclasses.dataclass(frozen=True)
class _Spec:
    image: str
    instance_id: str = "cli__cli-1-row"
    base_commit: str = ""
    env_activate: str = ""
    workdir: str = "/home/cli"


@pytest.mark.slow
@pytest.mark.docker
def test_go_row_made_by_the_harness_has_each_class(go_case):
    row, inst, _, _ = go_case
    assert sorted(row["f2p_tests"]) == ["TestPluralizeOne"] and inst.FAIL_TO_PASS == ("TestPluralizeOne",)
    assert sorted(row["p2p_tests"]) == ["TestPluralizeMany", "TestTruncate"]
    assert sorted(row["n2p_tests"]) == ["TestIndent"] and row["s2p_tests"] == {}
    assert row["n2p_tests"]["TestIndent"] == {"run": "NONE", "test": "NONE", "fix": "PASS"}
    assert (inst.workdir, inst.log_parser, inst.eval_script) == ("/home/cli", "cli/cli",
                                                                 "#!/bin/bash\nbash /home/fix-run.sh\n")


@pytest.mark.slow
@pytest.mark.docker
def test_go_gold_resolves_and_breaking_or_unfixed_patches_do_not(go_case, sandbox_pool):
    from swe_aem.reward import grade_patch

    _, inst, repo, timings = go_case
    start = time.monotonic()
    gold = grade_patch(inst, inst.patch, pool=sandbox_pool, timeout=300)
    assert (gold.status, gold.reward) == ("resolved", 1.0), (gold.reason, gold.test_output[-2000:])
    assert gold.report["tests_status"]["NONE_TO_PASS"] == {"success": ["TestIndent"], "failure": []}
    assert gold.report["pass_rule"] == msb.PASS_RULE
    assert gold.report["log_parser"] == "multi_swe_bench.harness.repos.golang.cli.cli.Cli.parse_log"
    assert "--- PASS: TestPluralizeOne" in gold.test_output
    # a p2p test broken on top of the gold fix: a new failure, the harness's report is invalid
    broken = grade_patch(inst, _patch(repo, GOLD, BREAK_TRUNCATE), pool=sandbox_pool, timeout=300)
    assert (broken.status, broken.reward) == ("unresolved", 0.0), broken.reason
    assert "the test passed; however, after applying the fix patch, the test failed" in broken.reason
    assert broken.reason.endswith("failed: TestTruncate (run PASS, test PASS, fix FAIL)")
    assert broken.report["tests_status"]["PASS_TO_PASS"]["failure"] == ["TestTruncate"]
    # the unfixed repository (a patch that changes no code): nothing went from failing to passing
    unfixed = grade_patch(inst, _patch(repo, {"README.md": ("", "\nMore words.\n")}), pool=sandbox_pool,
                          timeout=300)
    assert (unfixed.status, unfixed.reward) == ("unresolved", 0.0), unfixed.reason
    assert "no test cases transitioned from failed to passed" in unfixed.reason
    # half the fix: the report is valid (TestIndent passes now) but the row's f2p test is not kept
    half = grade_patch(inst, _patch(repo, INDENT_FIX), pool=sandbox_pool, timeout=300)
    assert (half.status, half.reward) == ("unresolved", 0.0), half.reason
    assert half.reason == "f2p_tests not kept: TestPluralizeOne"
    # a patch only GNU patch's fuzz applies: grading.py's apply chain takes it, but the harness
    # applies with git apply alone, so fix-run.sh stops before the tests
    context = ' // Pluralize says how many things there are: "2 issues".\n'
    assert inst.patch.count(context) == 1
    fuzzy = grade_patch(inst, inst.patch.replace(context, " // Pluralize counts things.\n"), pool=sandbox_pool,
                        timeout=300)
    assert (fuzzy.status, fuzzy.reward) == ("unresolved", 0.0), fuzzy.reason
    assert "no test results were captured" in fuzzy.reason and "git apply refused" in fuzzy.reason
    timings["grade_5_patches_s"] = time.monotonic() - start


@pytest.mark.slow
@pytest.mark.docker
def test_an_agent_episode_on_the_go_image_sees_the_repo_edits_it_and_resolves(go_case, sandbox_pool, tokenizer):
    """The agent's own route on an image without python3: a scripted policy lists the
    repository at its folder (/home/cli), makes the gold edits with str_replace_editor (run
    from the host over the Docker API here), finishes; its diff grades resolved."""
    import asyncio

    from swe_aem.agent.episode import run_episode
    from swe_aem.agent.settings import AgentConfig
    from swe_aem.policy.client import PolicyClient
    from swe_aem.policy.scripted import (
        ScriptedPolicyServer,
        editor_calls_for_patch,
        script,
        tool_call_text,
    )
    from swe_aem.reward import grade_patch

    _, inst, _, _ = go_case
    edits = editor_calls_for_patch(inst.patch, root=inst.workdir)
    steps = [tool_call_text("xml", "str_replace_editor", command="view", path=inst.workdir), *edits,
             tool_call_text("xml", "finish", message="fixed")]
    config = AgentConfig(max_turns=len(steps) + 1, temperature=0.0, tool_call_format="xml")
    with ScriptedPolicyServer(tokenizer, script(steps)) as server, sandbox_pool.sandbox(inst) as sb:
        assert sb.exec("command -v python3", timeout=30).exit_code != 0
        client = PolicyClient(server.base_url, "scripted", retries=1, backoff_s=0.05, timeout=30)
        episode = asyncio.run(run_episode(inst, sb, client, tokenizer, config))
    assert episode.termination == "finished", episode.error
    assert all(t.tool_error is None for t in episode.turns), [t.observation for t in episode.turns]
    assert episode.turns[0].observation.startswith(f"Files under {inst.workdir} (2 levels):\n")
    assert f"{inst.workdir}/go.mod" in episode.turns[0].observation
    # the fix creates pkg/indent/indent.go (a new folder) and edits pkg/text/text.go
    said = sorted(t.observation.split("\n", 1)[0] for t in episode.turns[1:len(edits) + 1])
    assert said == [f"Edited {inst.workdir}/pkg/text/text.go.", f"File created: {inst.workdir}/pkg/indent/indent.go"]
    result = grade_patch(inst, episode.patch, pool=sandbox_pool, timeout=300)
    assert (result.status, result.reward) == ("resolved", 1.0), result.reason
