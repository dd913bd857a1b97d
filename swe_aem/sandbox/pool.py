"""A bounded pool of sandboxes over one or more Docker daemons, and the reaper.

Concurrency is bounded by a semaphore; each new sandbox goes to the live daemon
with the fewest running sandboxes of this pool. A daemon that does not answer is
marked down with its reason; only when every daemon is down does the pool fail,
with an error naming each address.

A pool removes only the containers it created itself: several pools (concurrent
graders) may share one run id. `reap(run_id)` is the crash cleanup that callers
run at a run's start and end.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Protocol, Self

import docker
import requests
from docker.errors import NotFound

from swe_aem.sandbox import history
from swe_aem.sandbox.daemon import (
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_RUN_ID,
    DockerUnavailableError,
    SandboxError,
    connect,
    host_label,
    remove_container,
)
from swe_aem.sandbox.image_store import ImageStore
from swe_aem.sandbox.sandbox import Sandbox, SandboxConfig

log = logging.getLogger(__name__)


class SandboxSpec(Protocol):
    """What a sandbox needs of a task (swe_aem.data's Instance is one): which image, which
    commit the diff is taken against, and a bash snippet its harness runs after the image's
    own shell start-up ("" for none; the image's environment itself is read from the image)."""

    @property
    def instance_id(self) -> str: ...

    @property
    def image(self) -> str: ...

    @property
    def base_commit(self) -> str: ...

    @property
    def env_activate(self) -> str: ...


class SandboxPool:
    """Hands out sandboxes for instances, at most `max_concurrency` at a time."""

    def __init__(self, docker_hosts: list[str] | None = None, max_concurrency: int = 4,
                 config: SandboxConfig | None = None, run_id: str | None = None,
                 images: ImageStore | None = None, history_guard: bool = True):
        self.hosts: list[str | None] = list(docker_hosts) if docker_hosts else [None]
        self.config = config or SandboxConfig()
        self.run_id = run_id or uuid.uuid4().hex[:10]
        self.images = images or ImageStore()
        self.history_guard = history_guard  # agents' sandboxes (shell_env) start from a scrubbed image
        self._own_images = images is None  # a store passed in may serve other pools: theirs to close
        self._created: dict[str, tuple[int, str]] = {}  # container id -> (daemon index, name)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._lock = threading.Lock()
        self._clients: dict[int, docker.DockerClient] = {}
        self._down: dict[int, str] = {}
        self._active = [0] * len(self.hosts)

    def _client(self, index: int) -> docker.DockerClient:
        with self._lock:
            if index not in self._clients:
                self._clients[index] = connect(self.hosts[index], timeout=self.config.api_timeout_s)
            return self._clients[index]

    def _pick(self) -> tuple[int, docker.DockerClient]:
        """The least-loaded daemon that answers; raises when none does."""
        while True:
            with self._lock:
                live = [i for i in range(len(self.hosts)) if i not in self._down]
                if not live:
                    reasons = "; ".join(self._down.values())
                    raise DockerUnavailableError(f"no Docker daemon answers: {reasons}")
                index = min(live, key=lambda i: self._active[i])
                self._active[index] += 1
            try:
                return index, self._client(index)
            except DockerUnavailableError as exc:
                with self._lock:
                    self._active[index] -= 1
                    self._down[index] = str(exc)
                log.warning("%s", exc)

    @contextmanager
    def sandbox(self, spec: SandboxSpec, *, shell_env: bool = True) -> Iterator[Sandbox]:
        """A fresh sandbox from the spec's image (pulled if missing), inside the environment
        its shell start-up defines (`shell_env=False`: the image's bare environment, for
        graders, whose eval scripts enter their own), removed on exit whatever happens.

        The repository is at the spec's `workdir` where it has one (else the config's). An
        agent's sandbox (`shell_env`, the pool's `history_guard`) starts from the image with its
        git history beyond the task's base scrubbed, and is checked before it is handed out
        (swe_aem.sandbox.history: a leak raises HistoryLeakError naming the image)."""
        config = self.config
        if getattr(spec, "workdir", "") and spec.workdir != config.workdir:
            config = dataclasses.replace(config, workdir=spec.workdir)
        guard = history.rules_for(spec, config.workdir) if self.history_guard and shell_env else None
        with self._slots:
            index, client = self._pick()
            try:
                with self.images.using(client, spec.image):
                    image = spec.image
                    if guard is not None:
                        image = history.guarded_image(client, spec.image, guard)
                        self.images.touch(image)
                    try:
                        sandbox = Sandbox.start(client, image, config=config,
                                                run_id=self.run_id, instance_id=spec.instance_id,
                                                base_commit=spec.base_commit,
                                                env_activate=spec.env_activate if shell_env else "",
                                                shell_env=shell_env,
                                                on_create=lambda c: self._record(index, c))
                    except SandboxError as exc:  # name the dataset's image, not only its scrubbed copy
                        if image == spec.image:
                            raise
                        raise type(exc)(str(exc).replace(
                            image, f"{spec.image} (as its history-scrubbed copy {image})")) from exc
                    with sandbox:
                        if guard is not None:
                            history.check_sandbox(sandbox, spec.image, guard)
                        yield sandbox
                    self._forget(sandbox.container.id)
            finally:
                with self._lock:
                    self._active[index] -= 1

    def _record(self, index: int, container) -> None:
        with self._lock:
            self._created[container.id] = (index, container.name)

    def _forget(self, container_id: str) -> None:
        with self._lock:
            self._created.pop(container_id, None)

    def prefetch(self, images: Iterable[str]) -> list[Future]:
        """Pull `images` (say, the next steps' instances) in the background on every daemon that
        answers, so those sandboxes start without waiting for a pull; one future per daemon."""
        wanted = list(images)
        futures = []
        for index in range(len(self.hosts)):
            if index in self._down:
                continue
            try:
                futures.append(self.images.prefetch(self._client(index), wanted))
            except DockerUnavailableError as exc:
                self._down[index] = str(exc)
        return futures

    def check(self) -> list[str]:
        """Connect to every daemon now; the live addresses. Raises when none answers."""
        for index in range(len(self.hosts)):
            if index not in self._down:
                try:
                    self._client(index)
                except DockerUnavailableError as exc:
                    self._down[index] = str(exc)
        if len(self._down) == len(self.hosts):
            raise DockerUnavailableError(f"no Docker daemon answers: {'; '.join(self._down.values())}")
        return [host_label(h) for i, h in enumerate(self.hosts) if i not in self._down]

    def active(self) -> dict[str, int]:
        """Running sandboxes per daemon address (entries naming the same daemon summed)."""
        counts: dict[str, int] = {}
        with self._lock:
            for host, n in zip(self.hosts, self._active):
                counts[host_label(host)] = counts.get(host_label(host), 0) + n
        return counts

    def close(self) -> list[str]:
        """Remove the containers this pool created that are still there (names returned); drop
        the clients. Other pools' containers, even of the same run id, are left alone."""
        with self._lock:
            leftovers, self._created = self._created, {}
        removed = []
        for container_id, (index, name) in leftovers.items():
            client = self._clients.get(index)
            if client is None:
                continue
            try:
                container = client.containers.get(container_id)
            except NotFound:
                continue
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                log.warning("cannot inspect %s on close (its daemon down?): %s", name, exc)
                continue
            if remove_container(container):
                removed.append(name)
        if self._own_images:
            self.images.close()
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        return removed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _owner_alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's process: we cannot tell, so leave it alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap(run_id: str | None = None, *, client: docker.DockerClient | None = None,
         docker_host: str | None = None) -> list[str]:
    """Remove containers a run left behind; returns their names.

    With `run_id`, every container of that run goes. Without it, every swe-aem
    container whose owning process (recorded in a label) is gone on this machine.
    """
    client = client or connect(docker_host)
    filters = {"label": [f"{LABEL_MANAGED}=1"] + ([f"{LABEL_RUN_ID}={run_id}"] if run_id else [])}
    removed = []
    for container in client.containers.list(all=True, filters=filters, ignore_removed=True):
        if run_id is None and _owner_alive(container.labels.get(LABEL_OWNER, "")):
            continue
        if remove_container(container):
            removed.append(container.name)
    return removed
