"""LoRA RL on the trainer's DeepSpeed engine (issue 29): trainer.lora, adapters injected in
place by peft, only they trained; adapter folders as peft saves them; the merged export;
adapter-only checkpoints; what vLLM refuses, refused before any rollout."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from test_train_deepspeed import LOSS, make_samples, settings, tiny_lm

from swe_aem.config import LORA_DEFAULT_LR, ConfigError, LoraConfig, load_config
from swe_aem.policy.adapters import (
    LoraOptionError,
    check_servable,
    refused_options,
    server_lora_args,
    server_max_lora_rank,
)
from swe_aem.policy.models import load_preset
from swe_aem.policy.server import ServerOptions, VLLMServer
from swe_aem.train.batch import TurnLayout, collate
from swe_aem.train.checkpoint import CheckpointManager, TrainState
from swe_aem.train.lora import (
    PEFT_PREFIX,
    adapter_state_dict,
    add_lora,
    decoder_linear_names,
    merged_state_dict,
    serving_preset,
    write_adapter,
)
from swe_aem.train.model import PolicyLogprobs, build_engine
from swe_aem.train.ranks import init_distributed
from swe_aem.train.update import forward_old, ppo_update

LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture(scope="module", autouse=True)
def _dist():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_distributed()


# ------------------------------------------------------------------ config and refusals
def test_lora_config_override_and_its_learning_rate():
    cfg = load_config(overrides=["trainer.lora.rank=16"])
    assert cfg.trainer.lora == LoraConfig(rank=16)
    assert cfg.trainer.learning_rate() == LORA_DEFAULT_LR == 1e-5
    assert load_config().trainer.lora is None and load_config().trainer.learning_rate() == 1e-6
    with pytest.raises(ConfigError, match="dropout=0.1: RL trains LoRA without dropout"):
        load_config(overrides=["trainer.lora.dropout=0.1"])
    with pytest.raises(ConfigError, match="rank=600 must be in \\[1, 512\\]"):
        load_config(overrides=["trainer.lora.rank=600"])


def test_vllm_rank_limit_is_rounded_up_or_refused():
    assert [server_max_lora_rank(r) for r in (1, 2, 8, 9, 32, 300, 512)] == [1, 8, 8, 16, 32, 320, 512]
    with pytest.raises(LoraOptionError, match="above vLLM's largest --max-lora-rank"):
        server_max_lora_rank(513)
    assert server_lora_args(12, 3) == ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "3",
                                       "--max-cpu-loras", "3"]
    preset = serving_preset(load_preset("tiny"), LoraConfig(rank=12), max_staleness=2)
    cmd = VLLMServer("x", ServerOptions.from_preset(preset), gpu=False)
    assert cmd.command()[-7:] == server_lora_args(12, 3)
    assert cmd.environment({})["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
    plain = VLLMServer("x", ServerOptions.from_preset(load_preset("tiny")), gpu=False)
    assert "--enable-lora" not in plain.command()
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in plain.environment({})


def test_options_vllm_refuses_are_named(tmp_path):
    assert refused_options({"r": 8, "bias": "none", "modules_to_save": None}) == []
    bad = {"r": 8, "use_dora": True, "bias": "lora_only", "modules_to_save": ["lm_head"]}
    (tmp_path / "adapter_config.json").write_text(json.dumps(bad))
    with pytest.raises(LoraOptionError) as err:
        check_servable(tmp_path)
    assert all(s in str(err.value) for s in ("modules_to_save", "use_dora", "bias='lora_only'"))
    with pytest.raises(LoraOptionError, match="not a peft adapter folder"):
        check_servable(tmp_path / "nothing")


def test_default_targets_are_the_decoders_linears_and_a_missing_one_is_refused(tmp_path):
    lm = tiny_lm()
    assert decoder_linear_names(lm) == LINEARS  # no lm_head, no embeddings (tied here)
    with pytest.raises(LoraOptionError, match=r"\['qkv_proj'\], which are not linear layers"):
        add_lora(tiny_lm(), LoraConfig(rank=4, target_modules=["q_proj", "qkv_proj"]))
    # an init_from adapter of another shape, or with an option vLLM refuses
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": LINEARS}))
    with pytest.raises(LoraOptionError, match="has rank 8 .* this config rank 4"):
        add_lora(tiny_lm(), LoraConfig(rank=4, init_from=str(folder)))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "target_modules": LINEARS,
                                                            "use_dora": True}))
    with pytest.raises(LoraOptionError, match="use_dora"):
        add_lora(tiny_lm(), LoraConfig(rank=4, init_from=str(folder)))


# ------------------------------------------------------------------ the engine
def _lora_settings(stage: int, checkpointing: bool = True):
    import dataclasses

    return dataclasses.replace(settings(stage), gradient_checkpointing=checkpointing)


def _lora_lm(stage: int, folder=None):
    """tiny_lm with rank-4 adapters; under ZeRO-3 loaded from tiny_lm's `folder` by load_model
    (inside zero.Init: each rank holds a shard of the base), as the trainer loads it. A model
    constructed inside zero.Init instead is another model: transformers' initialisation (std
    0.02) acts on the partitioned placeholders and leaves torch's defaults, 5x larger (std 0.1,
    the embeddings 1.0), which gave the 7.8x gradient norm once measured against plain torch."""
    from swe_aem.train.model import load_model

    lm = load_model(folder, _lora_settings(3), torch.float32) if stage == 3 else tiny_lm()
    torch.manual_seed(1)  # lora_A's initialisation
    return add_lora(lm, LoraConfig(rank=4, alpha=8.0))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """tiny_lm as save_pretrained writes it: what load_model loads under ZeRO-3."""
    folder = tmp_path_factory.mktemp("tiny")
    tiny_lm().save_pretrained(folder)
    return folder


def _train(engine, steps: int = 2, key: str = "loss") -> list[float]:
    """`steps` forward_old + ppo_update rounds on make_samples; each round's stat `key`."""
    samples = make_samples()
    layout = TurnLayout.of(samples)
    adv = torch.linspace(-1.0, 1.0, layout.num_turns)
    out = []
    for _ in range(steps):
        old = forward_old(engine, samples, layout, micro_tokens=64, pad_id=0).old_logprobs
        out.append(ppo_update(engine, samples, layout, old, adv, LOSS, micro_tokens=64, pad_id=0)[key])
    return out


@pytest.fixture(scope="module")
def zero2():
    """A ZeRO-2 engine with LoRA (gradient checkpointing on), trained two steps; the base
    weights before."""
    lm = _lora_lm(2)
    before = {k: v.detach().clone() for k, v in lm.state_dict().items()}
    engine = build_engine(lm, _lora_settings(2), chunk_size=16)
    grad_norms = _train(engine, key="grad_norm")
    return engine, before, grad_norms


@pytest.fixture(scope="module")
def zero3(tiny_folder):
    """The same on ZeRO-3: the base loaded partitioned (load_model), peft's adapters injected
    into its partitioned Linears, the adapters partitioned when the engine is built."""
    engine = build_engine(_lora_lm(3, tiny_folder), _lora_settings(3), chunk_size=16)
    return engine, _train(engine, key="grad_norm")


def _reference_adapter() -> dict[str, torch.Tensor]:
    """Plain AdamW's two steps on the same LoRA model (test_train_deepspeed's reference: one
    padded batch)."""
    from test_train_deepspeed import reference_update

    samples = make_samples()
    layout = TurnLayout.of(samples)
    _, want = reference_update(_lora_lm(2), samples, layout, torch.linspace(-1.0, 1.0, layout.num_turns), steps=2)
    return want


def _assert_adapter_is(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Every adapter tensor of `got` (peft's names or the module's) within 1e-5 of the move of
    plain torch's: two steps, each moving an entry by at most lr / eps = 10 times its gradient's
    float32 rounding (test_train_deepspeed's reasoning), on entries of ~0.1."""
    moved = max(float(want[k].abs().max()) for k in want if "lora_B" in k)
    assert moved > 1e-2  # B starts at 0: about lr per step
    keys = [k for k in want if ".lora_" in k]
    for key in keys:
        name = PEFT_PREFIX + key.replace(".default.", ".") if key not in got else key
        assert float((got[name] - want[key]).abs().max()) <= 1e-5 * moved, key


@pytest.mark.slow
def test_a_lora_step_moves_only_the_adapter(zero2):
    engine, before, _ = zero2
    in_optimizer = sum(p.numel() for g in engine.optimizer.param_groups for p in g["params"])
    adapter = sum(p.numel() for n, p in engine.module.named_parameters() if ".lora_" in n)
    # 2 layers x rank 4 x (in + out) of q, k, v, o (kv heads: 16 wide), gate, up, down
    shapes = [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)]
    assert in_optimizer == adapter == 2 * 4 * sum(i + o for i, o in shapes)
    after = engine.module.lm.state_dict()
    for key, value in before.items():
        moved = float((after[key] - value).abs().max())
        if ".lora_" in key:  # A too: the second step has B != 0, so A has a gradient
            assert moved > 1e-5, (key, moved)  # entries ~0.1: float32 rounding is ~1e-8
        else:
            assert moved == 0.0, key  # the base, the head and the embeddings bit for bit


@pytest.mark.slow
def test_a_zero2_lora_step_is_plain_torch_s(zero2):
    """The engine's two steps against plain AdamW on the same LoRA model: the adapters agree
    to float32 rounding (3e-8 measured, 1.6e-6 of the move)."""
    engine, _, _ = zero2
    _assert_adapter_is(engine.module.lm.state_dict(), _reference_adapter())


@pytest.mark.slow
def test_a_zero3_lora_step_is_plain_torch_s(zero2, zero3):
    """ZeRO-3: the frozen base stays partitioned (peft sizes its matrices from each Linear's
    in/out features, its forward reads the base weight ZeRO-3's hooks gather), the adapters
    are ZeRO-3 parameters too, and two steps equal plain torch's (3.7e-8 measured, 1.9e-6 of
    the move), their gradient norms ZeRO-2's (1.35514331 against 1.35514333)."""
    import deepspeed

    from swe_aem.train.lora import check_engine

    check_engine(LoraConfig(rank=4), 3)  # no longer refused
    engine, grad_norms = zero3
    assert grad_norms == pytest.approx(zero2[2], rel=1e-6)
    params = dict(engine.module.lm.named_parameters())
    # every parameter a ZeRO-3 one, each rank's shard in ds_tensor (the tiny model's are all
    # below stage3_param_persistence_threshold, so they stay gathered between steps)
    assert all(hasattr(p, "ds_id") and p.ds_tensor.numel() == p.ds_numel for p in params.values())
    assert [n for n, p in params.items() if p.requires_grad] == [n for n in params if ".lora_" in n]
    with deepspeed.zero.GatheredParameters(list(params.values())):
        got = {k: v.detach().clone() for k, v in engine.module.lm.state_dict().items()}
    want = _reference_adapter()
    _assert_adapter_is(got, want)
    _assert_adapter_is(adapter_state_dict(engine), want)  # what a push writes, gathered
    base = tiny_lm().state_dict()
    for key, value in got.items():
        if ".lora_" not in key:  # the frozen base, bit for bit
            assert torch.equal(value, base[key.replace(".base_layer.", ".")]), key


@pytest.mark.slow
def test_the_adapter_folder_is_peft_s_and_the_merged_model_is_base_plus_adapter(zero2, tmp_path):
    from peft import PeftModel

    engine, before, _ = zero2
    cfg = engine.module.lm.swe_aem_lora
    folder = write_adapter(adapter_state_dict(engine), cfg, tmp_path / "adapter")
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 4
    samples = make_samples()
    layout = TurnLayout.of(samples)
    b = collate(samples, range(len(samples)), layout, pad_id=0)

    def logprobs(lm) -> torch.Tensor:
        with torch.no_grad():
            return PolicyLogprobs(lm.eval(), chunk_size=16)(b["input_ids"], b["attention_mask"], b["targets"])[0]

    trained = logprobs(copy.deepcopy(engine.module.lm))
    base = tiny_lm()
    assert float((logprobs(base) - trained).abs().max()) > 1e-3  # the adapter changed the model
    # peft itself loads the folder onto the base: the trainer's log-probs
    peft_lm = PeftModel.from_pretrained(tiny_lm(), str(folder))
    with torch.no_grad():
        hidden = peft_lm.base_model.model.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    from swe_aem.algo.entropy import chunked_logprobs_and_entropy

    via_peft, _ = chunked_logprobs_and_entropy(hidden.last_hidden_state, base.lm_head.weight, b["targets"],
                                               chunk_size=16)
    assert float((via_peft - trained).abs().max()) < 1e-5  # float32, the same arithmetic in peft's order
    # the merged state dict, loaded into a plain model with the base's names
    sd = {k.removeprefix("lm."): v for k, v in engine.module.state_dict().items()}
    merged = merged_state_dict(sd, cfg.lora_alpha / cfg.r)
    assert set(merged) == {k.replace(".base_layer.", ".") for k in before if ".lora_" not in k}
    plain = tiny_lm()
    plain.load_state_dict(merged, strict=True)
    # W + s B A against x W^T + s (x A^T) B^T: float32 reassociation, entries of order 1
    assert float((logprobs(plain) - trained).abs().max()) < 1e-4


@pytest.mark.slow
def test_an_adapter_only_checkpoint_resumes_the_adapter(zero2, tmp_path):
    engine, _, _ = zero2
    ckpt = CheckpointManager(tmp_path / "ckpt", adapter_only=True)
    path = ckpt.save(engine, TrainState(step=2))
    [states] = path.rglob("*model_states.pt")
    module = torch.load(states, map_location="cpu", weights_only=False)["module"]
    # the frozen base is not in the checkpoint: the adapter's tensors only, and the head the tiny
    # model ties to its embeddings (DeepSpeed keeps a tied weight's second name)
    assert {k for k in module if ".lora_" not in k} <= {"lm.lm_head.weight"}
    assert sum(".lora_" in k for k in module) == 2 * 2 * len(LINEARS)  # A and B, 7 linears, 2 layers
    fresh = build_engine(_lora_lm(2), _lora_settings(2), chunk_size=16)
    assert ckpt.load(fresh).step == 2
    want = engine.module.lm.state_dict()
    for key, value in fresh.module.lm.state_dict().items():
        assert torch.equal(value, want[key]), key
    # the next step from the resumed engine is the next step of the running one
    resumed = _train(fresh, steps=1)  # Adam's moments came back too: the same next step
    assert resumed == pytest.approx(_train(engine, steps=1), abs=1e-6)
    got = fresh.module.lm.state_dict()
    for key, value in engine.module.lm.state_dict().items():
        assert float((got[key] - value).abs().max()) <= 1e-6, key


# ------------------------------------------------------------------ two gloo ranks
_TWO_RANKS = """
import os, sys
sys.path[:0] = [sys.argv[1], sys.argv[1].rsplit("/", 1)[0]]  # this test folder and tests/ (helpers)
import torch
from test_train_deepspeed import LOSS, make_samples
from test_train_lora import _lora_lm, _lora_settings
from swe_aem.train.batch import TurnLayout
from swe_aem.train.lora import adapter_state_dict
from swe_aem.train.model import build_engine
from swe_aem.train.ranks import init_distributed
from swe_aem.train.update import forward_old, ppo_update
rank, world = init_distributed()
samples = make_samples()
layout = TurnLayout.of(samples)
adv = torch.linspace(-1.0, 1.0, layout.num_turns)
shard = list(range(rank, len(samples), world))  # rank 0: 20 and 12 tokens, rank 1: 33 and 27
for stage in (2, 3):
    engine = build_engine(_lora_lm(stage, sys.argv[2]), _lora_settings(stage), chunk_size=16)
    norms = []
    for _ in range(2):
        old = forward_old(engine, samples, layout, micro_tokens=64, pad_id=0, indices=shard).old_logprobs
        norms.append(ppo_update(engine, samples, layout, old, adv, LOSS, micro_tokens=64, pad_id=0,
                                indices=shard)["grad_norm"])
    held = {n: (p.ds_tensor.numel(), p.ds_numel) for n, p in engine.module.lm.named_parameters()
            if stage == 3}  # this rank's shard of each parameter, of its whole size
    sd = adapter_state_dict(engine)
    if rank == 0:
        torch.save({"adapter": sd, "grad_norms": norms}, os.path.join(sys.argv[3], f"zero{stage}.pt"))
    torch.save(held, os.path.join(sys.argv[3], f"held{rank}.pt"))
print("done", rank, flush=True)
"""


@pytest.mark.slow
def test_two_gloo_ranks_train_the_one_rank_adapter(tmp_path, tiny_folder, zero2):
    """ZeRO-2 and ZeRO-3 with LoRA on two gloo ranks, each training its half of the batch:
    the adapter after two steps is plain torch's on the whole batch (the gradients summed over
    ranks in another order: float32 rounding, as on one rank) and the gradient norms one
    rank's; under ZeRO-3 each rank holds half of every parameter, the frozen base's and the
    adapter's."""
    import subprocess
    import sys
    from pathlib import Path

    from swe_aem.policy.server import free_port

    tests = str(Path(__file__).parent)
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_RANKS, tests, str(tiny_folder), str(tmp_path)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"done {r}" in out, out[-3000:]
    want = _reference_adapter()
    one_rank = zero2[2]
    for stage in (2, 3):
        got = torch.load(tmp_path / f"zero{stage}.pt", weights_only=False)
        _assert_adapter_is(got["adapter"], want)
        assert got["grad_norms"] == pytest.approx(one_rank, rel=1e-6), stage
    for r in (0, 1):
        held = torch.load(tmp_path / f"held{r}.pt", weights_only=False)
        assert any(".lora_" in n for n in held) and any(".base_layer." in n for n in held)
        for name, (mine, whole) in held.items():
            assert mine == -(-whole // 2), name  # half, rounded up (ZeRO-3 pads the last shard)


@pytest.mark.slow
def test_a_zero3_adapter_only_checkpoint_resumes_the_adapter(zero3, tiny_folder, tmp_path):
    """ZeRO-3's adapter-only checkpoint (exclude_frozen_parameters over partitioned
    parameters) loads into a fresh ZeRO-3 engine over the rebuilt base: the same adapter."""
    engine, _ = zero3
    ckpt = CheckpointManager(tmp_path / "ckpt", adapter_only=True)
    ckpt.save(engine, TrainState(step=2))
    fresh = build_engine(_lora_lm(3, tiny_folder), _lora_settings(3), chunk_size=16)
    assert ckpt.load(fresh).step == 2
    want, got = adapter_state_dict(engine), adapter_state_dict(fresh)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
