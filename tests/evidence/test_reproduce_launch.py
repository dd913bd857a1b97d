"""`swe-aem reproduce` trains each arm in a `swe-aem train` of its own, launched as that
command launches its ranks (issue 21): with a hostfile both arms run as two gloo ranks
through the DeepSpeed launcher, one arm's processes all gone before the next starts; an arm
that fails or is interrupted leaves none of its processes behind.

The one stand-in: `ssh` to the hostfile's node (no SSH server here). DeepSpeed's launcher
asks a hostfile's first node for `hostname` and `hostname -I` over ssh, then launches
the ranks of a one-node hostfile locally; the stand-in runs those commands here. Real ssh
and ranks on other nodes (pdsh) are untested here."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from itertools import pairwise
from pathlib import Path

import pytest
from helpers import recorded_episodes

from swe_aem.agent.trajectory import write_episodes
from swe_aem.cli import main
from swe_aem.commands.reproduce import run_arm

ROOT = Path(__file__).resolve().parents[2]


def _cmdlines() -> dict[int, list[str]]:
    out = {}
    for f in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = f.read_bytes().split(b"\0")
        except OSError:
            continue
        out[int(f.parent.name)] = [a.decode(errors="replace") for a in args if a]
    return out


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state


def _running(marker: str) -> list[int]:
    return [pid for pid, args in _cmdlines().items() if marker in args and pid != os.getpid()]


def test_a_failed_arm_leaves_no_process():
    marker = f"{300 + uuid.uuid4().int % 10**6 / 10**6:.6f}"  # a `sleep` no one else runs
    started = time.monotonic()
    # the arm's launcher exits 3 and leaves a child behind in its process group
    code = run_arm(["bash", "-c", f"sleep {marker} & sleep 1; exit 3"], stop_timeout_s=5)
    assert code == 3
    assert _running(marker) == []
    assert time.monotonic() - started < 30  # ended, not waited out (300 s)


def test_ctrl_c_ends_the_arms_whole_process_group():
    marker = f"{300 + uuid.uuid4().int % 10**6 / 10**6:.6f}"
    # Python's own Ctrl-C handler, also when this suite runs in the background (`cmd &` starts
    # it with SIGINT ignored, and Python then installs no handler)
    script = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "from swe_aem.commands.reproduce import run_arm; "
              f"run_arm(['bash', '-c', 'sleep {marker} & sleep {marker}; true'], stop_timeout_s=5)")
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(_running(marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_running(marker)) == 2, "the arm's two sleeps never started"
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert "KeyboardInterrupt" in err  # Ctrl-C reached the driver, which ended the arm first
    assert _running(marker) == []


_SSH = """#!/bin/sh
# ssh [-o OPT | -p PORT]... HOST COMMAND...: run COMMAND here (the host is this machine)
while [ "${1#-}" != "$1" ]; do case "$1" in -o|-p) shift 2;; *) shift;; esac; done
shift
exec sh -c "$*"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Watch:
    """The processes of each arm's training (those given `--run-dir DIR`), polled every 50 ms
    from /proc: first and last sight, the ranks (`-m swe_aem.commands.train`) and the
    launchers' command lines."""

    def __init__(self, dirs: dict[str, Path]):
        self.dirs, self.seen = {arm: str(d) for arm, d in dirs.items()}, {}
        self.ranks: dict[str, set[int]] = {arm: set() for arm in dirs}
        self.launchers: dict[str, set[str]] = {arm: set() for arm in dirs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            lines = _cmdlines()
            for pid, args in lines.items():
                for arm, d in self.dirs.items():
                    if any(a == "--run-dir" and b == d for a, b in pairwise(args)):
                        first, _ = self.seen.get(arm, (now, now))
                        self.seen[arm] = (first, now)
                        # a rank, not a child a rank forked (a fork keeps its parent's command
                        # line: DeepSpeed's op builds, multiprocessing workers)
                        if args[1:4] == ["-u", "-m", "swe_aem.commands.train"] and \
                                lines.get(_parent(pid), [])[1:4] != args[1:4]:
                            self.ranks[arm].add(pid)
                        elif "deepspeed.launcher.runner" in args:
                            self.launchers[arm].add(" ".join(args))
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.vllm
def test_reproduce_with_a_hostfile_launches_each_arm_as_two_ranks_one_after_the_other(
        tmp_path, monkeypatch, capfd, local_instances):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    replay = tmp_path / "episodes.jsonl"
    write_episodes(replay, recorded_episodes(seed=2))
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(_SSH)
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "repro"
    dirs = {arm: out / arm / "train" for arm in ("base", "aem")}
    with _Watch(dirs) as watch:
        # --gpu-memory-gib: with a hostfile the plan counts the hostfile's slots as GPUs and
        # asks for their memory (none is visible on CPU); the tiny model fits any
        rc = main(["reproduce", "--model", "tiny", "--out", str(out), "--hostfile", str(hostfile),
                   "--launcher", "deepspeed", "--gpu-memory-gib", "80", "--eval-runs", "1",
                   f"run.replay={replay}", "trainer.zero_stage=2", "--instances", "swe-aem__textkit-1"])
    said = capfd.readouterr()
    assert rc == 0, said.err[-3000:]
    # each arm went through the DeepSpeed launcher with the hostfile, as two rank processes,
    # and its rank 0 saw a world of 2
    for arm in dirs:
        assert len(watch.ranks[arm]) == 2, (arm, watch.ranks)
        assert any(f"--hostfile={hostfile}" in x for x in watch.launchers[arm]), (arm, watch.launchers)
    assert " ".join(said.out.split()).count("one folder for all 2 rank(s)") == 2
    for arm, d in dirs.items():
        step = next((d / "checkpoints").glob("step-*")) / "deepspeed"
        # ZeRO-2 (set above; the GPU presets') keeps one optimizer shard per rank: two ranks trained
        assert sorted(p.name for p in step.glob("zero_pp_rank_*_optim_states.pt")) == [
            f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)], arm
        assert len((d / "metrics.jsonl").read_text().splitlines()) == 1
        assert (out / arm / "eval" / "eval.json").is_file()
    assert "aem: false" in (dirs["base"] / "config.yaml").read_text()
    assert "aem: true" in (dirs["aem"] / "config.yaml").read_text()
    # the aem arm's first process appeared after the base arm's last was gone
    assert set(watch.seen) == {"base", "aem"}, watch.seen
    assert watch.seen["base"][1] < watch.seen["aem"][0], watch.seen
    rec = json.loads((out / "reproduction.json").read_text())
    assert rec["measured"]["n_instances"] == 1 and rec["measured"]["runs_base"] == 1
    # every stage of `make reproduce MODEL=tiny`: the published numbers beside the measured,
    # a servable model per arm, the report
    assert rec["published"]["base_pass1"] == pytest.approx(42.3)
    assert rec["published"]["aem_pass1"] == pytest.approx(43.7)
    for arm in dirs:
        assert (out / arm / "train" / "final_model" / "model.safetensors").is_file()
    assert "42.3" in (out / "reproduction.md").read_text()
