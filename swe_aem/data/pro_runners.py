"""Which procedure runs a SWE-bench Pro row's tests (FAMILIES-2026.md 2c).

Pro's rows name no test command or parser: its harness (scaleapi/SWE-bench_Pro-os) keeps a
run script and a parser per instance in its repository (`run_scripts/<instance_id>/`). A row
loads with one of two procedures, recorded as its `log_parser`:

- a runner of the project's own (reward/swebench_pro.py runs and reads it), chosen by the
  row's `repo_language` and, for JavaScript / TypeScript, its repository (`RUNNERS`);
- `harness`: where the user has a checkout of the harness (`--harness-dir`, which sets
  HARNESS_DIR_ENV before the rows load), that checkout's run_script.sh and parser.py for the
  instance, in the harness's layout (`harness_files`).

A row neither covers is refused at load, naming its language and repository. Either way the
row's eval script is EVAL_SCRIPT: the grader writes the entry script it runs after applying
the patch (the harness's entryscript.sh, reward/swebench_pro.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from swe_aem.data.families import FormatError

HARNESS_DIR_ENV = "SWE_AEM_PRO_HARNESS_DIR"
HARNESS = "harness"
# the project's own runners: by language, and for js / ts by repository (lower-cased), since
# a Pro JavaScript repository's test runner differs per repository (mocha, jest, its own)
BY_LANGUAGE = {"python": "pytest", "go": "go_test"}
BY_REPO = {"nodebb/nodebb": "mocha_json", "element-hq/element-web": "jest_json"}
RUNNERS = (*BY_LANGUAGE.values(), *BY_REPO.values())
DESCRIBED = ("python: pytest -v; go: go test -v -run; js/ts of NodeBB/NodeBB: mocha --reporter=json; "
             "js/ts of element-hq/element-web: jest --json")
WORKSPACE = "/workspace"  # where the harness puts its files in the container
ENTRY_SCRIPT = f"{WORKSPACE}/swe_aem_entry.sh"
EVAL_SCRIPT = f"#!/bin/bash\nbash {ENTRY_SCRIPT}\n"


def harness_dir() -> Path | None:
    """The user's checkout of the harness, where --harness-dir (HARNESS_DIR_ENV) names one."""
    value = os.environ.get(HARNESS_DIR_ENV, "").strip()
    return Path(value) if value else None


def harness_files(root: Path, instance_id: str) -> dict[str, Path]:
    """The harness's files for an instance, in its layout (swe_bench_pro_eval.py: the run script
    and parser it copies into /workspace; the two Dockerfiles whose ENV lines it exports)."""
    return {"run_script": root / "run_scripts" / instance_id / "run_script.sh",
            "parser": root / "run_scripts" / instance_id / "parser.py",
            "base_dockerfile": root / "dockerfiles" / "base_dockerfile" / instance_id / "Dockerfile",
            "instance_dockerfile": root / "dockerfiles" / "instance_dockerfile" / instance_id / "Dockerfile"}


def use_harness_dir(root: str | Path) -> Path:
    """Make `root`, a checkout of the harness, the procedure of the Pro rows loaded from now on in
    this process and the processes it starts (HARNESS_DIR_ENV); not a checkout: FormatError."""
    root = Path(root).expanduser().resolve()
    if not (root / "run_scripts").is_dir():
        raise FormatError(f"--harness-dir {root} is not a checkout of scaleapi/SWE-bench_Pro-os: it has no "
                          "run_scripts/ folder (run_scripts/<instance_id>/run_script.sh and parser.py)")
    os.environ[HARNESS_DIR_ENV] = str(root)
    return root


def procedure(row: dict[str, Any]) -> dict[str, Any]:
    """The fields a Pro row (as families.swe_bench_pro adapts it) gains: its runner as
    `log_parser`, the eval script, and the harness checkout where one is used."""
    iid, language = str(row.get("instance_id", "")), str(row.get("language") or "")
    root = harness_dir()
    if root is not None:
        files = harness_files(root, iid)
        missing = [files[k].name for k in ("run_script", "parser") if not files[k].is_file()]
        if missing:
            raise FormatError(f"--harness-dir {root}: no run_scripts/{iid}/{' or '.join(missing)} there "
                              "(the harness's run script and parser for this instance)")
        return {"log_parser": HARNESS, "eval_script": EVAL_SCRIPT, "harness_dir": str(root)}
    repo = str(row.get("repo") or "")
    runner = BY_LANGUAGE.get(language) or (BY_REPO.get(repo.lower()) if language in ("js", "ts") else None)
    if runner is None:
        raise FormatError(
            f"column 'repo_language' {language!r} of repo {repo!r}: no test runner of the project's runs it "
            f"(supported: {DESCRIBED}); a checkout of the harness runs it with --harness-dir")
    return {"log_parser": runner, "eval_script": EVAL_SCRIPT}
