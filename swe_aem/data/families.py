"""Dataset families: one adapter each, from a native row to the fields of an `Instance`.

Every family says how its rows are graded (`grader`), what runs once in a fresh container
before the agent or the grader touches it (`setup_script`), and which script runs its
tests (`eval_script`). The agent's environment is not assumed from the family: a sandbox
reads it from the image's shell start-up (official images activate conda there; images
without conda define nothing), and an eval script enters its own. Only R2E-Gym sets
`env_activate`, because R2E-Gym's runtime itself puts the image's venv on PATH.
Rules per family are in ../shared/datasets/README.md; the choices made here:

- swe-bench: swebench 5.x rows carry eval_script / image / log_parser / eval_type and are
  graded from the row alone. Pre-5.x (classic) rows are refused, never graded with an
  empty script.
- swe-gym: SWE-bench-style eval script from SWE-Gym's spec (SWE-Gym/SWE-Bench-Fork),
  pytest -rA parser, images under xingyaoww/.
- swe-smith: test command and parser of the `swesmith` repo profiles (0.0.9); that package
  cannot be imported next to swebench 5.x, so the profiles used are written down here.
- r2e-gym: the image's own run_tests.sh, moved to /root, reward = exact match of the
  parsed status map with expected_output_json (R2E-Gym's docker runtime).
"""

from __future__ import annotations

import ast
import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from swe_aem.errors import InputError

FORMATS = ("swe-bench", "swe-gym", "swe-smith", "r2e-gym", "swe-rebench", "swe-bench-pro", "multi-swe-bench")
GRADERS = ("swebench", "swesmith", "r2e", "swe-rebench", "swe-bench-pro", "multi-swe-bench")

# R2E-Gym images keep a venv in /testbed/.venv; R2E-Gym's runtime puts it first on PATH
# (through /root/.venv -> /testbed/.venv and /root/.local/bin links).
R2E_ACTIVATE = "export PATH=/testbed/.venv/bin:/root/.local/bin:/root/.cargo/bin:$PATH"
R2E_TEST_TIMEOUT_S = 300  # R2E-Gym runs `bash /root/run_tests.sh` under this limit

START = ": '>>>>> Start Test Output'"
END = ": '>>>>> End Test Output'"
_HEREDOC = "EOF_114329324912"  # SWE-bench's delimiter for the test patch
SWE_BENCH_V5 = ("eval_script", "image", "log_parser", "eval_type")


class FormatError(InputError, ValueError):
    """A row does not fit its family (the loader adds the row's place and id)."""


def detect_format(dataset: str, row: Mapping[str, Any]) -> str:
    """The family of `dataset`: from its name, else from the first row's columns."""
    name = dataset.lower()
    for needle, fmt in (("rebench", "swe-rebench"), ("swe-bench_pro", "swe-bench-pro"),
                        ("swe_bench_pro", "swe-bench-pro"), ("swe-bench-pro", "swe-bench-pro"),
                        ("multi-swe", "multi-swe-bench"), ("multi_swe", "multi-swe-bench"),
                        ("swe-gym", "swe-gym"), ("swe_gym", "swe-gym"), ("swe-smith", "swe-smith"),
                        ("swe_smith", "swe-smith"), ("r2e", "r2e-gym")):
        if needle in name:
            return fmt
    if "docker_image" in row and "expected_output_json" in row:
        return "r2e-gym"
    if "install_config" in row and "FAIL_TO_PASS" in row:
        return "swe-rebench"
    if "before_repo_set_cmd" in row or ("repo_language" in row and "fail_to_pass" in row):
        return "swe-bench-pro"
    if "fix_patch" in row and "org" in row:
        return "multi-swe-bench"
    if "image_name" in row:
        return "swe-smith"
    if "eval_script" not in row and isinstance(row.get("FAIL_TO_PASS"), list) \
            and "environment_setup_commit" not in row:
        return "swe-gym"  # SWE-Gym: real lists, no environment_setup_commit, no image
    return "swe-bench"


def adapt(fmt: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """Map a native row of family `fmt` to Instance fields (validated afterwards by the loader)."""
    if fmt not in ADAPTERS:
        raise FormatError(f"unknown dataset format {fmt!r}; choose from {', '.join(FORMATS)}")
    if not isinstance(row, Mapping):
        raise FormatError(f"expected an object, got {type(row).__name__}")
    return ADAPTERS[fmt](dict(row))


# ---------------------------------------------------------------- SWE-bench (5.x)

def swe_bench(row: dict[str, Any]) -> dict[str, Any]:
    """swebench 5.x rows as they are; classic rows refused with the columns they lack."""
    missing = [c for c in SWE_BENCH_V5 if not isinstance(row.get(c), str) or not row[c].strip()]
    if missing:
        raise FormatError(
            f"missing SWE-bench 5.x column(s) {', '.join(missing)}: this is a pre-5.x (classic) "
            "export, and swebench 5.x builds the eval script only from the row. Use a 5.x export "
            "of the dataset (rows with eval_script, image, log_parser, eval_type), or "
            "--dataset-format swe-gym for SWE-Gym rows")
    return {**row, "grader": "swebench"}


# ---------------------------------------------------------------- SWE-Gym

@dataclass(frozen=True)
class GymSpec:
    """SWE-Gym's per-repo eval spec (same for every version of these repos)."""

    test_cmd: str
    install: str = ""
    eval_commands: tuple[str, ...] = ()


# From SWE-Gym/SWE-Bench-Fork swebench/harness/constants.py (commit 242429c); both repos
# use the plain pytest -rA parser there. Other repos need per-version specs: refused.
SWE_GYM_SPECS = {
    "getmoto/moto": GymSpec("pytest -n0 -rA", install="make init"),
    "dask/dask": GymSpec("pytest -n0 -rA  --color=no", install="python -m pip install --no-deps -e ."),
}
# Files of a test patch that are not test targets (SWE-bench's NON_TEST_EXTS).
_NON_TEST_EXTS = (".json", ".png", "csv", ".txt", ".md", ".jpg", ".jpeg", ".pkl", ".yml", ".yaml", ".toml")


def swe_gym_image(instance_id: str) -> str:
    """xingyaoww/sweb.eval.x86_64.<id, "__" -> "_s_">:latest, lower-cased (SWE-Gym's images)."""
    return f"xingyaoww/sweb.eval.x86_64.{instance_id.replace('__', '_s_')}:latest".lower()


def swebench_eval_script(base_commit: str, test_patch: str, test_cmd: str, install: str = "",
                         eval_commands: tuple[str, ...] = ()) -> str:
    """SWE-bench's eval script: reset test files, apply test_patch, run the tests between markers."""
    modified = re.findall(r"--- a/(.*)", test_patch)
    directives = [d for d in re.findall(r"diff --git a/.* b/(.*)", test_patch)
                  if not d.endswith(_NON_TEST_EXTS)]
    reset = f"git checkout {base_commit} {' '.join(modified)}"
    lines = ["#!/bin/bash", "set -uxo pipefail", "source /opt/miniconda3/bin/activate",
             "conda activate testbed", "cd /testbed", *eval_commands,
             "git config --global --add safe.directory /testbed", "cd /testbed", "git status",
             "git show", f"git -c core.fileMode=false diff {base_commit}",
             "source /opt/miniconda3/bin/activate", "conda activate testbed",
             *([install] if install else []), reset,
             f"git apply -v - <<'{_HEREDOC}'\n{test_patch}\n{_HEREDOC}",
             START, " ".join([test_cmd, *directives]), END, reset]
    return "\n".join(lines) + "\n"


def swe_gym(row: dict[str, Any]) -> dict[str, Any]:
    """SWE-Gym row -> SWE-bench 5.x fields (image, eval script from the repo's spec, parser)."""
    repo, test_patch = row.get("repo"), row.get("test_patch")
    if not isinstance(repo, str) or not isinstance(test_patch, str) or not test_patch.strip():
        raise FormatError("a SWE-Gym row needs 'repo' and a non-empty 'test_patch'")
    spec = SWE_GYM_SPECS.get(repo.lower())
    if spec is None:
        raise FormatError(
            f"no SWE-Gym test spec for repo {repo!r} (known: {', '.join(sorted(SWE_GYM_SPECS))}); "
            "its eval script cannot be built")
    return {**row, "image": swe_gym_image(str(row.get("instance_id", ""))),
            "eval_script": swebench_eval_script(str(row.get("base_commit", "")), test_patch,
                                                spec.test_cmd, spec.install, spec.eval_commands),
            "log_parser": "parse_log_pytest", "eval_type": "pass_and_fail",
            "grader": "swebench"}


# ---------------------------------------------------------------- SWE-smith

# swesmith 0.0.9's PythonProfile test command; the repos below keep it, use the default
# pytest parser and set min_testing (only the F2P / P2P test files run).
SWE_SMITH_TEST_CMD = ("source /opt/miniconda3/bin/activate; conda activate testbed; "
                      "pytest --disable-warnings --color=no --tb=no --verbose")
SWE_SMITH_PROFILES = frozenset({
    "conan-io__conan.86f29e13", "dask__dask.5f61e423", "getmoto__moto.694ce1f4",
    "iterative__dvc.1d6ea681", "modin-project__modin.8c7799fd", "pandas-dev__pandas.95280573",
    "scrapy__scrapy.35212ec5", "sqlfluff__sqlfluff.50a1c4b6", "sunpy__sunpy.f8edfd5c",
    "sympy__sympy.2ab64612", "tobymao__sqlglot.036601ba",
})
_SMITH_OLD = re.compile(r"swesmith\.(x86_64|arm64)\.([^/:]+?)__([^/:]+)\.([0-9a-f]{8})(:[\w.-]+)?")
_SMITH_NEW = re.compile(r"[\w.-]+/swesmith\.(x86_64|arm64)\.([^/:]+?)_1776_([^/:]+)\.([0-9a-f]{8})(:[\w.-]+)?")


def swe_smith_profile_key(row: Mapping[str, Any]) -> str:
    """<owner>__<repo>.<commit8>, as swesmith's registry.get_from_inst finds it."""
    repo = str(row.get("repo") or "")
    return repo.split("/", 1)[1] if repo.startswith("swesmith/") else \
        repo or str(row.get("instance_id", "")).rsplit(".", 1)[0]


def swe_smith_test_files(tests: list[str] | tuple[str, ...]) -> list[str]:
    """The distinct files of pytest ids, sorted (PythonProfile.get_test_files)."""
    return sorted({t.split("::", 1)[0] for t in tests})


def swe_smith_eval_script(test_cmd: str) -> str:
    """The eval.sh that swesmith's harness writes around the profile's test command."""
    return f"#!/bin/bash\nset -uxo pipefail\ncd /testbed\n{START}\n{test_cmd}\n{END}\n"


def reverse_patch(patch: str) -> str:
    """The inverse of a git unified diff (SWE-smith's `patch` introduces the bug; the fix undoes it)."""
    out = []
    swaps = {"new file mode": "deleted file mode", "deleted file mode": "new file mode",
             "rename from": "rename to", "rename to": "rename from", "old mode": "new mode",
             "new mode": "old mode"}
    lines = patch.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            m = re.fullmatch(r"diff --git a/(\S+) b/(\S+)", line)
            out.append(f"diff --git a/{m.group(2)} b/{m.group(1)}" if m else line)
        elif line.startswith("index "):
            m = re.fullmatch(r"index (\w+)\.\.(\w+)(.*)", line)
            out.append(f"index {m.group(2)}..{m.group(1)}{m.group(3)}" if m else line)
        elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            old, new = line[4:], lines[i + 1][4:]
            swap = lambda p, a: "/dev/null" if p == "/dev/null" else a + p[2:] if p[:2] in ("a/", "b/") else p
            out += [f"--- {swap(new, 'a/')}", f"+++ {swap(old, 'b/')}"]
            i += 1
        elif line.startswith("@@"):
            m = re.match(r"@@ -(\S+) \+(\S+) @@(.*)", line)
            out.append(f"@@ -{m.group(2)} +{m.group(1)} @@{m.group(3)}" if m else line)
        elif line[:1] in "+-" and line[:3] not in ("+++", "---"):
            out.append(("-" if line[0] == "+" else "+") + line[1:])
        else:
            key = next((k for k in swaps if line.startswith(k)), None)
            out.append(swaps[key] + line[len(key):] if key else line)
        i += 1
    return "\n".join(out) + ("\n" if patch.endswith("\n") else "")


def swe_smith(row: dict[str, Any]) -> dict[str, Any]:
    """SWE-smith row -> Instance fields; the gold fix is the bug patch reversed."""
    image = row.get("image_name")
    if not isinstance(image, str) or not (_SMITH_OLD.fullmatch(image) or _SMITH_NEW.fullmatch(image)):
        raise FormatError(
            f"'image_name' {image!r} is neither swesmith.<arch>.<owner>__<repo>.<commit8> nor "
            "<org>/swesmith.<arch>.<owner>_1776_<repo>.<commit8>")
    key = swe_smith_profile_key(row)
    if key not in SWE_SMITH_PROFILES:
        raise FormatError(
            f"no SWE-smith repo profile for {key!r} with the default pytest command (known: "
            f"{', '.join(sorted(SWE_SMITH_PROFILES))}); its test command cannot be built")
    if not str(row.get("instance_id", "")).startswith(key + "."):
        raise FormatError(f"instance_id is not of the form {key}.<strategy>")
    f2p, p2p = row.get("FAIL_TO_PASS") or [], row.get("PASS_TO_PASS") or []
    if not isinstance(f2p, list) or not isinstance(p2p, list):
        raise FormatError("FAIL_TO_PASS and PASS_TO_PASS must be lists in SWE-smith rows")
    files = swe_smith_test_files(f2p) + swe_smith_test_files(p2p)
    test_cmd = " ".join([SWE_SMITH_TEST_CMD, *files]) if files else SWE_SMITH_TEST_CMD
    base = str(row.get("base_commit", ""))
    bug = row.get("patch") or ""
    if not isinstance(bug, str):
        raise FormatError("'patch' (the bug) must be a string")
    setup = (f"cd /testbed && git cat-file -e {base}^{{commit}} 2>/dev/null || "
             f"{{ echo 'swe-aem: commit {base} (the task state) is not in the image'; exit 1; }}\n"
             f"git checkout -q -f {base}")
    return {**row, "image": image,
            "patch": reverse_patch(bug) if bug else "", "eval_script": swe_smith_eval_script(test_cmd),
            "log_parser": "swesmith_pytest", "eval_type": "swesmith", "grader": "swesmith",
            "setup_script": setup,
            "bug_patch": bug, "test_files": files}


# ---------------------------------------------------------------- R2E-Gym

def _json_field(row: Mapping[str, Any], name: str) -> Any:
    value = row.get(name)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{name!r} is not valid JSON: {exc}") from exc
    return value


R2E_STATUSES = ("PASSED", "FAILED", "ERROR")
R2E_PROTECTED = ("r2e_tests", "run_tests.sh")
# R2E-Gym's set-up (DockerRuntime.setup_env), idempotent: its test runner and tests go
# from /testbed (or /) to /root, a link leaves /testbed/r2e_tests; the link and the venv
# are the harness's, not the agent's, so they stay out of the agent's diff.
R2E_SETUP = """cd /testbed
for f in run_tests.sh r2e_tests; do
  if [ -e "/testbed/$f" ] && [ ! -L "/testbed/$f" ]; then rm -rf "/root/$f"; mv "/testbed/$f" "/root/$f"; fi
done
if [ -d /r2e_tests ]; then rm -rf /root/r2e_tests; mv /r2e_tests /root/r2e_tests; fi
[ -e /testbed/r2e_tests ] || ln -s /root/r2e_tests /testbed/r2e_tests
find /testbed /root/r2e_tests -name '*.pyc' -delete 2>/dev/null
find /testbed /root/r2e_tests -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null
grep -qx r2e_tests .git/info/exclude 2>/dev/null || printf 'r2e_tests\nrun_tests.sh\n.venv\n' >> .git/info/exclude
test -f /root/run_tests.sh || { echo 'swe-aem: no run_tests.sh in /testbed or /root'; exit 1; }
"""


def r2e_eval_script() -> str:
    """R2E-Gym's test run: `bash /root/run_tests.sh` in /testbed, inside the image's venv."""
    return "\n".join(["#!/bin/bash", "cd /testbed", R2E_ACTIVATE,
                      f"timeout {R2E_TEST_TIMEOUT_S} bash /root/run_tests.sh"]) + "\n"


def _gold_from_commit(commit: Mapping[str, Any]) -> str:
    """A git patch of the commit's non-test files, from their old/new contents."""
    parts = []
    for diff in commit.get("file_diffs") or []:
        path = ((diff.get("header") or {}).get("file") or {}).get("path")
        old, new = diff.get("old_file_content"), diff.get("new_file_content")
        if not path or old is None or new is None or re.search(r"(^|/)tests?/|(^|/)test_|_test\.py$", path):
            continue
        body = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                    f"a/{path}", f"b/{path}")
        text = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                       for line in body)
        if text:
            parts.append(f"diff --git a/{path} b/{path}\n{text}")
    return "".join(parts)


def r2e_gym(row: dict[str, Any]) -> dict[str, Any]:
    """R2E-Gym row -> Instance fields; the expected status map stays in `expected_output`."""
    for name in ("repo_name", "docker_image", "commit_hash", "problem_statement"):
        if not isinstance(row.get(name), str) or not row[name]:
            raise FormatError(f"an R2E-Gym row needs a non-empty string {name!r}")
    expected = _json_field(row, "expected_output_json")
    if not isinstance(expected, dict) or not expected:
        raise FormatError("'expected_output_json' must be a non-empty JSON object of test -> status")
    bad = {k: v for k, v in expected.items() if v not in R2E_STATUSES}
    if bad:
        raise FormatError(f"'expected_output_json' has statuses other than {R2E_STATUSES}: {bad!r:.120}")
    commit = _json_field(row, "parsed_commit_content") or {}
    base = commit.get("old_commit_hash") if isinstance(commit, dict) else None
    if not isinstance(base, str) or not base:
        raise FormatError("'parsed_commit_content' has no old_commit_hash (the task's base commit)")
    statement = row["problem_statement"]
    issue = re.search(r"\[ISSUE\](.*?)\[/ISSUE\]", statement, re.DOTALL)
    return {
        **{k: v for k, v in row.items() if k not in ("problem_statement", "instance_id")},
        "instance_id": row.get("instance_id") or f"{row['repo_name']}__{row['commit_hash'][:12]}",
        "repo": row["repo_name"], "base_commit": base,
        "problem_statement": issue.group(1).strip() if issue else statement,
        "patch": _gold_from_commit(commit), "image": row["docker_image"],
        "eval_script": r2e_eval_script(), "log_parser": "r2e_pytest", "eval_type": "r2e_exact_match",
        "grader": "r2e", "env_activate": R2E_ACTIVATE, "setup_script": R2E_SETUP,
        "expected_output": expected,
    }


# ---------------------------------------------------------------- shared by the 2026 families

def _text_field(row: Mapping[str, Any], name: str, *, required: bool = True) -> str:
    """A text column, JSON-decoded when the export stored it JSON-encoded (SWE-bench Pro's
    problem_statement is the text `"## Title ..."`, quotes and `\\n` escapes included)."""
    value = row.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise FormatError(f"column {name!r} must be a non-empty string, got {type(value).__name__}")
    stripped = value.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] == '"':
        try:
            decoded = json.loads(stripped)
        except json.JSONDecodeError:
            return value
        if isinstance(decoded, str):
            return decoded
    return value


def _name_list(value: Any, name: str) -> list[str]:
    """A list of test names: a real list, JSON text, or Python-literal text (SWE-bench Pro's
    fail_to_pass is `['TestLoad']`, its pass_to_pass `["..."]`; its harness eval()s both)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value) if value.strip() else []
        except (ValueError, SyntaxError) as exc:
            raise FormatError(f"column {name!r} is not a list literal: {exc}") from exc
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise FormatError(f"column {name!r} must be a list of strings, got {value!r:.80}")
    return list(value)


def _commit(value: Any, name: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{40}", value):
        raise FormatError(f"column {name!r} must be a 40-hex commit id, got {value!r:.60}")
    return value


# ---------------------------------------------------------------- SWE-rebench (V1 and V2)

# V1 rows run the SWE-bench fork's Python harness: these are the parsers its rows name.
SWE_REBENCH_V1_PARSERS = ("parse_log_pytest", "parse_log_pytest_options", "parse_log_pytest_v2")
# The fork's _clean_install_config prefixes the install and test commands with this.
_REBENCH_LOCALE = "LANG=C.UTF-8 LC_ALL=C.UTF-8 "
# The two pass rules (recorded in the verdict): OpenRewardEnv's and the usual SWE rule, or
# V2's scripts/eval.py, whose set of passing tests must equal F2P + P2P exactly.
REBENCH_PASS_RULES = ("f2p_p2p_passed", "exact_passed_set")


def swe_rebench_v1_image(instance_id: str) -> str:
    """swerebench/sweb.eval.x86_64.<id, lower-cased, "__" -> "_1776_">:latest (the fork's
    TestSpec.instance_image_key with --namespace swerebench)."""
    return f"swerebench/sweb.eval.x86_64.{instance_id.lower()}:latest".replace("__", "_1776_")


def _commands(value: Any, name: str) -> list[str]:
    """install / test_cmd: a str or a list of str (eval.py turns both into a list); absent is none."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value] if value.strip() else []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FormatError(f"column 'install_config' field {name!r} must be a string or a list of strings")
    return value


def _created_at(value: Any) -> str:
    """ISO 8601 UTC: V2 stores milliseconds since the epoch, V1 (SWE-bench style) a date string."""
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise FormatError(f"column 'created_at' must be a date string or epoch milliseconds, got {value!r:.40}")
    if isinstance(value, str):
        return value
    return datetime.fromtimestamp(value / 1000, UTC).isoformat().replace("+00:00", "Z")


def rebench_v2_eval_script(workdir: str, test_patch: str, test_cmd: list[str]) -> str:
    """V2's eval.py script after the model patch is applied: the test patch (its own git
    apply flags), then each test_cmd line under `set -e`, between the output markers."""
    apply = "git apply -v --3way --recount --ignore-space-change --whitespace=nowarn"
    # the markers echoed (no `set -x` here): the verdict grades what lies between them
    return "\n".join(["#!/bin/bash", f"cd {workdir}", "set -e",
                      f"{apply} - <<'{_HEREDOC}'\n{test_patch}\n{_HEREDOC}",
                      f'echo "{START}"', *test_cmd, f'echo "{END}"']) + "\n"


def swe_rebench(row: dict[str, Any]) -> dict[str, Any]:
    """SWE-rebench row -> Instance fields. V2 rows (`language`, install_config.base_image_name)
    run in /<repo name> of their image_name, graded by the named parser; V1 rows are the
    SWE-bench fork's: /testbed, its Python eval script, swebench's pytest parsers."""
    from swebench.harness.log_parsers import PARSER_REGISTRY

    cfg = _json_field(row, "install_config")
    if not isinstance(cfg, dict):
        raise FormatError(f"column 'install_config' must be an object, got {type(cfg).__name__}")
    repo = row.get("repo")
    if not isinstance(repo, str) or repo.count("/") != 1:
        raise FormatError(f"column 'repo' must be owner/name, got {repo!r:.60}")
    base = _commit(row.get("base_commit"), "base_commit")
    test_patch = row.get("test_patch")
    if not isinstance(test_patch, str) or not test_patch.strip():
        raise FormatError("column 'test_patch' must be a non-empty diff")
    test_cmd = _commands(cfg.get("test_cmd"), "test_cmd")
    if not test_cmd:
        raise FormatError("column 'install_config' has no test_cmd: nothing would run the tests")
    parser = cfg.get("log_parser")
    v2 = "language" in row or "base_image_name" in cfg
    supported = sorted(PARSER_REGISTRY) if v2 else list(SWE_REBENCH_V1_PARSERS)
    if parser not in supported:
        raise FormatError(f"column 'install_config' names log_parser {parser!r}, not one of the "
                          f"{'V2' if v2 else 'V1'} parsers supported here: {', '.join(supported)}")
    out = {**row, "base_commit": base, "created_at": _created_at(row.get("created_at")),
           "install_config": cfg, "rebench_version": "v2" if v2 else "v1", "log_parser": parser}
    if not v2:
        install = _commands(cfg.get("install"), "install")
        out.update(
            image=row.get("docker_image") or row.get("image_name") or swe_rebench_v1_image(str(row.get("instance_id", ""))),
            eval_script=swebench_eval_script(
                base, test_patch, _REBENCH_LOCALE + " && ".join(test_cmd),
                " && ".join(_REBENCH_LOCALE + c for c in install),
                tuple(_commands(cfg.get("eval_commands"), "eval_commands"))),
            eval_type="pass_and_fail", grader="swebench", workdir="/testbed")
        return out
    image = row.get("image_name")
    if not isinstance(image, str) or not image.strip():
        raise FormatError("column 'image_name' must name the task's image (V2 rows carry it)")
    workdir = "/" + repo.split("/")[1]
    out.update(image=image, workdir=workdir, eval_script=rebench_v2_eval_script(workdir, test_patch, test_cmd),
               eval_type="f2p_p2p_passed", grader="swe-rebench", language=str(row.get("language") or ""))
    return out


# ---------------------------------------------------------------- SWE-bench Pro

SWE_BENCH_PRO_IMAGE_REPO = "jefzda/sweap-images"
_PRO_LISTS = ("fail_to_pass", "pass_to_pass", "selected_test_files_to_run", "issue_specificity", "issue_categories")
_GOLD_CHECKOUT = re.compile(r"^\s*git checkout ([0-9a-f]{40}) -- (.+?)\s*$")


def swe_bench_pro_tag(repo: str, instance_id: str) -> str:
    """The image tag as SWE-bench Pro's helper_code/image_uri.py derives it (rows from before
    the dockerhub_tag column): `<owner>.<name>-<id without "instance_">`, repo lower-cased,
    element-hq/element-web named "element", a trailing "-vnan" dropped, at most 128 characters."""
    owner, _, name = repo.lower().partition("/")
    if not owner or not name:
        raise FormatError(f"column 'repo' must be owner/name, got {repo!r:.60}")
    if f"{owner}/{name}" == "element-hq/element-web":
        name = "element"  # image_uri.py keeps "element-web" for one instance it names; not known here
    tail = instance_id.replace("instance_", "")
    tail = tail.removesuffix("-vnan")
    return f"{owner}.{name}-{tail}"[:128]


def swe_bench_pro(row: dict[str, Any]) -> dict[str, Any]:
    """SWE-bench Pro row -> Instance fields: every column is text (lists as Python or JSON
    literals, the prose JSON-encoded); the repository at /app; the gold commit read from the
    last line of before_repo_set_cmd (`git checkout <gold> -- <test files>`)."""
    iid = row.get("instance_id")
    if not isinstance(iid, str) or not iid.startswith("instance_"):
        raise FormatError(f"column 'instance_id' must start with 'instance_', got {iid!r:.60}")
    repo = row.get("repo")
    if not isinstance(repo, str):
        raise FormatError("column 'repo' must be owner/name")
    lists = {name: _name_list(row.get(name, "[]"), name) for name in _PRO_LISTS}
    if not lists["fail_to_pass"]:
        raise FormatError("column 'fail_to_pass' is empty: nothing would show the fix works")
    setup = row.get("before_repo_set_cmd")
    if not isinstance(setup, str) or not setup.strip():
        raise FormatError("column 'before_repo_set_cmd' must hold the harness's set-up commands")
    gold = _GOLD_CHECKOUT.match(setup.strip().splitlines()[-1])
    if gold is None:
        raise FormatError("column 'before_repo_set_cmd' does not end with `git checkout <gold commit> -- <files>`")
    statement = _text_field(row, "problem_statement")
    requirements = _text_field(row, "requirements", required=False)
    interface = _text_field(row, "interface", required=False)
    tag = row.get("dockerhub_tag") or swe_bench_pro_tag(repo, iid)
    if not isinstance(tag, str) or len(tag) > 128:
        raise FormatError(f"column 'dockerhub_tag' must be a Docker tag of at most 128 characters, got {tag!r:.140}")
    prompt = statement + (f"\n\nRequirements:\n{requirements}" if requirements.strip() else "") + (
        f"\n\nNew interfaces:\n{interface}" if interface.strip() else "")
    return {**{k: v for k, v in row.items() if k not in _PRO_LISTS},
            "base_commit": _commit(row.get("base_commit"), "base_commit"),
            "problem_statement": prompt, "issue_text": statement, "requirements": requirements,
            "interface": interface, "FAIL_TO_PASS": lists["fail_to_pass"], "PASS_TO_PASS": lists["pass_to_pass"],
            "selected_test_files_to_run": lists["selected_test_files_to_run"],
            "issue_specificity": lists["issue_specificity"], "issue_categories": lists["issue_categories"],
            "image": f"{SWE_BENCH_PRO_IMAGE_REPO}:{tag}", "workdir": "/app",
            "gold_commit": gold.group(1), "gold_test_files": gold.group(2).split(),
            "language": str(row.get("repo_language") or ""), "grader": "swe-bench-pro",
            "log_parser": "swe_bench_pro", "eval_type": "f2p_p2p_passed"}


# ---------------------------------------------------------------- Multi-SWE-bench / Multi-SWE-RL

MSB_STATES = ("PASS", "FAIL", "SKIP", "NONE")
MSB_TEST_COLUMNS = ("fixed_tests", "p2p_tests", "f2p_tests", "s2p_tests", "n2p_tests")
MSB_RESULT_COLUMNS = ("run_result", "test_patch_result", "fix_patch_result")
# Baked into every Multi-SWE-bench image (the gold fix and the hidden tests): the agent's
# image loses them; the grader mounts the model's patch at /home/fix.patch in the original.
MSB_BAKED_PATCHES = ("/home/fix.patch", "/home/test.patch")


def multi_swe_bench_image(org: str, repo: str, number: int) -> str:
    """mswebench/<org>_m_<repo>:pr-<number>, lower-cased (the harness's Image.image_name())."""
    return f"mswebench/{org}_m_{repo}".lower() + f":pr-{number}"


def _msb_tests(row: Mapping[str, Any], name: str) -> dict[str, dict[str, str]]:
    value = _json_field(row, name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FormatError(f"column {name!r} must be an object of test -> {{run, test, fix}}")
    for test, states in value.items():
        if not isinstance(states, dict) or any(states.get(k) not in MSB_STATES for k in ("run", "test", "fix")):
            raise FormatError(f"column {name!r}: test {test!r} needs run/test/fix in {'/'.join(MSB_STATES)}, "
                              f"got {states!r:.80}")
    return value


def _msb_harness(org: str, name: str, number: int, tag: str = "", number_interval: str = "") -> Any:
    """The multi-swe-bench package's instance class for a row (its registry key: "<org>/<repo>",
    "<org>/<repo>_<tag>" or "<org>/<number_interval>"); a repository it does not know is refused."""
    from importlib.metadata import version

    from multi_swe_bench.harness.image import Config
    from multi_swe_bench.harness.instance import Instance as HarnessInstance
    from multi_swe_bench.harness.pull_request import Base, PullRequest

    pr = PullRequest(org=org, repo=name, number=number, state="", title="", body="",
                     base=Base(label="", ref="", sha=""), resolved_issues=[], fix_patch="",
                     test_patch="", tag=tag, number_interval=number_interval)
    try:
        return HarnessInstance.create(pr, Config(need_clone=False, global_env=None, clear_env=False))
    except ValueError as exc:
        raise FormatError(f"columns 'org' and 'repo': multi-swe-bench {version('multi-swe-bench')} "
                          f"has no log parser for this repository ({exc})") from exc


def _msb_language(harness: Any) -> str:
    """The language folder of the package's instance class (multi_swe_bench.harness.repos.<lang>.<org>...)."""
    parts = type(harness).__module__.split(".")
    return parts[parts.index("repos") + 1] if "repos" in parts[:-1] else ""


def multi_swe_bench(row: dict[str, Any]) -> dict[str, Any]:
    """Multi-SWE-bench (and Multi-SWE-RL) row -> Instance fields: the issue from resolved_issues,
    the base from base.sha, F2P / P2P from f2p_tests / p2p_tests (s2p, n2p and the row's
    before-patch results kept for the harness's report check), the repository at /home/<repo>,
    the eval script the harness's own command (`bash /home/fix-run.sh`), the parser the
    package's class for the repository (reward/multi_swe_bench.py grades with both). Columns
    an export stored JSON-encoded (objects, lists, quoted text) are decoded."""
    org, name, number = row.get("org"), row.get("repo"), row.get("number")
    if not isinstance(org, str) or not org or not isinstance(name, str) or not name:
        raise FormatError("columns 'org' and 'repo' must be non-empty strings")
    if isinstance(number, bool) or not isinstance(number, int):
        raise FormatError(f"column 'number' must be an integer, got {number!r:.40}")
    base = _json_field(row, "base")
    if not isinstance(base, dict):
        raise FormatError("column 'base' must be an object with the base commit's sha")
    patches = {}
    for col in ("fix_patch", "test_patch"):
        if not isinstance(row.get(col), str) or not row[col].strip():
            raise FormatError(f"column {col!r} must be a non-empty diff")
        patches[col] = _text_field(row, col)
    texts = {col: _text_field(row, col, required=False) for col in ("title", "body")
             if isinstance(row.get(col), str)}
    selectors = {col: row.get(col) or "" for col in ("tag", "number_interval")}
    for col, value in selectors.items():
        if not isinstance(value, str):
            raise FormatError(f"column {col!r} must be a string, got {value!r:.40}")
    tests = {col: _msb_tests(row, col) for col in MSB_TEST_COLUMNS}
    results = {}
    for col in MSB_RESULT_COLUMNS:
        value = _json_field(row, col)
        if not isinstance(value, dict) or not all(isinstance(value.get(k), list)
                                                  for k in ("passed_tests", "failed_tests", "skipped_tests")):
            raise FormatError(f"column {col!r} must be an object with passed_tests, failed_tests, skipped_tests")
        results[col] = value
    issues = _json_field(row, "resolved_issues") or []
    if not isinstance(issues, list) or not all(isinstance(i, dict) for i in issues):
        raise FormatError("column 'resolved_issues' must be a list of {number, title, body}")
    statement = "\n\n".join(f"{i.get('title') or ''}\n{i.get('body') or ''}".strip() for i in issues).strip() \
        or f"{texts.get('title', '')}\n{texts.get('body', '')}".strip()
    if not statement:
        raise FormatError("columns 'resolved_issues', 'title' and 'body' are empty: no issue to solve")
    # the run command from the row's own class; the parser from the class the harness's report
    # step creates (ReportTask.instance: "<org>/<repo>", tag and number_interval not read)
    run = _msb_harness(org, name, number, **selectors).fix_patch_run()
    # the row's optional `lang`, else the package's folder of the class (harness/repos/<lang>/)
    language = str(row.get("lang") or "") or _msb_language(_msb_harness(org, name, number))
    return {**{k: v for k, v in row.items() if k not in ("repo", "base")}, **patches, **texts, **tests,
            **results, "resolved_issues": issues,
            "instance_id": row.get("instance_id") or f"{org}__{name}-{number}",
            "repo": f"{org}/{name}", "base_commit": _commit(base.get("sha"), "base.sha"),
            "problem_statement": statement, "patch": patches["fix_patch"],
            "FAIL_TO_PASS": sorted(tests["f2p_tests"]), "PASS_TO_PASS": sorted(tests["p2p_tests"]),
            "image": multi_swe_bench_image(org, name, number), "workdir": f"/home/{name}",
            "history_remove_paths": list(MSB_BAKED_PATCHES), "language": language,
            "eval_script": f"#!/bin/bash\n{run}\n", "grader": "multi-swe-bench",
            "log_parser": f"{org}/{name}", "eval_type": "msb_report"}


ADAPTERS = {"swe-bench": swe_bench, "swe-gym": swe_gym, "swe-smith": swe_smith, "r2e-gym": r2e_gym,
            "swe-rebench": swe_rebench, "swe-bench-pro": swe_bench_pro, "multi-swe-bench": multi_swe_bench}

__all__ = ["FORMATS", "GRADERS", "FormatError", "adapt", "detect_format"]
