"""Docker sandboxes: one container per episode, a pool over daemons, images, and a reaper.

A leaf package like swe_aem.algo: it imports nothing else of the project. Callers
describe a task through `SandboxSpec` (swe_aem.data's Instance satisfies it).
"""

from swe_aem.sandbox.daemon import DockerUnavailableError, SandboxError, connect
from swe_aem.sandbox.image_store import ImageNotInRegistryError, ImageStore, ImageUnavailableError
from swe_aem.sandbox.pool import SandboxPool, SandboxSpec, reap
from swe_aem.sandbox.sandbox import Breakage, ExecResult, Sandbox, SandboxConfig, classify_breakage

__all__ = ["Breakage", "DockerUnavailableError", "ExecResult", "ImageNotInRegistryError", "ImageStore",
           "ImageUnavailableError", "Sandbox", "SandboxConfig", "SandboxError", "SandboxPool",
           "SandboxSpec", "classify_breakage", "connect", "reap"]
