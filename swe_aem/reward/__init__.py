"""Grading with swebench's parsers and rules in fresh containers; the 0/1 training reward."""

from swe_aem.reward.grading import GradeResult, grade_patch

__all__ = ["GradeResult", "grade_patch"]
