"""SWE-bench-schema instances: one typed record (load.py reads them from the local suite, a file
or the hub), and the seeded draw of tasks a run takes from them.

Rows of every supported family (SWE-bench 5.x, SWE-Gym, SWE-smith, R2E-Gym: see
families.py) become the same record, which names its grader. The hub stores
FAIL_TO_PASS / PASS_TO_PASS as JSON strings; we accept both that and real lists, and
turn every malformed row, and every row whose tests could not be run, into an error
that names the row and the reason, because a silently skipped or silently
unresolvable instance skews every resolve rate.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from swe_aem.data import pro_runners
from swe_aem.data.families import GRADERS, FormatError, adapt
from swe_aem.errors import InputError

REQUIRED = ("instance_id", "repo", "base_commit", "problem_statement")
LIST_FIELDS = ("FAIL_TO_PASS", "PASS_TO_PASS")
TUPLE_FIELDS = (*LIST_FIELDS, "history_remove_paths")


class DatasetError(InputError, ValueError):
    """A dataset cannot be loaded, or one of its rows is malformed."""


@dataclass(frozen=True)
class Instance:
    """One task: a repo at base_commit, an issue, the hidden tests and how to run them."""

    instance_id: str
    repo: str
    base_commit: str
    problem_statement: str
    version: str = ""
    hints_text: str = ""
    patch: str = ""
    test_patch: str = ""
    FAIL_TO_PASS: tuple[str, ...] = ()
    PASS_TO_PASS: tuple[str, ...] = ()
    image: str = ""
    eval_script: str = ""
    log_parser: str = "parse_log_pytest"
    eval_type: str = "pass_and_fail"
    created_at: str = ""
    grader: str = "swebench"  # how the verdict is read: swebench | swesmith | r2e
    env_activate: str = ""  # bash after the image's shell start-up (R2E-Gym's PATH); "" for none
    setup_script: str = ""  # runs once in a fresh container, before the agent or the grader
    workdir: str = "/testbed"  # the repository's folder in the image (/testbed, /<repo>, /app, /home/<repo>)
    gold_commit: str = ""  # the fix's commit where the row names it (the history guard checks it is absent)
    history_remove_paths: tuple[str, ...] = ()  # files the agent's image loses (baked-in gold patches)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_swebench(self) -> dict[str, Any]:
        """The dict swebench's make_test_spec / get_eval_report expect (lists, not tuples)."""
        row = {k: v for k, v in asdict(self).items() if k != "extra"}
        row.update({k: list(row[k]) for k in TUPLE_FIELDS})
        return {**self.extra, **row}


_KNOWN = {f.name for f in fields(Instance)} - {"extra"}


def fix_lines(patch: str) -> int:
    """How many lines a patch changes: the larger of its removed and added line counts
    (a one-operator fix is 1, a re-inserted three-line loop is 3)."""
    body = [line[:1] for line in patch.splitlines() if line[:3] not in ("+++", "---")]
    return max(body.count("+"), body.count("-"))


def _as_list(value: Any, row: str, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{row}: field {name!r} is not a JSON list: {exc}") from exc
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise DatasetError(f"{row}: field {name!r} must be a list of test names, got {value!r:.80}")
    return tuple(value)


def instance_from_row(raw: Any, where: str) -> Instance:
    """Validate one row (a dict in the SWE-bench schema); `where` names it in errors."""
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: expected an object, got {type(raw).__name__}")
    row = f"{where} (instance_id={raw.get('instance_id')!r})"
    for name in REQUIRED:
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise DatasetError(f"{row}: required field {name!r} is missing or not a non-empty string")
    values: dict[str, Any] = {}
    for name in _KNOWN:
        if name not in raw or raw[name] is None:
            continue
        if name in TUPLE_FIELDS:
            values[name] = _as_list(raw[name], row, name)
        elif not isinstance(raw[name], str):
            raise DatasetError(f"{row}: field {name!r} must be a string, got {type(raw[name]).__name__}")
        else:
            values[name] = raw[name]
    values.setdefault("image", official_image(values["instance_id"]))
    extra = {k: v for k, v in raw.items() if k not in _KNOWN}
    return Instance(**values, extra=extra)


def official_image(instance_id: str) -> str:
    """SWE-bench's published image name for an instance (used when a row names none)."""
    return f"swebench/sweb.eval.x86_64.{instance_id.replace('__', '_1776_').lower()}:latest"


def native_instance(raw: Any, where: str, dataset_format: str) -> Instance:
    """A row of family `dataset_format` as an Instance; errors name the row, its id and the reason."""
    try:
        row = adapt(dataset_format, raw)
        if row.get("grader") == "swe-bench-pro":  # its rows name no test procedure: data/pro_runners.py
            row = {**row, **pro_runners.procedure(row)}
    except FormatError as exc:
        iid = raw.get("instance_id") if isinstance(raw, dict) else None
        raise DatasetError(f"{where} (instance_id={iid!r}, format {dataset_format}): {exc}") from exc
    inst = instance_from_row(row, where)
    check_gradable(inst, where)
    return inst


# Families whose rows map to instances but whose harness is not reimplemented yet (issue 31):
# refused at load time, so no run scores them 0 for want of a grader.
UNGRADED: dict[str, str] = {}


def check_gradable(inst: Instance, where: str) -> None:
    """Refuse, at load time, an instance whose tests could not be run or whose verdict could not be read."""
    from swebench.harness.constants import END_TEST_OUTPUT, START_TEST_OUTPUT, EvalType
    from swebench.harness.log_parsers import PARSER_REGISTRY
    from swebench.harness.utils import make_test_spec

    row = f"{where} (instance_id={inst.instance_id!r})"
    if inst.grader not in GRADERS:
        raise DatasetError(f"{row}: unknown grader {inst.grader!r}; one of {', '.join(GRADERS)}")
    if inst.grader in UNGRADED:
        raise DatasetError(f"{row}: {inst.grader} rows load (image, folder, tests) but their grader "
                           f"is not built yet: {UNGRADED[inst.grader]}")
    if not inst.eval_script.strip():
        raise DatasetError(f"{row}: the eval script is empty: nothing would run the tests")
    if inst.grader == "swe-rebench":
        from swe_aem.data.families import REBENCH_PASS_RULES

        if inst.eval_type not in REBENCH_PASS_RULES:
            raise DatasetError(f"{row}: pass rule {inst.eval_type!r} is not one of {', '.join(REBENCH_PASS_RULES)}")
        if inst.log_parser not in PARSER_REGISTRY:
            raise DatasetError(f"{row}: log_parser {inst.log_parser!r} is not one of swebench's parsers")
        return
    if inst.grader == "multi-swe-bench":  # the package's parser and report check (families.multi_swe_bench)
        return
    if inst.grader == "swe-bench-pro":  # a runner of the project's, or the harness's own files
        if inst.log_parser not in (*pro_runners.RUNNERS, pro_runners.HARNESS):
            raise DatasetError(f"{row}: SWE-bench Pro runner {inst.log_parser!r} is not one of "
                               f"{', '.join(pro_runners.RUNNERS)}, {pro_runners.HARNESS}")
        return
    if inst.grader == "r2e":
        if not isinstance(inst.extra.get("expected_output"), dict):
            raise DatasetError(f"{row}: an r2e instance needs its expected test-status map")
        return
    if START_TEST_OUTPUT not in inst.eval_script or END_TEST_OUTPUT not in inst.eval_script:
        raise DatasetError(f"{row}: the eval script has no test-output markers, so no test "
                           "result could be read from its log")
    if inst.grader == "swesmith":
        return
    if inst.log_parser not in PARSER_REGISTRY:
        raise DatasetError(f"{row}: log_parser {inst.log_parser!r} is not one of swebench's parsers")
    if inst.eval_type not in {e.value for e in EvalType}:
        raise DatasetError(f"{row}: eval_type {inst.eval_type!r} is not one of "
                           f"{', '.join(e.value for e in EvalType)}")
    try:
        make_test_spec(inst.to_swebench())
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{row}: swebench cannot build its test spec: {type(exc).__name__}: {exc}") from exc


def task_pool(instances: list, matching: str | None, max_fix_lines: int | None) -> list[str]:
    """Ids of the instances a run may draw from: the regex `matching` is found in the id and
    the gold patch changes at most `max_fix_lines` lines (None: no condition)."""
    pattern = re.compile(matching) if matching is not None else None
    ids = [i.instance_id for i in instances
           if (pattern is None or pattern.search(i.instance_id))
           and (max_fix_lines is None or fix_lines(i.patch) <= max_fix_lines)]
    if not ids:
        raise ValueError(f"none of {len(instances)} instances has an id matching {matching!r} "
                         f"and a gold patch of at most {max_fix_lines} changed lines")
    return ids


def draw_tasks(instance_ids: list[str], n: int | None, seed: int) -> list[str]:
    """A seeded, order-independent draw of n instance ids (all of them when n is None)."""
    ids = sorted(instance_ids)
    if n is None or n >= len(ids):
        return ids
    return sorted(random.Random(seed).sample(ids, n))


# graders of families whose tasks are all Python: SWE-bench (and SWE-rebench V1 rows, graded
# as SWE-bench), SWE-Gym, SWE-smith, R2E-Gym, the local and generated suites
PYTHON_GRADERS = ("swebench", "swesmith", "r2e")


def instance_language(inst: Instance) -> str:
    """A task's programming language: the row's own column where its family has one
    (SWE-rebench V2 `language`, SWE-bench Pro `repo_language`, Multi-SWE-bench `lang`, kept
    as `language`), python for the Python-only families, else "unknown"."""
    named = str(inst.extra.get("language") or "").strip().lower()
    return named or ("python" if inst.grader in PYTHON_GRADERS else "unknown")


def created_time(text: str) -> datetime | None:
    """A row's created_at as an aware UTC time: ISO 8601 (a trailing Z, a space for the T, no
    zone read as UTC) or milliseconds since the epoch; None for an empty or "None" value."""
    text = str(text).strip()
    if not text or text == "None":
        return None
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    try:
        when = datetime.fromisoformat(text)  # 3.11 reads a trailing Z
    except ValueError:
        raise DatasetError(f"created_at {text!r} is neither an ISO 8601 date nor epoch milliseconds") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def decontaminated(instances: list[Instance], date: str, dataset: str) -> list[Instance]:
    """The instances created after `date` (ISO 8601, UTC unless it names a zone): a
    decontaminated set for a model whose training data ends at `date`. Every row must carry
    its creation date: a dataset whose rows have none is refused, naming the column."""
    try:
        cut = created_time(date)
    except DatasetError:
        raise DatasetError(f"--created-after {date!r} is not an ISO 8601 date (e.g. 2025-06-01)") from None
    if cut is None:
        raise DatasetError("--created-after needs a date (e.g. 2025-06-01)")
    created = [created_time(i.created_at) for i in instances]  # each row's date read once
    undated = [i.instance_id for i, when in zip(instances, created, strict=True) if when is None]
    if undated:
        raise DatasetError(f"--created-after: {len(undated)} of {len(instances)} rows of {dataset} have no "
                           f"'created_at' column value (e.g. {undated[0]}); SWE-bench Pro and "
                           "Multi-SWE-bench rows carry no creation date")
    newer = [i for i, when in zip(instances, created, strict=True) if when > cut]
    if not newer:
        latest = max(created)
        raise DatasetError(f"--created-after {date}: none of the {len(instances)} rows of {dataset} is newer "
                           f"(the latest was created {latest.isoformat()})")
    return newer
