"""SWE-bench 5.x rows on images without conda, built here: graded and rolled out as they are.

Official Python images activate conda in the shell's start-up file; SWE-bench Multilingual
images and custom 5.x datasets have no conda, and their eval scripts enter what they need
themselves. Two rows in the 5.x schema, each loaded from a file as a user's would be:

- python: textkit on its local suite image (system python3, no conda), the eval script in
  the Verified rows' form without the conda lines;
- ruby: a small Ruby repository in SWE-bench Multilingual's layout (sandboxes/base-ruby/:
  Ruby 3.1 with its bundled test-unit, no conda; the repo at /testbed, root), the eval
  script in swebench 4.x's non-Python form (`make_eval_script_list_common`), the test
  command in faker-ruby/faker's form (`ruby TEST_FILE -v -n '/PATTERN/'`, without
  `bundle exec`: the repo needs no gems) and faker's parser, `parse_log_ruby_unit`.

For each: gold resolves, a patch that breaks a PASS_TO_PASS test does not, one that leaves
the bug does not, and `swe-aem rollout` (scripted stand-in policy at the HTTP boundary)
runs an episode whose shell sees the repo and whose gold edits get reward 1, none dropped.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.docker]

START, END, HEREDOC = ": '>>>>> Start Test Output'", ": '>>>>> End Test Output'", "EOF_114329324912"
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": os.devnull}

SLUGGER = '''# URL slugs from titles.
module Slugger
  module_function

  def slugify(text, separator: "-")
    raise ArgumentError, "separator must not be empty" if separator.empty?

    plain = text.unicode_normalize(:nfkd).gsub(/\\p{Mn}/, "").downcase
    plain.split(/[^a-z0-9]/).join(separator)
  end

  def titleize(slug, separator: "-")
    slug.split(separator).map(&:capitalize).join(" ")
  end
end
'''
SLUGGER_TESTS = '''require "test/unit"
require_relative "../lib/slugger"

class TestSlugger < Test::Unit::TestCase
  def test_slugify_simple_words
    assert_equal "hello-world", Slugger.slugify("Hello World")
  end

  def test_slugify_folds_accents
    assert_equal "cafe-creme", Slugger.slugify("Caf\u00e9 Cr\u00e8me")
  end

  def test_slugify_custom_separator
    assert_equal "a_b", Slugger.slugify("a b", separator: "_")
  end

  def test_titleize
    assert_equal "Hello World", Slugger.titleize("hello-world")
  end
end
'''
RUBY_REPO = {"README.md": "# slugger\n\nURL slugs from titles.\n", "lib/slugger.rb": SLUGGER,
             "test/test_slugger.rb": SLUGGER_TESTS}
RUBY_GOLD = {"lib/slugger.rb": ("plain.split(/[^a-z0-9]/).join(separator)",
                                "plain.split(/[^a-z0-9]+/).reject(&:empty?).join(separator)")}
RUBY_TEST = {"test/test_slugger.rb": ("  def test_titleize\n", '''  def test_slugify_collapses_punctuation
    assert_equal "hello-world", Slugger.slugify("Hello,  World!")
  end

  def test_titleize\n''')}
RUBY_IMAGE = """FROM {base}
COPY testbed /testbed
WORKDIR /testbed
"""

Edits = dict[str, tuple[str, str]]


@dataclass(frozen=True)
class Case:
    """One 5.x row, loaded, and how to write patches for it."""

    row: dict  # the dataset row, as a file holds it
    instance: object
    patch: Callable[[Edits, bool], str]  # (edits, on top of gold?) -> a git patch
    regression: Edits  # on top of gold: breaks one PASS_TO_PASS test
    broken: str  # that test
    toolchain: str  # a command the agent's shell runs


def _git(cwd: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, env=GIT_ENV,
                          input=stdin, capture_output=True, text=True, check=True).stdout


def _edit(repo: Path, edits: Edits) -> None:
    """Replace `old` (which must occur once) by `new`; an empty `old` appends `new`."""
    for rel, (old, new) in edits.items():
        text = (repo / rel).read_text()
        assert not old or text.count(old) == 1, f"{old!r} must occur once in {rel}"
        (repo / rel).write_text(text.replace(old, new) if old else text + new)


def _diff(repo: Path, edits: Edits, gold: str = "") -> str:
    """The patch of `gold` (a patch) plus `edits`, against the checked-out commit."""
    if gold:
        _git(repo, "apply", "-", stdin=gold)
    _edit(repo, edits)
    patch = _git(repo, "diff")
    _git(repo, "checkout", "-q", "--", ".")
    return patch


def eval_script(base: str, test_patch: str, test_cmd: str, multilingual: bool) -> str:
    """A 5.x row's eval_script: Verified's form without conda, or swebench 4.x's non-Python one."""
    files = sorted({line[6:] for line in test_patch.splitlines() if line.startswith("--- a/")})
    reset = f"git checkout {base} {' '.join(files)}"
    shown = [] if multilingual else ["git status", "git show", f"git -c core.fileMode=false diff {base}"]
    apply = "git apply --verbose --reject -" if multilingual else "git apply -v -"
    lines = ["#!/bin/bash", "set -uxo pipefail", "cd /testbed",
             "git config --global --add safe.directory /testbed", "cd /testbed", *shown, reset,
             f"{apply} <<'{HEREDOC}'\n{test_patch}\n{HEREDOC}", START, test_cmd, END, reset]
    return "\n".join(lines) + "\n"


def load_row(path: Path, row: dict):
    from swe_aem.data import load_instances

    path.write_text(json.dumps(row) + "\n")
    [inst] = load_instances(str(path))  # detected as swe-bench (5.x columns)
    return inst


def v5_row(iid: str, repo: str, base: str, patch: str, test_patch: str, problem: str,
           f2p: list[str], p2p: list[str], eval_script: str, log_parser: str, image: str) -> dict:
    """Every column of a SWE-bench 5.x row, in the dataset's types (lists as JSON strings)."""
    return {"repo": repo, "instance_id": iid, "base_commit": base, "patch": patch,
            "test_patch": test_patch, "problem_statement": problem, "hints_text": "",
            "created_at": "2026-12-01T00:00:00Z", "version": "1.0", "FAIL_TO_PASS": json.dumps(f2p),
            "PASS_TO_PASS": json.dumps(p2p), "environment_setup_commit": base,
            "difficulty": "<15 min fix", "eval_script": eval_script, "log_parser": log_parser,
            "eval_type": "pass_and_fail", "image": image}


@pytest.fixture(scope="module")
def python_case(local_instance, tmp_path_factory) -> Case:
    """textkit-1 as a 5.x row on its own image: python3 from Debian, no conda anywhere."""
    from swe_aem.data.local_suite import materialize_repo

    inst = local_instance
    test_cmd = "python -m pytest -rA " + " ".join(sorted({t.split("::")[0] for t in inst.FAIL_TO_PASS}))
    row = v5_row(inst.instance_id, inst.repo, inst.base_commit, inst.patch, inst.test_patch,
                 inst.problem_statement, list(inst.FAIL_TO_PASS), list(inst.PASS_TO_PASS),
                 eval_script(inst.base_commit, inst.test_patch, test_cmd, multilingual=False),
                 "parse_log_pytest", inst.image)
    repo = tmp_path_factory.mktemp("textkit") / "repo"
    materialize_repo(inst.repo, repo)
    loaded = load_row(tmp_path_factory.mktemp("row") / "textkit_v5.jsonl", row)
    return Case(row, loaded, lambda edits, gold: _diff(repo, edits, inst.patch if gold else ""),
                {"textkit/slug.py": ('"NFKD"', '"NFC"')}, "tests/test_slug.py::test_accents_are_folded",
                "python3 --version")


@pytest.fixture(scope="module")
def ruby_case(docker_client, tmp_path_factory):
    """The Ruby row, its image built FROM sandboxes/base-ruby (removed afterwards)."""
    from swe_aem.sandbox.image_store import build_base

    base_image = build_base(docker_client, recipe="base-ruby")
    work = tmp_path_factory.mktemp("slugger")
    repo = work / "testbed"
    for rel, text in RUBY_REPO.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "slugger")
    base = _git(repo, "rev-parse", "HEAD").strip()
    gold, test_patch = _diff(repo, RUBY_GOLD), _diff(repo, RUBY_TEST)
    tag = f"swe-aem/sweb.eval.x86_64.swe-aem_1776_slugger-1:{uuid.uuid4().hex[:8]}"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        data = RUBY_IMAGE.format(base=base_image).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        tar.add(repo, arcname="testbed")
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True,
                               network_mode="none", pull=False)
    test_cmd = "ruby test/test_slugger.rb -v -n '/slugify/'"
    row = v5_row("swe-aem__slugger-1", "swe-aem/slugger", base, gold, test_patch,
                 'Slugger.slugify keeps empty words: slugify("Hello,  World!") gives '
                 '"hello---world", expected "hello-world".\n',
                 ["test_slugify_collapses_punctuation"],
                 ["test_slugify_simple_words", "test_slugify_folds_accents", "test_slugify_custom_separator"],
                 eval_script(base, test_patch, test_cmd, multilingual=True), "parse_log_ruby_unit", tag)
    loaded = load_row(work / "slugger_v5.jsonl", row)
    yield Case(row, loaded, lambda edits, on_gold: _diff(repo, edits, gold if on_gold else ""),
               {"lib/slugger.rb": (":nfkd", ":nfc")}, "test_slugify_folds_accents", "ruby --version")
    docker_client.images.remove(tag, force=True)


@pytest.fixture(params=["python", "ruby"])
def case(request) -> Case:
    return request.getfixturevalue(f"{request.param}_case")


def test_rows_carry_no_environment_and_images_have_no_conda(case, sandbox_pool):
    inst = case.instance
    assert (inst.grader, inst.env_activate, inst.setup_script) == ("swebench", "", "")
    with sandbox_pool.sandbox(inst) as sb:
        shown = sb.exec("ls /opt/miniconda3 2>&1; command -v conda || echo no-conda; "
                        'echo "env=${CONDA_DEFAULT_ENV:-none}"')
        assert "No such file or directory" in shown.output and "no-conda" in shown.output
        assert "env=none" in shown.output


def test_gold_resolves_and_regressions_do_not(case, sandbox_pool):
    from swe_aem.reward import grade_patch

    inst = case.instance
    gold = grade_patch(inst, inst.patch, pool=sandbox_pool, timeout=300)
    assert (gold.status, gold.reward) == ("resolved", 1.0), (gold.reason, gold.test_output[-2000:])
    status = gold.report["tests_status"]
    assert sorted(status["FAIL_TO_PASS"]["success"]) == sorted(inst.FAIL_TO_PASS)
    assert sorted(status["PASS_TO_PASS"]["success"]) == sorted(inst.PASS_TO_PASS)
    regression = grade_patch(inst, case.patch(case.regression, True), pool=sandbox_pool, timeout=300)
    assert (regression.status, regression.reward) == ("unresolved", 0.0), regression.reason
    assert f"PASS_TO_PASS failing: {case.broken}" in regression.reason
    assert "FAIL_TO_PASS" not in regression.reason
    unfixed = grade_patch(inst, case.patch({"README.md": ("", "\nMore docs.\n")}, False),
                          pool=sandbox_pool, timeout=300)
    assert (unfixed.status, unfixed.reward) == ("unresolved", 0.0), unfixed.reason
    assert unfixed.reason.startswith("FAIL_TO_PASS failing:") and "PASS_TO_PASS" not in unfixed.reason


def test_rollout_episode_sees_the_repo_and_its_gold_edits_resolve(case, tmp_path):
    from transformers import AutoTokenizer

    from swe_aem.agent.trajectory import read_episodes
    from swe_aem.cli import main as cli_main
    from swe_aem.policy.models import load_preset
    from swe_aem.policy.scripted import ScriptedPolicyServer, editor_calls_for_patch, script

    inst = case.instance
    look = (f"Looking around.\n<function=execute_bash>\n<parameter=command>cd /testbed && "
            f"git log --format=%H -1 && ls && {case.toolchain}</parameter>\n</function>")
    finish = "<function=finish>\n</function>"
    replies = [look, *editor_calls_for_patch(inst.patch), finish]
    dataset = tmp_path / "row.jsonl"
    dataset.write_text(json.dumps(case.row) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(load_preset("tiny").default_path)
    with ScriptedPolicyServer(tokenizer, script(replies)) as server:
        rc = cli_main(["rollout", "--dataset", str(dataset), "--model", "tiny",
                       "--server-url", server.base_url, "--samples", "1", "--max-turns", "8",
                       "--concurrency", "1", "--temperature", "0", "--grade-timeout", "300",
                       "--out", str(tmp_path / "run")])
    assert rc == 0
    [episode] = read_episodes(tmp_path / "run" / "trajectories.jsonl")
    assert episode.termination == "finished", episode.error
    seen = episode.turns[0].observation
    assert inst.base_commit in seen and "README.md" in seen, seen
    assert ("Python 3" if case.toolchain.startswith("python") else "ruby 3.1") in seen, seen
    assert all(t.tool_error is None for t in episode.turns), [t.observation for t in episode.turns]
    assert episode.reward == 1.0, (episode.grade_status, episode.grade_reason)
    assert (tmp_path / "run" / "dropped.jsonl").read_text() == ""
