"""Several nodes, with or without a shared filesystem (issue 21): the trainer asks at
start-up whether every rank sees one run folder; without one every node keeps its own
checkpoints (DeepSpeed's node-local storage, each node's LOCAL_RANK 0 doing the folder
work), and a resume loads rank 0's step on every rank or stops every rank with the reason.

Here a "node" is a process with LOCAL_RANK 0 and a run folder of its own on this machine."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import recorded_episodes

from swe_aem.agent.trajectory import Episode, write_episodes

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int, local_rank: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu",
               OMP_NUM_THREADS="1", COLUMNS="1000")  # rich: one line per message
    return env


# Each scenario gives every rank (LOCAL_RANK, run folder); all run in one process group.
_PROBE = """
import json, os, sys
from datetime import timedelta
from pathlib import Path
import torch.distributed as dist
from swe_aem.train.checkpoint import CheckpointError, CheckpointManager, probe_storage

dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank, base = dist.get_rank(), Path(sys.argv[1])
for name, layout in json.loads(sys.argv[2]):
    local, folder = layout[rank]
    os.environ["LOCAL_RANK"] = str(local)
    try:
        s = probe_storage(base / name / folder, settle_s=0.5)
        print("probe", name, s.shared, s.nodes, s.ranks, flush=True)
    except CheckpointError as exc:
        print("probe", name, "failed:", exc, flush=True)
os.environ["LOCAL_RANK"] = "0"
for name, steps in json.loads(sys.argv[3]):
    root = base / name / f"node{rank}"
    for n in steps[rank]:
        (root / f"step-{n:06d}").mkdir(parents=True)
        (root / f"step-{n:06d}" / "trainer_state.json").write_text("{}")
    (root / ".tmp-step-000009").mkdir(parents=True)  # an interrupted save is no checkpoint
    try:
        got = CheckpointManager(root, node_local=True).resume_point()
        print("resume", name, got.name if got else None, flush=True)
    except CheckpointError as exc:
        print("resume", name, "failed:", exc, flush=True)
dist.destroy_process_group()  # gloo's threads left running at exit can abort the process
"""


def _run_ranks(script: str, args: list[str], world: int = 3, timeout: float = 120) -> list[list[str]]:
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", script, *args], text=True, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_env(r, world, port)) for r in range(world)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    return [[x for x in out.splitlines() if x.startswith(("probe", "resume"))] for out, _ in outs]


def test_probe_tells_one_folder_from_node_local_disks_and_resume_takes_rank0s_step(tmp_path):
    """Three gloo ranks in one group, several layouts: one node of three ranks, three nodes
    on one folder (shared), three nodes with folders of their own (node-local), two nodes of
    which one holds two ranks (node-local), two nodes sharing a folder and one not (refused
    on every rank). Then resume_point on node-local folders holding different steps."""
    layouts = [
        ("one-node", [[0, "a"], [1, "a"], [2, "a"]]),
        ("shared", [[0, "a"], [0, "a"], [0, "a"]]),
        ("local", [[0, "a"], [0, "b"], [0, "c"]]),
        ("two-nodes", [[0, "a"], [1, "a"], [0, "b"]]),
        ("partial", [[0, "a"], [0, "a"], [0, "b"]]),
    ]
    steps = [
        ("same", [[1, 2], [1, 2], [2]]),
        ("fresh", [[], [], []]),
        ("lost", [[1, 2], [1], [1, 2]]),
        ("rank0-empty", [[], [], [3]]),
        ("nothing-common", [[2], [1], [2]]),
    ]
    views = _run_ranks(_PROBE, [str(tmp_path), json.dumps(layouts), json.dumps(steps)])
    for lines in views:
        said = {x.split()[1]: x.split(None, 2)[2] for x in lines}
        assert said["one-node"] == "True 1 3"
        assert said["shared"] == "True 3 3"
        assert said["local"] == "False 3 3"
        assert said["two-nodes"] == "False 2 3"
        assert said["partial"].startswith("failed: the run folder") and "some nodes and not" in said["partial"]
        assert f"rank 1 (host {socket.gethostname()}, LOCAL_RANK 0) sees in {tmp_path / 'partial' / 'a'} " \
            "the probes of ranks [0, 1]; rank 2" in said["partial"], said["partial"]
        assert said["same"] == "step-000002"  # rank 2 has no step-000001: not needed
        assert said["fresh"] == "None"
        lost = said["lost"]
        assert lost.startswith("failed: cannot resume: rank 0 resumes from step-000002"), lost
        assert "rank 1 (host" in lost and "it has: step-000001)" in lost and "rank 2" not in lost
        assert "step-000001 is the newest step every node has" in lost
        empty = said["rank0-empty"]
        assert "rank 0 has no complete checkpoint" in empty and "rank 2 (host" in empty
        assert "has step-000003" in empty
        common = said["nothing-common"]
        assert "rank 1 (host" in common and "newest step every node has" not in common
    # every rank raised the same error
    assert views[0] == views[1] == views[2]
    leftovers = list(tmp_path.rglob(".storage-probe-*"))
    assert not leftovers, leftovers


def _episodes() -> list[Episode]:
    """Two tasks, rewards 0 and 1 in each group (tests/train/test_train_ranks.py's kind)."""
    return recorded_episodes(seed=1)


def _two_nodes(dirs: list[Path], model: Path, replay: Path, steps: int, resume: bool
               ) -> list[tuple[int, str, str]]:
    """`swe-aem train` as two nodes: RANK 0 and 1, each LOCAL_RANK 0 with its own run folder."""
    port = _free_port()
    procs = []
    for rank, run_dir in enumerate(dirs):
        cmd = [sys.executable, "-m", "swe_aem.cli", "train", "--algo", "rloo_aem", "--run-dir", str(run_dir),
               f"model={model}", f"run.replay={replay}", f"run.steps={steps}", "run.save_every=1",
               "rollout.tasks_per_step=2", "rollout.samples_per_task=4", "trainer.lr=0.01",
               "trainer.seed=3", "trainer.zero_stage=2", *(["--resume"] if resume else [])]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(rank, 2, port), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        outs = [p.communicate(timeout=400) for p in procs]  # a hang fails here
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        tails = [" ".join(p.communicate()[1].split())[-1500:] for p in procs]
        pytest.fail(f"{steps} step(s), resume={resume}: the nodes did not end within 400 s "
                    f"(a hang, or a machine far too loaded); stderr tails: {tails}")
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, out, " ".join(err.split())) for p, (out, err) in zip(procs, outs)]


def _module(step_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(step_dir / "deepspeed" / "mp_rank_00_model_states.pt", weights_only=False)["module"]


@pytest.mark.slow
def test_two_nodes_without_a_shared_disk_resume_at_one_step(tmp_path):
    from swe_aem.policy.models import prepare_model

    model = prepare_model("tiny", progress=False)
    replay = tmp_path / "episodes.jsonl"
    write_episodes(replay, _episodes())
    dirs = [tmp_path / "node0", tmp_path / "node1"]

    first = _two_nodes(dirs, model, replay, steps=1, resume=False)
    for rc, out, err in first:
        assert rc == 0, err[-3000:]
    assert "is not shared by the 2 nodes" in " ".join(first[0][1].split())
    for rank, d in enumerate(dirs):
        step1 = d / "checkpoints" / "step-000001"
        assert json.loads((step1 / "trainer_state.json").read_text())["step"] == 1
        # each node holds the module state (DeepSpeed's node-local storage), its ranks'
        # optimizer shards and RNG states: enough to resume without the other's disk
        assert (step1 / "deepspeed" / "mp_rank_00_model_states.pt").is_file()
        assert [p.name for p in (step1 / "deepspeed").glob("zero_pp_rank_*")] == [
            f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"]
        assert [p.name for p in step1.glob("rng-rank*.pt")] == [f"rng-rank{rank}.pt"]
        assert not list(d.glob("checkpoints/.tmp-*"))

    second = _two_nodes(dirs, model, replay, steps=2, resume=True)
    for rc, out, err in second:
        assert rc == 0, err[-3000:]
    assert f"resumed from {dirs[0] / 'checkpoints' / 'step-000001'} at step 1" in " ".join(
        second[0][1].split())
    for d in dirs:
        assert json.loads((d / "checkpoints" / "step-000002" / "trainer_state.json").read_text())["step"] == 2
    rows = [json.loads(x) for x in (dirs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    # the two nodes wrote their own copies of the weights after step 2: the same, bit for bit,
    # and moved by the resumed step
    a, b = _module(dirs[0] / "checkpoints" / "step-000002"), _module(dirs[1] / "checkpoints" / "step-000002")
    before = _module(dirs[0] / "checkpoints" / "step-000001")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], before[k]) for k in a)

    # node 1 lost its newest checkpoint: every rank refuses, naming it, instead of hanging or
    # resuming at different steps
    import shutil

    shutil.rmtree(dirs[1] / "checkpoints" / "step-000002")
    third = _two_nodes(dirs, model, replay, steps=3, resume=True)
    for rc, _, err in third:
        assert rc == 1, err[-3000:]
        assert "cannot resume: rank 0 resumes from step-000002" in err, err[-3000:]
        assert f"rank 1 (host {socket.gethostname()}, LOCAL_RANK 0) lacks under {dirs[1] / 'checkpoints'}" in err
        assert "(it has: step-000001)" in err and "step-000001 is the newest step every node has" in err
