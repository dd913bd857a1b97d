"""The sandbox API on the real Docker engine: exec, limits, network, timeouts, output, files,
diff, labels, the reaper, the pool and dead daemons."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import docker
import pytest
import requests
from docker.errors import APIError, NotFound

from swe_aem.sandbox import (
    DockerUnavailableError,
    Sandbox,
    SandboxConfig,
    SandboxError,
    SandboxPool,
    classify_breakage,
    connect,
    reap,
)
from swe_aem.sandbox.daemon import LABEL_INSTANCE_ID, LABEL_RUN_ID, is_transient, retry_transient

pytestmark = [pytest.mark.slow, pytest.mark.docker]


@pytest.fixture
def sandbox(docker_client, local_instance):
    with Sandbox.start(docker_client, local_instance.image, run_id="pytest-sandbox",
                       instance_id=local_instance.instance_id,
                       base_commit=local_instance.base_commit) as sb:
        yield sb


def _small(docker_client, instance, **limits) -> Sandbox:
    return Sandbox.start(docker_client, instance.image, config=SandboxConfig(**limits),
                         run_id="pytest-limits", instance_id=instance.instance_id)


def test_exec_basics(sandbox):
    result = sandbox.exec("echo out; echo err >&2; exit 3")
    assert result.exit_code == 3 and not result.timed_out and not result.truncated
    assert "out" in result.output and "err" in result.output
    assert 0 < result.duration_s < 10
    assert sandbox.exec("pwd").output.strip() == "/testbed"
    assert sandbox.exec("pwd", workdir="/tmp").output.strip() == "/tmp"
    assert sandbox.exec('echo "$GREETING"', env={"GREETING": "héllo wörld"}).output == "héllo wörld\n"


def test_runs_as_non_root_with_labels(sandbox, local_instance):
    assert sandbox.exec("whoami").output.strip() == "swe"
    assert sandbox.uid == 1000
    labels = sandbox.container.labels
    assert labels[LABEL_RUN_ID] == "pytest-sandbox"
    assert labels[LABEL_INSTANCE_ID] == local_instance.instance_id


def test_network_is_off(sandbox):
    assert sandbox.exec("ls /sys/class/net").output.split() == ["lo"]
    probe = sandbox.exec(
        "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)\"", timeout=20)
    assert probe.exit_code != 0 and "unreachable" in probe.output.lower()


def test_limits_are_set_and_enforced(docker_client, local_instance):
    with _small(docker_client, local_instance, memory="128m", cpus=0.5, pids_limit=64) as sb:
        host = sb.container.attrs["HostConfig"]
        assert host["Memory"] == 128 << 20 and host["NanoCpus"] == 500_000_000
        assert host["PidsLimit"] == 64 and host["NetworkMode"] == "none"
        hog = sb.exec("python3 -c \"b = bytearray(400 << 20); print('allocated')\"", timeout=60)
        assert hog.exit_code != 0 and "allocated" not in hog.output  # killed or MemoryError
        forks = sb.exec("for i in $(seq 100); do sleep 3 & done; wait", timeout=60)
        assert "fork" in forks.output.lower() or "resource temporarily unavailable" in forks.output.lower()


@pytest.mark.parametrize("use_runner", [True, False], ids=["runner", "exec-per-command"])
def test_timeout_kills_the_whole_group(docker_client, local_instance, use_runner):
    sandbox = _small(docker_client, local_instance, use_runner=use_runner)
    assert (sandbox._runner is not None) == use_runner
    start = time.monotonic()
    result = sandbox.exec("sleep 300 & (sleep 301; echo child) & sleep 302; echo never", timeout=2)
    assert result.timed_out and result.exit_code in (124, 137)
    assert "never" not in result.output
    assert time.monotonic() - start < 15
    left = sandbox.exec("ps -eo args").output
    assert "sleep 30" not in left, left
    sandbox.close()


def test_timeout_kills_a_command_ignoring_sigterm(sandbox):
    start = time.monotonic()
    result = sandbox.exec("trap '' TERM; while true; do sleep 0.2; done", timeout=1)
    assert result.timed_out and result.exit_code == 137
    assert time.monotonic() - start < 20
    assert sandbox.exec("echo alive").output == "alive\n"  # the sandbox is still usable


@pytest.mark.parametrize("use_runner", [True, False], ids=["runner", "exec-per-command"])
def test_output_is_capped_with_a_note(docker_client, local_instance, use_runner):
    with _small(docker_client, local_instance, output_limit_bytes=1000, use_runner=use_runner) as sb:
        result = sb.exec("echo START; head -c 200000 /dev/zero | tr '\\0' x; echo; echo END")
        assert result.truncated and result.exit_code == 0
        assert result.output.startswith("START") and result.output.rstrip().endswith("END")
        assert "output truncated" in result.output and "bytes omitted" in result.output
        assert len(result.output.encode()) < 1200
        big = sb.exec("head -c 5000 /dev/zero", output_limit_bytes=10_000)
        assert not big.truncated and len(big.output) == 5000


def test_undecodable_bytes_never_crash(sandbox):
    result = sandbox.exec("printf 'ok \\377\\376\\200 done'")
    assert result.output.startswith("ok ") and result.output.endswith(" done")
    assert "\ufffd" in result.output
    sandbox.exec("printf '\\377\\376abc' > /tmp/bin.dat")
    assert sandbox.read_file("/tmp/bin.dat").endswith("abc")


def test_read_write_files(sandbox):
    sandbox.write_file("notes/deep/new.txt", "ünïcode ✓\nline 2\n")
    assert sandbox.read_file("notes/deep/new.txt") == "ünïcode ✓\nline 2\n"
    assert sandbox.exec("stat -c %U notes/deep/new.txt").output.strip() == "swe"
    assert sandbox.exec("cat /testbed/notes/deep/new.txt").output == "ünïcode ✓\nline 2\n"
    assert "def slugify" in sandbox.read_file("/testbed/textkit/slug.py")
    with pytest.raises(FileNotFoundError):
        sandbox.read_file("no/such/file.py")
    with pytest.raises(IsADirectoryError):
        sandbox.read_file("textkit")
    with pytest.raises(PermissionError):
        sandbox.write_file("/root/x/y.txt", "no")


def test_diff_against_base_commit(sandbox, local_instance):
    assert sandbox.diff() == ""
    slug = sandbox.read_file("textkit/slug.py")
    sandbox.write_file("textkit/slug.py", slug.replace('r"[^a-z0-9]"', 'r"[^a-z0-9]+"'))
    sandbox.write_file("textkit/extra.py", "X = 1\n")
    # even a commit by the agent stays in the patch: the diff is against base_commit
    sandbox.exec("git add textkit/extra.py && git commit -qm wip && echo 'Y = 2' >> textkit/extra.py")
    sandbox.exec("git reset -q --soft HEAD~1")  # now X = 1 is staged, Y = 2 is not
    patch = sandbox.diff()
    assert "+++ b/textkit/slug.py" in patch and '+    slug = re.sub(r"[^a-z0-9]+"' in patch
    assert "new file mode" in patch and "+X = 1" in patch and "+Y = 2" in patch
    # the agent's own index is left alone
    assert sandbox.exec("git status --short").output.split("\n")[:2] == ["AM textkit/extra.py",
                                                                        " M textkit/slug.py"]
    # and the patch applies to a fresh checkout of the same instance
    with Sandbox.start(sandbox.container.client, local_instance.image, run_id="pytest-sandbox") as fresh:
        fresh.write_file("/tmp/p.diff", patch)
        assert fresh.exec("git apply /tmp/p.diff && git status --short").exit_code == 0
        assert fresh.read_file("textkit/extra.py") == "X = 1\nY = 2\n"




def test_diff_sees_a_same_size_edit_made_in_the_second_the_index_was_written(sandbox):
    """Racy git: a generated task's set-up writes the buggy file and the index in one second;
    an edit that keeps the file's size in that same second leaves every stat field git keeps
    (seconds) unchanged. Git then trusts the stat only if the index looks older than the
    file, which a copy of the index with a fresh mtime did (empty patches of gold demos)."""
    sandbox.exec("git config core.trustctime false")  # the ctime of a same-second edit matches too
    fixed = 1_700_000_000
    sandbox.exec(f"touch -d @{fixed} textkit/slug.py && git update-index --refresh -q; "
                 f"touch -d @{fixed} .git/index")  # file and index in one second, as after set-up
    sandbox.exec("python3 -c \"p='textkit/slug.py'; s=open(p).read(); "
                 "open(p,'r+').write(s.replace('[^a-z0-9]', '[^a-z0-8]'))\" && "
                 f"touch -d @{fixed} textkit/slug.py")  # in place: same size, inode and mtime
    patch = sandbox.diff()
    assert "-    slug = re.sub(r\"[^a-z0-9]\"" in patch and "+    slug = re.sub(r\"[^a-z0-8]\"" in patch
@pytest.mark.parametrize("use_runner", [True, False], ids=["runner", "exec-per-command"])
def test_container_killed_mid_exec_is_a_clear_error(docker_client, local_instance, use_runner):
    sb = _small(docker_client, local_instance, use_runner=use_runner)
    threading.Timer(1.0, lambda: docker_client.containers.get(sb.container.id).kill()).start()
    with pytest.raises(SandboxError, match=r"container swe-aem-\S+ (is exited|no longer exists)"):
        sb.exec("sleep 30", timeout=60)
    sb.close()
    with pytest.raises(NotFound):
        docker_client.containers.get(sb.container.id)


def test_a_command_killing_the_runner_gets_a_new_one(sandbox):
    first = sandbox._runner
    result = sandbox.exec("pkill -9 -f 'def serve'; sleep 1; echo unreachable")
    assert result.exit_code == 137 and "command runner was killed" in result.output
    assert sandbox._runner is not None and sandbox._runner is not first
    assert sandbox.exec("echo fine").output == "fine\n"


# ------------------------------------------------------------------ the agent's own damage
# Which commands really end a sandbox here (tini is PID 1, pids and memory limits, the group
# kill at a tool timeout), measured: these are observations, the container lives on ...
SURVIVABLE = {
    "OOM": ("python3 -c 'b = bytearray(400 << 20)'", 60),  # the kernel kills the hog, not tini
    "exit of the shell": ("exit 3", 10),
    "kill -9 1": ("kill -9 1", 10),  # the kernel ignores SIGKILL to its namespace's init
}
# ... and these end it (the container exits) or leave it unable to run a command in its repo.
BREAKING = {
    "kill 1": ("kill 1", None, "is exited (exit code 143"),  # tini forwards SIGTERM and exits
    "kill -9 -1": ("kill -9 -1", None, "is exited (exit code 137"),  # tini's child dies, so does tini
    "rm -rf / as root": ("rm -rf / --no-preserve-root", "root", "runs but cannot run git"),
    "rm -rf /bin /usr/bin as root": ("rm -rf /bin /usr/bin", "root", "runs but cannot run git"),
}


def test_damage_that_does_not_end_the_sandbox_is_an_observation(docker_client, local_instance):
    with _small(docker_client, local_instance, memory="256m", pids_limit=64) as sb:
        for name, (command, timeout) in SURVIVABLE.items():
            result = sb.exec(command, timeout=timeout)  # never raises: an observation
            assert sb.exec("echo alive").output == "alive\n", (name, result)
            verdict = classify_breakage(sb)
            assert not verdict.own and "not broken" in verdict.reason, (name, verdict)


def test_a_fork_bomb_is_an_observation_that_outlives_its_call(docker_client, local_instance):
    """Measured here: the pids limit holds the bomb, the call comes back timed out (no error,
    the container runs), but the group SIGKILL does not end a bash fork bomb (forks in flight
    escape it) and no `docker exec` can start to kill the rest: later commands mostly fail
    to fork. Never an infrastructure failure; the episode goes on."""
    with _small(docker_client, local_instance, pids_limit=64, kill_grace_s=1) as sb:
        result = sb.exec(":(){ :|:& };:", timeout=2)
        assert result.timed_out and "fork" in result.output
        sb.container.reload()
        assert sb.container.status == "running"
        verdict = classify_breakage(sb)  # own (no process can start) or, between forks, fine
        assert verdict.own or "not broken" in verdict.reason, verdict


def test_a_sandbox_without_its_repository_is_broken(docker_client, local_instance):
    """`rm -rf /` as the sandbox's user (swe) deletes only what swe owns: the container runs on
    and the call is an observation, but the repository is gone, so no diff can be taken."""
    with _small(docker_client, local_instance) as sb:
        sb.exec("rm -rf / --no-preserve-root", timeout=60)
        assert sb.exec("ls -A /testbed").output == ""
        verdict = classify_breakage(sb)
        assert verdict.own and "cannot run git in /testbed" in verdict.reason, verdict


@pytest.mark.parametrize("name", list(BREAKING))
def test_damage_that_ends_the_sandbox_is_its_own(docker_client, local_instance, name):
    command, user, says = BREAKING[name]
    with _small(docker_client, local_instance, user=user) as sb:
        try:
            result = sb.exec(command, timeout=60)
        except SandboxError:  # the container exited under the command
            result = None
        if user == "root":
            assert result is not None and sb.exec("true").exit_code == 126  # no /bin/sh to run
        verdict = classify_breakage(sb)
        assert verdict.own and says in verdict.reason, verdict


def test_sandboxes_of_a_run_down_together_or_removed_are_infrastructure(docker_client, local_instance):
    run = f"pytest-together-{os.getpid()}"
    boxes = [Sandbox.start(docker_client, local_instance.image, run_id=run) for _ in range(3)]
    try:
        boxes[0].container.kill()  # one alone, the others running: looks like its own kill 1
        assert classify_breakage(boxes[0]).own
        for sb in boxes[1:]:  # now all of the run is down at once: a daemon or host failure
            sb.container.kill()
        for sb in boxes:
            verdict = classify_breakage(sb)
            assert not verdict.own and "none left running" in verdict.reason, verdict
        boxes[0].container.remove(force=True)
        verdict = classify_breakage(boxes[0])
        assert not verdict.own and "removed from outside" in verdict.reason
    finally:
        for sb in boxes:
            sb.close()


def test_image_without_python_falls_back_to_exec_per_command(docker_client):
    import io

    from swe_aem.sandbox.image_store import base_tag

    dockerfile = f"FROM {base_tag()}\nRUN rm -f /usr/bin/python3* /usr/bin/python\n".encode()
    image, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag="swe-aem/test-no-python:1",
                                          network_mode="none", rm=True)
    with Sandbox.start(docker_client, image.id, run_id="pytest-nopython",
                       config=SandboxConfig(workdir="/tmp")) as sb:
        assert sb._runner is None and sb.uid == 0
        result = sb.exec("echo works; command -v python3", timeout=10)
        assert result.output == "works\n" and result.exit_code == 1
        assert sb.exec("sleep 30", timeout=1).timed_out


def test_runner_is_much_cheaper_than_exec_per_command(docker_client, local_instance):
    def median_ms(sb):
        times = sorted(sb.exec("true").duration_s for _ in range(15))
        return 1000 * times[len(times) // 2]

    with _small(docker_client, local_instance) as fast, \
            _small(docker_client, local_instance, use_runner=False) as slow:
        assert median_ms(fast) < 0.5 * median_ms(slow)


def test_missing_image_is_a_clear_error(docker_client):
    with pytest.raises(SandboxError, match="swe-aem images build"):
        Sandbox.start(docker_client, "swe-aem/no-such-image:0", run_id="pytest-missing")


# ------------------------------------------------------------------ reaper

def test_reaper_removes_what_a_crashed_process_left(docker_client, local_instance):
    script = textwrap.dedent(f"""
        import sys, time
        from swe_aem.sandbox import Sandbox, connect
        sb = Sandbox.start(connect(), {local_instance.image!r}, run_id="pytest-crash")
        print(sb.container.name, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    name = proc.stdout.readline().strip()
    assert name.startswith("swe-aem-pytest-crash")
    os.kill(proc.pid, signal.SIGKILL)  # a crash: no close(), no atexit
    proc.wait()
    assert docker_client.containers.get(name).status == "running"
    assert name in reap(client=docker_client)  # owner process is gone
    with pytest.raises(NotFound):
        docker_client.containers.get(name)


def test_reaper_leaves_live_owners_and_reaps_by_run_id(docker_client, local_instance):
    sb = Sandbox.start(docker_client, local_instance.image, run_id="pytest-reap-run")
    try:
        assert sb.container.name not in reap(client=docker_client)  # our process is alive
        assert reap("pytest-reap-run", client=docker_client) == [sb.container.name]
        with pytest.raises(NotFound):
            docker_client.containers.get(sb.container.id)
    finally:
        sb.close()  # already gone: close() must not raise


# ------------------------------------------------------------------ pool and daemons

def test_pool_bounds_concurrency(docker_client, local_instance):
    live, peak, lock = [0], [0], threading.Lock()
    with SandboxPool(max_concurrency=2, run_id="pytest-bound") as pool:
        def work():
            with pool.sandbox(local_instance) as sb:
                with lock:
                    live[0] += 1
                    peak[0] = max(peak[0], live[0])
                sb.exec("sleep 1")
                with lock:
                    live[0] -= 1

        threads = [threading.Thread(target=work) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert peak[0] == 2
    assert not docker_client.containers.list(all=True, ignore_removed=True,
                                             filters={"label": f"{LABEL_RUN_ID}=pytest-bound"})


def test_pool_spreads_over_daemons_and_skips_a_dead_one(docker_client, local_instance, tmp_path):
    sock = docker_client.api.base_url.replace("http+docker://localhost", "unix:///var/run/docker.sock")
    dead = f"unix://{tmp_path}/nothing.sock"
    with SandboxPool([sock, dead, sock], max_concurrency=4, run_id="pytest-spread") as pool:
        with pool.sandbox(local_instance) as a, pool.sandbox(local_instance) as b:
            active = pool.active()
            assert a.exec("echo a").output == "a\n" and b.exec("echo b").output == "b\n"
        assert active == {sock: 2, dead: 0}
        assert pool.check() == [sock, sock]


def test_dead_daemon_is_a_clear_error_not_a_hang(local_instance, tmp_path):
    dead = f"unix://{tmp_path}/nothing.sock"
    start = time.monotonic()
    with pytest.raises(DockerUnavailableError, match=f"Docker daemon at {dead} is not answering"):
        connect(dead)
    pool = SandboxPool([dead], run_id="pytest-dead")
    with pytest.raises(DockerUnavailableError, match="no Docker daemon answers"), \
            pool.sandbox(local_instance):
        pass
    with pytest.raises(DockerUnavailableError, match="127.0.0.1:9"):
        connect("tcp://127.0.0.1:9")
    assert time.monotonic() - start < 30


def test_dead_daemon_via_docker_host(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(DockerUnavailableError, match="nothing.sock"):
        connect()


def _api_error(code: int) -> APIError:
    response = requests.Response()
    response.status_code, response.url, response.reason = code, "http://daemon/x", "test"
    return APIError("daemon says no", response=response)


def test_transient_errors_are_retried():
    calls = []

    @retry_transient(attempts=4)
    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise _api_error(503)
        return "ok"

    assert flaky() == "ok" and len(calls) == 3
    assert is_transient(_api_error(502)) and is_transient(requests.exceptions.ConnectionError())
    assert not is_transient(_api_error(404)) and not is_transient(ValueError())
    assert not is_transient(docker.errors.ImageNotFound("no such image"))
