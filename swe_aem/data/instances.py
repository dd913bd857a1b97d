"""SWE-bench-schema instances: one typed record, loaded from the local suite, a file or the hub.

Rows of every supported family (SWE-bench 5.x, SWE-Gym, SWE-smith, R2E-Gym: see
families.py) become the same record, which names its grader. The hub stores
FAIL_TO_PASS / PASS_TO_PASS as JSON strings; we accept both that and real lists, and
turn every malformed row, and every row whose tests could not be run, into an error
that names the row and the reason, because a silently skipped or silently
unresolvable instance skews every resolve rate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from swe_aem.data.families import FORMATS, GRADERS, FormatError, adapt, detect_format
from swe_aem.jsonl import read_jsonl

REQUIRED = ("instance_id", "repo", "base_commit", "problem_statement")
LIST_FIELDS = ("FAIL_TO_PASS", "PASS_TO_PASS")


class DatasetError(ValueError):
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
    env_activate: str = ""  # shell snippet that enters the image's environment
    setup_script: str = ""  # runs once in a fresh container, before the agent or the grader
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_swebench(self) -> dict[str, Any]:
        """The dict swebench's make_test_spec / get_eval_report expect (lists, not tuples)."""
        row = {k: v for k, v in asdict(self).items() if k != "extra"}
        row.update({k: list(row[k]) for k in LIST_FIELDS})
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
        if name in LIST_FIELDS:
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


def _read_rows(path: Path) -> Iterable[tuple[str, Any]]:
    if not path.exists():
        raise DatasetError(f"dataset file {path} does not exist")
    if path.suffix == ".jsonl":
        yield from read_jsonl(path, error=DatasetError)
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON list of instances")
        yield from ((f"{path}[{i}]", row) for i, row in enumerate(data))
    elif path.suffix == ".parquet":
        import datasets

        table = datasets.load_dataset("parquet", data_files=str(path), split="train")
        yield from ((f"{path} row {i}", row) for i, row in enumerate(table))
    else:
        raise DatasetError(f"{path}: unknown dataset format (use .jsonl, .json or .parquet)")


def _hub_rows(name: str, split: str) -> Iterable[tuple[str, Any]]:
    import datasets

    try:
        table = datasets.load_dataset(name, split=split)
    except Exception as exc:  # the hub raises many kinds; all mean "not loadable here"
        raise DatasetError(
            f"cannot load {name!r} (split {split!r}) from the Hugging Face hub: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            "The hub may be unreachable (offline machine / HF_HUB_OFFLINE=1); "
            "pass a local .jsonl/.json/.parquet file in the same schema instead."
        ) from exc
    return ((f"{name}[{split}] row {i}", row) for i, row in enumerate(table))


def native_instance(raw: Any, where: str, dataset_format: str) -> Instance:
    """A row of family `dataset_format` as an Instance; errors name the row, its id and the reason."""
    try:
        row = adapt(dataset_format, raw)
    except FormatError as exc:
        iid = raw.get("instance_id") if isinstance(raw, dict) else None
        raise DatasetError(f"{where} (instance_id={iid!r}, format {dataset_format}): {exc}") from exc
    inst = instance_from_row(row, where)
    check_gradable(inst, where)
    return inst


def check_gradable(inst: Instance, where: str) -> None:
    """Refuse, at load time, an instance whose tests could not be run or whose verdict could not be read."""
    from swebench.harness.constants import END_TEST_OUTPUT, START_TEST_OUTPUT, EvalType
    from swebench.harness.log_parsers import PARSER_REGISTRY
    from swebench.harness.utils import make_test_spec

    row = f"{where} (instance_id={inst.instance_id!r})"
    if inst.grader not in GRADERS:
        raise DatasetError(f"{row}: unknown grader {inst.grader!r}; one of {', '.join(GRADERS)}")
    if not inst.eval_script.strip():
        raise DatasetError(f"{row}: the eval script is empty: nothing would run the tests")
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


def load_instances(dataset: str, split: str = "test", instance_ids: Iterable[str] | None = None,
                   dataset_format: str | None = None) -> list[Instance]:
    """Load `dataset`: "local" (the project's suite), "generated" (its generated suite, split
    "train" or "test"), a .jsonl/.json/.parquet path, or a hub name.

    `dataset_format` (one of FORMATS) picks the family's adapter; None: from the dataset's
    name, else from the first row's columns. The local suite is in the SWE-bench schema.
    """
    if dataset_format is not None and dataset_format not in FORMATS:
        raise DatasetError(f"unknown dataset format {dataset_format!r}; choose from {', '.join(FORMATS)}")
    if dataset == "local":
        from swe_aem.data.local_suite import load_local_suite

        instances = load_local_suite()
        for inst in instances:
            check_gradable(inst, f"local instance {inst.instance_id}")
    elif dataset == "generated":  # the committed generated suite (swe_aem/data/generate.py)
        from swe_aem.data.generate import load_generated

        instances = load_generated(split)
        for inst in instances:
            check_gradable(inst, f"generated instance {inst.instance_id}")
    else:
        path = Path(dataset)
        is_file = path.suffix in (".jsonl", ".json", ".parquet") or path.exists()
        rows = list(_read_rows(path) if is_file else _hub_rows(dataset, split))
        first = rows[0][1] if rows and isinstance(rows[0][1], dict) else {}
        fmt = dataset_format or detect_format(dataset, first)
        instances = [native_instance(row, where, fmt) for where, row in rows]
    seen: set[str] = set()
    for inst in instances:
        if inst.instance_id in seen:
            raise DatasetError(f"{dataset}: instance_id {inst.instance_id!r} appears twice")
        seen.add(inst.instance_id)
    if instance_ids is not None:
        wanted = list(instance_ids)
        missing = sorted(set(wanted) - seen)
        if missing:
            raise DatasetError(f"{dataset}: no instance(s) {', '.join(missing)}")
        instances = [inst for inst in instances if inst.instance_id in set(wanted)]
    return instances
