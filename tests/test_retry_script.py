"""scripts/retry.sh: the set-up's downloads (pip, apt) survive a moment's network trouble."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "retry.sh"


def _run(attempts: int, fail_times: int, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run retry.sh on a command that fails (exit 7) its first `fail_times` calls."""
    counter = tmp_path / "calls"
    counter.write_text("0")
    cmd = (f'n=$(($(cat {counter}) + 1)); echo $n > {counter}; '
           f'[ $n -gt {fail_times} ] || exit 7')
    got = subprocess.run(["bash", str(SCRIPT), str(attempts), "bash", "-c", cmd], check=False,
                         capture_output=True, text=True, env={**os.environ, "RETRY_WAIT_S": "0"}, timeout=60)
    return got, int(counter.read_text())


def test_a_command_that_fails_twice_then_succeeds_succeeds(tmp_path: Path) -> None:
    got, calls = _run(attempts=4, fail_times=2, tmp_path=tmp_path)
    assert got.returncode == 0 and calls == 3
    assert "try 2/4" in got.stderr and "try 3/4" in got.stderr


def test_a_command_that_keeps_failing_gives_up_with_its_exit_code(tmp_path: Path) -> None:
    got, calls = _run(attempts=3, fail_times=10, tmp_path=tmp_path)
    assert got.returncode == 7 and calls == 3
    assert "failed 3 times (last exit 7); giving up" in got.stderr


def test_a_command_that_succeeds_runs_once(tmp_path: Path) -> None:
    got, calls = _run(attempts=4, fail_times=0, tmp_path=tmp_path)
    assert got.returncode == 0 and calls == 1 and got.stderr == ""


def test_apt_waits_for_the_lock_and_retries(tmp_path: Path) -> None:
    """scripts/apt.sh gives apt-get the lock wait and download retries, and reruns it on failure
    (apt-get itself is stood in for by a script that records its arguments and fails once)."""
    (tmp_path / "apt-get").write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/args\n[ $(wc -l < {tmp_path}/args) -gt 1 ]\n')
    (tmp_path / "apt-get").chmod(0o755)
    got = subprocess.run(["bash", str(SCRIPT.parent / "apt.sh"), "install", "-y", "make"], check=False,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RETRY_WAIT_S": "0", "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    calls = (tmp_path / "args").read_text().splitlines()
    assert got.returncode == 0 and len(calls) == 2
    assert calls[0] == "-o DPkg::Lock::Timeout=600 -o Acquire::Retries=5 install -y make"
