"""Generated SWE-smith-style tasks: procedural bugs in the local repos, validated in containers.

Pipeline (`swe-aem generate`, swe_aem/commands/generate.py):

1. `candidates(seed)`: every Python function and class of each repo's package goes
   through swesmith's own procedural modifiers (`swesmith.bug_gen.procedural.python`,
   libcst rewrites: invert if/else, shuffle lines, remove an assignment / condition /
   loop / wrapper, change / swap an operator, change a constant, ...); each modifier
   gets a few seeded tries per entity and distinct patches are kept. Only swesmith's
   modifiers and entity extraction are used: its driver (`bug_gen.procedural.generate`)
   imports `swesmith.profiles`, which needs names swebench 5 removed, so the loop here
   is the project's own.
2. `validate_repo`: one container per repo image (the local suite's, shared per repo
   snapshot); the clean tree's tests run once, then each bug is applied, the tests run
   and the tree is reset. FAIL_TO_PASS = tests that pass clean and fail with the bug,
   PASS_TO_PASS = tests that pass both times; a bug with no FAIL_TO_PASS is rejected.
3. `issue_text`: written from the failing behaviour only (test ids and pytest's
   one-line failure messages), never from the diff; a message that quotes a changed
   line is left out.
4. `split_rows`: functions are grouped by their top-level definition and whole groups
   go to train or test, so the splits share no function.

An instance's task state is made when its sandbox starts (`setup_script`): the bug is
applied to the repo image's tree and the tree becomes a fresh one-commit history
(fixed author and date), so `base_commit` is known in advance, `diff()` is the
agent's change, and `git log` shows nothing of the clean code. The gold patch is the
bug reversed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from swe_aem.data.families import reverse_patch
from swe_aem.data.instances import DatasetError, Instance, instance_from_row
from swe_aem.data.local_suite import _git, base_commit, image_name, materialize_repo
from swe_aem.errors import RunError
from swe_aem.sandbox.image_store import SANDBOXES

GENERATED = SANDBOXES / "generated"
SPLITS = ("train", "test")
REPOS = ("swe-aem/algokit", "swe-aem/confmerge", "swe-aem/pyledger", "swe-aem/textkit")
TRIES = 16  # seeded tries of one modifier on one entity
PER_PAIR = 3  # distinct bugs kept per (entity, modifier)
TEST_SHARE = 0.25  # about this share of instances goes to the held-out split
TEST_CMD = "python3 -m pytest -rA -p no:cacheprovider"
COMMIT_MESSAGE = "task state"
_MSG_CHARS = 240


class GenerateError(RunError, RuntimeError):
    """Generation cannot go on (a repo's clean tests fail, a bug does not apply, ...)."""


@dataclass(frozen=True)
class Candidate:
    """One procedurally injected bug, before validation."""

    instance_id: str
    repo: str
    file: str  # path inside the repo
    function: str  # qualified name of the modified entity, e.g. Money.__add__
    unit: str  # file::top-level definition holding it: the split key
    kind: str  # swesmith modifier name
    bug_patch: str


# ---------------------------------------------------------------- 1. candidates

def _modifiers() -> list[Any]:
    from swesmith.bug_gen.procedural.python import MODIFIERS_PYTHON

    return list(MODIFIERS_PYTHON)


def _derived_seed(*parts: object) -> int:
    """A stable per-try seed (Python's hash() of a str changes per process)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big")


def _qualnames(tree: ast.Module) -> dict[int, tuple[str, str]]:
    """line of each def/class -> (qualified name, top-level name)."""
    names: dict[int, tuple[str, str]] = {}

    def walk(node: ast.AST, prefix: str, top: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{prefix}{child.name}"
                names[child.lineno] = (qual, top or child.name)
                walk(child, qual + ".", top or child.name)

    walk(tree, "", "")
    return names


def source_files(root: Path) -> list[Path]:
    """The package's modules (not tests) of a repo snapshot, sorted."""
    return sorted(p for p in root.rglob("*.py")
                  if "tests" not in p.relative_to(root).parts and "__pycache__" not in p.parts
                  and not p.name.startswith("test_") and p.name != "conftest.py")


def repo_candidates(repo: str, root: Path, seed: int) -> list[Candidate]:
    """Every distinct bug swesmith's modifiers make in `root` (a snapshot of `repo`), in a
    fixed order; the same seed and snapshot give the same list."""
    from swesmith.bug_gen.adapters.python import get_entities_from_file_py
    from swesmith.bug_gen.utils import generate_patch_fast

    short = repo.split("/")[-1]
    out: list[Candidate] = []
    seen: set[str] = set()
    for path in source_files(root):
        rel = path.relative_to(root).as_posix()
        names = _qualnames(ast.parse(path.read_text(), filename=rel))
        entities: list[Any] = []
        get_entities_from_file_py(entities, str(path))
        for proto in _modifiers():
            for entity in entities:
                if entity.line_start not in names or not proto.can_change(entity):
                    continue
                qual, top = names[entity.line_start]
                kept = 0
                for k in range(TRIES):
                    modifier = type(proto)(likelihood=proto.likelihood,
                                           seed=_derived_seed(seed, repo, rel, qual, proto.name, k))
                    bug = modifier.modify(entity)
                    patch = generate_patch_fast(entity, bug, str(root)) if bug else None
                    if not patch or patch in seen:
                        continue
                    seen.add(patch)
                    digest = hashlib.sha256(patch.encode()).hexdigest()[:8]
                    out.append(Candidate(f"swe-aem__{short}.{proto.name}__{digest}", repo, rel, qual,
                                         f"{rel}::{top}", proto.name, patch))
                    kept += 1
                    if kept == PER_PAIR:
                        break
    return out


def candidates(seed: int, repos: Iterable[str] = REPOS) -> list[Candidate]:
    """Candidates of every repo, from each repo's snapshot as committed."""
    out: list[Candidate] = []
    for repo in repos:
        with tempfile.TemporaryDirectory(prefix="swe-aem-gen-") as tmp:
            root = Path(tmp) / "repo"
            materialize_repo(repo, root)
            out += repo_candidates(repo, root, seed)
    return out


# ---------------------------------------------------------------- task state

def task_commit(repo: str, bug_patch: str) -> str:
    """The commit id the setup script makes: the snapshot with the bug, as a one-commit history."""
    with tempfile.TemporaryDirectory(prefix="swe-aem-gen-") as tmp:
        root = Path(tmp) / "repo"
        materialize_repo(repo, root)
        done = subprocess.run(["git", "apply", "-"], input=bug_patch, cwd=root, text=True,
                              capture_output=True, check=False)
        if done.returncode != 0:
            raise GenerateError(f"bug patch does not apply to {repo}: {done.stderr.strip()}")
        shutil.rmtree(root / ".git")
        _git(root, "init", "-q")
        _git(root, "add", "-A")
        _git(root, "commit", "-q", "-m", COMMIT_MESSAGE)
        return _git(root, "rev-parse", "HEAD")


_GIT_IDENTITY = ("GIT_AUTHOR_NAME=swe-aem GIT_AUTHOR_EMAIL=swe-aem@localhost "
                 "GIT_COMMITTER_NAME=swe-aem GIT_COMMITTER_EMAIL=swe-aem@localhost "
                 "GIT_AUTHOR_DATE=2026-01-01T00:00:00+0000 GIT_COMMITTER_DATE=2026-01-01T00:00:00+0000")


def setup_script(bug_patch: str, commit: str) -> str:
    """Apply the bug in /testbed and restart its history at one commit (must be `commit`)."""
    return "\n".join([
        "set -euo pipefail",
        "cd /testbed",
        "git apply - <<'EOF_SWE_AEM_TASK'",
        bug_patch.rstrip("\n"),
        "EOF_SWE_AEM_TASK",
        "rm -rf .git",
        "git -c init.defaultBranch=main init -q",
        "git add -A",
        f"{_GIT_IDENTITY} git -c commit.gpgsign=false commit -q -m {shlex.quote(COMMIT_MESSAGE)}",
        (f'test "$(git rev-parse HEAD)" = {commit} || '
         f'{{ echo "swe-aem: task state is $(git rev-parse HEAD), expected {commit}"; exit 1; }}'),
    ]) + "\n"


def test_files(tests: Iterable[str]) -> list[str]:
    return sorted({t.split("::", 1)[0] for t in tests})


def eval_script(commit: str, tests: Iterable[str]) -> str:
    """SWE-bench-shaped eval script: test files back at the task commit, pytest between markers."""
    files = " ".join(test_files(tests))
    return "\n".join([
        "#!/bin/bash",
        "set -uxo pipefail",
        "cd /testbed",
        "git -c core.fileMode=false status --short",
        f"git checkout {commit} -- {files}",
        ": '>>>>> Start Test Output'",
        f"{TEST_CMD} {files}",
        ": '>>>>> End Test Output'",
        f"git checkout {commit} -- {files}",
    ]) + "\n"


# ---------------------------------------------------------------- 2. validation (containers)

def test_statuses(output: str) -> dict[str, str]:
    """pytest -rA output -> {test id: PASSED/FAILED/ERROR/...} with swebench's parser."""
    from swebench.harness.log_parsers import PARSER_REGISTRY

    return PARSER_REGISTRY["parse_log_pytest"](output, None)


def failure_messages(output: str) -> dict[str, str]:
    """test id -> pytest's one-line failure message from the short summary (-rA)."""
    messages: dict[str, str] = {}
    for line in output.splitlines():
        m = re.match(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$", line)
        if m:
            messages[m.group(2)] = (m.group(3) or "").strip()
    return messages


@dataclass(frozen=True)
class Outcome:
    """A candidate's test run with its bug applied."""

    applied: bool
    timed_out: bool
    statuses: dict[str, str]
    messages: dict[str, str]


BATCH = 20  # bugs per exec of the in-container runner


def _outcome(line: dict[str, Any]) -> Outcome:
    output = line["output"]
    return Outcome(line["applied"], line["timed_out"], test_statuses(output), failure_messages(output))


def validate_repo(image: str, cands: list[Candidate],
                  on_done: Callable[[Candidate], None] = lambda c: None
                  ) -> tuple[dict[str, str], dict[str, Outcome]]:
    """Clean statuses and each candidate's outcome, in one container from the repo's image:
    generate_runner.py applies each bug, runs the tests in one pytest process, resets."""
    from swe_aem.sandbox import Sandbox, connect

    runner = (Path(__file__).parent / "generate_runner.py").read_text()
    sandbox = Sandbox.start(connect(), image, run_id="generate", instance_id=f"gen-{image.split(':')[-1]}")
    try:
        sandbox.write_file("/tmp/swe_aem_runner.py", runner)

        def run(batch: list[tuple[str, str]]) -> dict[str, Outcome]:
            sandbox.exec("rm -f /tmp/out.jsonl && git checkout -q -f HEAD && git clean -qfdx", workdir="/testbed")
            sandbox.write_file("/tmp/batch.json", json.dumps([{"key": k, "patch": p} for k, p in batch]))
            done = sandbox.exec("python3 /tmp/swe_aem_runner.py /tmp/batch.json /tmp/out.jsonl",
                                timeout=60 * len(batch) + 60, workdir="/testbed")
            try:
                lines = [json.loads(x) for x in sandbox.read_file("/tmp/out.jsonl").splitlines()]
            except FileNotFoundError:
                lines = []
            got = {line["key"]: _outcome(line) for line in lines}
            if done.exit_code != 0:  # the bug killed the runner: reject it, go on with the rest
                if len(got) == len(batch) or batch[len(got)][0] == "clean":
                    raise GenerateError(f"the validation runner failed in {image}: {done.output[-1500:]}")
                got[batch[len(got)][0]] = Outcome(True, True, {}, {})
                got.update(run(batch[len(got):]) if len(got) < len(batch) else {})
            return got

        baseline = run([("clean", "")])["clean"]
        clean = baseline.statuses
        if baseline.timed_out or not clean:
            raise GenerateError(f"the clean tests of {image} did not run")
        outcomes: dict[str, Outcome] = {}
        for start in range(0, len(cands), BATCH):
            part = cands[start:start + BATCH]
            outcomes.update(run([(c.instance_id, c.bug_patch) for c in part]))
            for cand in part:
                on_done(cand)
        return clean, outcomes
    finally:
        sandbox.close()


def classify(clean: dict[str, str], outcome: Outcome) -> tuple[list[str], list[str]]:
    """(FAIL_TO_PASS, PASS_TO_PASS): tests that pass clean and fail / pass with the bug."""
    passed = sorted(t for t, s in clean.items() if s == "PASSED")
    if not outcome.applied or outcome.timed_out:
        return [], []
    f2p = [t for t in passed if outcome.statuses.get(t) != "PASSED"]
    p2p = [t for t in passed if outcome.statuses.get(t) == "PASSED"]
    return f2p, p2p


# ---------------------------------------------------------------- 3. issue text

def changed_lines(patch: str) -> list[str]:
    """The code lines a patch removes or adds (stripped, at least 4 characters)."""
    return [line[1:].strip() for line in patch.splitlines()
            if line[:1] in "+-" and line[:3] not in ("+++", "---") and len(line[1:].strip()) >= 4]


_OPENINGS = (
    "Some tests started failing in {files}.",
    "After the last change, the test suite is red: {files} has failures.",
    "Running the tests in {files} shows failures that should not be there.",
)


def quotes_change(text: str, patch: str) -> bool:
    """Whether `text` contains a line the patch changes (the issue would show the diff)."""
    return any(line in text for line in changed_lines(patch))


def issue_text(cand: Candidate, f2p: list[str], messages: dict[str, str], rng: random.Random) -> str | None:
    """An issue from the failing behaviour: failing test ids and their failure messages,
    never the diff (a message quoting a changed line becomes a plain 'fails'); None when
    even that text would quote a changed line."""
    short = cand.repo.split("/")[-1]
    files = ", ".join(f"`{f}`" for f in test_files(f2p))
    many = len(f2p) != 1
    lines = [f"# {short}: {len(f2p)} failing test{'s' if many else ''}", "",
             rng.choice(_OPENINGS).format(files=files), "", "Failing tests:", ""]
    for test in f2p[:8]:
        msg = messages.get(test, "")[:_MSG_CHARS]
        if not msg or quotes_change(msg, cand.bug_patch):
            lines.append(f"- `{test}` fails")
        else:
            lines.append(f"- `{test}`: {msg}")
    if len(f2p) > 8:
        lines.append(f"- ... and {len(f2p) - 8} more")
    lines += ["", (f"Expected: these tests succeed. Please fix the behaviour in the `{short}` package; "
                   "the tests themselves are correct.")]
    text = "\n".join(lines) + "\n"
    return None if quotes_change(text, cand.bug_patch) else text


# ---------------------------------------------------------------- 4. rows and splits

def make_row(cand: Candidate, f2p: list[str], p2p: list[str], messages: dict[str, str],
             seed: int) -> dict[str, Any] | None:
    """The committed row of a validated candidate (everything load time cannot recompute
    cheaply); None when no issue text can avoid quoting the change."""
    rng = random.Random(_derived_seed(seed, cand.instance_id, "issue"))
    text = issue_text(cand, f2p, messages, rng)
    if text is None:
        return None
    return {
        "instance_id": cand.instance_id, "repo": cand.repo, "version": "generated",
        "snapshot": base_commit(cand.repo), "base_commit": task_commit(cand.repo, cand.bug_patch),
        "problem_statement": text,
        "patch": reverse_patch(cand.bug_patch), "bug_patch": cand.bug_patch,
        "FAIL_TO_PASS": f2p, "PASS_TO_PASS": p2p,
        "file": cand.file, "function": cand.function, "unit": cand.unit, "bug_kind": cand.kind,
        "created_at": "2026-01-01T00:00:00Z",
    }


def split_rows(rows: list[dict[str, Any]], seed: int, test_share: float = TEST_SHARE
               ) -> dict[str, list[dict[str, Any]]]:
    """Whole top-level definitions go to test (in a seeded order) until it holds about
    `test_share` of the rows; the rest is train. No function is in both."""
    by_unit: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_unit.setdefault(row["unit"], []).append(row)
    units = sorted(by_unit)
    random.Random(seed).shuffle(units)
    test: list[dict[str, Any]] = []
    train: list[dict[str, Any]] = []
    for unit in units:
        (test if len(test) < test_share * len(rows) else train).extend(by_unit[unit])
    key = lambda r: r["instance_id"]
    return {"train": sorted(train, key=key), "test": sorted(test, key=key)}


def write_splits(splits: dict[str, list[dict[str, Any]]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


# ---------------------------------------------------------------- loading

def instance_from_generated(row: dict[str, Any], where: str) -> Instance:
    """A committed row -> Instance with its image (shared per repo snapshot), setup and eval scripts."""
    try:
        repo, snapshot = row["repo"], row["snapshot"]
        if snapshot != base_commit(repo):
            raise DatasetError(f"{where}: generated from {repo} at {snapshot[:12]}, but the snapshot "
                               f"is now {base_commit(repo)[:12]}; run `swe-aem generate` again")
        short = repo.split("/")[-1]
        full = {
            **row,
            "image": image_name(f"swe-aem__{short}", repo),
            "setup_script": setup_script(row["bug_patch"], row["base_commit"]),
            "eval_script": eval_script(row["base_commit"], [*row["FAIL_TO_PASS"], *row["PASS_TO_PASS"]]),
            "log_parser": "parse_log_pytest", "eval_type": "pass_and_fail", "test_patch": "",
        }
    except KeyError as exc:
        raise DatasetError(f"{where}: generated row lacks field {exc}") from exc
    return instance_from_row(full, where)


@cache
def _load(split: str, folder: Path) -> tuple[Instance, ...]:
    path = folder / f"{split}.jsonl"
    if split not in SPLITS:
        raise DatasetError(f"generated suite: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if not path.exists():
        raise DatasetError(f"generated suite: {path} does not exist; run `swe-aem generate`")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{n}: not valid JSON: {exc}") from exc
        out.append(instance_from_generated(row, f"{path}:{n}"))
    return tuple(out)


def load_generated(split: str = "train", folder: Path = GENERATED) -> list[Instance]:
    """The committed generated suite's `split` ("train" or "test")."""
    return list(_load(split, folder))


def repo_image(repo: str) -> str:
    """The one image every generated instance of `repo` runs in (the local suite's build)."""
    return image_name(f"swe-aem__{repo.split('/')[-1]}", repo)


def build_images(client: Any, force: bool = False) -> list[str]:
    """Build the per-repo images the generated suite needs (missing ones, or all with
    `force`); returns those built."""
    from swe_aem.sandbox.image_store import build_repo_image, image_exists

    built = []
    for repo in REPOS:
        tag = repo_image(repo)
        if not force and image_exists(client, tag):
            continue
        with tempfile.TemporaryDirectory(prefix="swe-aem-testbed-") as tmp:
            testbed = Path(tmp) / "testbed"
            build_repo_image(client, repo, testbed, materialize_repo(repo, testbed), [tag])
        built.append(tag)
    return built

