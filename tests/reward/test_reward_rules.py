"""The per-family grading registry (swe_aem/reward/rules.py): every family a dataset loads is
graded by a rule of its own, and the rules' differences are where the registry says."""

from __future__ import annotations

import pytest

from swe_aem.data.families import GRADERS, R2E_PROTECTED
from swe_aem.data.instances import UNGRADED, Instance
from swe_aem.reward import rules


def _instance(grader: str, **kw) -> Instance:
    return Instance(instance_id=f"t__{grader}-1", repo="t/t", base_commit="0" * 40, problem_statement="p",
                    grader=grader, **kw)


def test_every_family_that_loads_has_a_rule_with_its_reason():
    # a family is either refused at load (UNGRADED names why) or graded by its own rule
    assert set(GRADERS) == set(rules.RULES) | set(UNGRADED) and not set(rules.RULES) & set(UNGRADED)
    for name, rule in rules.RULES.items():
        assert len(rule.why) > 40, name
        # exactly one reader of the result: swebench's report, or the family's own
        assert rule.swebench_spec != (rule.verdict is not None), name


def test_an_unknown_family_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="grader 'tap' has no grading rule; one of swebench, swesmith"):
        rules.rule_for(_instance("tap"))
    with pytest.raises(ValueError, match="graded by swebench's report"):
        rules.verdict(_instance("swebench"), "")


def test_hidden_tests_are_the_named_tests_and_the_familys_folders():
    paths = ["src/a.py", "tests/test_a.py", f"{R2E_PROTECTED[0]}/test_x.py"]
    named = {"FAIL_TO_PASS": ("tests/test_a.py::test_one",)}
    assert rules.hidden_tests_edited(_instance("swebench", **named), paths) == ["tests/test_a.py"]
    assert rules.hidden_tests_edited(_instance("r2e", **named), paths) == paths[1:]
