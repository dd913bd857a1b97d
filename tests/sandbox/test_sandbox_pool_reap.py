"""Pools that share a run id (concurrent graders) remove only their own containers;
`reap(run_id)` remains the crash cleanup; a removal race (409/404) is not an error."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from swe_aem.sandbox import Sandbox, SandboxPool, reap
from swe_aem.sandbox.daemon import LABEL_RUN_ID, remove_container

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def _run_containers(client, run_id):
    return client.containers.list(all=True, ignore_removed=True, filters={"label": f"{LABEL_RUN_ID}={run_id}"})


def test_closing_one_pool_leaves_another_pools_sandbox_alone(docker_client, local_instance):
    run_id = "pytest-shared-run"
    with SandboxPool(run_id=run_id) as mine, mine.sandbox(local_instance) as sb:
        other = SandboxPool(run_id=run_id)
        with other.sandbox(local_instance) as theirs:
            assert theirs.exec("echo b").output == "b\n"
        assert other.close() == []  # its one container was already removed on exit
        assert sb.exec("echo still here").output == "still here\n"
        assert [c.id for c in _run_containers(docker_client, run_id)] == [sb.container.id]
    assert not _run_containers(docker_client, run_id)


def test_pool_close_removes_what_it_created_and_left(docker_client, local_instance):
    pool = SandboxPool(run_id="pytest-left-behind")
    cm = pool.sandbox(local_instance)
    sb = cm.__enter__()  # a caller that never exits its sandbox block
    bystander = Sandbox.start(docker_client, local_instance.image, run_id="pytest-left-behind")
    try:
        assert pool.close() == [sb.container.name]
        assert [c.id for c in _run_containers(docker_client, "pytest-left-behind")] == [bystander.container.id]
    finally:
        bystander.close()


def test_nine_pools_with_one_run_id_at_once(docker_client, local_instance):
    """The measured failure: concurrent graders with one run id killed each other's containers."""
    run_id = "pytest-nine"
    barrier = threading.Barrier(9)

    def grader(n: int) -> str:
        with SandboxPool(max_concurrency=1, run_id=run_id) as pool, pool.sandbox(local_instance) as sb:
            barrier.wait(timeout=120)  # every container exists before any pool closes
            return sb.exec(f"sleep 0.{n}; echo {n}").output.strip()

    with ThreadPoolExecutor(9) as ex:
        outputs = list(ex.map(grader, range(9)))
    assert outputs == [str(n) for n in range(9)]
    assert not _run_containers(docker_client, run_id)


def test_removal_races_are_not_errors(docker_client, local_instance):
    sandboxes = [Sandbox.start(docker_client, local_instance.image, run_id="pytest-race") for _ in range(3)]
    with ThreadPoolExecutor(6) as ex:  # the owner, the reaper and a second remove, all at once
        jobs = [ex.submit(sb.close) for sb in sandboxes] + [ex.submit(reap, "pytest-race", client=docker_client)]
        jobs += [ex.submit(remove_container, sb.container) for sb in sandboxes]
        for job in jobs:
            job.result()  # none raises
    assert not _run_containers(docker_client, "pytest-race")
    assert remove_container(sandboxes[0].container) is False  # gone: 404, quietly
