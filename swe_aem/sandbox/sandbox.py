"""One container per episode: exec with a real timeout, files in and out, the patch as a diff.

Everything goes through the Docker SDK (no CLI subprocess per command). Commands go
to one long-lived runner process in the container (runner.py; a fork each instead of
a `docker exec` each), or, in images without python3, to one exec each. A command
runs as `timeout -k GRACE T bash -c CMD`, which kills its whole process group; a
host-side guard kills the group again if that `timeout` does not finish the job. Output is capped in bytes (head and tail kept,
with a visible note) and decoded with replacement, so no byte sequence can crash us.

Real task images define their environment in the shell's start-up file: the official
SWE-bench images append `conda activate testbed` to ~/.bashrc, images without conda
(SWE-bench Multilingual) define nothing there. A sandbox reads it from the image: it
starts an interactive bash once (which reads /etc/bash.bashrc and ~/.bashrc), runs the
spec's extra snippet if any, captures the environment left (`env -0`) and gives it to
every later command, so each command runs as in a shell a person opened in that image.
A grader asks for none of this (`shell_env=False`): eval scripts enter their own.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import shlex
import socket
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self

import docker
import requests
from docker.errors import APIError, ImageNotFound, NotFound

from swe_aem.sandbox.daemon import (
    LABEL_INSTANCE_ID,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_RUN_ID,
    SandboxError,
    removal_in_progress,
    retry_transient,
)
from swe_aem.sandbox.runner import Runner, RunnerGone

# Runs as `sh -c WRAPPER CMD`: records its pid (= the process group `timeout` leads),
# then becomes `timeout`, which runs CMD under bash and kills the group at the deadline.
_WRAPPER = 'echo $$ > {pidfile}; exec timeout -k {grace} {limit} /bin/bash -c "$0" 2>&1'
TIMEOUT_EXIT_CODES = (124, 137)
# Runs the activation snippet in bash (its own output kept aside), then prints the environment.
# It runs inside an interactive bash (_STARTUP), so the image's start-up files come first.
_ACTIVATE = """__swe_aem_log=$(mktemp)
{{
{snippet}
}} >"$__swe_aem_log" 2>&1 </dev/null
__swe_aem_rc=$?
if [ "$__swe_aem_rc" -ne 0 ]; then cat "$__swe_aem_log"; rm -f "$__swe_aem_log"; exit "$__swe_aem_rc"; fi
rm -f "$__swe_aem_log"; unset __swe_aem_log __swe_aem_rc
printf '{marker}\\0'; env -0
"""
# interactive (reads the start-up files), without job control (no terminal, same process group)
_STARTUP = "exec /bin/bash -i +m -c {script} </dev/null"
_ENV_MARKER = "SWE_AEM_ENVIRONMENT"
# per-shell variables that must not be carried from the capturing shell into later ones
_SHELL_LOCAL = {"_", "SHLVL", "PWD", "OLDPWD"}


@dataclass(frozen=True)
class SandboxConfig:
    """Resource limits and defaults of one sandbox."""

    cpus: float = 1.0
    memory: str = "2g"
    pids_limit: int = 512
    network: bool = False
    user: str | None = None  # None: the image's own user (our images: non-root `swe`)
    workdir: str = "/testbed"
    exec_timeout_s: float = 180.0
    kill_grace_s: float = 5.0
    output_limit_bytes: int = 32_000
    api_timeout_s: float = 120.0
    use_runner: bool = True  # one in-container process runs commands (fast); else exec each


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str
    timed_out: bool
    duration_s: float
    truncated: bool


class _CappedBuffer:
    """Keeps the first and last `limit/2` bytes of a stream and counts the rest."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.limit is None:
            self.head += chunk
            return
        half = self.limit // 2
        room = half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        self.tail += chunk
        if len(self.tail) > 2 * half:
            del self.tail[: len(self.tail) - half]

    def text(self) -> tuple[str, bool]:
        if self.limit is None or self.total <= self.limit:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", errors="replace"), False
        tail = bytes(self.tail[-(self.limit // 2):])
        dropped = self.total - len(self.head) - len(tail)
        note = f"\n[... output truncated: {dropped} of {self.total} bytes omitted ...]\n"
        return (bytes(self.head).decode("utf-8", errors="replace") + note
                + tail.decode("utf-8", errors="replace")), True


def _container_name(run_id: str, instance_id: str | None) -> str:
    slug = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"{run_id}-{instance_id or 'sandbox'}")[:80]
    return f"swe-aem-{slug}-{uuid.uuid4().hex[:6]}"


class Sandbox:
    """A running container for one episode. Use `Sandbox.start(...)` or `SandboxPool.sandbox(...)`."""

    def __init__(self, container, config: SandboxConfig, *, base_commit: str | None = None,
                 instance_id: str | None = None):
        self.container = container
        self.config = config
        self.base_commit = base_commit
        self.instance_id = instance_id
        self.uid, self.gid = 0, 0
        self.environment: dict[str, str] = {}  # the shell start-up's (and snippet's); every command gets it
        self._runner: Runner | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, client: docker.DockerClient, image: str, *, config: SandboxConfig | None = None,
              run_id: str = "adhoc", instance_id: str | None = None,
              base_commit: str | None = None, env_activate: str = "", shell_env: bool = True,
              on_create: Callable[[Any], None] | None = None) -> Sandbox:
        """Create and start a container from `image`, wait until a command runs in it, then
        enter the environment its interactive bash start-up defines, plus `env_activate`
        (an extra bash snippet; "" for none). `shell_env=False`: commands run with the
        image's configured environment only, as `docker exec` gives it (graders).

        `on_create(container)` is called as soon as the container exists (a pool records it).
        A start-up or snippet that fails raises SandboxError naming the image and the snippet.
        """
        if env_activate.strip() and not shell_env:
            raise ValueError("env_activate is entered only with shell_env=True")
        config = config or SandboxConfig()
        labels = {LABEL_MANAGED: "1", LABEL_RUN_ID: run_id, LABEL_INSTANCE_ID: instance_id or "",
                  LABEL_OWNER: f"{socket.gethostname()}:{os.getpid()}"}
        kwargs = {
            "image": image, "entrypoint": ["sleep"], "command": ["infinity"], "init": True, "labels": labels,
            "name": _container_name(run_id, instance_id), "mem_limit": config.memory,
            "memswap_limit": config.memory, "nano_cpus": int(config.cpus * 1e9),
            "pids_limit": config.pids_limit, "security_opt": ["no-new-privileges"],
            "network_mode": "bridge" if config.network else "none",
        }
        if config.user is not None:
            kwargs["user"] = config.user
        try:  # create + start, not run: run would try to pull a missing image from a registry
            container = retry_transient()(client.containers.create)(**kwargs)
        except ImageNotFound as exc:
            raise SandboxError(
                f"image {image} is not on the Docker daemon; build the local suite with "
                "`swe-aem images build` or pull official images with `swe-aem images pull`"
            ) from exc
        except APIError as exc:
            raise SandboxError(f"cannot start a container from {image}: {exc}") from exc
        sandbox = cls(container, config, base_commit=base_commit, instance_id=instance_id)
        if on_create is not None:
            on_create(container)
        try:
            retry_transient()(container.start)()
            if config.use_runner:
                sandbox._start_runner()
            for attempt in range(3):  # a just-started container can refuse its first exec
                ready = sandbox.exec("id -u; id -g", timeout=60, workdir="/")
                if ready.exit_code == 0 and len(ready.output.split()) >= 2:
                    break
                time.sleep(0.5 * (attempt + 1))
            else:
                raise SandboxError(f"container from {image} is not usable (exit code {ready.exit_code}): "
                                   f"{ready.output[-500:]}")
            sandbox.uid, sandbox.gid = (int(x) for x in ready.output.split()[:2])
            if shell_env:
                sandbox.environment = sandbox._capture_environment(image, env_activate)
        except BaseException:
            sandbox.close()
            raise
        return sandbox

    def _capture_environment(self, image: str, snippet: str) -> dict[str, str]:
        """Start an interactive bash (the image's start-up files), run `snippet` in it; the
        environment left, minus per-shell variables."""
        script = _ACTIVATE.format(snippet=snippet.strip() or ":", marker=_ENV_MARKER)
        result = self._exec(_STARTUP.format(script=shlex.quote(script)), 120, None, None, None)
        head, sep, body = result.output.partition(_ENV_MARKER + "\0")
        if result.exit_code != 0 or not sep:
            why = "timed out" if result.timed_out else f"exited with code {result.exit_code}"
            what = "the shell start-up (interactive bash: /etc/bash.bashrc, ~/.bashrc)" + (
                f" then the snippet {snippet.strip()!r}" if snippet.strip() else "")
            raise SandboxError(f"entering the environment of image {image} failed: {what} "
                               f"{why}: {head.strip()[-1500:] or '(no output)'}")
        environment = {}
        for entry in body.split("\0"):
            name, eq, value = entry.partition("=")
            if eq and name and name not in _SHELL_LOCAL:
                environment[name] = value
        return environment

    def close(self) -> None:
        """Remove the container (idempotent; a container already gone is fine)."""
        if self._closed:
            return
        self._closed = True
        if self._runner is not None:
            self._runner.close()
        try:
            retry_transient()(self.container.remove)(force=True)
        except NotFound:
            pass
        except APIError as exc:  # another client removing it already (a reaper): fine
            if not removal_in_progress(exc):
                raise
        except requests.exceptions.RequestException:
            pass  # its daemon is down: nothing can be removed now; `reap(run_id)` does it later

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ exec
    def exec(self, cmd: str, timeout: float | None = None, workdir: str | None = None,
             env: dict[str, str] | None = None, *, output_limit_bytes: int | None = None) -> ExecResult:
        """Run `cmd` with bash; stdout and stderr merged; killed (whole group) after `timeout` s.

        Output beyond `output_limit_bytes` (default: the config's) keeps its head and tail.
        """
        limit = output_limit_bytes or self.config.output_limit_bytes
        return self._exec(cmd, timeout, workdir, env, limit)

    def _exec(self, cmd: str, timeout: float | None, workdir: str | None,
              env: dict[str, str] | None, limit: int | None) -> ExecResult:
        if self._closed:
            raise SandboxError("sandbox is closed")
        if self.environment:
            env = {**self.environment, **(env or {})}
        limit_s = float(timeout if timeout is not None else self.config.exec_timeout_s)
        pidfile = f"/tmp/.swe-aem-exec-{uuid.uuid4().hex}.pid"
        argv = ["/bin/sh", "-c", _WRAPPER.format(pidfile=pidfile, grace=int(self.config.kill_grace_s),
                                                 limit=f"{limit_s:g}"), cmd]
        # past this, the in-container `timeout` has failed to end the command: kill its group
        guard_s = limit_s + 2 * self.config.kill_grace_s + 5
        buf = _CappedBuffer(limit)
        start = time.monotonic()
        runner = self._runner
        if runner is not None and runner.lock.acquire(blocking=False):
            try:
                exit_code, guard_fired = self._via_runner(runner, cmd, argv, workdir, env, buf,
                                                          guard_s, pidfile)
            finally:
                runner.lock.release()
        else:  # no runner in this image, or another thread is using it
            exit_code, guard_fired = self._via_exec(cmd, argv, workdir, env, buf, guard_s, pidfile)
        duration = time.monotonic() - start
        output, truncated = buf.text()
        timed_out = guard_fired or (exit_code in TIMEOUT_EXIT_CODES and duration >= limit_s)
        return ExecResult(exit_code=exit_code, output=output, timed_out=timed_out,
                          duration_s=duration, truncated=truncated)

    def _via_runner(self, runner: Runner, cmd: str, argv: list[str], workdir: str | None,
                    env: dict[str, str] | None, buf: _CappedBuffer, guard_s: float,
                    pidfile: str) -> tuple[int, bool]:
        try:
            return runner.run(argv, workdir or self.config.workdir, env, buf.add, guard_s,
                              lambda: self._kill_group(pidfile))
        except RunnerGone as exc:
            self._runner = None
            runner.close()
            if not self._alive():
                raise self._dead_container_error(cmd, None) from exc
            if not runner.answered:  # it never ran here (no python3 in the image): exec each
                return self._via_exec(cmd, argv, workdir, env, buf, guard_s, pidfile)
            # the command killed the runner itself (say `kill -9 -1`): report it, start a new one
            buf.add(f"\n[swe-aem: the command runner was killed ({exc}); restarted]\n".encode())
            self._start_runner()
            return 137, False

    def _via_exec(self, cmd: str, argv: list[str], workdir: str | None,
                  env: dict[str, str] | None, buf: _CappedBuffer, guard_s: float,
                  pidfile: str) -> tuple[int, bool]:
        api = self.container.client.api
        try:
            exec_id = retry_transient()(api.exec_create)(
                self.container.id, argv, stdout=True, stderr=True,
                workdir=workdir or self.config.workdir, environment=env)["Id"]
            stream = api.exec_start(exec_id, stream=True, demux=False)
        except (APIError, NotFound) as exc:
            raise self._dead_container_error(cmd, exc) from exc
        guard_fired = threading.Event()

        def guard() -> None:
            guard_fired.set()
            self._kill_group(pidfile)

        timer = threading.Timer(guard_s, guard)
        timer.daemon = True
        timer.start()
        try:
            for chunk in stream:
                buf.add(chunk)
        except Exception as exc:  # the connection broke: usually the container went away
            raise self._dead_container_error(cmd, exc) from exc
        finally:
            timer.cancel()
        try:
            exit_code = api.exec_inspect(exec_id).get("ExitCode")
        except (APIError, NotFound) as exc:
            raise self._dead_container_error(cmd, exc) from exc
        # a container killed under us shows as no exit code or a signal exit code
        if (exit_code is None or exit_code >= 128) and not self._alive():
            raise self._dead_container_error(cmd, None)
        return int(exit_code), guard_fired.is_set()

    def _start_runner(self) -> None:
        """Start the in-container runner (if the image has no python3, the first call falls back)."""
        try:
            self._runner = Runner(self.container)
        except (APIError, NotFound, OSError):
            self._runner = None

    def _kill_group(self, pidfile: str) -> None:
        try:
            self.container.exec_run(
                ["/bin/sh", "-c", f'p=$(cat {pidfile}) && kill -KILL -- -"$p" "$p"'], user="root")
        except (APIError, NotFound):
            pass

    def _alive(self) -> bool:
        """Can the container still start a process? (Its state can lag behind a kill.)"""
        try:
            return self.container.exec_run(["true"]).exit_code == 0
        except (APIError, NotFound):
            return False

    def _dead_container_error(self, cmd: str, exc: BaseException | None) -> SandboxError:
        try:
            for _ in range(20):  # give the daemon a moment to record a kill it is processing
                self.container.reload()
                state = self.container.attrs.get("State", {})
                if state.get("Status") != "running":
                    break
                time.sleep(0.1)
            what = (f"is {state.get('Status')} (exit code {state.get('ExitCode')}, "
                    f"OOMKilled={state.get('OOMKilled')})")
        except NotFound:
            what = "no longer exists"
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as err:
            what = f"cannot be inspected ({type(err).__name__}: {err})"
        detail = f": {type(exc).__name__}: {exc}" if exc else ""
        return SandboxError(f"container {self.container.name} {what} while running {cmd[:200]!r}{detail}")

    # ------------------------------------------------------------------ files
    def _abs(self, path: str) -> str:
        return path if path.startswith("/") else posixpath.join(self.config.workdir, path)

    def read_file(self, path: str) -> str:
        """The text of `path` (relative to the workdir), undecodable bytes replaced."""
        full = self._abs(path)
        try:
            chunks, stat = self.container.get_archive(full)
        except NotFound as exc:
            raise FileNotFoundError(f"{full}: no such file in the sandbox") from exc
        if stat.get("mode", 0) & (1 << 31):  # Go's os.ModeDir bit
            raise IsADirectoryError(f"{full} is a directory")
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
            member = tar.next()
            handle = tar.extractfile(member) if member else None
            data = handle.read() if handle else b""
        return data.decode("utf-8", errors="replace")

    def write_file(self, path: str, text: str) -> None:
        """Create or replace `path` with `text`, owned by the sandbox user (parents created)."""
        full = self._abs(path)
        parent, name = posixpath.split(full)
        made = self._exec(f'mkdir -p "{parent}"', 30, "/", None, 4000)
        if made.exit_code != 0:
            raise PermissionError(f"cannot create {parent} in the sandbox: {made.output.strip()}")
        data = text.encode("utf-8")
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            info.uid, info.gid = self.uid, self.gid
            tar.addfile(info, io.BytesIO(data))
        if not self.container.put_archive(parent, archive.getvalue()):
            raise SandboxError(f"writing {full} failed")

    def diff(self) -> str:
        """`git diff` of the work tree against base_commit, new untracked files included.

        Uses a throwaway copy of the index so the agent's own staging area is left alone.
        The copy keeps the index's mtime (`cp -p`): git re-reads a file whose stat matches
        its entry only when the entry is as new as the index ("racy git"), and a fresh
        mtime would hide a same-size edit made in the second the index was written.
        """
        base = self.base_commit or "HEAD"
        script = (
            "set -e; idx=/tmp/.swe-aem-index-$$; trap 'rm -f $idx' EXIT; "
            'cp -p "$(git rev-parse --git-dir)/index" $idx 2>/dev/null || true; '
            "export GIT_INDEX_FILE=$idx; git add -A; "
            f"git -c core.fileMode=false diff --cached --no-color --no-ext-diff {base}"
        )
        result = self._exec(script, 120, None, None, None)
        if result.exit_code != 0:
            raise SandboxError(f"git diff failed in {self.config.workdir}: {result.output[-1000:]}")
        return result.output



# ---------------------------------------------------------------------- whose failure
# Other sandboxes of the same run on the same daemon that ended within this many seconds of
# this one count as having gone down "at once" (a daemon restart, a host failure).
_AT_ONCE_S = 30.0
_PING_TIMEOUT_S = 10.0
_STOPPING_WAIT_S = 5.0  # how long a container whose init is exiting may still read "running"


@dataclass(frozen=True)
class Breakage:
    """The answer to "a sandbox operation failed: is the sandbox itself broken, and by whom?".

    `own` is True when this one container is unusable while its daemon answers and the run's
    other sandboxes on that daemon do not share its fate: the only actor left is the code
    running inside it, i.e. the agent's own commands (`kill 1`, deleting the repository or
    /bin). False: an infrastructure failure (the daemon does not answer, the container was
    removed from outside, every sandbox of the run went down at once) or no breakage at all
    (the container is fine; the failure was elsewhere). `reason` says which, for the record.
    """

    own: bool
    reason: str


def classify_breakage(sandbox: Sandbox) -> Breakage:
    """Decide whether a failure seen on `sandbox` is the sandbox's own damage (see Breakage).

    Blocking (a few Docker API calls); call it right after the failure, before closing the
    sandbox. Checks, in order: the daemon answers a ping; the container still exists (an
    agent cannot remove its own container: gone means someone outside did it); it has exited
    or cannot run `git rev-parse` in its workdir (what every later tool call and the final
    diff need); and it is not one of several sandboxes of its run that ended together with
    none of the run's left running (a daemon restart or a host failure takes them all).
    """
    container = sandbox.container
    api = container.client.api
    try:  # requests.Session.get with its own short timeout: a dead TCP peer must not stall us
        answer = api.get(f"{api.base_url}/_ping", timeout=_PING_TIMEOUT_S)
        answer.raise_for_status()
    except (requests.exceptions.RequestException, OSError) as exc:
        return Breakage(False, f"the Docker daemon does not answer a ping ({type(exc).__name__}: {exc})")
    try:
        container.reload()
    except NotFound:
        return Breakage(False, f"container {container.name} was removed from outside the sandbox")
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        return Breakage(False, f"container {container.name} cannot be inspected ({type(exc).__name__}: {exc})")
    state = container.attrs.get("State", {})
    if state.get("Status") == "running":
        try:
            probe = container.exec_run(["git", "rev-parse", "--is-inside-work-tree"],
                                       workdir=sandbox.config.workdir)
        except (APIError, NotFound) as exc:
            state = _settled_state(container, "stopped state")  # a refusal may be its exit showing
            if state.get("Status") == "running":
                return Breakage(False, f"container {container.name} runs but the daemon refused a probe: {exc}")
        else:
            if probe.exit_code == 0:
                return Breakage(False, f"container {container.name} runs and answers: not broken")
            text = probe.output.decode("utf-8", errors="replace").strip()[-300:]
            state = _settled_state(container, text)
            if state.get("Status") == "running":
                return Breakage(True, f"container {container.name} runs but cannot run git in "
                                      f"{sandbox.config.workdir} (exit code {probe.exit_code}: {text})")
    what = (f"container {container.name} is {state.get('Status')} (exit code {state.get('ExitCode')}, "
            f"OOMKilled={state.get('OOMKilled')})")
    together = _ended_together(container, state.get("FinishedAt", ""))
    if together is not None:
        return Breakage(False, f"{what}, with {together}")
    return Breakage(True, what)


def _settled_state(container, probe_output: str) -> dict:
    """The container's state once a failed probe's cause is known: runc refuses an exec into a
    container whose init is exiting ("cannot exec in a stopped state") while Docker still says
    running, for a moment; wait up to _STOPPING_WAIT_S for the exit to show."""
    deadline = time.monotonic() + (_STOPPING_WAIT_S if "stopped state" in probe_output else 0.0)
    while True:
        try:
            container.reload()
        except (NotFound, docker.errors.DockerException, requests.exceptions.RequestException, OSError):
            return {"Status": "running"}  # the probe's own verdict stands
        state = container.attrs.get("State", {})
        if state.get("Status") != "running" or time.monotonic() >= deadline:
            return state
        time.sleep(0.2)


def _ended_together(container, finished_at: str) -> str | None:
    """Whether `container` went down with every other sandbox of its run on its daemon (what
    is said about them), else None. A sandbox alone on its daemon ended alone."""
    api = container.client.api
    run_id = container.labels.get(LABEL_RUN_ID, "")
    try:
        rows = api.containers(all=True, filters={"label": [f"{LABEL_MANAGED}=1", f"{LABEL_RUN_ID}={run_id}"]})
        others = [row for row in rows if row["Id"] != container.id]
        if not others or any(row.get("State") == "running" for row in others):
            return None
        mine = _docker_time(finished_at)
        ended = 0
        for row in others:
            theirs = _docker_time(api.inspect_container(row["Id"])["State"].get("FinishedAt", ""))
            ended += mine is not None and theirs is not None and abs(theirs - mine) <= _AT_ONCE_S
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
        return None  # the daemon answered the ping; a sibling removed meanwhile is no evidence
    if not ended:
        return None
    return f"{ended} other sandbox(es) of run {run_id} ending within {_AT_ONCE_S:g} s and none left running"


def _docker_time(stamp: str) -> float | None:
    """Seconds since the epoch of a Docker state time ("2024-05-01T12:00:00.123456789Z", always
    UTC; whole seconds kept); None when unset ("0001-01-01T00:00:00Z") or unreadable."""
    if not stamp or stamp.startswith("0001-"):
        return None
    try:
        return datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
