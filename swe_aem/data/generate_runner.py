"""Runs inside a validation container (copied there as a script; standard library + pytest).

Usage: python3 generate_runner.py BATCH.json OUT.jsonl
BATCH.json is a list of {"key": ..., "patch": ...} ("" patch: the clean tree). For each
entry: apply the patch in /testbed, run the repo's tests with pytest *in this process*,
write {"key", "applied", "timed_out", "output"} as one JSON line, reset the tree. One
interpreter and one pytest import serve the whole batch (a fresh `python -m pytest` per
bug costs seconds on a loaded machine); every module loaded from /testbed is dropped
before each run, and no bytecode is written, so each run imports the code as it is now.
"""

import contextlib
import io
import json
import os
import resource
import signal
import subprocess
import sys

TESTBED = "/testbed"
TIMEOUT_S = 8  # the clean suite runs in well under a second in-process
MEMORY_BYTES = 1 << 30


class _Timeout(KeyboardInterrupt):
    """Raised by the alarm: pytest stops the session as for Ctrl-C."""


def _alarm(signum, frame):
    raise _Timeout()


def _forget_testbed_modules() -> None:
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(TESTBED + "/"):
            del sys.modules[name]


def _git(*args: str, stdin: str | None = None) -> int:
    return subprocess.run(["git", *args], cwd=TESTBED, input=stdin, text=True,
                          capture_output=True, check=False).returncode


def run_one(patch: str) -> dict:
    import pytest

    applied = not patch or _git("apply", "-", stdin=patch) == 0
    out = io.StringIO()
    timed_out = False
    if applied:
        _forget_testbed_modules()
        signal.alarm(TIMEOUT_S)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                pytest.main(["-rA", "-p", "no:cacheprovider", "tests"])
        except _Timeout:
            timed_out = True
        finally:
            signal.alarm(0)
        text = out.getvalue()  # a runaway loop ends as a timeout or, under the memory cap, MemoryError
        timed_out = timed_out or any(w in text for w in ("_Timeout", "KeyboardInterrupt", "MemoryError"))
    _git("checkout", "-q", "-f", "HEAD")
    _git("clean", "-qfdx")
    return {"applied": applied, "timed_out": timed_out, "output": out.getvalue()}


def main(batch_path: str, out_path: str) -> None:
    os.chdir(TESTBED)
    os.environ["COLUMNS"] = "400"
    sys.dont_write_bytecode = True
    sys.path.insert(0, TESTBED)
    signal.signal(signal.SIGALRM, _alarm)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    with open(batch_path) as f:
        batch = json.load(f)
    with open(out_path, "w") as out:
        for entry in batch:
            out.write(json.dumps({"key": entry["key"], **run_one(entry["patch"])}) + "\n")
            out.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
