"""The policy on DeepSpeed: model wrapper and config (the ranks' set-up: ranks.py).

The wrapper returns per-token log-probs (differentiable) and entropies
(detached) from the chunked LM head, so no [tokens x vocab] tensor is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from swe_aem.algo.entropy import chunked_logprobs_and_entropy
from swe_aem.config import ModelTrainerSettings
from swe_aem.plan.host import CPU_BUCKET_ELEMENTS


class PolicyLogprobs(nn.Module):
    """A causal LM whose forward gives log p(target) and entropy per position."""

    def __init__(self, lm: nn.Module, chunk_size: int = 1024, zero3: bool = False):
        super().__init__()
        self.lm = lm
        self.chunk_size = chunk_size
        if zero3:
            import deepspeed

            # the head weight is used outside lm_head.forward: ZeRO-3 must gather it here
            deepspeed.zero.register_external_parameter(self, lm.get_output_embeddings().weight)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, targets: Tensor,
                temperature: float = 1.0, position_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`temperature` is the sampling temperature of the tokens: the loss and AEM's
        entropy must be of the distribution the rollout sampled from. Packed sequences
        (swe_aem.train.batch.collate, packed): no mask, `position_ids` restarting at each
        sequence, from which transformers builds the block-causal mask (only without a KV
        cache: use_cache=False, which a trainer's single forward never needs anyway)."""
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids, use_cache=False).last_hidden_state
        head = self.lm.get_output_embeddings().weight
        return chunked_logprobs_and_entropy(hidden, head, targets, chunk_size=self.chunk_size,
                                            temperature=temperature)


@dataclass(frozen=True)
class EngineSettings(ModelTrainerSettings):
    """Resolved trainer settings (config values with the model preset's defaults filled in,
    swe_aem.config.resolve_trainer) and the optimizer's."""

    lr: float
    betas: tuple[float, float]
    weight_decay: float
    grad_clip: float
    eps: float = 1e-8  # Adam's epsilon
    # nodes without a shared run folder: each node's LOCAL_RANK 0 writes the module state
    # on its own disk (DeepSpeed's checkpoint.use_node_local_storage), not global rank 0 only
    node_local_checkpoints: bool = False


def deepspeed_config(s: EngineSettings) -> dict:
    """DeepSpeed JSON config. Micro-batches vary in size, so accumulation is unmanaged:
    backward() accumulates and every step() is an optimizer step."""
    zero: dict = {"stage": s.zero_stage}
    if s.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if s.offload_params:
        if s.zero_stage != 3:
            raise ValueError("offload_params needs ZeRO stage 3")
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if s.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if not torch.cuda.is_available() and s.zero_stage >= 1:
        # DeepSpeed's buckets default to 5e8 elements (2 GB each in float32), sized for GPUs:
        # on a CPU trainer the gradient bucket is host RAM, touched up to the model's size
        zero["reduce_bucket_size"] = zero["allgather_bucket_size"] = CPU_BUCKET_ELEMENTS
    extra: dict = {"checkpoint": {"use_node_local_storage": True}} if s.node_local_checkpoints else {}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": s.grad_clip,
        "optimizer": {"type": "AdamW", "params": {
            "lr": s.lr, "betas": list(s.betas), "eps": s.eps, "weight_decay": s.weight_decay,
            # plain torch AdamW unless the optimizer lives on the CPU (DeepSpeedCPUAdam)
            **({} if s.offload_optimizer else {"torch_adam": True}),
        }},
        "zero_optimization": zero,
        "bf16": {"enabled": s.bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        **extra,
    }


def load_model(model_path: str | Path, s: EngineSettings, dtype: torch.dtype) -> nn.Module:
    """The causal LM that build_engine wraps. Under ZeRO-3 it is built inside DeepSpeed's
    zero.Init, which transformers enters while an HfDeepSpeedConfig of stage 3 is alive
    (build_engine's config: the partitions are the engine's). Each rank then keeps its shard
    of every parameter, never the whole model; a plain load is moved whole onto every rank's
    device by deepspeed.initialize before ZeRO-3 splits it (65 GB per GPU for a 32B model).
    Every rank maps the checkpoint files (one page cache on a node); rank 0 copies each
    module's values in while the module is gathered. The config lives for this load only:
    a later from_pretrained in the process loads a plain model."""
    from transformers import AutoModelForCausalLM

    if s.zero_stage != 3:
        return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    ds_config = HfDeepSpeedConfig(deepspeed_config(s))  # transformers holds a weak reference
    try:
        return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    finally:
        unset_hf_deepspeed_config()
        del ds_config


def build_engine(lm: nn.Module, s: EngineSettings, chunk_size: int):
    """Wrap the model and build the DeepSpeed engine (optimizer included)."""
    import deepspeed

    if s.gradient_checkpointing:
        lm.gradient_checkpointing_enable()
        # from_pretrained leaves the model in eval mode, where Hugging Face's layers skip
        # checkpointing (`self.gradient_checkpointing and self.training`): a step of
        # Qwen2.5-7B's shape at 4k tokens then took 27.0 GiB of activations instead of 3.7
        # (H200, scripts/measure_train_memory.py). Train mode otherwise only turns on dropout,
        # which these models set to 0.
        lm.train()
    model = PolicyLogprobs(lm, chunk_size=chunk_size, zero3=s.zero_stage == 3)
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(s),
    )
    return engine
