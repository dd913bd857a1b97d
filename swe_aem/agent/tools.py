"""Running the CodeAct tools (execute_bash, str_replace_editor, finish) in a sandbox.

Synchronous on purpose: the docker SDK is blocking, so the episode loop calls
`ToolRunner.run` in a worker thread.

The editor (swe_aem/agent/sandbox_editor.py) runs inside the container with its python3
where the image has one (one exec an edit: 25 ms measured); an image without python3 gets
the same editor run on the host over the Docker API (swe_aem/agent/docker_editor.py: 87-98 ms
an edit, a tar of the file each way; docs/measurements/editor_routes.json). Which one is
asked once per sandbox; both give the same observations and leave the same files.
"""

from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from swe_aem.agent import docker_editor
from swe_aem.agent.trajectory import ToolCall
from swe_aem.sandbox import Sandbox

EDITOR_SOURCE = Path(__file__).with_name("sandbox_editor.py")
EDITOR_PATH = "/tmp/.swe_aem_editor/editor.py"
MAX_EDITOR_ARGS = 100_000  # bytes of base64 on one command line (Linux caps one argument at 128 KiB)
MAX_BASH_TIMEOUT_S = 600


@dataclass(frozen=True)
class ToolResult:
    output: str
    error: bool = False  # the tool reported a failure (shown to the model either way)
    timed_out: bool = False
    finished: bool = False


class ToolRunner:
    """The tools of one episode, bound to its sandbox."""

    def __init__(self, sandbox: Sandbox, default_timeout_s: float = 60.0) -> None:
        self.sandbox = sandbox
        self.default_timeout_s = default_timeout_s
        self._editor_installed = False
        self._python3: bool | None = None  # does the image have python3 (asked at the first edit)
        self._history: dict[str, list[str]] = {}  # undo stacks, where the editor runs on the host

    def run(self, call: ToolCall, time_left_s: float | None = None) -> ToolResult:
        """Execute one validated call; time_left_s caps any command by the episode deadline."""
        if call.name == "finish":
            return ToolResult(output=call.arguments.get("message", ""), finished=True)
        if call.name == "execute_bash":
            timeout = min(float(call.arguments.get("timeout", self.default_timeout_s)), MAX_BASH_TIMEOUT_S)
            if time_left_s is not None:
                timeout = max(1.0, min(timeout, time_left_s))
            return self._bash(call.arguments["command"], timeout)
        if call.name == "str_replace_editor":
            return self._editor(call.arguments)
        return ToolResult(output=f"unknown tool {call.name!r}", error=True)

    def _bash(self, command: str, timeout: float) -> ToolResult:
        result = self.sandbox.exec(command, timeout=timeout)
        if result.timed_out:
            return ToolResult(
                output=f"{result.output}\n[command timed out after {timeout:g} s and was killed]",
                error=True,
                timed_out=True,
            )
        note = f"\n[exit code {result.exit_code}]" if result.exit_code != 0 else ""
        return ToolResult(output=result.output + note, error=result.exit_code != 0)

    def _editor(self, arguments: dict) -> ToolResult:
        payload = base64.b64encode(json.dumps(arguments).encode()).decode()
        if len(payload) > MAX_EDITOR_ARGS:
            return ToolResult(
                output=f"ERROR: edit too large ({len(payload)} bytes encoded, limit {MAX_EDITOR_ARGS}); "
                "split it into smaller edits",
                error=True,
            )
        if self._python3 is None:
            self._python3 = self.sandbox.exec("command -v python3", timeout=30).exit_code == 0
        if not self._python3:
            ok, output = docker_editor.edit(self.sandbox, arguments, self._history)
            return ToolResult(output=output, error=not ok)
        if not self._editor_installed:
            self.sandbox.write_file(EDITOR_PATH, EDITOR_SOURCE.read_text())
            self._editor_installed = True
        root = shlex.quote(self.sandbox.config.workdir)
        result = self.sandbox.exec(f"python3 {EDITOR_PATH} {payload} {root}", timeout=60)
        return ToolResult(output=result.output, error=result.exit_code != 0, timed_out=result.timed_out)
