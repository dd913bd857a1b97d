"""Docker sandboxes: one container per episode, a pool over daemons, and a reaper."""

from swe_aem.sandbox.engine import DockerUnavailableError, SandboxError, connect
from swe_aem.sandbox.pool import SandboxPool, reap
from swe_aem.sandbox.sandbox import ExecResult, Sandbox, SandboxConfig

__all__ = ["DockerUnavailableError", "ExecResult", "Sandbox", "SandboxConfig", "SandboxError",
           "SandboxPool", "connect", "reap"]
