"""R2E-Gym's reward rule: the parsed test-status map must equal `expected_output_json` exactly.

Pure functions (no I/O), written from R2E-Gym's `parse_log_pytest` and
`_calculate_reward_r2e` (and rllm's copy): only the text after pytest's "short test
summary info" is read; a line with PASSED / FAILED / ERROR gives the test its status,
keyed by the part after the first "::" with later "::" joined by "."; keys lose ANSI
colour codes and anything after " - ". Reward 1 only when both maps have the same
number of keys and every parsed key has the same status in the expected map.
"""

from __future__ import annotations

import re
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
SUMMARY = "short test summary info"


def clean(text: str) -> str:
    """Output as rllm reads it: no carriage returns, no ANSI colour codes."""
    return _ANSI.sub("", text.replace("\r", ""))


def parse_log(log: str) -> dict[str, str]:
    """Test -> status from the lines after pytest's short test summary (R2E-Gym's parser)."""
    if SUMMARY not in log:
        return {}
    statuses: dict[str, str] = {}
    for line in log.split(SUMMARY, 1)[1].strip().split("\n"):
        for status in ("PASSED", "FAILED", "ERROR"):  # the order R2E-Gym checks them in
            if status in line:
                statuses[".".join(line.split("::")[1:]).split(" - ")[0]] = status
                break
    return statuses


def _keys(statuses: dict[str, str]) -> dict[str, str]:
    return {_ANSI.sub("", k).split(" - ")[0]: v for k, v in sorted(statuses.items())}


def verdict(output: str, expected: dict[str, str]) -> dict[str, Any]:
    """The report for one run: resolved iff the parsed map matches `expected` exactly."""
    parsed, want = _keys(parse_log(clean(output))), _keys(expected)
    mismatched = sorted(k for k in parsed if want.get(k) != parsed[k])
    if not parsed:
        reason = "no test results could be read (no pytest short test summary in the output)"
    elif len(parsed) != len(want):
        reason = f"the run reports {len(parsed)} test(s), {len(want)} expected"
    elif mismatched:
        shown = ", ".join(f"{k}: {parsed[k]} (expected {want.get(k, 'absent')})" for k in mismatched[:5])
        reason = f"test statuses differ: {shown}{' ...' if len(mismatched) > 5 else ''}"
    else:
        reason = ""
    return {"resolved": not reason, "reason": reason or "test statuses match expected_output_json",
            "patch_successfully_applied": True, "tests_status": parsed, "expected": want,
            "mismatched": mismatched}
