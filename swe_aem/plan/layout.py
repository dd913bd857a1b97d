"""The plan of a GPU run: which process gets which GPUs, and whether each GPU's memory holds.

`make_plan(cfg, preset, cluster)` starts nothing and reads nothing: the same pure function
prints `swe-aem plan` and gates `swe-aem train` / `reproduce`, so what is refused before a
launch is what the plan shows. The launch it describes is the one `swe-aem train` makes:
the trainer's ranks (one per GPU, node-major) and one vLLM server that rank 0 starts on
node 0, on the first tensor_parallel_size GPUs.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from swe_aem.errors import InputError
from swe_aem.plan.memory import (
    DECODER_LINEARS,
    GIB,
    AdapterMemory,
    Item,
    TrainerMemory,
    TrainerSettings,
    VllmMemory,
    adapter_memory,
    dtype_bytes,
    host_bytes,
    trainer_memory,
    vllm_memory,
)
from swe_aem.policy.adapters import LoraOptionError, server_max_lora_rank
from swe_aem.policy.models import ModelPreset
from swe_aem.policy.server import ServerOptions, VLLMServer
from swe_aem.policy.session import sampling_record

VLLM_PORT = 8000  # shown in the plan; the real start takes a free port


@dataclass(frozen=True)
class Cluster:
    """The machines: nodes x GPUs per node, each GPU with this much memory (GiB, 2^30 B)."""

    nodes: int
    gpus_per_node: int
    gpu_memory_gib: float

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class Process:
    """One program of the run on one node, with its GPUs and, for vLLM, its command line."""

    name: str
    role: str  # "rollout" or "trainer"
    node: int
    gpus: tuple[int, ...]
    ranks: tuple[int, ...] = ()  # the trainer's global ranks, one per GPU
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(map(str, self.gpus))

    def shell(self) -> str:
        """The command as one shell line, its own environment first (`python` for the interpreter)."""
        shown = ("CUDA_VISIBLE_DEVICES", "VLLM_SERVER_DEV_MODE", "VLLM_ALLOW_INSECURE_SERIALIZATION")
        env = [f"{k}={v}" for k, v in self.env if k in shown]
        return " ".join([*env, shlex.join(["python", *self.command[1:]])])


@dataclass(frozen=True)
class Phase:
    """A GPU's memory during one part of a step: the rollout, the training update, or (for a
    GPU with one program) the whole run."""

    name: str
    items: tuple[Item, ...]

    @property
    def bytes(self) -> float:
        return sum(i.bytes for i in self.items)


@dataclass(frozen=True)
class GpuGroup:
    """GPUs that hold the same programs and so the same memory."""

    gpus: tuple[tuple[int, int], ...]  # (node, gpu)
    holds: str
    phases: tuple[Phase, ...]
    capacity: float

    @property
    def peak(self) -> float:
        return max(p.bytes for p in self.phases)

    @property
    def fits(self) -> bool:
        return self.peak <= self.capacity

    def label(self) -> str:
        by_node: dict[int, list[int]] = {}
        for node, gpu in self.gpus:
            by_node.setdefault(node, []).append(gpu)
        runs: dict[str, list[int]] = {}
        for node, gpus in by_node.items():
            runs.setdefault(_ranges(gpus), []).append(node)
        return ", ".join(f"node {_ranges(nodes)} GPU {gpus}" for gpus, nodes in runs.items())


@dataclass(frozen=True)
class Plan:
    """What a launch would start, where, and whether it fits; `problems` say why not, with
    the numbers and the setting to change."""

    model: str
    params: int
    cluster: Cluster
    placement: str
    sleep_mode: bool
    settings: TrainerSettings
    processes: tuple[Process, ...]
    groups: tuple[GpuGroup, ...]
    vllm: VllmMemory
    trainer: TrainerMemory
    host_per_node: tuple[float, ...]  # steady CPU RAM per node: offloaded states, sleeping weights
    host_at_load: float  # CPU RAM of a node while its ranks load the model
    notes: tuple[str, ...]
    problems: tuple[str, ...]
    # what every rollout request and server samples with (policy.session.sampling_record)
    sampling: dict = dataclasses.field(default_factory=dict)
    lora: AdapterMemory | None = None  # a LoRA run's adapter (trainer.lora or the preset's); None: full weights

    @property
    def fits(self) -> bool:
        return not self.problems

    def gpus_of(self, role: str, node: int = 0) -> tuple[int, ...]:
        """The GPUs of `role` ("rollout" or "trainer") on `node`."""
        return tuple(g for p in self.processes if p.role == role and p.node == node for g in p.gpus)

    def to_json(self) -> dict:
        def items(seq):
            return [{"what": i.what, "gib": round(i.gib, 3), "how": i.how} for i in seq]

        return {
            "model": self.model, "params": self.params, "cluster": dataclasses.asdict(self.cluster),
            "placement": self.placement, "sleep_mode": self.sleep_mode,
            "trainer_settings": dataclasses.asdict(self.settings),
            "processes": [{"name": p.name, "role": p.role, "node": p.node, "gpus": list(p.gpus),
                           "ranks": list(p.ranks),
                           "CUDA_VISIBLE_DEVICES": p.cuda_visible_devices, "command": list(p.command),
                           "env": dict(p.env)} for p in self.processes],
            "gpus": [{"gpus": [list(g) for g in grp.gpus], "holds": grp.holds,
                      "phases": [{"phase": ph.name, "gib": round(ph.bytes / GIB, 3), "items": items(ph.items)}
                                 for ph in grp.phases],
                      "peak_gib": round(grp.peak / GIB, 3), "capacity_gib": grp.capacity / GIB,
                      "fits": grp.fits} for grp in self.groups],
            "vllm": {"tensor_parallel_size": self.vllm.tensor_parallel_size,
                     "gpu_memory_utilization": self.vllm.gpu_memory_utilization,
                     "items": items(self.vllm.items()), "kv_tokens": self.vllm.kv_tokens,
                     "max_model_len": self.vllm.max_model_len, "sequences": round(self.vllm.sequences, 2),
                     "asleep_gib": self.vllm.asleep / GIB},
            "trainer": {"world": self.trainer.world, "longest": self.trainer.longest,
                        "rows": self.trainer.rows, "tokens": self.trainer.tokens,
                        "items": items(self.trainer.items()), "resident_gib": round(self.trainer.resident / GIB, 3),
                        "peak_gib": round(self.trainer.peak / GIB, 3)},
            "host_gib_per_node": [round(h / GIB, 1) for h in self.host_per_node],
            "host_gib_at_load": round(self.host_at_load / GIB, 1),
            "notes": list(self.notes), "problems": list(self.problems), "fits": self.fits,
            "sampling": dict(self.sampling),
            "lora": self.lora.to_json() if self.lora is not None else None,
        }


class PlanError(InputError, ValueError):
    """The plan cannot be made (no architecture known for the model, an empty cluster)."""


def run_preset(cfg, preset: ModelPreset) -> ModelPreset:
    """The preset a run uses: `placement=` and the `vllm.` settings of the config over the
    model preset's (the trainer starts its server from this one)."""
    v = cfg.vllm
    changes = {"placement": cfg.placement, "gpu_memory_utilization": v.gpu_memory_utilization,
               "tensor_parallel_size": v.tensor_parallel_size, "sleep_mode": v.sleep_mode,
               "kv_cache_gib": v.kv_cache_gib}
    return dataclasses.replace(preset, **{k: x for k, x in changes.items() if x is not None})


def make_plan(cfg, preset: ModelPreset, cluster: Cluster, *, model_path: str | Path | None = None) -> Plan:
    """The plan of training `preset` with `cfg` on `cluster` (the config's placement and
    vllm settings applied over the preset's)."""
    preset = run_preset(cfg, preset)
    arch = preset.architecture
    if arch is None:
        raise PlanError(f"model {preset.name!r} has no architecture numbers (configs/model/*.yaml "
                        "architecture:, or a folder's config.json): nothing to count")
    if cluster.nodes < 1 or cluster.gpus_per_node < 1 or cluster.gpu_memory_gib <= 0:
        raise PlanError(f"a plan needs at least one node with one GPU of some memory, got {cluster}")
    settings = TrainerSettings.of(cfg, preset)
    if settings.lora_rank is not None:
        preset = _serving(cfg, preset, settings)
    g, tp = cluster.gpus_per_node, preset.tensor_parallel_size
    capacity = cluster.gpu_memory_gib * GIB
    problems: list[str] = []
    notes: list[str] = []
    split = preset.placement == "split"

    if tp > g or g % tp:
        problems.append(f"vllm.tensor_parallel_size {tp} must divide the {g} GPUs of a node (one "
                        f"server's ranks share a node): set vllm.tensor_parallel_size to a divisor of {g}")
        tp = math.gcd(tp, g)
    rollout_gpus = tuple(range(tp))  # node 0
    if split:
        trainer_gpus = [(n, i) for n in range(cluster.nodes) for i in range(g) if n or i >= tp]
    else:
        trainer_gpus = [(n, i) for n in range(cluster.nodes) for i in range(g)]
    world = len(trainer_gpus)
    if split and world and tp == g and cfg.run.vllm_url is None:
        problems.append(f"placement=split with vllm.tensor_parallel_size {tp} = the {g} GPUs of a node: "
                        "the server would fill node 0, but swe-aem train starts it from rank 0, which would "
                        "then sit on node 1 among the trainer's GPUs; use a smaller vllm.tensor_parallel_size, "
                        "or start the server on node 0 yourself (swe-aem serve) and attach (run.vllm_url=...)")
    if world == 0:
        problems.append(f"placement=split leaves no GPU for the trainer: the server takes {tp} of "
                        f"{cluster.gpus}; add nodes or use placement=colocated")
        world = 1

    asked = cfg.rollout.agent.max_context_tokens
    longest = cfg.rollout.agent.for_model(preset).max_context_tokens
    if asked is not None and asked > preset.max_model_len:
        notes.append(f"rollout.agent.max_context_tokens {asked:,} is over the model's "
                     f"max_model_len {preset.max_model_len:,}: episodes stop at {preset.max_model_len:,} tokens")
    lora = None
    if settings.lora_rank is not None:
        lora = adapter_memory(arch, settings, server_rank=server_max_lora_rank(preset.lora_rank),
                              max_loras=preset.max_loras, tp=tp, dtype=preset.dtype)
    vllm = vllm_memory(arch, tp=tp, gpu_memory_utilization=preset.gpu_memory_utilization,
                       gpu_bytes=capacity, dtype=preset.dtype, max_model_len=preset.max_model_len, lora=lora)
    trainer = trainer_memory(arch, settings, world=world, longest=longest)

    # the processes, with the server's command line as the launcher builds it
    options = ServerOptions.from_preset(preset, max_num_seqs=cfg.rollout.concurrency,
                                        cuda_visible_devices=",".join(map(str, rollout_gpus)))
    server = VLLMServer(model_path or preset.default_path, options, port=VLLM_PORT,
                        log_path=Path("vllm.log"), gpu=True)
    env = server.environment(base={})
    processes = [Process("vllm", "rollout", 0, rollout_gpus, command=tuple(server.command()),
                         env=tuple((k, env[k]) for k in sorted(env)))]
    rank = 0
    for node in range(cluster.nodes):
        gpus = tuple(i for n, i in trainer_gpus if n == node)
        if gpus:
            ranks = tuple(range(rank, rank + len(gpus)))
            processes.append(Process(f"trainer ranks {ranks[0]}-{ranks[-1]}", "trainer", node, gpus, ranks))
            rank += len(gpus)

    # each GPU's memory, phase by phase
    awake = Phase("rollout", vllm.items())
    state, work = trainer.state, trainer.work
    asleep = Item("vLLM asleep", vllm.asleep, "level 1: weights in CPU RAM, KV cache dropped (estimate)")
    groups = []
    if split:
        groups.append(GpuGroup(tuple((0, i) for i in rollout_gpus), "vLLM",
                               (Phase("whole run", vllm.items()),), capacity))
        if trainer_gpus:
            groups.append(GpuGroup(tuple(trainer_gpus), "trainer", (Phase("whole run", state + work),), capacity))
    else:
        during_update = (asleep,) if preset.sleep_mode else vllm.items()
        groups.append(GpuGroup(
            tuple((0, i) for i in rollout_gpus), "vLLM + trainer",
            (Phase("rollout", awake.items + state),
             Phase("training" + (" (vLLM asleep)" if preset.sleep_mode else " (vLLM awake: no sleep mode)"),
                   during_update + state + work)), capacity))
        rest = tuple(x for x in trainer_gpus if not (x[0] == 0 and x[1] in rollout_gpus))
        if rest:
            groups.append(GpuGroup(rest, "trainer", (Phase("rollout", state), Phase("training", state + work)),
                                   capacity))

    problems += _vllm_problems(vllm, cluster)
    for grp in groups:
        if not grp.fits:
            problems.append(_over(grp, preset, cfg, settings, trainer, vllm, cluster, split))

    servers_on = [1 if n == 0 else 0 for n in range(cluster.nodes)]
    ranks_on = [sum(1 for n, _ in trainer_gpus if n == node) for node in range(cluster.nodes)]
    sleeping = 0.0 if split or not preset.sleep_mode else arch.params * dtype_bytes(preset.dtype) + vllm.lora_slots * tp
    host = tuple(host_bytes(arch, settings, world=world, ranks=r) + s * sleeping
                 for r, s in zip(ranks_on, servers_on))
    whole = arch.params * (2 if settings.bf16 else 4)
    if settings.zero_stage == 3:  # zero.Init: the mapped checkpoint (shared) plus each rank's shard
        at_load = whole + max(ranks_on) * whole / world
        loading = f"the node's page cache of the checkpoint and each of its {max(ranks_on)} ranks' ZeRO-3 shard"
    else:
        at_load = max(ranks_on) * whole
        loading = f"each of a node's {max(ranks_on)} ranks loads the whole model (ZeRO-{settings.zero_stage})"
    notes.append(f"CPU RAM per node: {_gib(max(host))} while training (ZeRO offload"
                 + (", and on node 0 the sleeping server's weights" if sleeping else "")
                 + f"); about {_gib(at_load)} at start: {loading}")
    if vllm.sequences >= 1 and vllm.sequences < cfg.rollout.concurrency:
        notes.append(f"the KV cache holds {vllm.sequences:.1f} sequences of {vllm.max_model_len:,} tokens at "
                     f"once; rollout.concurrency {cfg.rollout.concurrency} episodes share it (vLLM queues "
                     "or preempts the rest when all are long)")
    return Plan(preset.name, arch.params, cluster, preset.placement, preset.sleep_mode, settings,
                tuple(processes), tuple(groups), vllm, trainer, host, at_load, tuple(notes), tuple(problems),
                sampling_record(cfg.rollout.agent.temperature, cfg.rollout.agent.top_p), lora)


def _serving(cfg, preset: ModelPreset, s: TrainerSettings) -> ModelPreset:
    """The server of a LoRA run as swe_aem.train.lora.serving_preset starts it (--enable-lora
    at the run's rank, rollout.max_staleness + 1 adapters loaded), where `preset` does not say
    yet (a preset not through train/resolve.py's `resolved`); a target the model lacks, or a
    rank vLLM cannot serve, refused as the trainer refuses them."""
    unknown = sorted(set(s.lora_targets or ()) - set(DECODER_LINEARS))
    if unknown:
        raise PlanError(f"trainer.lora.target_modules names {unknown}, which are not linear layers of a "
                        f"decoder layer (the plan knows {list(DECODER_LINEARS)}); the head and the "
                        "embeddings are never adapted")
    try:
        server_max_lora_rank(s.lora_rank)
    except LoraOptionError as exc:
        raise PlanError(str(exc)) from exc
    if preset.lora_rank is not None:
        return preset
    staleness = cfg.rollout.max_staleness
    if staleness is None:  # train/resolve.py with_preset_defaults: asynchronous only under split
        staleness = preset.max_staleness if preset.placement == "split" else 0
    return dataclasses.replace(preset, lora_rank=s.lora_rank, max_loras=staleness + 1)


def _vllm_problems(vllm: VllmMemory, cluster: Cluster) -> list[str]:
    if vllm.kv_tokens >= vllm.max_model_len:
        return []
    need = vllm.weights + vllm.lora_slots + vllm.runtime + vllm.max_model_len * vllm.kv_bytes_per_token
    util = need / (cluster.gpu_memory_gib * GIB)
    knob = (f"raise vllm.gpu_memory_utilization to at least {math.ceil(util * 100) / 100:.2f}"
            if util <= 0.95 else "raise vllm.tensor_parallel_size")
    return [(f"vLLM's KV cache gets {_gib(max(vllm.kv_cache, 0))} of its {_gib(vllm.reserved)} "
             f"(gpu_memory_utilization {vllm.gpu_memory_utilization:g} x {cluster.gpu_memory_gib:g} GiB, minus "
             f"weights {_gib(vllm.weights)}"
             + (f", LoRA slots {_gib(vllm.lora_slots)}" if vllm.lora_slots else "")
             + f" and runtime {_gib(vllm.runtime)}): {vllm.kv_tokens:,} tokens, fewer "
             f"than one sequence of max_model_len {vllm.max_model_len:,} ({_gib(need)} needed); {knob}")]


def _over(grp: GpuGroup, preset, cfg, settings, trainer, vllm, cluster, split) -> str:
    """Why one group of GPUs overflows, with its numbers and the settings that would help."""
    phase = max(grp.phases, key=lambda p: p.bytes)
    cap = grp.capacity
    parts = " + ".join(f"{i.what} {_gib(i.bytes)}" for i in phase.items if i.bytes >= 0.05 * GIB)
    head = f"{grp.label()} ({grp.holds}, {phase.name}): {_gib(phase.bytes)} > {_gib(cap)} [{parts}]"
    names = {i.what for i in phase.items}
    vllm_awake = "vLLM weights" in names
    trainer_works = "activations" in names
    knobs: list[str] = []
    if vllm_awake and trainer_works:  # colocated without sleep mode
        knobs += [("turn on sleep mode (vllm.sleep_mode=true: vLLM gives its memory back while the "
                   "trainer runs; GPU servers only)"), "placement=split"]
    if vllm_awake:
        util = (cap - (phase.bytes - vllm.reserved)) / cap - 0.005
        room = util * cap - vllm.weights - vllm.lora_slots - vllm.runtime
        if room >= vllm.max_model_len * vllm.kv_bytes_per_token:
            knobs.append(f"vllm.gpu_memory_utilization<={math.floor(util * 100) / 100:.2f} "
                         f"(now {vllm.gpu_memory_utilization:g})")
        elif not trainer_works and "trainer params" in names and trainer.resident > 2 * GIB:
            knobs.append("offload the trainer's state while vLLM runs (trainer.offload_params=true, "
                         "trainer.offload_optimizer=true)")
        elif not trainer_works and "frozen base" in names and trainer.resident > 2 * GIB:
            knobs.append("keep the frozen base in CPU RAM while vLLM runs (trainer.zero_stage=3 "
                         "trainer.offload_params=true; trainer.offload_optimizer=true for the adapter's states)")
    if trainer_works:
        budget = cap - (phase.bytes - trainer.peak)
        knobs += _trainer_knobs(preset, cfg, settings, trainer, budget, cluster)
    return head + ("; change: " + "; or ".join(knobs) if knobs else "")


def _trainer_knobs(preset, cfg, s: TrainerSettings, trainer: TrainerMemory, budget: float,
                   cluster: Cluster) -> list[str]:
    """Settings that shrink the trainer's peak below `budget` bytes, most direct first."""
    arch = preset.architecture
    knobs = []
    if s.zero_stage < 3:
        knobs.append(f"trainer.zero_stage=3 (shards parameters over the ranks; now {s.zero_stage})")
    if not s.offload_optimizer:
        knobs.append("trainer.offload_optimizer=true (Adam's states to CPU RAM)")
    if s.zero_stage >= 3 and not s.offload_params:
        knobs.append("trainer.offload_params=true")
    if not s.gradient_checkpointing:
        knobs.append("trainer.gradient_checkpointing=true")
    # the longest sample that fits as things are
    lo, hi = 0, trainer.longest
    while lo < hi:
        mid = (lo + hi + 1) // 2
        small = dataclasses.replace(s, micro_batch_tokens=min(s.micro_batch_tokens, mid))
        if trainer_memory(arch, small, world=trainer.world, longest=mid).peak <= budget:
            lo = mid
        else:
            hi = mid - 1
    if lo >= 1024:
        fit = lo // 1024 * 1024
        knobs.append(f"rollout.agent.max_context_tokens<={fit:,} "
                     f"(now {cfg.rollout.agent.for_model(preset).max_context_tokens:,})"
                     + (f" and trainer.micro_batch_tokens<={fit:,}" if s.micro_batch_tokens > fit else ""))
    else:
        knobs.append(f"more GPUs (--nodes; ZeRO shards over {trainer.world} ranks now)")
    return knobs


def _gib(x: float) -> str:
    return f"{x / GIB:.1f} GiB"


def _ranges(xs: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    out, xs = [], sorted(xs)
    start = prev = xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(out)
