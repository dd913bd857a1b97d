"""Runs INSIDE a sandbox container (stdlib only, any Python 3.6+): one process that runs
commands on request, so a command costs a fork instead of a `docker exec` (~70 ms).

Reads one JSON request per line on stdin: {"argv": [...], "workdir": str, "env": {...}}.
Answers on stdout with frames: b"o" + 4-byte big-endian length + output bytes, then
b"x" + length + JSON {"exit_code": int}. The host side is swe_aem.sandbox.runner.
"""

import json
import os
import struct
import subprocess
import sys


def frame(out, kind, payload):
    out.write(kind + struct.pack(">I", len(payload)) + payload)
    out.flush()


def serve(stdin, out):
    for line in stdin:
        request = json.loads(line.decode("utf-8"))
        env = dict(os.environ)
        env.update(request.get("env") or {})
        try:
            proc = subprocess.Popen(request["argv"], cwd=request["workdir"], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
        except OSError as exc:  # e.g. the workdir does not exist
            frame(out, b"o", "cannot run in {}: {}\n".format(request["workdir"], exc).encode())
            frame(out, b"x", json.dumps({"exit_code": 126}).encode())
            continue
        while True:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            frame(out, b"o", chunk)
        code = proc.wait()
        # a signal death is -N in Python; shells (and `docker exec`) say 128 + N
        frame(out, b"x", json.dumps({"exit_code": 128 - code if code < 0 else code}).encode())


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
