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


def _lora_lm(stage: int):
    """tiny_lm with rank-4 adapters; under ZeRO-3 built inside zero.Init, as load_model does."""
    import deepspeed

    from swe_aem.train.model import deepspeed_config

    if stage == 3:
        with deepspeed.zero.Init(config_dict_or_path=deepspeed_config(settings(3))):
            lm = tiny_lm()
    else:
        lm = tiny_lm()
    torch.manual_seed(1)  # lora_A's initialisation
    return add_lora(lm, LoraConfig(rank=4, alpha=8.0))


def _train(engine, steps: int = 2) -> list[float]:
    samples = make_samples()
    layout = TurnLayout.of(samples)
    adv = torch.linspace(-1.0, 1.0, layout.num_turns)
    losses = []
    for _ in range(steps):
        old = forward_old(engine, samples, layout, micro_tokens=64, pad_id=0).old_logprobs
        losses.append(ppo_update(engine, samples, layout, old, adv, LOSS, micro_tokens=64, pad_id=0)["loss"])
    return losses


@pytest.fixture(scope="module")
def zero2():
    """A ZeRO-2 engine with LoRA (gradient checkpointing on), trained two steps; the base
    weights before."""
    lm = _lora_lm(2)
    before = {k: v.detach().clone() for k, v in lm.state_dict().items()}
    engine = build_engine(lm, _lora_settings(2), chunk_size=16)
    losses = _train(engine)
    return engine, before, losses


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


def test_lora_on_zero3_is_refused_naming_the_knob():
    """ZeRO-3's adapter gradients measured 7.8x plain torch's (check_engine's docstring):
    refused before any engine is built, naming trainer.zero_stage."""
    from swe_aem.train.lora import check_engine

    check_engine(LoraConfig(rank=4), 2)
    check_engine(None, 3)
    with pytest.raises(LoraOptionError, match="trainer.zero_stage=2"):
        check_engine(LoraConfig(rank=4), 3)


@pytest.mark.slow
def test_a_zero2_lora_step_is_plain_torch_s(zero2):
    """The engine's two steps against plain AdamW on the same LoRA model (test_train_deepspeed's
    reference: one padded batch): the adapters agree to float32 rounding (4e-9 measured)."""
    from test_train_deepspeed import reference_update

    engine, _, _ = zero2
    samples = make_samples()
    layout = TurnLayout.of(samples)
    _, want = reference_update(_lora_lm(2), samples, layout, torch.linspace(-1.0, 1.0, layout.num_turns), steps=2)
    got = engine.module.lm.state_dict()
    moved = max(float(want[k].abs().max()) for k in want if "lora_B" in k)
    for key in (k for k in want if ".lora_" in k):
        assert float((got[key] - want[key]).abs().max()) <= 1e-5 * moved, key


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
