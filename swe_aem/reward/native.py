"""What differs per grader around one eval run: hidden tests, the test-file reset, the verdict.

SWE-bench (and SWE-Gym) instances need nothing here: their eval script and swebench's
report do it all (grading.py). SWE-smith and R2E-Gym images first need their task
state made (`setup_script`: swe_aem.sandbox.setup_script), SWE-smith resets its test
files before the run as its harness does, and both read the run's log by their own
rules (swesmith.py, r2e.py).
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath
from typing import Any

from swe_aem.data.families import R2E_PROTECTED
from swe_aem.data.instances import Instance
from swe_aem.reward import r2e, rebench, swesmith
from swe_aem.sandbox import Sandbox


def hidden_tests_edited(instance: Instance, paths: list[str]) -> list[str]:
    """Paths among `paths` that are the instance's hidden tests or its test runner."""
    named = {t.split("::", 1)[0] for t in (*instance.FAIL_TO_PASS, *instance.PASS_TO_PASS) if "::" in t}
    protected = R2E_PROTECTED if instance.grader == "r2e" else ()
    return [p for p in paths
            if p in named or (protected and PurePosixPath(p).parts[0] in protected)]


def before_eval(sandbox: Sandbox, instance: Instance) -> None:
    """SWE-smith's harness checks the F2P / P2P test files out again after applying a patch."""
    files = instance.extra.get("test_files") or []
    if instance.grader == "swesmith" and files:
        sandbox.exec(f"git checkout -- {' '.join(shlex.quote(f) for f in sorted(set(files)))}",
                     timeout=120, workdir="/testbed")


def verdict(instance: Instance, output: str) -> dict[str, Any]:
    """The per-instance report of a non-swebench grader (resolved, reason, tests_status)."""
    if instance.grader == "r2e":
        return r2e.verdict(output, instance.extra["expected_output"])
    if instance.grader == "swesmith":
        return swesmith.verdict(output, instance.FAIL_TO_PASS, instance.PASS_TO_PASS)
    if instance.grader == "swe-rebench":
        return rebench.verdict(output, instance.log_parser, instance.eval_type, instance.FAIL_TO_PASS,
                               instance.PASS_TO_PASS)
    raise ValueError(f"{instance.instance_id}: grader {instance.grader!r} has no native verdict")
