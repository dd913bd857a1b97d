"""Grading with swebench's parsers and rules in fresh containers; the 0/1 training reward."""

from collections.abc import Callable
from functools import partial

from swe_aem.reward.grading import GradeResult, grade_patch
from swe_aem.sandbox import SandboxPool

__all__ = ["GradeResult", "grade_patch", "grader"]


def grader(pool: SandboxPool, *, timeout: float, strict: bool = True) -> Callable[..., GradeResult]:
    """The `grade(instance, patch)` a rollout takes: official grading in fresh containers of
    `pool` (an agent harness's grading pool). `strict` also rejects a patch that edits the
    instance's tests (training does; an evaluation grades as the SWE-bench harness would)."""
    return partial(grade_patch, strict=strict, timeout=timeout, pool=pool)
