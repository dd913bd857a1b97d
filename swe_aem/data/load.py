"""Where instances come from: the local suite, the generated suite, a local file or the hub.

`load_instances` reads a dataset into instances.py's records; every row of a family other
than the SWE-bench schema goes through its adapter (families.py), and every instance is
checked gradable at load time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from swe_aem.data.families import FORMATS, detect_format
from swe_aem.data.instances import DatasetError, Instance, check_gradable, native_instance
from swe_aem.jsonl import read_jsonl


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
    elif dataset == "generated":  # the committed generated suite (swe_aem/data/generator.py)
        from swe_aem.data.generator import load_generated

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
