"""The instance's environment, read from the image: the official SWE-bench layout and none.

The image is built here FROM a local suite image (sandboxes/official-layout/): repo at
/testbed, a conda-style env /opt/miniconda3/envs/testbed with its own python, not on
PATH, entered with a stand-in for conda's activate from root's ~/.bashrc, as the official
images do. No snippet is given: every command of an agent's sandbox must run inside that
environment from the first one on, read from the image's shell start-up; a grader's
sandbox (`shell_env=False`) and an image whose start-up activates nothing get none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from swe_aem.sandbox import Sandbox, SandboxError, SandboxPool
from swe_aem.sandbox.daemon import LABEL_RUN_ID

pytestmark = [pytest.mark.slow, pytest.mark.docker]

LAYOUT = Path(__file__).resolve().parents[2] / "sandboxes" / "official-layout"


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
    return dataclasses.replace(local_instance, image=tag, env_activate="")


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


def test_a_graders_sandbox_has_the_bare_image_environment(official_layout, sandbox_pool, docker_client):
    with sandbox_pool.sandbox(official_layout, shell_env=False) as sb:
        assert sb.environment == {}
        result = sb.exec('python -c "import textkit"')
        assert result.exit_code == 127 and "python: command not found" in result.output
        assert sb.exec("cd / && python3 -c 'import textkit'").exit_code == 1  # not importable outside the env
        assert sb.exec("python -m pytest -q tests").exit_code == 127
        # what an official eval script does first puts it in the env
        entered = sb.exec("source /opt/miniconda3/bin/activate && conda activate testbed && "
                          'python -c "import textkit, sys; print(sys.prefix)"')
        assert entered.output.split() == ["/opt/miniconda3/envs/testbed"], entered.output
    with pytest.raises(ValueError, match="only with shell_env=True"):
        Sandbox.start(docker_client, official_layout.image, env_activate="true", shell_env=False)


def test_an_image_whose_start_up_activates_nothing_gets_a_plain_shell(local_instance, docker_client,
                                                                       sandbox_pool):
    image_env = dict(e.split("=", 1) for e in docker_client.images.get(local_instance.image).attrs["Config"]["Env"])
    with sandbox_pool.sandbox(local_instance) as sb:
        assert sb.environment["PATH"] == image_env["PATH"]
        assert not [name for name in sb.environment if name.startswith("CONDA")]
        shown = sb.exec("command -v python3; pwd; whoami")
        assert shown.output.split() == ["/usr/bin/python3", "/testbed", "swe"]


def test_a_start_up_that_ends_the_shell_is_a_clear_error(official_layout, docker_client):
    tag = f"{official_layout.image}-exits"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        data = f"FROM {official_layout.image}\nRUN echo 'echo broken start-up; exit 3' >> /root/.bashrc\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True,
                               network_mode="none", pull=False)
    pool = SandboxPool(max_concurrency=1, run_id="pytest-env-exit")
    try:
        with pytest.raises(SandboxError) as err, pool.sandbox(dataclasses.replace(official_layout, image=tag)):
            pass
        message = str(err.value)
        assert tag in message and "shell start-up" in message and "~/.bashrc" in message
        assert "exited with code 3" in message and "broken start-up" in message
        # a grader's sandbox does not run the start-up: the same image still grades
        with pool.sandbox(dataclasses.replace(official_layout, image=tag), shell_env=False) as sb:
            assert sb.exec("echo ok").output == "ok\n"
    finally:
        pool.close()
        docker_client.images.remove(tag, force=True)
    assert not docker_client.containers.list(all=True, filters={"label": f"{LABEL_RUN_ID}=pytest-env-exit"})


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
