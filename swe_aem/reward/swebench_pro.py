"""SWE-bench Pro graded as its harness grades it (FAMILIES-2026.md 2c), with the project's own
test commands and log parsers where the harness keeps one per instance.

The harness (scaleapi/SWE-bench_Pro-os, swe_bench_pro_eval.py) runs, in a fresh container
of the task's image (entrypoint overridden: its images start bash), an entry script:
export the ENV lines of the instance's two Dockerfiles; in /app `git reset --hard <base>`,
`git checkout <base>`, `git apply -v` the patch with its binary hunks dropped; the last line of
`before_repo_set_cmd` (`git checkout <gold commit> -- <test files>`: the PR's tests); then
`run_scripts/<instance_id>/run_script.sh` on the comma-joined `selected_test_files_to_run`,
stdout and stderr to two logs, and `run_scripts/<instance_id>/parser.py` on them, which writes
{"tests": [{"name", "status"}]}. Resolved iff every FAIL_TO_PASS and PASS_TO_PASS test is
among the tests whose status is PASSED (PASS_RULE); a run with no output counts as unresolved.

Here the container is the project's grading pool's (limits, no network, reaping): grading.py
applies the patch (to see that it applies), `before_eval` undoes that, writes the patch with
its binary hunks dropped, and writes the entry script above, which the row's eval script
runs (data/pro_runners.py), so the harness's `git apply -v` decides what applies. The run
script and parser are, by the row's `log_parser` (chosen at load, data/pro_runners.py):

- the project's own, by language (`RUNNERS`), from the procedure the harness's scripts follow:
  `pytest` (python: `python -m pytest -v --tb=short` on the selected test files; qutebrowser
  under Xvfb with Qt offscreen and dbus-run-session, as its scripts run it), names the pytest
  node ids, XFAIL counted PASSED and XPASS FAILED as Pro's pytest parsers do; `go_test` (go:
  `go test -v -run '^(<names>)$' ./...` on the selected test names, top-level names only, so a
  selected subtest runs with its parent), names those of `--- PASS/FAIL/SKIP:` lines,
  subtests included; `mocha_json` (NodeBB/NodeBB: redis started, `npx mocha --reporter=json`
  on the selected files), names `<file> | <fullTitle>`; `jest_json` (element-hq/element-web:
  `npx jest --ci --json`), names `<file> | <describe> | ... | <test>`, the shape of that
  repository's rows. A test reported more than once (reruns, a name in two Go packages)
  counts as passed when one report says PASSED, as the harness's set of passed names has it.
  pytest and go test are tested here on real containers and logs; mocha's and jest's JSON
  readers only on logs written here (no NodeBB or element-web image is built here).
- `harness`: with `--harness-dir`, the checkout's own run_script.sh and parser.py for the
  instance (its layout: data/pro_runners.harness_files), the Dockerfiles' ENV lines exported
  as the harness does; the parser runs in the container with the image's python, as there.
  Tested here on a checkout laid out as the harness's with scripts written here (no checkout
  of the harness itself is used by the tests); the real checkout's files for the shared rows
  were found by this lookup by hand, and its flipt, qutebrowser and NodeBB parsers give the
  names the readers above give on the same logs, but no real run script ran here (they need
  the real images).

Pro's images have ENTRYPOINT ["/bin/bash"] (their Dockerfiles' last line): their containers
start in the grading pool only where the sandbox sets its own entrypoint (the xfail test in
tests/reward/test_grading_swebench_pro.py). The verdict records the pass rule, the runner and the
harness checkout used.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swe_aem.data.instances import Instance
from swe_aem.data.pro_runners import ENTRY_SCRIPT, HARNESS, WORKSPACE, harness_files
from swe_aem.sandbox import Sandbox, SandboxError

# where grading.py writes the patch (grading.PATCH_FILE; not imported: grading imports rules)
GRADED_PATCH = "/tmp/patch.diff"
PASS_RULE = ("SWE-bench Pro's: every FAIL_TO_PASS and PASS_TO_PASS test among the tests the log "
             "reports PASSED ((f2p | p2p) <= passed, swe_bench_pro_eval.py)")
TIMEOUT_S = 3600.0  # the harness's limit on one instance's sandbox (Modal, timeout=60*60)
STATUSES = ("PASSED", "FAILED", "SKIPPED", "ERROR")
_MARK = ">>>>> swe-aem pro"
LOGS = {"stdout": f"{WORKSPACE}/stdout.log", "stderr": f"{WORKSPACE}/stderr.log"}


# ---------------------------------------------------------------- the log readers

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_PYTEST_STATUS = {"PASSED": "PASSED", "XFAIL": "PASSED", "FAILED": "FAILED", "XPASS": "FAILED",
                  "SKIPPED": "SKIPPED", "ERROR": "ERROR"}
_WORD = "|".join(_PYTEST_STATUS)
# `-v`: "<node id> PASSED [ 50%]", "<node id> SKIPPED (reason) [ 60%]"; xdist and the -rA
# summary: "[gw0] [ 50%] PASSED <node id>", "FAILED <node id> - AssertionError"
_PYTEST_VERBOSE = re.compile(rf"^(?P<name>\S+?::.*?)\s+(?P<status>{_WORD})(?:\s+\(.*\))?(?:\s+\[\s*\d+%\])?$")
_PYTEST_LEADING = re.compile(rf"^(?:\[gw\d+\]\s+)?(?:\[\s*\d+%\]\s+)?(?P<status>{_WORD})\s+"
                             rf"(?P<name>\S+?::\S*(?:\[.*?\])?)(?:\s+-\s.*)?$")
_GO_TEST = re.compile(r"^\s*--- (PASS|FAIL|SKIP): (\S+) \(")


def _clean(text: str) -> list[str]:
    """Lines without colour codes, carriage returns or other unprintable characters."""
    return ["".join(c for c in _ANSI.sub("", line) if c.isprintable()).strip()
            for line in text.replace("\r", "\n").splitlines()]


def parse_pytest(stdout: str) -> list[tuple[str, str]]:
    """(node id, status) of each test line of a `pytest -v` log (also xdist's and -rA's form)."""
    tests = []
    for line in _clean(stdout):
        m = _PYTEST_VERBOSE.match(line) or _PYTEST_LEADING.match(line)
        if m:
            tests.append((m.group("name"), _PYTEST_STATUS[m.group("status")]))
    return tests


def parse_go_test(stdout: str) -> list[tuple[str, str]]:
    """(test name, status) of each `--- PASS/FAIL/SKIP: Name (0.00s)` line of `go test -v`,
    subtests (`Parent/sub`) included."""
    status = {"PASS": "PASSED", "FAIL": "FAILED", "SKIP": "SKIPPED"}
    return [(m.group(2), status[m.group(1)]) for line in stdout.splitlines()
            if (m := _GO_TEST.match(_ANSI.sub("", line)))]


def _json_documents(text: str, key: str) -> list[dict[str, Any]]:
    """The JSON objects holding `key` that start on a line of their own in `text` (a reporter's
    document among the tests' own output)."""
    decoder, found = json.JSONDecoder(), []
    for m in re.finditer(r"^\{", text, re.MULTILINE):
        try:
            value, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and key in value:
            found.append(value)
    return found


def _relative(path: str) -> str:
    return path.removeprefix("/app/")


def parse_mocha_json(stdout: str) -> list[tuple[str, str]]:
    """`<file> | <fullTitle>` of each test of mocha's JSON reporter (passes, failures, pending);
    the file relative to /app, or the `<file>::` a suite title starts with, dropped from it."""
    tests = []
    for doc in _json_documents(stdout, "stats"):
        for key, status in (("passes", "PASSED"), ("failures", "FAILED"), ("pending", "SKIPPED")):
            for test in doc.get(key) or []:
                if not isinstance(test, dict):
                    continue
                file, title = _relative(str(test.get("file") or "")), str(test.get("fullTitle") or "")
                named = re.search(r"(\S+)::", title)
                if named:
                    file = named.group(1)
                    title = title.replace(f"{file}::", "")
                tests.append((f"{file} | {title}", status))
    return tests


def parse_jest_json(report: str) -> list[tuple[str, str]]:
    """`<file> | <describe> | ... | <test>` of each assertion of jest's --json report, the file
    relative to /app; a file whose suite failed to run is one ERROR."""
    status = {"passed": "PASSED", "failed": "FAILED", "pending": "SKIPPED", "skipped": "SKIPPED",
              "todo": "SKIPPED", "disabled": "SKIPPED"}
    tests = []
    for doc in _json_documents(report, "testResults"):
        for suite in doc.get("testResults") or []:
            file = _relative(str(suite.get("name") or ""))
            cases = suite.get("assertionResults") or []
            for case in cases:
                parts = [*(case.get("ancestorTitles") or []), str(case.get("title") or "")]
                tests.append((" | ".join([file, *parts]), status.get(case.get("status"), "ERROR")))
            if not cases and suite.get("status") == "failed":
                tests.append((f"{file} | Test suite failed to run", "ERROR"))
    return tests


def parse_harness_output(report: str) -> list[tuple[str, str]] | None:
    """The tests of the harness parser's output.json; None when it wrote none that reads."""
    try:
        doc = json.loads(report)
    except json.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("tests"), list):
        return None
    return [(str(t.get("name")), str(t.get("status"))) for t in doc["tests"] if isinstance(t, dict)]


# ---------------------------------------------------------------- the project's own runners

def selected(instance: Instance) -> list[str]:
    """The row's selected_test_files_to_run (files, or Go test names)."""
    return list(instance.extra.get("selected_test_files_to_run") or [])


def _files(names: Iterable[str]) -> str:
    return " ".join(shlex.quote(n) for n in dict.fromkeys(names))


_PY = 'PY="$(command -v python || command -v python3)"'
# qutebrowser's scripts: Qt offscreen, an X server, a D-Bus session, bytes warnings as errors
_QUTEBROWSER = """export QT_QPA_PLATFORM=offscreen PYTEST_QT_API=pyqt5
if command -v Xvfb >/dev/null 2>&1; then
  Xvfb :99 -screen 0 1024x768x24 -ac +extension GLX +render -noreset >/dev/null 2>&1 &
  export DISPLAY=:99; sleep 3
fi
WRAP=""; command -v dbus-run-session >/dev/null 2>&1 && WRAP="dbus-run-session --"
"""
# NodeBB's scripts: its tests need redis and its log file
_NODEBB = """if command -v redis-server >/dev/null 2>&1; then
  redis-server --daemonize yes --protected-mode no --appendonly yes >/dev/null
  for _ in $(seq 30); do redis-cli ping >/dev/null 2>&1 && break; sleep 1; done
fi
mkdir -p logs && touch logs/output.log
"""


def pytest_command(instance: Instance) -> str:
    files = _files(selected(instance))
    if instance.repo.lower() == "qutebrowser/qutebrowser":
        return f'{_PY}\n{_QUTEBROWSER}$WRAP "$PY" -bb -m pytest -v --tb=short -p no:cacheprovider {files}'
    return f'{_PY}\n"$PY" -m pytest -v --tb=short -p no:cacheprovider {files}'


def _re2_literal(name: str) -> str:
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", name)


def go_test_command(instance: Instance) -> str:
    """`go test -v` over every package, `-run` the selected tests' top-level names (a subtest
    `Parent/sub` runs with its parent: go's -run splits its pattern at slashes)."""
    names = list(dict.fromkeys(n.split("/", 1)[0] for n in selected(instance) if n.strip()))
    run = f"-run {shlex.quote('^(' + '|'.join(_re2_literal(n) for n in names) + ')$')} " if names else ""
    return f"go test -v {run}./..."


def mocha_command(instance: Instance) -> str:
    files = _files(n.split(" | ", 1)[0] for n in selected(instance))
    return f"{_NODEBB}NODE_ENV=test TEST_ENV=development npx mocha --reporter=json --bail=false --timeout=10000 {files}"


JEST_REPORT = f"{WORKSPACE}/jest.json"


def jest_command(instance: Instance) -> str:
    return f"npx jest --ci --json --outputFile={JEST_REPORT} {_files(selected(instance))}"


@dataclass(frozen=True)
class Runner:
    """One of the project's own ways to run and read a Pro row's tests."""

    command: Callable[[Instance], str]
    """Bash run in /app; its stdout and stderr go to the two logs, as the run script's do."""
    read: Callable[[dict[str, str]], list[tuple[str, str]]]
    """(test name, status) from the sections: stdout, stderr, report (the `report` file)."""
    report: str = ""
    """A file the command writes its results to, printed after the logs."""


RUNNERS = {
    "pytest": Runner(pytest_command, lambda s: parse_pytest(s["stdout"])),
    "go_test": Runner(go_test_command, lambda s: parse_go_test(s["stdout"])),
    "mocha_json": Runner(mocha_command, lambda s: parse_mocha_json(s["stdout"])),
    "jest_json": Runner(jest_command, lambda s: parse_jest_json(s["report"]), report=JEST_REPORT),
}
HARNESS_REPORT = f"{WORKSPACE}/output.json"
PARSER_LOG = f"{WORKSPACE}/parser.log"  # what the harness's parser.py printed


# ---------------------------------------------------------------- the entry script

def strip_binary_hunks(patch: str) -> str:
    """The patch without the files whose diff is binary (the harness drops them before git apply)."""
    sections = re.split(r"(?=^diff --git )", patch, flags=re.MULTILINE)
    return "".join(s for s in sections if s.strip() and not re.search(
        r"^(Binary files .* differ|GIT binary patch)$", s, re.MULTILINE))


def dockerfile_exports(paths: Iterable[Path]) -> list[str]:
    """The ENV lines of the Dockerfiles that exist, as the harness exports them."""
    lines = []
    for path in paths:
        if path.is_file():
            lines += ["export" + line.strip()[3:] for line in path.read_text().splitlines()
                      if re.match(r"ENV\s", line.strip())]
    return lines


def entry_script(instance: Instance, nonce: str) -> str:
    """The harness's entry script for the instance, its tests run by the row's runner; the logs
    (and the runner's report) printed after it between markers that carry `nonce`."""
    mark = f"{_MARK} {nonce}"
    gold_tests = str(instance.extra.get("before_repo_set_cmd") or "").strip().splitlines()[-1]
    names = selected(instance)
    exports: list[str] = []
    if instance.log_parser == HARNESS:
        files = harness_files(Path(instance.extra["harness_dir"]), instance.instance_id)
        exports = dockerfile_exports([files["base_dockerfile"], files["instance_dockerfile"]])
        arg = f" {shlex.quote(','.join(names))}" if names else ""
        command = f"bash {WORKSPACE}/run_script.sh{arg}"
        shown = {**LOGS, "report": HARNESS_REPORT, "parser": PARSER_LOG}
        after = (f'{_PY}\n"$PY" {WORKSPACE}/parser.py {LOGS["stdout"]} {LOGS["stderr"]} {HARNESS_REPORT} '
                 f'> {PARSER_LOG} 2>&1')
    else:
        runner = RUNNERS[instance.log_parser]
        command, after = runner.command(instance), ""
        shown = {**LOGS, **({"report": runner.report} if runner.report else {})}
    show = [f"echo {shlex.quote(f'{mark} {name}')}\ncat {path} 2>/dev/null; echo" for name, path in shown.items()]
    return "\n".join([
        "#!/bin/bash",
        f"echo {shlex.quote(f'{mark} begin {instance.log_parser}')}",
        *exports,
        f"cd {instance.workdir}",
        f"git reset --hard {instance.base_commit}",
        f"git checkout {instance.base_commit}",
        f"git apply -v {WORKSPACE}/patch.diff || echo {shlex.quote(f'{mark} git-apply-failed')}",
        gold_tests,
        f"( cd {instance.workdir}\n{command}\n) > {LOGS['stdout']} 2> {LOGS['stderr']}",
        *([after] if after else []),
        *show,
        f"echo {shlex.quote(f'{mark} end')}",
    ]) + "\n"


def _patch_paths(patch: str) -> list[str]:
    paths = set()
    for a, b in re.findall(r"^diff --git a/(\S+) b/(\S+)$", patch, re.MULTILINE):
        paths.update((a, b))
    paths.update(p for p in re.findall(r"^\+\+\+ b/(\S+)", patch, re.MULTILINE))
    return sorted(paths)


def before_eval(sandbox: Sandbox, instance: Instance) -> None:
    """Undo grading.py's apply (the entry script resets to the base and applies the patch with
    the harness's `git apply -v`): the files the patch created, and the .orig / .rej files a
    fallback left, are removed; then the patch, the harness's files where used, and the entry
    script go to /workspace."""
    patch = sandbox.read_file(GRADED_PATCH)
    undo = ["set -e"]
    for path in _patch_paths(patch):
        for name in (path, f"{path}.orig", f"{path}.rej"):
            q = shlex.quote(name)
            undo.append(f"git ls-files --error-unmatch -- {q} >/dev/null 2>&1 || rm -f -- {q}")
    done = sandbox.exec("\n".join(undo), timeout=120, workdir=instance.workdir)
    if done.exit_code != 0:
        raise SandboxError(f"{instance.instance_id}: could not undo the applied patch "
                           f"(exit {done.exit_code}): {done.output[-1000:]}")
    sandbox.write_file(f"{WORKSPACE}/patch.diff", strip_binary_hunks(patch))
    if instance.log_parser == HARNESS:
        files = harness_files(Path(instance.extra["harness_dir"]), instance.instance_id)
        for key, name in (("run_script", "run_script.sh"), ("parser", "parser.py")):
            try:
                sandbox.write_file(f"{WORKSPACE}/{name}", files[key].read_text())
            except OSError as exc:
                raise SandboxError(f"{instance.instance_id}: cannot read the harness's {files[key]}: {exc}") from exc
    sandbox.write_file(ENTRY_SCRIPT, entry_script(instance, secrets.token_hex(6)))


# ---------------------------------------------------------------- the verdict

def sections(output: str) -> dict[str, str] | None:
    """The entry script's sections (begin, git-apply-failed, stdout, stderr, report, end) by the
    nonce of its first marker; None when it printed none."""
    first = re.search(rf"^{re.escape(_MARK)} ([0-9a-f]+) begin (\S+)$", output, re.MULTILINE)
    if first is None:
        return None
    marks = list(re.finditer(rf"^{re.escape(_MARK)} {first.group(1)} (\S+).*$", output, re.MULTILINE))
    found = {}
    for m, nxt in zip(marks, [*marks[1:], None]):
        body = output[m.end() + 1: nxt.start() if nxt else len(output)]
        found.setdefault(m.group(1), body)
    return found


def statuses(tests: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Each name's status: PASSED when one report says so (the harness's set of passed names),
    else its last report's."""
    out: dict[str, str] = {}
    for name, status in tests:
        if out.get(name) != "PASSED":
            out[name] = status
    return out


def verdict(instance: Instance, output: str) -> dict[str, Any]:
    """The harness's outcome from the entry script's output, in swebench's report shape
    (tests_status per F2P / P2P), with the reason, the pass rule and the runner used."""
    runner = instance.log_parser
    meta = {"pass_rule": PASS_RULE, "runner": runner,
            "harness": instance.extra.get("harness_dir") or "the project's own runner (no --harness-dir)"}
    found = sections(output)
    if found is None:
        return {"resolved": False, "patch_successfully_applied": True, **meta,
                "reason": "the entry script did not run (no marker in the output)"}
    if runner == HARNESS:
        tests = parse_harness_output(found.get("report", ""))
    else:
        tests = RUNNERS[runner].read({k: found.get(k, "") for k in ("stdout", "stderr", "report")})
    applied = "git-apply-failed" not in found
    if tests is None:
        return {"resolved": False, "patch_successfully_applied": applied, **meta, "tests_parsed": 0,
                "reason": "the harness's parser.py wrote no output.json that reads (a run with no "
                          f"output is unresolved there): {found.get('parser', '').strip()[-500:]}"}
    status = statuses(tests)
    passed = {name for name, s in status.items() if s == "PASSED"}
    tests_status, reasons = {}, []
    for kind, names in (("FAIL_TO_PASS", instance.FAIL_TO_PASS), ("PASS_TO_PASS", instance.PASS_TO_PASS)):
        tests_status[kind] = {"success": [t for t in names if t in passed],
                              "failure": [t for t in names if t not in passed]}
        failed = tests_status[kind]["failure"]
        if failed:
            shown = ", ".join(f"{t} ({status.get(t, 'not run')})" for t in failed[:5])
            reasons.append(f"{kind} not passing: {shown}{' ...' if len(failed) > 5 else ''}")
    if reasons and not applied:
        reasons.append("the harness's `git apply -v` refused the patch, so the tests ran without it")
    if reasons and "end" not in found:
        reasons.append("the output stops before the entry script's end (killed or cut)")
    return {"resolved": not reasons, "patch_successfully_applied": applied, "tests_status": tests_status,
            **meta, "tests_parsed": len(status),
            "reason": "; ".join(reasons) or "every FAIL_TO_PASS and PASS_TO_PASS test passed"}


def default_timeout(instances: Iterable[Instance], fallback: float) -> float:
    """The grading timeout a run of `instances` defaults to: the harness's hour where any is Pro's."""
    return max(fallback, TIMEOUT_S) if any(i.grader == "swe-bench-pro" for i in instances) else fallback
