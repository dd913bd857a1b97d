"""The project's own SWE-bench-style suite, assembled from `sandboxes/local/`.

Layout (the files are the source of truth, nothing generated is committed):

    sandboxes/local/repos/<name>/          the repository at its base commit
    sandboxes/local/instances/<id>/        problem.md, gold.patch, test.patch, instance.json

A repository snapshot becomes a one-commit git history with a fixed author and
date, so its commit id (the instance's base_commit) is the same on every machine
and changes exactly when the snapshot does. Image tags are derived from it, and
`build_local_suite` builds the images (with swe_aem.sandbox's image builder).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from swe_aem.data.instances import DatasetError, Instance, instance_from_row
from swe_aem.sandbox.image_store import (
    DOCKERFILE,
    SANDBOXES,
    Steps,
    base_tag,
    build_repo_image,
    image_exists,
)

if TYPE_CHECKING:
    import docker

LOCAL = SANDBOXES / "local"
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "swe-aem", "GIT_AUTHOR_EMAIL": "swe-aem@localhost",
    "GIT_COMMITTER_NAME": "swe-aem", "GIT_COMMITTER_EMAIL": "swe-aem@localhost",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00+0000", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00+0000",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}


def repo_dir(repo: str) -> Path:
    """"swe-aem/pyledger" -> sandboxes/local/repos/pyledger."""
    return LOCAL / "repos" / repo.split("/")[-1]


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV}
    done = subprocess.run(["git", "-c", "init.defaultBranch=main", "-c", "core.autocrlf=false",
                           "-c", "commit.gpgsign=false", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {done.stderr.strip()}")
    return done.stdout.strip()


def materialize_repo(repo: str, dest: Path) -> str:
    """Write the repo snapshot to `dest` as a one-commit git repository; returns the commit id."""
    source = repo_dir(repo)
    if not source.is_dir():
        raise DatasetError(f"local repo {repo!r}: no snapshot at {source}")
    shutil.copytree(source, dest, ignore=_IGNORE, copy_function=shutil.copyfile)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", f"{repo} at its base commit")
    return _git(dest, "rev-parse", "HEAD")


@cache
def base_commit(repo: str) -> str:
    with tempfile.TemporaryDirectory(prefix="swe-aem-commit-") as tmp:
        return materialize_repo(repo, Path(tmp) / "repo")


def image_name(instance_id: str, repo: str) -> str:
    """Content-hash tag: changes with the base image recipe, the Dockerfile or the repo."""
    digest = hashlib.sha256(f"{base_tag()}\n{DOCKERFILE}\n{base_commit(repo)}".encode()).hexdigest()
    return f"swe-aem/sweb.eval.x86_64.{instance_id.lower()}:{digest[:12]}"


def test_files(test_patch: str) -> tuple[list[str], list[str]]:
    """(files the test patch modifies, files it creates)."""
    modified, created = [], []
    for old, new in re.findall(r"^--- (\S+)\n\+\+\+ (\S+)$", test_patch, re.MULTILINE):
        if new == "/dev/null":
            continue
        (created if old == "/dev/null" else modified).append(new.removeprefix("b/"))
    return modified, created


def eval_script(commit: str, test_patch: str) -> str:
    """An eval script in SWE-bench's shape: reset test files, apply test_patch, run between markers."""
    modified, created = test_files(test_patch)
    files = " ".join(modified + created)
    reset = f"git checkout {commit} -- {' '.join(modified)}" if modified else ":"
    lines = [
        "#!/bin/bash",
        "set -uxo pipefail",
        "cd /testbed",
        "git -c core.fileMode=false status --short",
        reset,
        f"rm -f {' '.join(created)}" if created else ":",
        "git apply --verbose - <<'EOF_SWE_AEM_TEST_PATCH'",
        test_patch.rstrip("\n"),
        "EOF_SWE_AEM_TEST_PATCH",
        ": '>>>>> Start Test Output'",
        f"python3 -m pytest -rA -p no:cacheprovider {files}",
        ": '>>>>> End Test Output'",
        reset,
    ]
    return "\n".join(lines) + "\n"


@cache
def _load() -> tuple[Instance, ...]:
    folder = LOCAL / "instances"
    if not folder.is_dir():
        raise DatasetError(f"the local suite is missing: {folder} does not exist")
    instances = []
    for path in sorted(p for p in folder.iterdir() if p.is_dir()):
        where = f"local instance {path.name}"
        try:
            meta = json.loads((path / "instance.json").read_text())
            test_patch = (path / "test.patch").read_text()
            row = {
                **meta,
                "instance_id": path.name,
                "problem_statement": (path / "problem.md").read_text(),
                "patch": (path / "gold.patch").read_text(),
                "test_patch": test_patch,
                "base_commit": base_commit(meta["repo"]),
                "image": image_name(path.name, meta["repo"]),
                "eval_script": eval_script(base_commit(meta["repo"]), test_patch),
                "log_parser": "parse_log_pytest",
                "eval_type": "pass_and_fail",
            }
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{where}: {type(exc).__name__}: {exc}") from exc
        instances.append(instance_from_row(row, where))
    return tuple(instances)


def load_local_suite() -> list[Instance]:
    """Every instance of the local suite, sorted by id, with its image name."""
    return list(_load())


def build_local_suite(client: docker.DockerClient, force: bool = False) -> list[str]:
    """Build every local instance's image (one build per repo snapshot, one tag per instance);
    returns the tags built (none when every content-hash tag exists)."""
    instances = load_local_suite()
    by_repo: dict[str, list[Instance]] = {}
    for inst in instances:
        by_repo.setdefault(inst.repo, []).append(inst)
    built: list[str] = []
    with Steps(f"local suite: {len(instances)} instance images from {len(by_repo)} repos") as steps:
        for n, (repo, group) in enumerate(sorted(by_repo.items()), 1):
            tags = [inst.image for inst in group]
            if not force and all(image_exists(client, t) for t in tags):
                steps.update(f"repo {n}/{len(by_repo)} {repo}: up to date")
                continue
            steps.update(f"repo {n}/{len(by_repo)} {repo}: building {len(tags)} image(s)")
            with tempfile.TemporaryDirectory(prefix="swe-aem-testbed-") as tmp:
                testbed = Path(tmp) / "testbed"
                commit = materialize_repo(repo, testbed)
                build_repo_image(client, repo, testbed, commit, tags)
            built += tags
        steps.update(f"local suite: done ({len(built)} image(s) built)")
    return built
