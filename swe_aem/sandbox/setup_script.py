"""The task state a fresh container needs before the agent or the grader: its setup script.

SWE-smith and R2E-Gym images hold the fixed repository; a task's `setup_script` makes its
state (the bug commit, the hidden runner out of the work tree). SWE-bench instances have
none. The agents' rollout and the grader both run it, in every container they start.
"""

from __future__ import annotations

from typing import Protocol

from swe_aem.sandbox.daemon import SandboxError
from swe_aem.sandbox.sandbox import Sandbox

SETUP_TIMEOUT_S = 300.0


class SetupSpec(Protocol):
    """What `prepare` needs of a task (swe_aem.data's Instance is one)."""

    @property
    def instance_id(self) -> str: ...

    @property
    def image(self) -> str: ...

    @property
    def setup_script(self) -> str: ...


def prepare(sandbox: Sandbox, task: SetupSpec) -> None:
    """Run the task's setup script; a failure is the environment's, not the patch's."""
    if not task.setup_script:
        return
    done = sandbox.exec(task.setup_script, timeout=SETUP_TIMEOUT_S, workdir="/testbed")
    if done.exit_code != 0:
        raise SandboxError(f"setup of {task.instance_id} in {task.image} failed "
                           f"(exit {done.exit_code}): {done.output[-1000:]}")
