"""Host side of the in-container command runner (see container_runner.py).

One `docker exec` per sandbox starts `python3 container_runner.py` with stdin attached;
each later command is a JSON line on that hijacked socket, so it costs a round trip
and a fork instead of a new `docker exec`. Bytes are buffered across socket timeouts,
so a host-side deadline never loses or corrupts output.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

SOURCE = (Path(__file__).parent / "container_runner.py").read_text()
_STDOUT = 1


class RunnerGone(Exception):
    """The runner's stream ended before it answered (runner or container killed)."""


class Runner:
    def __init__(self, container):
        api = container.client.api
        self.answered = 0  # requests answered; 0 after a failure means it never worked here
        self.exec_id = api.exec_create(container.id, ["python3", "-u", "-c", SOURCE], stdin=True,
                                       stdout=True, stderr=True, workdir="/")["Id"]
        raw = api.exec_start(self.exec_id, socket=True)
        self._raw = raw
        self._sock: socket.socket = getattr(raw, "_sock", raw)
        self._mux = bytearray()  # bytes as the daemon sends them (8-byte-header frames)
        self._out = bytearray()  # the runner's stdout: our own frames
        self.stderr = bytearray()
        self.lock = threading.Lock()

    def _fill(self, timeout: float) -> None:
        """Read what the daemon sent within `timeout` s into the buffers; RunnerGone on EOF."""
        self._sock.settimeout(max(timeout, 0.001))
        try:
            data = self._sock.recv(1 << 16)
        except TimeoutError:
            return
        except OSError as exc:
            raise RunnerGone(f"runner connection failed: {exc}") from exc
        if not data:
            raise RunnerGone("runner stream closed")
        self._mux += data
        while len(self._mux) >= 8:
            size = struct.unpack(">I", self._mux[4:8])[0]
            if len(self._mux) < 8 + size:
                break
            target = self._out if self._mux[0] == _STDOUT else self.stderr
            target += self._mux[8:8 + size]
            del self._mux[:8 + size]

    def _next_frame(self) -> tuple[bytes, bytes] | None:
        if len(self._out) < 5:
            return None
        size = struct.unpack(">I", self._out[1:5])[0]
        if len(self._out) < 5 + size:
            return None
        kind, payload = bytes(self._out[:1]), bytes(self._out[5:5 + size])
        del self._out[:5 + size]
        return kind, payload

    def run(self, argv: list[str], workdir: str, env: dict[str, str] | None,
            sink: Callable[[bytes], None], deadline_s: float,
            on_deadline: Callable[[], None]) -> tuple[int, bool]:
        """Run `argv`; output goes to `sink`. Returns (exit code, whether on_deadline fired).

        After `deadline_s` without an answer `on_deadline` is called once (it should kill
        the command); if the runner still does not answer 15 s later, RunnerGone.
        """
        request = json.dumps({"argv": argv, "workdir": workdir, "env": env or {}}) + "\n"
        try:
            self._sock.sendall(request.encode())
        except OSError as exc:
            raise RunnerGone(f"cannot send to the runner: {exc}") from exc
        deadline = time.monotonic() + deadline_s
        fired = False
        while True:
            frame = self._next_frame()
            while frame is not None:
                kind, payload = frame
                if kind == b"x":
                    self.answered += 1
                    return int(json.loads(payload)["exit_code"]), fired
                sink(payload)
                frame = self._next_frame()
            left = deadline - time.monotonic()
            if left <= 0:
                if fired:
                    raise RunnerGone("runner did not answer after its command was killed")
                on_deadline()
                fired, deadline = True, time.monotonic() + 15
                continue
            self._fill(left)

    def close(self) -> None:
        try:
            self._raw.close()
        except OSError:
            pass
