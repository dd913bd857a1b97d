"""Per-token entropy in the credit record (issue 32, run.record_token_entropy): forward_old keeps
each sampled token's entropy per sample (gathered to rank 0 on several ranks), record_credit
writes them into each turn's row (`token_entropy`) only when the switch is on."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_loop import _cfg, synthetic_episodes

from swe_aem.agent.trajectory import write_episodes
from swe_aem.jsonl import scan_jsonl
from swe_aem.train.batch import TurnLayout, samples_from_episodes
from swe_aem.train.credit_log import credit_path
from swe_aem.train.loop import Trainer
from swe_aem.train.update import forward_old

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
F32_ULP = 2.0 ** -23  # float32's spacing relative to a value (an upper bound, at a power of two)
ROUNDED = 0.5e-4  # a value rounded to 4 decimals is within this of the value


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "trajectories.jsonl"
    write_episodes(path, synthetic_episodes())
    return path


def _turn_means(samples, token_entropy: list[torch.Tensor], num_turns: int) -> torch.Tensor:
    """Each turn's mean of its tokens' entropies, summed in float64 as forward_old sums them;
    a sampled token's turn is the sample's turn index shifted by one (the forward's targets)."""
    sums = torch.zeros(num_turns, dtype=torch.float64)
    counts = torch.zeros(num_turns, dtype=torch.float64)
    offset = 0
    for s, ent in zip(samples, token_entropy):
        turns = torch.tensor([t for t in s.turn_index[1:] if t >= 0], dtype=torch.long) + offset
        assert len(turns) == ent.numel()
        sums.index_add_(0, turns, ent.double())
        counts.index_add_(0, turns, torch.ones_like(ent, dtype=torch.float64))
        offset += s.num_turns
    return (sums / counts).float()


def test_forward_old_keeps_each_sampled_tokens_entropy(small_model, replay, tmp_path):
    """With token_entropy, one value per sampled token of each sample, whose turn means are
    turn_entropy: the same float32 entropies summed in float64 in another order, then rounded
    to float32, so they agree within one float32 ulp of the mean (padded and packed rows
    alike). Without, nothing is kept."""
    trainer = Trainer(_cfg(small_model, replay, "run.steps=1"), tmp_path / "run")
    samples = samples_from_episodes(synthetic_episodes(), ["max_turns"])
    layout = TurnLayout.of(samples)
    for packed in (False, True):
        fwd = forward_old(trainer.engine, samples, layout, 96, trainer.pad_id, packed=packed, token_entropy=True)
        assert [t.numel() for t in fwd.token_entropy] == [sum(t >= 0 for t in s.turn_index[1:]) for s in samples]
        assert sum(t.numel() for t in fwd.token_entropy) == fwd.tokens
        means = _turn_means(samples, fwd.token_entropy, layout.num_turns)
        assert torch.allclose(means, fwd.turn_entropy, rtol=F32_ULP, atol=0), (means - fwd.turn_entropy).abs().max()
        assert all(bool((t > 0).all()) for t in fwd.token_entropy)  # a random model's entropies
    assert forward_old(trainer.engine, samples, layout, 96, trainer.pad_id).token_entropy is None


def _rows(run: Path) -> list[dict]:
    return [ln.row for ln in scan_jsonl(credit_path(run, 0))]


def test_record_credit_writes_token_entropies_only_when_on(small_model, replay, tmp_path):
    """One replay step with the switch on and one with it off: on, each row lists its turn's
    token entropies (as many as its tokens, their mean its entropy within the 4 decimals'
    rounding and float32's), everything else equal to the off run's rows; off, no such key.
    The bytes it costs a sampled token are measured and bounded."""
    runs = {}
    for on in (True, False):
        runs[on] = tmp_path / f"run-{on}"
        Trainer(_cfg(small_model, replay, "run.steps=1", f"run.record_token_entropy={on}"), runs[on]).train()
    on_rows, off_rows = _rows(runs[True]), _rows(runs[False])
    assert on_rows and len(on_rows) == len(off_rows)
    assert all("token_entropy" not in r for r in off_rows)
    for r, off in zip(on_rows, off_rows):
        values = r.pop("token_entropy")
        assert len(values) == r["tokens"] > 0
        assert all(v == round(v, 4) for v in values)
        assert sum(values) / len(values) == pytest.approx(r["entropy"], abs=ROUNDED + F32_ULP * r["entropy"])
        assert r == off  # the switch changes nothing else
    tokens = sum(r["tokens"] for r in off_rows)
    size = {on: credit_path(runs[on], 0).stat().st_size for on in runs}
    key = len('"token_entropy":[],')  # each row's key and brackets
    per_token = (size[True] - size[False]) / tokens
    per_value = (size[True] - size[False] - key * len(off_rows)) / tokens
    print(f"credit record: {size[False]} B off, {size[True]} B on, {tokens} sampled tokens in "
          f"{len(off_rows)} turns: {per_token:.2f} B a sampled token with the key, {per_value:.2f} "
          "B a value")
    # a value of this model (~log V, two integer digits) and its comma: at most 8 bytes
    assert 4 <= per_value <= 8, per_value


# Two gloo ranks, each scoring its shard (balanced_shards, as the trainer's plan shards): rank 0
# gets every sample's token entropies, rank 1 none; rank 0 writes their turn means against the
# all-reduced turn_entropy.
_RANK = r"""
import json, sys
import torch
sys.path[:0] = [sys.argv[1], sys.argv[1].rsplit("/", 1)[0]]  # this test folder, tests/
from test_train_deepspeed import make_samples, settings, tiny_lm
from test_train_credit_log import _turn_means
from swe_aem.train.batch import TurnLayout, balanced_shards
from swe_aem.train.model import build_engine
from swe_aem.train.ranks import init_distributed
from swe_aem.train.update import forward_old

rank, world = init_distributed()
samples = make_samples()
layout = TurnLayout.of(samples)
shard = balanced_shards([len(s.input_ids) for s in samples], world)[rank]
engine = build_engine(tiny_lm(), settings(2), chunk_size=16)
fwd = forward_old(engine, samples, layout, 40, 0, indices=shard, token_entropy=True)
out = {"rank": rank, "shard": shard, "kept": [t.numel() for t in fwd.token_entropy]}
if rank == 0:
    means = _turn_means(samples, fwd.token_entropy, layout.num_turns)
    out["rel_diff"] = float(((means - fwd.turn_entropy).abs() / fwd.turn_entropy).max())
    out["sampled"] = [sum(t >= 0 for t in s.turn_index[1:]) for s in samples]
print("RESULT " + json.dumps(out), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_token_entropies_are_gathered_to_rank0():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), DS_ACCELERATOR="cpu")
    tests = str(Path(__file__).resolve().parent)
    procs = [subprocess.Popen([sys.executable, "-c", _RANK, tests], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    res = [json.loads(next(x for x in o.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
           for o, _ in outs]
    assert res[0]["shard"] and res[1]["shard"]  # both ranks scored samples
    assert res[0]["kept"] == res[0]["sampled"]  # rank 0: every sample's, its own and rank 1's
    assert res[1]["kept"] == []  # rank 1 sent its shard's and keeps nothing
    assert res[0]["rel_diff"] <= F32_ULP, res[0]["rel_diff"]  # one float32 ulp, as on one rank
