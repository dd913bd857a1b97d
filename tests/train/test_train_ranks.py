"""More than one rank (issue 9): `swe-aem train --nproc 2` re-executes itself under the
DeepSpeed launcher (the path a cluster takes) with two gloo ranks on CPU, and its update
equals the one-rank update on the same recorded batch."""

import os
import socket
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
from helpers import recorded_episodes

from swe_aem.agent.trajectory import Episode, write_episodes
from swe_aem.cli import main
from swe_aem.commands.train import _launch_command

ROOT = Path(__file__).resolve().parents[2]


def _args(**kw) -> Namespace:
    base = Namespace(model="tiny", algo="rloo_aem", recipe=None, run_dir=Path("runs/x"), resume=True,
                     launcher="auto", hostfile=None, num_gpus=None, nproc=2, overrides=["run.steps=3"])
    return Namespace(**{**vars(base), **kw})


def test_launch_commands_forward_the_run_not_the_launch(monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "29877")
    ds = _launch_command(_args(), 2)
    assert ds[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]
    # DeepSpeed would otherwise append --local_rank=N, which the train parser rejects
    assert {"--master_port=29877", "--no_local_rank", "--num_gpus=2"} <= set(ds)
    tail = ds[ds.index("swe_aem.commands.train") + 1:]
    assert tail == ["--model", "tiny", "--algo", "rloo_aem", "--run-dir", "runs/x", "--resume", "run.steps=3"]
    tr = _launch_command(_args(launcher="torchrun"), 3)
    assert tr[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=3" in tr
    assert "--master_port=29877" in tr and tr[-len(tail):] == tail
    assert "--hostfile=hosts" in _launch_command(_args(hostfile="hosts"), 2)


def test_nproc_errors_are_clear(capsys, tmp_path, monkeypatch):
    # a process that already joined a process group (LOCAL_RANK set) trains in place
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert main(["train", "--nproc", "0", "--run-dir", str(tmp_path)]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err
    assert main(["train", "--nproc", "2", "--launcher", "none", "--run-dir", str(tmp_path)]) == 2
    assert "needs a launcher" in capsys.readouterr().err


def _episodes() -> list[Episode]:
    """Two tasks, rewards 1 and 0 in each group, one or two turns each; seven episodes (the
    ranks hold 4 and 3), one cut short (compact filtering: in the baseline, out of the loss)."""
    return recorded_episodes(seed=0, cut_short=(0, 1))[:7]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(run_dir: Path, nproc: int, model: Path, replay: Path) -> subprocess.CompletedProcess:
    # adam_eps=1 makes Adam's first step lr * g / (|g| + 1), i.e. linear in the gradient
    # (|g| << 1 here): the weights then compare gradients. With eps=1e-8 the step is
    # about lr * sign(g), and float32 rounding flips the sign of near-zero gradient
    # entries: one rank with another micro-batching already differs by 4e-4 there.
    # lr=0.01 keeps the second mini-batch near the policy that sampled it (ratio mean about
    # 1.1): with lr=1 its ratios reached e^7, its loss (about 1,000) amplified the float32
    # rounding that differs between CPUs' kernels to 2.3e-4 on one CPU and not on another.
    cmd = [sys.executable, "-m", "swe_aem.cli", "train", "--algo", "rloo_aem", "--nproc", str(nproc),
           "--run-dir", str(run_dir), f"model={model}", f"run.replay={replay}", "run.steps=1",
           "rollout.tasks_per_step=2", "rollout.samples_per_task=4", "algo.tis_cap=null",
           "trainer.lr=0.01", "trainer.adam_eps=1.0", "trainer.mini_batches=2", "trainer.seed=3",
           "trainer.zero_stage=2"]  # the GPU presets' partitioned optimizer (the tiny default: 0)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(DS_ACCELERATOR="cpu", MASTER_PORT=str(_free_port()))
    return subprocess.run(cmd, check=False, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def _metrics(run_dir: Path) -> dict:
    import json

    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1
    return json.loads(rows[0])


@pytest.mark.slow
def test_two_gloo_ranks_give_the_one_rank_update(tmp_path):
    from safetensors.torch import load_file

    from swe_aem.policy.models import prepare_model

    model = prepare_model("tiny", progress=False)
    replay = tmp_path / "episodes.jsonl"
    write_episodes(replay, _episodes())
    runs = {}
    for nproc in (1, 2):
        proc = _train(tmp_path / f"ranks{nproc}", nproc, model, replay)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[nproc] = proc
    assert "deepspeed.launcher.runner" in runs[2].stderr and "launching" not in runs[1].stderr
    # one folder for both ranks: rank 0 writes the checkpoints (tests/train/test_train_nodes.py: none)
    assert "one folder for all 2 rank(s)" in " ".join(runs[2].stdout.split())
    for nproc in (1, 2):  # ZeRO-2 keeps one optimizer shard per rank: two ranks really trained
        ckpt = next((tmp_path / f"ranks{nproc}" / "checkpoints").glob("step-*")) / "deepspeed"
        assert len(list(ckpt.glob("zero_pp_rank_*_optim_states.pt"))) == nproc

    one, two = _metrics(tmp_path / "ranks1"), _metrics(tmp_path / "ranks2")
    assert one["frac_pos_adv"] > 0 and one["frac_neg_adv"] > 0  # rewards 0 and 1 in a group
    assert one["trajectories_filtered"] == 1 and one["optimizer_steps"] == two["optimizer_steps"] == 2
    # each mini-batch balanced over the ranks by workload (plan_update): one rank never waits
    assert one["update_balance"] == 1.0 and 1.0 <= two["update_balance"] < 2.0
    # measured on one CPU: 5e-6 relative for the loss and the gradient norm, 20x below this
    for key in ("loss", "grad_norm", "ratio_mean", "approx_kl", "response_entropy_mean", "alpha_max",
                "reward_mean"):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-7), key

    base = load_file(str(model / "model.safetensors"))
    w1 = load_file(str(tmp_path / "ranks1" / "final_model" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "ranks2" / "final_model" / "model.safetensors"))
    moved = max(float((w1[k] - base[k]).abs().max()) for k in base)
    diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert moved > 1e-3, moved  # the step changed the weights
    # the same update to a few float32 ulps of the weights (one ulp of a weight near 1 is
    # 1.2e-7: measured 1.2e-7 against a move of 1.8e-3)
    assert diff < 1e-3 * moved, (diff, moved)


_WAIT = """
import sys, time
from swe_aem.train.ranks import init_distributed
from swe_aem.train.ranks import broadcast as _broadcast
rank, _ = init_distributed(float(sys.argv[1]))
if rank == 0:
    time.sleep(float(sys.argv[2]))  # rank 0 rolling out
try:
    print("got", _broadcast("episodes" if rank == 0 else None), flush=True)
except Exception as exc:
    print("failed:", type(exc).__name__, flush=True)
"""

_EVAL_ON_RANK0 = """
import sys, time
from swe_aem.train.ranks import init_distributed
from swe_aem.train.loop import on_rank0
rank, _ = init_distributed(60.0)
def evaluate():
    time.sleep(2)
    if sys.argv[1] == "fail":
        raise ValueError("no held-out instance was graded")
    print("evaluated on rank", rank, flush=True)
    return {"resolve_rate": 0.25}
try:
    got = on_rank0(evaluate, "held-out evaluation (after)")
    print("went on with", got, flush=True)
except Exception as exc:
    print("failed:", type(exc).__name__, exc, flush=True)
"""


def _ranks_waiting(timeout_s: float, rank0_busy_s: float, script: str = _WAIT) -> list[str]:
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "DS_ACCELERATOR": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(timeout_s), str(rank0_busy_s)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in (0, 1)]
    try:
        said = ("got", "failed", "evaluated", "went")  # not DeepSpeed's own prints
        return [[x for x in p.communicate(timeout=180)[0].splitlines() if x.startswith(said)] for p in procs]
    finally:
        for p in procs:
            p.kill()


def test_ranks_wait_for_rank0_as_long_as_the_collective_timeout():
    """Ranks 1..N wait in a collective while rank 0 rolls out and evaluates: DeepSpeed's
    10-minute default would end a multi-rank run at its first long step; the trainer passes
    run.collective_timeout_s (here scaled down to seconds)."""
    assert _ranks_waiting(timeout_s=3, rank0_busy_s=8)[1][-1].startswith("failed")
    assert _ranks_waiting(timeout_s=60, rank0_busy_s=8) == [["got episodes"], ["got episodes"]]


def test_work_on_rank0_gives_its_result_to_every_rank_and_its_failure_stops_every_rank():
    """Two gloo ranks: the work (a held-out evaluation, a step's rollout) runs on rank 0 only
    while rank 1 waits and gets its result; when it fails, rank 0 raises its error and rank 1
    an error naming it (instead of waiting)."""
    ok = _ranks_waiting(0, 0, _EVAL_ON_RANK0.replace("sys.argv[1]", '"pass"'))
    went = "went on with {'resolve_rate': 0.25}"
    assert ok == [["evaluated on rank 0", went], [went]]
    r0, r1 = _ranks_waiting(0, 0, _EVAL_ON_RANK0.replace("sys.argv[1]", '"fail"'))
    assert r0 == ["failed: ValueError no held-out instance was graded"]
    assert r1 == [("failed: TrainingSetupError held-out evaluation (after) failed on rank 0: "
                   "no held-out instance was graded")]
