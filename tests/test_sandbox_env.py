"""The instance's environment inside an image with the official SWE-bench layout.

The image is built here FROM a local suite image (sandboxes/official-layout/): repo at
/testbed, a conda-style env /opt/miniconda3/envs/testbed with its own python, not on
PATH, entered with a stand-in for conda's activate. Every command of the sandbox must
run inside that environment from the first one on, and fail without the activation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from swe_aem.sandbox import SandboxError, SandboxPool
from swe_aem.sandbox.engine import LABEL_RUN_ID

pytestmark = [pytest.mark.slow, pytest.mark.docker]

LAYOUT = Path(__file__).resolve().parents[1] / "sandboxes" / "official-layout"
ACTIVATE = "source /opt/miniconda3/bin/activate && conda activate testbed"


@pytest.fixture(scope="module")
def official_layout(docker_client, local_instance):
    """The textkit instance in an official-layout image (content-hash tag: rebuilt only on change)."""
    base = docker_client.images.get(local_instance.image).id
    dockerfile = (LAYOUT / "Dockerfile.in").read_text().format(base=local_instance.image).encode()
    activate = (LAYOUT / "activate").read_bytes()
    tag = f"swe-aem/test-official-layout:{hashlib.sha256(base.encode() + dockerfile + activate).hexdigest()[:12]}"
    if not docker_client.images.list(name=tag):
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            for name, data in (("Dockerfile", dockerfile), ("activate", activate)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        context.seek(0)
        docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                                   network_mode="none", pull=False)
    return dataclasses.replace(local_instance, image=tag, env_activate=ACTIVATE)


def test_every_command_runs_in_the_instance_environment(official_layout, sandbox_pool):
    with sandbox_pool.sandbox(official_layout) as sb:
        first = sb.exec('cd / && python -c "import textkit, sys; print(textkit.__file__, sys.prefix)"')
        assert first.exit_code == 0, first.output
        assert first.output.split() == ["/testbed/textkit/__init__.py", "/opt/miniconda3/envs/testbed"]
        tests = sb.exec("python -m pytest -q -p no:cacheprovider tests", timeout=120)
        assert tests.exit_code == 0 and " passed" in tests.output, tests.output[-800:]
        shown = sb.exec('echo "$CONDA_DEFAULT_ENV $CONDA_PREFIX"; command -v python')
        assert shown.output.split() == ["testbed", "/opt/miniconda3/envs/testbed",
                                        "/opt/miniconda3/envs/testbed/bin/python"]
        # a caller's own variables still reach the command, on top of the environment
        assert sb.exec('echo "$EXTRA:$CONDA_DEFAULT_ENV"', env={"EXTRA": "x"}).output == "x:testbed\n"
        # the file tools and the diff run in the same sandbox, unaffected
        sb.write_file("textkit/new.py", "VALUE = 1\n")
        assert sb.exec('python -c "import textkit.new as n; print(n.VALUE)"').output == "1\n"
        assert "+VALUE = 1" in sb.diff()


def test_without_the_activation_the_environment_is_missing(official_layout, sandbox_pool):
    bare = dataclasses.replace(official_layout, env_activate="")
    with sandbox_pool.sandbox(bare) as sb:
        result = sb.exec('python -c "import textkit"')
        assert result.exit_code == 127 and "python: command not found" in result.output
        assert sb.exec("cd / && python3 -c 'import textkit'").exit_code == 1  # not importable outside the env
        assert sb.exec("python -m pytest -q tests").exit_code == 127


def test_a_failing_snippet_is_a_clear_error_and_leaves_nothing(official_layout, docker_client):
    wrong = dataclasses.replace(official_layout, env_activate="source /opt/miniconda3/bin/activate && "
                                                             "conda activate no-such-env")
    pool = SandboxPool(max_concurrency=1, run_id="pytest-env-fail")
    with pytest.raises(SandboxError) as err, pool.sandbox(wrong):
        pass
    pool.close()
    message = str(err.value)
    assert official_layout.image in message and "conda activate no-such-env" in message
    assert "Could not find conda environment: no-such-env" in message
    assert not docker_client.containers.list(all=True, filters={"label": f"{LABEL_RUN_ID}=pytest-env-fail"})
