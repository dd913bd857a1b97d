"""SFT on DeepSpeed: the RL trainer's engine, presets and export, a masked NLL loss.

One optimizer step per batch of episodes; the step's loss is the token mean of
-log p over the batch's sampled tokens, whatever the micro-batch split (each
micro-batch's NLL sum is divided by the whole batch's loss-token count).

LoRA SFT (`lora_rank`): the RL trainer's LoRA (swe_aem/train/lora.py) on the same engine:
peft's adapters injected in place, only they trained, the base frozen bit for bit; the
export is OUT/model (the base with B @ A x alpha / r merged in, servable as the full SFT's
folder is, by `swe-aem train` and vLLM) and OUT/final_adapter (the adapter as peft saves it:
vLLM serves it on the base, and `trainer.lora.init_from` continues it in LoRA RL).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from swe_aem import hostmem
from swe_aem.agent.trajectory import Episode
from swe_aem.config import LORA_DEFAULT_LR, Config, LoraConfig, TrainerConfig
from swe_aem.errors import InputError
from swe_aem.policy.adapters import VLLM_MAX_LORA_RANK
from swe_aem.sft.batching import (
    epoch_batches,
    loss_tokens,
    masked_nll_sum,
    micro_batches,
    sft_samples,
)
from swe_aem.train.batch import Sample, TurnLayout, collate
from swe_aem.train.loop import seed_everything
from swe_aem.train.lora import AdapterPublisher, add_lora, describe
from swe_aem.train.model import EngineSettings, build_engine
from swe_aem.train.ranks import init_distributed
from swe_aem.train.resolve import check_hardware, engine_settings
from swe_aem.train.weights import WeightPublisher

FULL_LR = 5e-5
"""SFT's learning rate for the full model when `lr` is left unset."""

LORA_LR = FULL_LR * (LORA_DEFAULT_LR / TrainerConfig.lr)
"""SFT's learning rate with LoRA when `lr` is left unset: 5e-4, full SFT's rate times the
ratio LoRA RL's default takes over full RL's (config.LORA_DEFAULT_LR / trainer.lr, 1e-5 /
1e-6 = 10) for its reason: an adapter's update B @ A starts at zero and moves by lr x alpha / r
per entry, and LoRA's best rate is about 10x full fine-tuning's (Schulman et al., "LoRA Without
Regret", 2025). LORA_DEFAULT_LR itself (1e-5) would be a fifth of full SFT's rate, not ten
times it."""


class SftConfigError(InputError, ValueError):
    """SFT settings that cannot train; the message names each field (and its option)."""


@dataclass
class SftConfig:
    """Typed SFT settings; None fields take the model preset's value (like the RL trainer)."""

    model: str = "tiny"  # a preset name or a local model folder
    lr: float | None = None  # None: FULL_LR, or LORA_LR with lora_rank (set in __post_init__)
    epochs: int = 3
    batch_episodes: int = 4  # episodes per optimizer step
    micro_batch_tokens: int | None = None  # padded tokens per forward; None: the preset's
    seed: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    logprob_chunk_size: int = 1024
    lora_rank: int | None = None  # LoRA SFT: train rank-r adapters only; None: the full model
    lora_alpha: float | None = None  # the adapters' scale is alpha / rank; None: 2 x rank

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = FULL_LR if self.lora_rank is None else LORA_LR
        problems = []
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be a positive number, got {self.lr}")
        if self.epochs < 1:
            problems.append(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_episodes < 1:
            problems.append(f"batch_episodes must be at least 1, got {self.batch_episodes}")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 2:
            problems.append(f"micro_batch_tokens must be at least 2, got {self.micro_batch_tokens}")
        if self.grad_clip < 0:
            problems.append(f"grad_clip must be >= 0, got {self.grad_clip}")
        problems += self._lora_problems()
        if problems:
            raise SftConfigError("bad SFT config: " + "; ".join(problems))

    def _lora_problems(self) -> list[str]:
        """What is wrong with lora_rank / lora_alpha, each named with its CLI option (rank and
        alpha are checked here, before the model loads; what needs the model, in add_lora)."""
        rank, alpha = self.lora_rank, self.lora_alpha
        out = []
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)
                                 or not 1 <= rank <= VLLM_MAX_LORA_RANK):
            out.append(f"lora_rank (--lora-rank) must be a whole number in [1, {VLLM_MAX_LORA_RANK}] "
                       f"(vLLM's largest --max-lora-rank: a larger adapter cannot be served), got {rank!r}")
        if alpha is not None and rank is None:
            out.append("lora_alpha (--lora-alpha) scales LoRA adapters: give lora_rank (--lora-rank) too")
        elif alpha is not None and not (alpha > 0 and math.isfinite(alpha)):
            out.append(f"lora_alpha (--lora-alpha) must be a positive number, got {alpha}")
        return out

    def lora(self) -> LoraConfig | None:
        """The RL trainer's LoRA settings for these (add_lora's input; its alpha None means
        2 x rank there); None: full fine-tuning."""
        if self.lora_rank is None:
            return None
        return LoraConfig(rank=self.lora_rank, alpha=self.lora_alpha, lr=self.lr)

    def engine_settings(self, preset) -> EngineSettings:
        """The RL trainer's resolution (preset defaults: ZeRO stage, dtype, offload, ...)."""
        trainer = TrainerConfig(lr=self.lr, weight_decay=self.weight_decay, grad_clip=self.grad_clip,
                                seed=self.seed, micro_batch_tokens=self.micro_batch_tokens)
        return engine_settings(Config(model=self.model, trainer=trainer), preset)


class SftTrainer:
    """`SftTrainer(cfg, out_dir).fit(episodes)` -> out_dir/model (servable) + metrics.jsonl
    (with LoRA also out_dir/final_adapter, the peft adapter out_dir/model has merged in)."""

    def __init__(self, cfg: SftConfig, out_dir: str | Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from swe_aem.policy.models import resolve_model

        self.cfg, self.out_dir = cfg, Path(out_dir)
        hostmem.map_large_allocations()  # as the RL trainer: freed activations leave the heap
        _, world = init_distributed()
        if world != 1:
            raise RuntimeError(f"swe-aem sft runs as one process (world size {world}); "
                               "data-parallel SFT is not implemented")
        seed_everything(cfg.seed)
        self.preset, self.model_path = resolve_model(cfg.model)
        check_hardware(self.preset)
        self.settings = cfg.engine_settings(self.preset)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        dtype = torch.bfloat16 if self.settings.bf16 else torch.float32
        lm = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype)
        self.lm_config = lm.config
        lora = cfg.lora()
        if lora is not None:
            lm = add_lora(lm, lora)  # in place: every other parameter frozen
            print(describe(lm))
        self.trainable_parameters = sum(p.numel() for p in lm.parameters() if p.requires_grad)
        self.engine = build_engine(lm, self.settings, cfg.logprob_chunk_size)
        self.device = next(self.engine.module.parameters()).device

    @property
    def model_dir(self) -> Path:
        """The servable model folder (with LoRA: the base with the adapter merged in)."""
        return self.out_dir / "model"

    @property
    def adapter_dir(self) -> Path | None:
        """The peft adapter folder of a LoRA SFT (AdapterPublisher.export's sibling of
        model_dir); None for full fine-tuning."""
        return None if self.cfg.lora_rank is None else self.model_dir.with_name("final_adapter")

    def batch_loss(self, samples: Sequence[Sample], batch: Sequence[int], train: bool) -> float:
        """Token-mean NLL of the batch (before the step when train=True, which then takes
        one optimizer step on it)."""
        layout = TurnLayout.of(samples)
        normalizer = loss_tokens(samples, batch)
        if normalizer == 0:
            raise ValueError("the batch has no token with loss_mask 1")
        total = 0.0
        self.engine.train(train)
        for micro in micro_batches(samples, batch, self.settings.micro_batch_tokens):
            b = collate(samples, micro, layout, self.pad_id)
            with torch.set_grad_enabled(train):
                lp, _ = self.engine(b["input_ids"].to(self.device), b["attention_mask"].to(self.device),
                                    b["targets"].to(self.device))
                loss = masked_nll_sum(lp.float(), b["loss_mask"].to(self.device)) / normalizer
            if train:
                self.engine.backward(loss, scale_wrt_gas=False)
            total += float(loss.detach())
        if train:
            self.engine.step()
        return total

    def fit(self, episodes: Sequence[Episode], progress: bool = True) -> dict[str, float]:
        """Train cfg.epochs epochs over the episodes, log every step, export the model."""
        samples = sft_samples(episodes)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "sft_config.json").write_text(json.dumps(
            {**asdict(self.cfg), "model_path": str(self.model_path), "episodes": len(samples)}, indent=2))
        metrics_path = self.out_dir / "metrics.jsonl"
        metrics_path.write_text("")
        plan = [(e, b) for e in range(self.cfg.epochs)
                for b in epoch_batches(len(samples), self.cfg.batch_episodes, e, self.cfg.seed)]
        bar = tqdm(plan, desc="sft", unit="step", disable=not progress)
        t_all, tokens_all, losses = time.perf_counter(), 0, []
        for step, (epoch, batch) in enumerate(bar):
            t0, c0 = time.perf_counter(), time.process_time()
            loss = self.batch_loss(samples, batch, train=True)
            seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
            tokens = sum(len(samples[i].input_ids) for i in batch)
            tokens_all += tokens
            losses.append(loss)
            norm = self.engine.get_global_grad_norm()
            row = {"step": step, "epoch": epoch, "loss": loss, "episodes": len(batch), "tokens": tokens,
                   "loss_tokens": loss_tokens(samples, batch), "time_s": seconds, "cpu_s": cpu_s,
                   "tokens_per_s": tokens / seconds, "lr": self.cfg.lr,
                   **({"grad_norm": float(norm)} if norm is not None else {})}
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch)
        bar.close()
        seconds = time.perf_counter() - t_all
        self.export(self.model_dir)
        return {"steps": len(plan), "episodes": len(samples), "first_loss": losses[0],
                "last_loss": losses[-1], "tokens": tokens_all, "train_s": seconds,
                "tokens_per_s": tokens_all / seconds, "trainable_parameters": self.trainable_parameters,
                "model": str(self.model_dir),
                **({"adapter": str(self.adapter_dir)} if self.adapter_dir is not None else {})}

    def export(self, folder: Path) -> None:
        """A servable HF folder (safetensors, config, tokenizer), as the RL trainer's final_model;
        with LoRA the base with the adapter merged in, and the adapter beside it (final_adapter)."""
        publisher = WeightPublisher if self.cfg.lora_rank is None else AdapterPublisher
        publisher(self.out_dir / ".weights", self.lm_config).export(self.engine, folder, self.tokenizer)
