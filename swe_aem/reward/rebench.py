"""SWE-rebench V2's verdict, as pure functions (FAMILIES-2026.md section 1c).

V2's scripts/eval.py and its OpenRewardEnv both parse the whole output of the test commands
(stdout and stderr, ANSI colour codes and carriage returns removed) with the parser the row
names (`install_config.log_parser`; swebench's registry holds the same parsers), test names
normalised by dropping a timing suffix (` [1.34 ms]`, ` in 29.08 msec`, ` (1.234s)`). Two pass
rules, the row's `eval_type`:
- `f2p_p2p_passed` (OpenRewardEnv, the usual SWE rule): every FAIL_TO_PASS and PASS_TO_PASS
  test PASSED; other tests do not count;
- `exact_passed_set` (eval.py): the set of PASSED tests equals F2P + P2P exactly.
Only what the test commands printed is graded: the section between the markers when the
script echoed them, else the whole output.
"""

from __future__ import annotations

import re
from typing import Any

from swebench.harness.constants import APPLY_PATCH_FAIL, TESTS_TIMEOUT, TestStatus

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_TIMING = re.compile(r"\s*(\[\d+(\.\d+)?\s*m?s\]|in \d+(\.\d+)?\s*m?sec|\(\d+(\.\d+)?m?s\))\s*$")
START, END = ">>>>> Start Test Output", ">>>>> End Test Output"


def clean(output: str) -> str:
    """The output as V2's parsers read it: no ANSI codes, no carriage returns."""
    return _ANSI.sub("", output).replace("\r", "")


def normalise(name: str) -> str:
    """A test name without the timing suffix some runners print after it."""
    return _TIMING.sub("", _ANSI.sub("", name)).strip()


def section(output: str) -> str:
    start, end = output.find(START), output.rfind(END)
    return output[start + len(START):end] if 0 <= start < end else output


def verdict(output: str, log_parser: str, eval_type: str, fail_to_pass: list[str] | tuple[str, ...],
            pass_to_pass: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The per-instance report in swebench's shape (tests_status), with the reason."""
    from swebench.harness.log_parsers import PARSER_REGISTRY

    if APPLY_PATCH_FAIL in output or TESTS_TIMEOUT in output:
        return {"resolved": False, "patch_successfully_applied": APPLY_PATCH_FAIL not in output,
                "reason": "the test patch did not apply or the tests timed out"}
    parsed = PARSER_REGISTRY[log_parser](section(clean(output)), None)
    status = {normalise(k): v for k, v in parsed.items()}
    passed = {k for k, v in status.items() if v == TestStatus.PASSED.value}
    tests_status = {}
    for kind, tests in (("FAIL_TO_PASS", fail_to_pass), ("PASS_TO_PASS", pass_to_pass)):
        ok = [t for t in tests if normalise(t) in passed]
        tests_status[kind] = {"success": ok, "failure": [t for t in tests if t not in ok]}
    failing = [f"{kind} not passing: {', '.join(s['failure'][:5])}" for kind, s in tests_status.items()
               if s["failure"]]
    if eval_type == "exact_passed_set":
        extra = sorted(passed - {normalise(t) for t in (*fail_to_pass, *pass_to_pass)})
        if extra:
            failing.append(f"tests passing beyond F2P + P2P (eval.py's exact rule): {', '.join(extra[:5])}")
    return {"resolved": not failing, "patch_successfully_applied": True, "tests_status": tests_status,
            "reason": "; ".join(failing) or f"every FAIL_TO_PASS and PASS_TO_PASS test passed ({eval_type})"}
