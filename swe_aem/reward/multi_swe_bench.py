"""Multi-SWE-bench's verdict, through its own package (`multi-swe-bench` on PyPI; FAMILIES-2026.md 3d).

The harness (multi_swe_bench.harness.run_evaluation, human mode) runs `bash /home/fix-run.sh`
in a fresh container of the task's image, with the model's patch mounted at /home/fix.patch;
that script (baked into the image) applies /home/test.patch and the patch with `git apply`
and runs the repository's tests. Its report step (gen_report.ReportBuilder.gen_eval_reports)
then parses that log with the repository's instance class (`ReportTask.instance.parse_log`:
the package's registry, about 2,000 repositories), builds a `Report` from the ROW's run and
test-patch results (the runs with no patch and with the test patch only, recorded when the
dataset was made) and the parsed fix run, and counts the instance resolved when
- the report is valid (`Report.check`): some test ran; no test that passed with the test
  patch fails now; some test went from not passing to passing; no test that passed with no
  patch and did not run with the test patch fails now; and
- every p2p, f2p, s2p and n2p test of the row is again in the report's p2p, f2p, s2p and
  n2p classes (a test of the row's n2p must not run with the test patch and pass now).

Here the container run is the project's (grading.py's pool: limits, no network, reaping):
grading.py applies the patch to see that it applies, `before_eval` undoes that and puts the
patch at /home/fix.patch, and the row's eval script is the harness's own command
(`fix_patch_run()`: `bash /home/fix-run.sh` for 2,021 of the package's 2,022 classes), so the
harness's `git apply` decides what applies. `verdict` is the package's report check on the
output, as above, and records the rule and the package version.
"""

from __future__ import annotations

import json
import re
import shlex
from importlib.metadata import version
from pathlib import Path
from typing import Any

from swe_aem.data.instances import Instance
from swe_aem.sandbox import Sandbox, SandboxError

# where grading.py writes the patch (grading.PATCH_FILE; not imported: grading imports rules)
GRADED_PATCH = "/tmp/patch.diff"
# where the harness mounts the model's patch (Image.fix_patch_path() of every repository)
FIX_PATCH = "/home/fix.patch"
# the row's test classes, each checked against the report's class of the same name
CLASSES = (("p2p_tests", "PASS_TO_PASS"), ("f2p_tests", "FAIL_TO_PASS"), ("s2p_tests", "SKIP_TO_PASS"),
           ("n2p_tests", "NONE_TO_PASS"))
PASS_RULE = ("multi-swe-bench report check: a valid Report (Report.check) from the row's run and "
             "test-patch results and the parsed fix run, and every p2p, f2p, s2p and n2p test of the "
             "row in the same class of the report")
# what git apply prints when fix-run.sh's `git apply` refuses a patch
_APPLY_REFUSED = ("error: patch failed", "error: corrupt patch", "patch does not apply",
                  "error: No valid patches in input")


def package_version() -> str:
    return version("multi-swe-bench")


def harness_instance(instance: Instance) -> Any:
    """The package's instance class of the row, as its report step builds it
    (ReportTask.instance: the registry key "<org>/<repo>")."""
    from multi_swe_bench.harness.report import ReportTask

    org, _, repo = instance.repo.partition("/")
    return ReportTask(org=org, repo=repo, number=int(instance.extra["number"]),
                      instance_dir=Path(".")).instance


def _dataset(instance: Instance) -> Any:
    """The row as the harness's report step reads it (gen_report: Dataset.from_json)."""
    from multi_swe_bench.harness.dataset import Dataset

    org, _, repo = instance.repo.partition("/")
    extra = instance.extra
    row = {"org": org, "repo": repo, "number": int(extra["number"]), "state": "", "title": "",
           "body": "", "base": {"label": "", "ref": "", "sha": instance.base_commit},
           "resolved_issues": [], "fix_patch": "", "test_patch": "",
           **{k: extra.get(k) or {} for k in ("fixed_tests", *(c for c, _ in CLASSES))},
           **{k: extra[k] for k in ("run_result", "test_patch_result", "fix_patch_result")}}
    return Dataset.from_json(json.dumps(row))


def before_eval(sandbox: Sandbox, instance: Instance) -> None:
    """Undo grading.py's apply (the harness's fix-run.sh applies the patch itself, with the
    test patch, by `git apply`) and put the patch where the harness mounts it."""
    patch = sandbox.read_file(GRADED_PATCH)
    paths = sorted({p for pair in _diff_paths(patch) for p in pair if p != "/dev/null"})
    undo = [f"cp {GRADED_PATCH} {FIX_PATCH}"]
    for path in paths:
        q = shlex.quote(path)
        undo.append(f"if git cat-file -e HEAD:{q} 2>/dev/null; then git checkout -q HEAD -- {q}; "
                    f"else rm -f -- {q}; fi")
        # GNU patch's backup of a fuzzy hunk (grading.py's last try), unless the repo tracks it
        undo.append(f"git ls-files --error-unmatch -- {shlex.quote(path + '.orig')} >/dev/null 2>&1 "
                    f"|| rm -f -- {shlex.quote(path + '.orig')}")
    done = sandbox.exec("set -e\n" + "\n".join(undo), timeout=120, workdir=instance.workdir)
    if done.exit_code != 0:
        raise SandboxError(f"{instance.instance_id}: could not hand the patch to fix-run.sh "
                           f"(exit {done.exit_code}): {done.output[-1000:]}")


def _diff_paths(patch: str) -> list[tuple[str, str]]:
    """(old, new) of each file of a unified diff, without the a/ b/ prefixes (unidiff, the
    package's own diff reader: hunk lines that look like headers are not taken for files)."""
    from unidiff import PatchSet
    from unidiff.errors import UnidiffParseError

    def bare(name: str) -> str:
        return name[2:] if name[:2] in ("a/", "b/") else name

    try:
        return [(bare(f.source_file), bare(f.target_file)) for f in PatchSet(patch)]
    except UnidiffParseError:  # git applied it: its own headers name the files
        return [(a, b) for a, b in re.findall(r"^diff --git a/(\S+) b/(\S+)$", patch, re.MULTILINE)]


def verdict(instance: Instance, output: str) -> dict[str, Any]:
    """The harness's per-instance outcome from fix-run.sh's output, in swebench's report shape
    (tests_status per class of the row), with the reason, the pass rule and the package version."""
    from multi_swe_bench.harness.report import generate_report

    harness = harness_instance(instance)
    dataset = _dataset(instance)
    fix = harness.parse_log(output)
    report = generate_report(harness, dataset.run_result, dataset.test_patch_result, fix)
    # each test's class from its (test, fix) states, as Report.check sorts a valid report; the
    # verdict is the harness's: a valid report, then the row's tests in the report's classes
    states = {kind: {name for name, t in report._tests.items()
                     if (t.test.value, t.fix.value) == (before, "PASS")}
              for kind, before in (("PASS_TO_PASS", "PASS"), ("FAIL_TO_PASS", "FAIL"),
                                   ("SKIP_TO_PASS", "SKIP"), ("NONE_TO_PASS", "NONE"))}
    tests_status, reasons = {}, []
    for column, kind in CLASSES:
        want = sorted(getattr(dataset, column))
        kept = getattr(report, column) if report.valid else states[kind]
        tests_status[kind] = {"success": [t for t in want if t in kept],
                              "failure": [t for t in want if t not in kept]}
        failed = tests_status[kind]["failure"]
        if report.valid and failed:
            reasons.append(f"{column} not kept: {', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}")
    if not report.valid:  # the package's message, less its summary table (the counts are below)
        head, _, tail = report.error_msg.partition(" A brief summary is as follows: ")
        named = re.search(r"\. `([^`]+)`: Test\(", tail)
        test = report._tests.get(named.group(1)) if named else None
        reasons.append(f"invalid report: {head.rstrip('.')}" + (
            f": {named.group(1)} (run {test.run.value}, test {test.test.value}, fix {test.fix.value})"
            if test is not None else ""))
    if reasons and any(s in output for s in _APPLY_REFUSED):
        reasons.append("fix-run.sh's git apply refused the test patch or the patch (the harness "
                       "applies both with git apply, no fuzz)")
    counts = {"passed": fix.passed_count, "failed": fix.failed_count, "skipped": fix.skipped_count}
    return {"resolved": not reasons, "patch_successfully_applied": True, "tests_status": tests_status,
            "reason": "; ".join(reasons) or "the report is valid and every p2p, f2p, s2p and n2p test "
                                              "of the row kept its class",
            "pass_rule": PASS_RULE, "harness": f"multi-swe-bench {package_version()}",
            "log_parser": f"{type(harness).__module__}.{type(harness).__qualname__}.parse_log",
            "fix_patch_result": counts}
