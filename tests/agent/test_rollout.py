"""`swe-aem rollout` end to end: concurrent episodes on real containers, real grading,
trajectories.jsonl + official-format predictions.jsonl. The policy is the scripted
stand-in (ScriptedPolicyServer, at the HTTP boundary) so the outcome is known:
one instance gets its gold edits, the other gives up without editing."""

from __future__ import annotations

import json
import os

import pytest

from swe_aem.agent.trajectory import read_episodes
from swe_aem.cli import main as cli_main
from swe_aem.policy.models import load_preset
from swe_aem.policy.scripted import ScriptedPolicyServer, editor_calls_for_patch

pytestmark = [pytest.mark.slow, pytest.mark.docker]

SOLVED, GIVEN_UP = "swe-aem__pyledger-3", "swe-aem__textkit-3"
FINISH = "<function=finish>\n</function>"


def test_rollout_command_writes_graded_trajectories_and_predictions(tmp_path, local_instances) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(load_preset("tiny").default_path)
    by_id = {i.instance_id: i for i in local_instances if i.instance_id in (SOLVED, GIVEN_UP)}
    gold = editor_calls_for_patch(by_id[SOLVED].patch) + [FINISH]

    def respond(prompt: str, turn: int) -> str:
        if by_id[SOLVED].problem_statement.strip() in prompt:
            return gold[min(turn, len(gold) - 1)]
        return FINISH

    out = tmp_path / "run"
    with ScriptedPolicyServer(tokenizer, respond) as server:
        rc = cli_main([
            "rollout", "--dataset", "local", "--instances", SOLVED, GIVEN_UP,
            "--model", "tiny", "--server-url", server.base_url, "--samples", "2",
            "--max-turns", "6", "--concurrency", "2", "--temperature", "0", "--out", str(out),
        ])
    assert rc == 0
    episodes = list(read_episodes(out / "trajectories.jsonl"))
    assert sorted((e.instance_id, e.sample_index) for e in episodes) == sorted(
        [(GIVEN_UP, 0), (GIVEN_UP, 1), (SOLVED, 0), (SOLVED, 1)])
    for ep in episodes:
        assert ep.termination == "finished"
        assert ep.reward == (1.0 if ep.instance_id == SOLVED else 0.0), (ep.grade_status, ep.grade_reason)
        flat = ep.flatten()
        assert len(flat.input_ids) == len(flat.loss_mask) == len(flat.rollout_logprobs)
    for name in ("predictions.jsonl", "predictions.sample1.jsonl"):
        rows = [json.loads(line) for line in (out / name).read_text().splitlines()]
        assert sorted(r["instance_id"] for r in rows) == sorted([GIVEN_UP, SOLVED])
        for row in rows:
            assert set(row) == {"instance_id", "model_name_or_path", "model_patch"}
            assert bool(row["model_patch"]) == (row["instance_id"] == SOLVED)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resolved"] == 2 and summary["resolve_rate"] == 0.5


def test_rollout_command_rejects_bad_arguments(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never start a real 15 GB download
    assert cli_main(["rollout", "--samples", "0", "--out", str(tmp_path)]) == 2
    assert "at least 1" in capsys.readouterr().out
    # errors of the project's kinds reach the CLI, which prints them and exits with the kind's
    # code (swe_aem/errors.py): a model that cannot be had is a set-up error (3), a bad dataset
    # row bad input (2)
    assert cli_main(["rollout", "--model", "7b", "--out", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("swe-aem rollout: error: ") and "hub is unreachable" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instance_id": "x"}\n')
    assert cli_main(["rollout", "--model", "tiny", "--dataset", str(bad), "--out", str(tmp_path)]) == 2
    assert "bad.jsonl:1 (instance_id='x'" in capsys.readouterr().err


def test_every_agent_flag_reaches_the_episodes() -> None:
    """--max-turns once reached no episode (it kept the agent's default of 30)."""
    import argparse

    from swe_aem.commands.agent_options import agent_from_args
    from swe_aem.commands.rollout import ROLLOUT_AGENT, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", "x", "--max-turns", "6", "--max-context", "2000", "--max-new-tokens", "99",
                              "--temperature", "0.3", "--top-p", "0.9", "--episode-timeout", "77",
                              "--seed", "5"])
    got = agent_from_args(args, ROLLOUT_AGENT).for_model(load_preset("tiny"))
    assert got.seed == 5
    assert (got.max_turns, got.max_context_tokens, got.max_new_tokens) == (6, 2000, 99)
    assert (got.temperature, got.top_p, got.episode_timeout_s) == (0.3, 0.9, 77.0)


def _bash(command: str) -> str:
    return f"<function=execute_bash>\n<parameter=command>{command}</parameter>\n</function>"


def _roll(tokenizer, pool, instance, respond, grade):
    import asyncio

    from swe_aem.agent.rollout_batch import rollout
    from swe_aem.agent.settings import AgentConfig
    from swe_aem.policy.client import PolicyClient

    with ScriptedPolicyServer(tokenizer, respond) as server:
        client = PolicyClient(server.base_url, "scripted", retries=1, backoff_s=0.05, timeout=30)
        result = asyncio.run(rollout([instance], 1, policy=client, tokenizer=tokenizer, pool=pool,
                                     config=AgentConfig(max_turns=4, temperature=0.0, tool_call_format="xml"), grade=grade,
                                     max_retries=1, concurrency=1, progress=False))
    return result, server


def test_agent_breaking_its_sandbox_is_a_kept_zero_not_retried(tokenizer, sandbox_pool, local_instances) -> None:
    """`kill -9 -1` ends the container while the daemon and the server are healthy: kept,
    reward 0 without running the grader, never rerun (the stand-in saw one episode's requests)."""
    from swe_aem.policy.scripted import script

    inst = next(i for i in local_instances if i.instance_id == GIVEN_UP)
    graded: list[str] = []
    result, server = _roll(tokenizer, sandbox_pool, inst, script([_bash("kill -9 -1"), _bash("ls"), FINISH]),
                           grade=lambda instance, patch: graded.append(patch))
    assert not result.dropped and len(result.episodes) == 1
    episode = result.episodes[0]
    assert episode.termination == "sandbox_broken", episode.error
    assert episode.reward == 0.0 and episode.grade_status == "sandbox_broken"
    assert "broke its sandbox" in episode.grade_reason and "is exited" in episode.grade_reason
    assert graded == [] and len(server.requests) == episode.num_turns <= 2


@pytest.fixture
def second_dockerd(local_instances):
    """A dockerd of this test's own (socket, data-root and exec-root under a short tmp folder:
    a unix socket path has a 108-byte cap), with one local image loaded; stopped at the end.
    Yields (its DOCKER_HOST, a function that stops it now). CI's own daemon is never touched."""
    import shutil
    import signal
    import subprocess
    import tempfile
    import time

    import docker

    root = tempfile.mkdtemp(prefix="dkd-", dir="/tmp")
    sock, pidfile = f"{root}/docker.sock", f"{root}/dockerd.pid"
    # a bridge of its own: with `--bridge none` dockerd deletes the host's docker0 at start, and the
    # CI daemon's containers on the default network fail until that daemon restarts
    bridge = f"dkd{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True, capture_output=True)
    log = open(f"{root}/dockerd.log", "w")  # noqa: SIM115 (the daemon writes it until stopped)
    proc = subprocess.Popen(
        ["dockerd", "--data-root", f"{root}/data", "--exec-root", f"{root}/x", "--pidfile", pidfile,
         "-H", f"unix://{sock}", "--bridge", bridge, "--iptables=false", "--ip-masq=false",
         "--shutdown-timeout", "1", "--cgroup-parent", "swe-aem-test-dockerd"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    try:
        for _ in range(60):
            if proc.poll() is not None or os.path.exists(sock):
                break
            time.sleep(0.5)
        client = docker.DockerClient(base_url=f"unix://{sock}", timeout=60)
        client.ping()
        image = next(i for i in local_instances if i.instance_id == GIVEN_UP).image
        subprocess.run(f"docker save {image} | docker -H unix://{sock} load -q", shell=True, check=True,
                       capture_output=True)
        client.close()
        yield f"unix://{sock}", stop
    finally:
        stop()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)


def test_daemon_stopped_mid_episode_is_infrastructure_retried_and_dropped(tokenizer, local_instances,
                                                                        second_dockerd) -> None:
    """The agent's call runs when its daemon stops: not the agent's damage (the daemon does
    not answer a ping): retried (the rerun cannot start a sandbox), then dropped with a record."""
    import threading

    from swe_aem.sandbox import SandboxPool

    host, stop_daemon = second_dockerd
    inst = next(i for i in local_instances if i.instance_id == GIVEN_UP)

    def respond(_prompt: str, turn: int) -> str:
        if turn == 0:
            threading.Timer(2.0, stop_daemon).start()  # while the call below runs
        return _bash("sleep 30") if turn == 0 else FINISH

    with SandboxPool([host], max_concurrency=1, run_id="pytest-daemon-stop") as pool:
        result, server = _roll(tokenizer, pool, inst, respond, grade=lambda instance, patch: None)
    assert not result.episodes and len(result.dropped) == 1
    dropped = result.dropped[0]
    assert dropped.attempts == 2 and "episode error" in dropped.reason, dropped
    assert len(server.requests) == 1, dropped  # the rerun's sandbox never started: no second request
