"""Gradient checkpointing is on in the trainer when its settings say so (issue 21).

from_pretrained leaves a model in eval mode, where Hugging Face's decoder layers skip
checkpointing; build_engine must put it in train mode. Measured on an H200
(scripts/measure_train_memory.py --eval-mode-too): 27.0 GiB of activations in eval mode
against 3.7 GiB in train mode for Qwen2.5-7B's shape at 4k tokens.
"""

import pytest
import torch

from swe_aem.train.model import EngineSettings, build_engine
from swe_aem.train.ranks import init_distributed

pytestmark = pytest.mark.slow  # a DeepSpeed engine


@pytest.mark.parametrize("checkpointing", [True, False])
def test_layers_are_recomputed_in_the_backward_only_with_checkpointing(checkpointing):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128)).float().eval()  # as from_pretrained
    init_distributed()
    settings = EngineSettings(zero_stage=0, offload_optimizer=False, offload_params=False, bf16=False,
                              gradient_checkpointing=checkpointing, micro_batch_tokens=64, lr=1e-3,
                              betas=(0.9, 0.999), weight_decay=0.0, grad_clip=1.0)
    engine = build_engine(lm, settings, chunk_size=16)
    calls = []
    # a pre-hook: the non-reentrant recomputation stops once it has what the backward needs,
    # before a forward hook would run
    lm.model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    ids = torch.randint(1, 97, (1, 24))
    lp, _ = engine(ids[:, :-1], torch.ones_like(ids[:, :-1]), ids[:, 1:])
    engine.backward(lp.sum())
    assert len(calls) == (2 if checkpointing else 1)  # the forward, and its recomputation
