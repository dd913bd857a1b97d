"""Shared fixtures for tests on the real Docker engine (nothing about containers is mocked).

`docker_client` fails (not skips) when no daemon answers: `make test` brings one up
with scripts/ensure_docker.sh, so a missing engine is a real problem to see.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import settings

# The tests mirror the package (tests/agent/ for swe_aem/agent/, ...). Test modules that share
# fixtures and builders import one another by module name (test_train_loop's replay fixture,
# test_train_deepspeed's tiny model): every test folder on the path, whichever file runs alone.
sys.path[:0] = [str(d) for d in sorted(Path(__file__).parent.iterdir())
                if d.is_dir() and any(d.glob("test_*.py")) and str(d) not in sys.path]

# CI draws the same examples every run (derandomize): a red CI is never a lucky draw.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


# What an in-process Trainer sets for its one-rank process group (train/model.py). Left in
# the environment, a later `swe-aem train` subprocess would take itself for a launched rank
# and skip the checks made before a launch.
_RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_rendezvous_left_behind():
    before = {k: os.environ.get(k) for k in _RENDEZVOUS}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def docker_client():
    from swe_aem.sandbox import DockerUnavailableError, connect

    try:
        client = connect()
    except DockerUnavailableError as exc:
        pytest.fail(f"{exc}\n(run `make engine` or `bash scripts/ensure_docker.sh`)")
    yield client
    client.close()


@pytest.fixture(scope="session")
def local_instances(docker_client):
    """The local suite, with its images built (a no-op when the content-hash tags exist)."""
    from swe_aem.data import load_instances
    from swe_aem.data.local_suite import build_local_suite
    from swe_aem.sandbox.image_store import build_base

    build_base(docker_client)
    build_local_suite(docker_client)
    return load_instances("local")


@pytest.fixture(scope="session")
def local_instance(local_instances):
    """One small instance for API tests that need any repo at /testbed."""
    return next(i for i in local_instances if i.instance_id == "swe-aem__textkit-1")


@pytest.fixture(scope="session")
def sandbox_pool(docker_client):
    """A pool of up to 4 sandboxes on the local daemon; removes what it started at the end."""
    from swe_aem.sandbox import SandboxPool

    pool = SandboxPool(max_concurrency=4, run_id=f"pytest-{uuid.uuid4().hex[:8]}")
    yield pool
    pool.close()


@pytest.fixture
def make_patch(tmp_path):
    """make_patch(instance, edits, gold=True) -> a patch: gold (optionally) plus `edits`.

    `edits` maps a repo path to a function old_text -> new_text ("" for a new file).
    Built with git on the host from the same snapshot the image holds.
    """
    from swe_aem.data.local_suite import materialize_repo

    def make(instance, edits, gold=True):
        work = tmp_path / uuid.uuid4().hex[:8]
        materialize_repo(instance.repo, work)
        if gold:
            subprocess.run(["git", "apply", "-"], cwd=work, input=instance.patch, text=True, check=True)
        for rel, change in edits.items():
            path = work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(change(path.read_text() if path.exists() else ""))
        subprocess.run(["git", "add", "-A"], cwd=work, check=True)
        return subprocess.run(["git", "diff", "--cached"], cwd=work, check=True,
                              capture_output=True, text=True).stdout

    return make


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    """A small random Llama with the tiny preset's real tokenizer (fast to train on CPU)."""
    from swe_aem.policy.models import small_random_model

    return small_random_model(tmp_path_factory.mktemp("small-model"))


@pytest.fixture(scope="session")
def tokenizer():
    """The tiny preset's real tokenizer (`make test` prepares the model)."""
    from transformers import AutoTokenizer

    from swe_aem.policy.models import load_preset

    path = load_preset("tiny").default_path
    if not (path / "tokenizer.json").is_file():
        pytest.fail("tiny model not prepared: run `swe-aem model prepare tiny` (make model)")
    return AutoTokenizer.from_pretrained(path)
