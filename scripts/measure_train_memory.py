"""Measure the trainer's activation memory on one GPU against swe_aem.plan's estimate.

One process, no DeepSpeed (so no ZeRO gathering): random-weight models of the presets'
widths (fewer layers where the full model would not fit beside its gradients), wrapped as
the trainer wraps them (swe_aem.train.model.PolicyLogprobs, chunked LM head), one
forward + backward of the longest micro-batch. Gradients are allocated before the step,
so the peak over the step's start is what the plan calls activations + backward peak
(+ the attention mask of padded rows). Prints one JSON line per shape.

    PYTHONPATH=. python scripts/measure_train_memory.py [--check] [--eval-mode-too]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import torch


def config_of(arch, name: str):
    from transformers import Qwen2Config, Qwen3Config

    common = {"vocab_size": arch.vocab, "hidden_size": arch.hidden, "intermediate_size": arch.intermediate,
              "num_hidden_layers": arch.layers, "num_attention_heads": arch.heads,
              "num_key_value_heads": arch.kv_heads, "tie_word_embeddings": arch.tied_embeddings,
              "max_position_embeddings": 65536, "use_cache": False}
    if name.startswith("qwen3"):
        return Qwen3Config(head_dim=arch.head_dim, **common)
    return Qwen2Config(**common)


def measure(name: str, layers: int, longest: int, rows: int, train_mode: bool = True) -> dict:
    from transformers import AutoModelForCausalLM

    from swe_aem.plan.memory import GIB, TrainerSettings, trainer_memory
    from swe_aem.policy.models import load_preset
    from swe_aem.train.model import PolicyLogprobs

    arch = dataclasses.replace(load_preset(name).architecture, layers=layers)
    torch.manual_seed(0)
    with torch.device("cuda"):
        lm = AutoModelForCausalLM.from_config(config_of(arch, name), dtype=torch.bfloat16)
    lm.gradient_checkpointing_enable()
    lm.train(train_mode)
    model = PolicyLogprobs(lm, chunk_size=1024)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    ids = torch.randint(0, arch.vocab, (rows, longest), device="cuda")
    mask = torch.ones_like(ids)
    if rows > 1:
        mask[1:, longest // 2:] = 0  # a padded row: the attention mask path
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    lp, _ = model(ids[:, :-1], mask[:, :-1], ids[:, 1:], temperature=1.0)
    (lp * mask[:, 1:]).sum().backward()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    measured = torch.cuda.max_memory_allocated() - base
    s = TrainerSettings(zero_stage=0, offload_optimizer=False, offload_params=False, bf16=True,
                        gradient_checkpointing=True, micro_batch_tokens=rows * longest, logprob_chunk_size=1024)
    tm = trainer_memory(arch, s, world=1, longest=longest)
    parts = {i.what: i.bytes for i in tm.work if i.what in ("activations", "backward peak", "attention mask")}
    predicted = sum(parts.values())
    out = {"model": name, "layers": layers, "rows": rows, "longest": longest, "train_mode": train_mode,
           "params": arch.params, "measured_gib": round(measured / GIB, 3),
           "predicted_gib": round(predicted / GIB, 3),
           "error": round((predicted - measured) / measured, 3),
           "parts_gib": {k: round(v / GIB, 3) for k, v in parts.items()},
           "reserved_gib": round((torch.cuda.max_memory_reserved() - base) / GIB, 3), "seconds": round(seconds, 2),
           "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    del model, lm, lp, ids, mask
    torch.cuda.empty_cache()
    return out


# (preset, layers, longest, rows): the shapes swe_aem.plan.memory's constants were fitted on
SHAPES = [("7b", 28, 16384, 1), ("qwen3-32b", 8, 32768, 1), ("32b", 8, 8192, 2), ("qwen3-32b", 8, 8192, 1)]
# ...and others to check the fit on (--check)
CHECK = [("14b", 48, 12288, 1), ("qwen3-32b", 16, 24576, 1), ("1.5b", 28, 32768, 1), ("32b", 8, 4096, 4),
         ("7b", 28, 36864, 1)]


def main() -> int:
    import transformers

    print(json.dumps({"transformers": transformers.__version__}), flush=True)
    for shape in CHECK if "--check" in sys.argv else SHAPES:
        print(json.dumps(measure(*shape)), flush=True)
    if "--eval-mode-too" in sys.argv:  # what the trainer did before it called lm.train()
        print(json.dumps(measure("7b", 28, 4096, 1, train_mode=False)), flush=True)
        print(json.dumps(measure("7b", 28, 4096, 1, train_mode=True)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
