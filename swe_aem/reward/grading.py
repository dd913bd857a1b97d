"""Grade one patch the way the SWE-bench harness does, in a fresh container; the RL reward.

Spec / run / grade are kept apart as in the official harness: the test spec comes
from swebench's `make_test_spec`, the run is ours (a sandbox in the image's bare
environment, as the harness's `docker exec` gives it, the harness's `git apply` fallback
chain, the instance's eval script as it is: it enters its own environment), and the verdict is
swebench's `get_eval_report` with its PARSER_REGISTRY. Strict mode (training's
default) first refuses patches that touch tests or test configuration, because a
policy under RL will find that shortcut.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from swebench.harness.constants import APPLY_PATCH_FAIL, APPLY_PATCH_PASS, TESTS_TIMEOUT
from swebench.harness.grading import get_eval_report
from swebench.harness.run_evaluation import GIT_APPLY_CMDS
from swebench.harness.utils import make_test_spec

from swe_aem.data.instances import Instance
from swe_aem.reward import rules
from swe_aem.sandbox import (
    DockerUnavailableError,
    Sandbox,
    SandboxConfig,
    SandboxError,
    SandboxPool,
)
from swe_aem.sandbox.setup_script import prepare

PATCH_FILE = "/tmp/patch.diff"
EVAL_FILE = "/tmp/eval.sh"
STATUSES = ("resolved", "unresolved", "empty_patch", "rejected", "patch_apply_failed", "timeout",
            "infra_failure", "error")
# Outcomes the official report files under error_ids (no report.json there), not unresolved.
ERROR_STATUSES = ("patch_apply_failed", "timeout", "infra_failure", "error")
# Outcomes that say nothing about the patch (the tests hung or the environment broke):
# training and evaluation grade again, then drop the sample; never a reward of 0.
INFRA_STATUSES = ("timeout", "infra_failure", "error")

TEST_CONFIG_FILES = ("conftest.py", "pytest.ini", "tox.ini", "noxfile.py")
_TEST_FILE = re.compile(r"(^|/)(tests?|testing)/|(^|/)test_[^/]*\.py$|_tests?\.py$")


@dataclass(frozen=True)
class GradeResult:
    instance_id: str
    reward: float  # 1.0 iff resolved
    resolved: bool
    status: str  # one of STATUSES
    reason: str
    report: dict[str, Any] = field(default_factory=dict)  # swebench's per-instance report
    test_output: str = ""
    duration_s: float = 0.0

    @property
    def infra_failure(self) -> bool:
        return self.status in INFRA_STATUSES

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row.pop("test_output")
        return row


def patch_files(patch: str) -> list[str]:
    """Every path a unified diff touches (old and new names)."""
    paths = set()
    for a, b in re.findall(r"^diff --git a/(\S+) b/(\S+)$", patch, re.MULTILINE):
        paths.update((a, b))
    for name in re.findall(r"^(?:---|\+\+\+) (?:[ab]/)?(\S+)", patch, re.MULTILINE):
        if name != "/dev/null":
            paths.add(name)
    return sorted(paths)


def edited_tests(instance: Instance, patch: str) -> list[str]:
    """Files of `patch` that are tests or pytest/tox configuration (setup.cfg/pyproject: see below)."""
    hidden = set(_touched_by(instance.test_patch))
    hidden |= set(rules.hidden_tests_edited(instance, patch_files(patch)))
    return [p for p in patch_files(patch)
            if p in hidden or _TEST_FILE.search(p) or PurePosixPath(p).name in TEST_CONFIG_FILES]


def _touched_by(patch: str) -> list[str]:
    return patch_files(patch) if patch else []


def _cfg_test_sections(text: str) -> dict[str, dict[str, str]]:
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(text)
    except configparser.Error:
        return {"<unparseable>": {"text": text}}
    return {s: dict(parser[s]) for s in parser.sections()
            if s in ("tool:pytest", "pytest") or s.startswith(("coverage:", "tox"))}


def _toml_test_sections(text: str) -> Any:
    try:
        tool = tomllib.loads(text).get("tool", {})
    except tomllib.TOMLDecodeError:
        return {"<unparseable>": text}
    return {k: v for k, v in tool.items() if k in ("pytest", "tox", "coverage")}


def edited_test_config(sandbox: Sandbox, patch: str, base_commit: str) -> list[str]:
    """setup.cfg / pyproject.toml whose test sections differ from base_commit after the patch."""
    changed = []
    for path in patch_files(patch):
        name = PurePosixPath(path).name
        sections = {"setup.cfg": _cfg_test_sections, "pyproject.toml": _toml_test_sections}.get(name)
        if sections is None:
            continue
        before = sandbox.exec(f"git show {base_commit}:{shlex.quote(path)}", timeout=60)
        old = before.output if before.exit_code == 0 else ""
        try:
            new = sandbox.read_file(path)
        except FileNotFoundError:
            new = ""
        if sections(old) != sections(new):
            changed.append(f"{path} (test sections)")
    return changed


def _apply(sandbox: Sandbox) -> tuple[bool, str]:
    """The official chain: git apply, --3way, --reject, patch --fuzz; a clean tree between tries."""
    log = []
    for attempt, cmd in enumerate(GIT_APPLY_CMDS):
        if attempt:
            sandbox.exec("git checkout -- . ; git clean -fdq", timeout=120)
        result = sandbox.exec(f"{cmd} {PATCH_FILE}", timeout=120)
        log.append(f"$ {cmd} {PATCH_FILE}\n{result.output}")
        if result.exit_code == 0:
            return True, f"{APPLY_PATCH_PASS}:\n{result.output}"
    if sandbox.exec(f"git apply --check --reverse {PATCH_FILE}", timeout=120).exit_code == 0:
        return True, f"{APPLY_PATCH_PASS}: verified already applied"
    return False, f"{APPLY_PATCH_FAIL}:\n" + "\n".join(log)


def _result(instance: Instance, status: str, reason: str, start: float, **extra: Any) -> GradeResult:
    return GradeResult(instance_id=instance.instance_id, reward=1.0 if status == "resolved" else 0.0,
                       resolved=status == "resolved", status=status, reason=reason,
                       duration_s=time.monotonic() - start, **extra)


def _write(log_dir: Path | None, name: str, text: str) -> None:
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / name).write_text(text)


def _failures(report: dict[str, Any]) -> str:
    status = report.get("tests_status", {})
    parts = []
    for kind in ("FAIL_TO_PASS", "PASS_TO_PASS"):
        failed = status.get(kind, {}).get("failure", [])
        if failed:
            parts.append(f"{kind} failing: {', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}")
    return "; ".join(parts) or "tests did not pass"


def grade_patch(instance: Instance, patch: str | None, *, strict: bool = True,
                timeout: float = 1800.0, pool: SandboxPool | None = None,
                config: SandboxConfig | None = None, run_id: str | None = None,
                log_dir: str | Path | None = None, model_name: str = "swe-aem") -> GradeResult:
    """Grade `patch` for `instance` in a fresh container; reward 1.0 iff swebench says resolved.

    Failures that say nothing about the patch come back with an INFRA_STATUSES status
    (`result.infra_failure`): callers grade again or drop the sample, never score it 0.
    A daemon that does not answer raises DockerUnavailableError.
    """
    start = time.monotonic()
    log_path = Path(log_dir) if log_dir is not None else None
    if not patch or not patch.strip():
        return _result(instance, "empty_patch", "the patch is empty", start)
    _write(log_path, "patch.diff", patch)
    if strict:
        touched = edited_tests(instance, patch)
        if touched:
            return _result(instance, "rejected", f"strict: patch edits tests: {', '.join(touched)}", start)
    # swebench's test spec, or the row's own eval script read by the family's rule (rules.py)
    spec = make_test_spec(instance.to_swebench()) if rules.rule_for(instance).swebench_spec else None
    own_pool = pool is None
    pool = pool or SandboxPool(max_concurrency=1, config=config, run_id=run_id)
    try:
        with pool.sandbox(instance, shell_env=False) as sandbox:  # the eval script enters its own
            prepare(sandbox, instance)
            sandbox.write_file(PATCH_FILE, patch)
            applied, apply_log = _apply(sandbox)
            _write(log_path, "run_instance.log", apply_log + "\n")
            if not applied:
                return _result(instance, "patch_apply_failed", apply_log[-2000:], start)
            if strict:
                touched = edited_test_config(sandbox, patch, instance.base_commit)
                if touched:
                    return _result(instance, "rejected",
                                   f"strict: patch edits test configuration: {', '.join(touched)}", start)
            script = spec.eval_script if spec is not None else instance.eval_script
            rules.before_eval(sandbox, instance)
            sandbox.write_file(EVAL_FILE, script)
            _write(log_path, "eval.sh", script)
            run = sandbox.exec(f"/bin/bash {EVAL_FILE}", timeout=timeout, output_limit_bytes=64 << 20)
    except DockerUnavailableError:
        raise
    except SandboxError as exc:
        return _result(instance, "error", str(exc), start)
    finally:
        if own_pool:
            pool.close()
    output = run.output
    if run.timed_out:
        output += f"\n\n{TESTS_TIMEOUT}\nTimeout error: {timeout:g} seconds exceeded."
        _write(log_path, "test_output.txt", output)
        return _result(instance, "timeout", f"tests timed out after {timeout:g} s and were killed",
                       start, test_output=output)
    if spec is None:
        _write(log_path, "test_output.txt", output)
        report = {instance.instance_id: rules.verdict(instance, output)}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out_file = (log_path or Path(tmp)) / "test_output.txt"
            out_file.parent.mkdir(parents=True, exist_ok=True)
            out_file.write_text(output)
            prediction = {"instance_id": instance.instance_id, "model_name_or_path": model_name,
                          "model_patch": patch}
            report = get_eval_report(spec, prediction, str(out_file), include_tests_status=True)
    _write(log_path, "report.json", json.dumps(report, indent=2))
    verdict = report[instance.instance_id]
    if verdict["resolved"]:
        return _result(instance, "resolved",
                       verdict.get("reason", "all FAIL_TO_PASS and PASS_TO_PASS tests pass"), start,
                       report=verdict, test_output=output)
    if verdict.get("infra_failure"):
        return _result(instance, "infra_failure",
                       f"environment failure ({verdict.get('infra_failure_reason', 'unknown')}): "
                       "no test results could be read", start, report=verdict, test_output=output)
    reason = verdict.get("reason") or (_failures(verdict) if verdict.get("patch_successfully_applied")
                                       else "no test results could be read from the eval output")
    return _result(instance, "unresolved", reason, start, report=verdict, test_output=output)
