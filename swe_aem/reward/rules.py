"""Each dataset family's grading rules, in one registry: what its own harness does around one
eval run, with the reason beside each rule.

`rule_for(instance)` is the one lookup; grading.py runs the same steps for every family (a
fresh container, the task state, the patch, the family's eval script, the verdict) and asks
the rule where families differ: whose eval script and report (swebench's test spec, or the
row's own script and the family's log reader), which folders hold hidden tests, what to
reset before the tests run.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from swe_aem.data.families import R2E_PROTECTED
from swe_aem.data.instances import Instance
from swe_aem.reward import multi_swe_bench, r2e, rebench, swebench_pro, swesmith
from swe_aem.sandbox import Sandbox


def _reset_test_files(sandbox: Sandbox, instance: Instance) -> None:
    files = instance.extra.get("test_files") or []
    if files:
        sandbox.exec(f"git checkout -- {' '.join(shlex.quote(f) for f in sorted(set(files)))}",
                     timeout=120, workdir="/testbed")


@dataclass(frozen=True)
class GradingRule:
    """How one family's harness grades a patch."""

    why: str
    """Which harness this follows, and what it does that the others do not."""
    swebench_spec: bool = False
    """The eval script and the report are swebench's (make_test_spec, get_eval_report);
    otherwise the row's own eval script runs and `verdict` reads its log."""
    verdict: Callable[[Instance, str], dict[str, Any]] | None = None
    """The per-instance report (resolved, reason, tests_status) from the eval run's output."""
    before_eval: Callable[[Sandbox, Instance], None] | None = None
    """What the harness does after applying the patch and before the tests."""
    protected: tuple[str, ...] = ()
    """Top-level folders holding hidden tests or the test runner: a patch may not edit them."""


RULES: dict[str, GradingRule] = {
    "swebench": GradingRule(
        why="SWE-bench and SWE-Gym rows: swebench's own test spec builds the eval script and "
            "its report decides (FAIL_TO_PASS all pass, PASS_TO_PASS all still pass)",
        swebench_spec=True),
    "swesmith": GradingRule(
        why="SWE-smith's harness checks the F2P / P2P test files out again after applying the "
            "patch, then reads pytest's log by its own rules",
        verdict=lambda inst, out: swesmith.verdict(out, inst.FAIL_TO_PASS, inst.PASS_TO_PASS),
        before_eval=_reset_test_files),
    "r2e": GradingRule(
        why="R2E-Gym compares each test's status with the row's expected map; its tests and "
            "runner live in folders the agent must not touch",
        verdict=lambda inst, out: r2e.verdict(out, inst.extra["expected_output"]),
        protected=R2E_PROTECTED),
    "swe-rebench": GradingRule(
        why="SWE-rebench names the log parser and the pass rule per row; the verdict is its "
            "harness's: the parser on the cleaned output, then the row's pass rule",
        verdict=lambda inst, out: rebench.verdict(out, inst.log_parser, inst.eval_type, inst.FAIL_TO_PASS,
                                                  inst.PASS_TO_PASS)),
    "multi-swe-bench": GradingRule(
        why="Multi-SWE-bench's harness runs the image's fix-run.sh, which applies the test patch and "
            "the patch itself (git apply), then its package's report check: the repository's parser on "
            "that log against the row's run and test-patch results, every p2p, f2p, s2p and n2p test "
            "of the row kept in its class",
        verdict=multi_swe_bench.verdict, before_eval=multi_swe_bench.before_eval),
    "swe-bench-pro": GradingRule(
        why="SWE-bench Pro's harness resets to the base, applies the patch with git apply -v, checks the "
            "PR's test files out of the gold commit, runs the instance's run script and parser: here the "
            "project's own per-language runner, or the harness checkout's files (--harness-dir); every "
            "F2P and P2P test PASSED",
        verdict=swebench_pro.verdict, before_eval=swebench_pro.before_eval),
}


def rule_for(instance: Instance) -> GradingRule:
    """The grading rule of the instance's family (instance.grader)."""
    rule = RULES.get(instance.grader)
    if rule is None:
        raise ValueError(f"{instance.instance_id}: grader {instance.grader!r} has no grading rule; "
                         f"one of {', '.join(RULES)}")
    return rule


def hidden_tests_edited(instance: Instance, paths: list[str]) -> list[str]:
    """Paths among `paths` that are the instance's hidden tests or its test runner."""
    named = {t.split("::", 1)[0] for t in (*instance.FAIL_TO_PASS, *instance.PASS_TO_PASS) if "::" in t}
    protected = rule_for(instance).protected
    return [p for p in paths
            if p in named or (protected and PurePosixPath(p).parts[0] in protected)]


def before_eval(sandbox: Sandbox, instance: Instance) -> None:
    """The family's step between the patch and the tests (none for most)."""
    step = rule_for(instance).before_eval
    if step is not None:
        step(sandbox, instance)


def verdict(instance: Instance, output: str) -> dict[str, Any]:
    """The per-instance report of a family that reads its own log (not swebench's report)."""
    read = rule_for(instance).verdict
    if read is None:
        raise ValueError(f"{instance.instance_id}: grader {instance.grader!r} is graded by swebench's "
                         "report, not a log reader of its own")
    return read(instance, output)
