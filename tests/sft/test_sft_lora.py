"""LoRA SFT (issue 29, `swe-aem sft train --lora-rank R`): the RL trainer's LoRA
(swe_aem/train/lora.py) on the SFT engine: only the adapters train, the base stays bit for
bit; the exports are peft's adapter folder and the base with it merged in, which give the
same logits; bad LoRA settings are refused naming the option."""

from __future__ import annotations

import json

import pytest
import torch
from test_sft import _text_episode

from swe_aem.agent.trajectory import write_episodes
from swe_aem.config import LORA_DEFAULT_LR, TrainerConfig
from swe_aem.errors import InputError
from swe_aem.sft.batching import sft_samples
from swe_aem.sft.trainer import FULL_LR, LORA_LR, SftConfig, SftConfigError


def test_lora_settings_and_their_learning_rate():
    assert SftConfig().lr == FULL_LR == 5e-5 and SftConfig().lora() is None
    cfg = SftConfig(lora_rank=8)
    # full SFT's rate times the ratio LoRA RL's default takes over full RL's (10)
    assert cfg.lr == LORA_LR == pytest.approx(FULL_LR * LORA_DEFAULT_LR / TrainerConfig.lr) == pytest.approx(5e-4)
    lora = cfg.lora()
    assert (lora.rank, lora.alpha, lora.lr, lora.dropout, lora.target_modules) == (8, None, LORA_LR, 0.0, None)
    assert SftConfig(lora_rank=8, lora_alpha=4.0, lr=1e-3).lora().alpha == 4.0
    assert SftConfig(lora_rank=8, lr=1e-3).lr == 1e-3  # a given rate is kept


@pytest.mark.parametrize(("rank", "alpha", "match"), [
    (0, None, r"lora_rank \(--lora-rank\) must be a whole number in \[1, 512\].*got 0"),
    (-4, None, r"--lora-rank.*got -4"),
    (513, None, r"--lora-rank.*vLLM's largest --max-lora-rank.*got 513"),
    (2.5, None, r"--lora-rank.*got 2.5"),
    (None, 16.0, r"lora_alpha \(--lora-alpha\) scales LoRA adapters: give lora_rank \(--lora-rank\) too"),
    (8, 0.0, r"lora_alpha \(--lora-alpha\) must be a positive number, got 0.0"),
    (8, float("nan"), r"--lora-alpha.*got nan"),
])
def test_bad_lora_settings_are_refused_naming_the_option(rank, alpha, match):
    with pytest.raises(SftConfigError, match=match) as err:
        SftConfig(lora_rank=rank, lora_alpha=alpha)
    assert isinstance(err.value, InputError) and isinstance(err.value, ValueError)


@pytest.mark.parametrize("rank", ["0", "-1"])
def test_the_command_refuses_a_bad_rank_before_training(tmp_path, capsys, rank):
    from swe_aem.cli import main

    data = tmp_path / "eps.jsonl"
    write_episodes(data, [])
    assert main(["sft", "train", "--data", str(data), "--lora-rank", rank, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("swe-aem sft: error: bad SFT config: lora_rank (--lora-rank) must be")
    assert f"got {rank}" in err and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_lora_sft_trains_only_the_adapter_and_exports_adapter_and_merged_model(tmp_path, small_model):
    """Three steps of rank-4 LoRA SFT on the small model: the adapters alone are trainable and
    move, every base weight (the tied head and embeddings too) is the folder's bit for bit, the
    loss falls; final_adapter/ loads with peft's PeftModel.from_pretrained onto the base and
    gives the logits of model/, the merged folder."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swe_aem.sft.trainer import SftTrainer
    from swe_aem.train.lora import adapter_parameters

    tok = AutoTokenizer.from_pretrained(small_model)
    eps = [_text_episode(tok, f"Task {i}: fix the bug.\n", "<function=finish>\n<parameter=message>\ndone\n"
                         "</parameter>\n</function>") for i in range(3)]
    cfg = SftConfig(model=str(small_model), lr=1e-2, epochs=3, batch_episodes=3, lora_rank=4)
    trainer = SftTrainer(cfg, tmp_path / "sft")
    lm = trainer.engine.module.lm
    # 2 layers x rank 4 x (in + out) of q, k, v, o (kv heads: 16 wide), gate, up, down
    shapes = [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)]
    in_optimizer = sum(p.numel() for g in trainer.engine.optimizer.param_groups for p in g["params"])
    assert trainer.trainable_parameters == in_optimizer == adapter_parameters(lm) == 2 * 4 * sum(
        i + o for i, o in shapes)
    before = {k: v.detach().clone() for k, v in lm.state_dict().items()}
    samples = sft_samples(eps)
    first = trainer.batch_loss(samples, [0, 1, 2], train=False)
    summary = trainer.fit(eps, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[0]["loss"] == pytest.approx(first, rel=1e-4)
    last = trainer.batch_loss(samples, [0, 1, 2], train=False)
    assert last < first - 0.05, (first, last)
    assert summary["trainable_parameters"] == in_optimizer
    assert summary["adapter"] == str(tmp_path / "sft" / "final_adapter") == str(trainer.adapter_dir)

    base_file = load_file(str(small_model / "model.safetensors"))
    after = lm.state_dict()
    for key, value in after.items():
        moved = float((value - before[key]).abs().max())
        if ".lora_" in key:  # A too: after the first step B != 0 gives A a gradient
            assert moved > 1e-4, (key, moved)
        else:  # the frozen base, and equal to the folder it was loaded from
            assert moved == 0.0, key
            name = key.replace(".base_layer.", ".")
            if name not in base_file:  # the head the folder ties to its embeddings
                assert name == "lm_head.weight"
                name = "model.embed_tokens.weight"
            assert torch.equal(value, base_file[name]), key

    adapter, merged = tmp_path / "sft" / "final_adapter", tmp_path / "sft" / "model"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["bias"], config["use_dora"]) == (4, 8.0, "none", False)
    assert (adapter / "adapter_model.safetensors").is_file()
    ids = torch.tensor([eps[0].flatten().input_ids])

    def logits(model) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(input_ids=ids).logits.float()

    base = AutoModelForCausalLM.from_pretrained(small_model, dtype=torch.float32)
    base_logits = logits(base)
    via_peft = logits(PeftModel.from_pretrained(base, str(adapter)))
    via_merged = logits(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32))
    assert float((via_peft - base_logits).abs().max()) > 1e-2  # the adapter changed the model
    # x W^T + s (x A^T) B^T against x (W + s B A)^T: float32 reassociation (logits of order 1;
    # measured 1.1e-6)
    assert float((via_peft - via_merged).abs().max()) < 1e-4
