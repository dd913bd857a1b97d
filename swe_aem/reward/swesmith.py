"""SWE-smith's verdict (swesmith 0.0.9, `swesmith.harness.grading`), as pure functions.

Only the log between the "+ : '>>>>> Start Test Output'" and "+ : '>>>>> End Test
Output'" lines (bash -x echoes of the eval script's markers) is parsed, with the
profiles' pytest --verbose parser (`<test> <STATUS>` at the start of a line). A
FAIL_TO_PASS or PASS_TO_PASS test passes only when the log says PASSED or XFAIL; a
test absent from the log fails. (SWE-smith 0.0.2 counted absent tests as passed; 0.0.9,
whose profiles give the test command, no longer does, and the lenient rule would pay a
patch that stops the test files from being collected at all.) Resolved when every
F2P and every P2P test passes.
"""

from __future__ import annotations

import re
from typing import Any

from swebench.harness.constants import APPLY_PATCH_FAIL, TESTS_TIMEOUT, TestStatus

START = "+ : '>>>>> Start Test Output'"
END = "+ : '>>>>> End Test Output'"
_PASS = (TestStatus.PASSED.value, TestStatus.XFAIL.value)


def test_output(log: str) -> str | None:
    """The test section of an eval log, or None when there is none to grade."""
    if APPLY_PATCH_FAIL in log or TESTS_TIMEOUT in log or START not in log or END not in log:
        return None
    start, end = log.find(START), log.find(END)
    return log[start + len(START):end] if start < end else None


def parse_log(log: str) -> dict[str, str]:
    """`path::test STATUS` lines of pytest --verbose (PythonProfile.log_parser)."""
    statuses: dict[str, str] = {}
    for line in log.split("\n"):
        for status in TestStatus:
            match = re.match(rf"^(\S+)(\s+){status.value}", line)
            if match:
                statuses[match.group(1)] = status.value
    return statuses


def verdict(log: str, fail_to_pass: list[str] | tuple[str, ...],
            pass_to_pass: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The per-instance report in swebench's shape, with a reason."""
    section = test_output(log)
    if section is None:
        return {"resolved": False, "patch_successfully_applied": False,
                "reason": "no test output between the markers could be read"}
    statuses = parse_log(section)
    tests_status = {}
    for kind, tests in (("FAIL_TO_PASS", fail_to_pass), ("PASS_TO_PASS", pass_to_pass)):
        ok = [t for t in tests if statuses.get(t) in _PASS]
        tests_status[kind] = {"success": ok, "failure": [t for t in tests if t not in ok]}
    failing = [f"{kind} failing: {', '.join(s['failure'][:5])}" for kind, s in tests_status.items()
               if s["failure"]]
    return {"resolved": not failing, "patch_successfully_applied": True,
            "tests_status": tests_status,
            "reason": "; ".join(failing) or "all FAIL_TO_PASS and PASS_TO_PASS tests pass"}
