"""Connecting to Docker daemons, with clear errors and retries for transient failures.

A daemon that is down must fail fast with a message that says which one and what
to do; a daemon that hiccups (5xx, connection reset, read timeout) gets a few
retries, because at rollout scale those happen and must not kill an episode.
"""

from __future__ import annotations

import logging
import os

import docker
import requests
from docker.errors import APIError, DockerException, NotFound
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from swe_aem.errors import RunError

# Labels on every container we start: the reaper finds leftovers by them.
LABEL_MANAGED = "swe-aem.managed"
LABEL_RUN_ID = "swe-aem.run-id"
LABEL_INSTANCE_ID = "swe-aem.instance-id"
LABEL_OWNER = "swe-aem.owner"  # "<hostname>:<pid>" of the process that started it
MAX_POOL = 128

log = logging.getLogger(__name__)


class SandboxError(RunError, RuntimeError):
    """A sandbox operation failed (container died, exec failed, file missing in the image)."""


class DockerUnavailableError(SandboxError):
    """No Docker daemon answers at the given address."""


def host_label(host: str | None) -> str:
    return host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: daemon overload / restarts, not bad requests."""
    if isinstance(exc, APIError):
        code = exc.status_code or 0
        return code >= 500 and "No such" not in str(exc) and "not found" not in str(exc).lower()
    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout))


def retry_transient(attempts: int = 4):
    """Decorator: retry transient daemon errors with exponential backoff (0.5 s, 1 s, 2 s)."""
    return retry(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.5, max=4),
        reraise=True,
    )


def connect(host: str | None = None, timeout: float = 120.0) -> docker.DockerClient:
    """A client for `host` (a DOCKER_HOST URL; None = environment), checked with a ping.

    Raises DockerUnavailableError naming the address when the daemon does not answer.
    The ping uses a short timeout so a dead TCP peer cannot stall us for minutes.
    """
    where = host_label(host)
    try:
        # ping with a short timeout so a dead TCP peer cannot stall us for minutes
        # a big connection pool: every concurrent sandbox call needs its own connection
        if host is None:
            client = docker.from_env(timeout=10, max_pool_size=MAX_POOL)
        else:
            client = docker.DockerClient(base_url=host, timeout=10, max_pool_size=MAX_POOL)
        client.ping()
    except (DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise DockerUnavailableError(
            f"Docker daemon at {where} is not answering ({type(exc).__name__}: {exc}). "
            "Start one with `bash scripts/ensure_docker.sh` or fix DOCKER_HOST."
        ) from exc
    client.api.timeout = int(timeout)
    return client


def removal_in_progress(exc: APIError) -> bool:
    """Docker's 409 when another client is removing the same container right now."""
    return exc.status_code == 409 and "already in progress" in str(exc)


def remove_container(container) -> bool:
    """Force-remove `container`; True when this call removed it.

    Gone already (404) or being removed by someone else (409 "removal already in
    progress") is not an error: either way it is going away. Other failures are logged.
    """
    try:
        retry_transient()(container.remove)(force=True)
        return True
    except NotFound:
        return False
    except APIError as exc:
        if removal_in_progress(exc):
            return False
        log.warning("could not remove container %s: %s", container.name, exc)
        return False
