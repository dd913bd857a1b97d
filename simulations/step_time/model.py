"""A MODEL, NOT A MEASUREMENT: the time of one RL step at DeepSWE's scale under three rollout designs.

DeepSWE's recipe (configs/recipe/deepswe.yaml): 64 H100 (8 nodes x 8), Qwen3-32B, 512 episodes a
step (64 tasks x 8 samples), at most 50 turns and 36,864 tokens an episode. The designs:
  (a) synchronous, one TP-8 vLLM server for the cluster, colocated with the trainer (today's
      single-server path of `swe-aem train`);
  (b) the Ray rollout fleet (swe_aem/fleet/): one server per TP group on rollout GPUs of their
      own (split placement), the trainer on the rest, synchronous;
  (c) the fleet with asynchronous bounded-staleness rollouts (rollout.max_staleness = k,
      swe_aem/train/stream.py): batch t is admitted once the served weights are version >= t - k,
      so at most k + 1 batches are in flight and the next batches' episodes run while the
      trainer updates.

A time-stepped simulation (numpy, fixed seed): every episode's turns wait for their server's
KV cache, prefill (all of the context when the server's prefix cache lost it), decode with
the server's other sequences, run their tool call, and are graded at the end; the trainer
trains each finished batch; the weights are pushed. Every input is a named constant below with
its source (a measurement of this repo, a public number, or an assumption said as such);
docs/step_time_model.md explains them and the results. About 30 s of CPU on 2 cores:
  .venv/bin/python simulations/step_time/model.py [--out docs/measurements/step_time_model.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from swe_aem.plan.memory import GIB, vllm_memory
from swe_aem.policy.models import Architecture, load_preset

# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Gpu:
    """One H100 SXM 80 GB and how well vLLM uses it."""

    hbm_bytes_s: float = 3.35e12  # NVIDIA H100 SXM datasheet: 3.35 TB/s HBM3
    bf16_flops: float = 989e12  # NVIDIA H100 SXM datasheet: 989 TFLOPS dense BF16
    memory_gib: float = 80.0
    # Calibrated on GPUStack's vLLM 0.11 run of Qwen3-32B on one H100 (docs.gpustack.ai,
    # performance-lab/qwen3-32b/h100, "random 32K input": 100 requests of 32,000 + 100 tokens,
    # one sequence resident at a time, TPOT 43.4 ms, 1,157 s in all): reading 65.5 GB of
    # weights + 8.4 GB of KV cache in 43.4 ms is 51% of the HBM bandwidth; the rest of the
    # 1,157 s is prefill at 45% of the dense peak. `calibration()` checks both on the same
    # page's 2K-input run, which they were not fitted on.
    decode_bandwidth_share: float = 0.51
    prefill_mfu: float = 0.45
    # Tensor parallelism (assumptions: no published TP sweep of a dense 32B on H100 was found):
    # a decode step's 2 all-reduces per layer are latency-bound (vLLM's custom all-reduce over
    # NVLink, ~10 us each); a prefill's are bandwidth-bound at an NVLink bus bandwidth of 360 GB/s.
    allreduce_latency_s: float = 10e-6
    allreduce_bus_bytes_s: float = 360e9


@dataclass(frozen=True)
class Workload:
    """One step's episodes (DeepSWE's recipe; turn counts from NOTES.md section 5)."""

    episodes: int = 512  # 64 tasks x 8 samples (data.train_batch_size=64, rollout.n=8)
    # recorded coding-agent sessions, p50 / p90 / p99 turns (NeMo-RL#3663, 610 sessions)
    turn_quantiles: tuple[tuple[float, float], ...] = ((0.5, 29.0), (0.9, 56.0), (0.99, 85.0))
    max_turns: int = 50  # rllm.agent.max_steps=50 in training (100 at evaluation)
    max_context: int = 36_864  # max_prompt_length 4,096 + max_response_length 32,768
    # Tokens a turn: assumptions, chosen so that a 50-turn episode about fills the 32k response
    # budget (DeepSWE masks such cut-short trajectories out of the loss: "compact filtering")
    prompt_tokens: int = 3_000  # system prompt + issue text (under max_prompt_length 4,096)
    output_median: float = 250.0  # an assistant turn (thinking + tool call), lognormal, mean ~344
    output_sigma: float = 0.8
    observation_median: float = 200.0  # a tool's output, lognormal, mean ~330
    observation_sigma: float = 1.0
    observation_cap: int = 4_000  # rollout.agent.max_observation_chars 16,000 at ~4 characters a token
    # Off-server time. Measured here (docs/benchmarks.md, real containers, 2-core machine): the
    # scaffold's own overhead 45 ms a turn, a sandbox start-to-ready 234 ms (p50). A command's own
    # run time on a real repository was not measured here (the local suite's repositories are
    # tiny): lognormal, median 2 s, p90 ~9 s, cut at the recipe's 120 s command timeout.
    tool_overhead_s: float = 0.045
    tool_median_s: float = 2.0
    tool_sigma: float = 1.2
    tool_cap_s: float = 120.0
    sandbox_start_s: float = 0.234
    # Grading: measured here 0.56 s an instance (108 a minute, one worker, the local suite); a
    # real repository's test run is longer: lognormal median 20 s (assumption), cut at 300 s
    # (R2E-Gym's run_tests.sh timeout, run.grade_timeout_s).
    grade_median_s: float = 20.0
    grade_sigma: float = 0.8
    grade_cap_s: float = 300.0
    perfect_prefix_cache: bool = False  # sensitivity only: no re-prefill after an eviction
    tool_time_scale: float = 1.0  # sensitivity only


@dataclass(frozen=True)
class Trainer:
    """DeepSpeed ZeRO-3 with parameter and optimizer offload, gradient checkpointing."""

    # Assumption: 30% of the dense BF16 peak. DeepSpeed's own ZeRO-3 numbers (no offload, 64 A100,
    # DeepSpeed PR #1453) are 116 TFLOPS/GPU counted without the recomputation, ~50% of the A100's
    # peak with it; parameter offload and 36k-token micro-batches of one sequence cost part of that.
    mfu: float = 0.30
    mini_batches: int = 8  # ppo_mini_batch_size 8 of 64 tasks: 8 optimizer steps a step
    # CPU Adam on a rank's shard (assumption: 1 s per billion parameters, DeepSpeed's CPUAdam)
    cpu_adam_s_per_billion: float = 1.0


@dataclass(frozen=True)
class Push:
    """Moving new weights to the servers."""

    # This repo's path: rank 0 gathers and writes safetensors to a shared disk, every server
    # reloads them. Loading a 30B safetensors checkpoint took 57 s on one H200 (NOTES.md section 5:
    # 1.05 GB/s); writing at 2 GB/s and a shared filesystem serving 10 GB/s to all readers at once
    # are assumptions.
    load_bytes_s: float = 1.05e9
    write_bytes_s: float = 2.0e9
    shared_fs_bytes_s: float = 10.0e9
    # NCCL broadcast (not built here, issue 21): a 27B model across nodes in 2.5-3.0 s (verl#7263),
    # scaled to 32.8B; one sender is NIC-bound (verl#7167), a broadcast sends once.
    nccl_s: float = 2.75 * 32.76 / 27.0
    # a colocated server's sleep before the update and wake after it (assumption)
    sleep_wake_s: float = 10.0


# The fleet's dispatch efficiency, measured here (docs/benchmarks.md, `make bench ARGS=fleet`,
# runs/bench/fleet.json): 1 / 2 / 4 replicas at 1.0 / 0.915 / 0.859 of linear, with stand-in
# servers answering each completion in a fixed 2 s (never saturated), 5 turns an episode, 2
# episodes in flight a replica, real containers, 2 shared cores. The loss is therefore wall time
# added to each turn, not server throughput: one replica took 10.87 s an episode (2.17 s a turn),
# four 12.65 s. Extrapolated as efficiency = n^-beta (least squares) and added to every turn as
# 2.17 s x (1/efficiency - 1); pessimistic, since there all replicas shared 2 cores.
FLEET_DISPATCH = ((1, 1.0), (2, 0.915), (4, 0.859))
FLEET_TURN_S = 10.87 / 5


@dataclass(frozen=True)
class Regime:
    """One way to run the step on the 64 GPUs."""

    key: str
    label: str
    servers: int
    tp: int
    gpu_memory_utilization: float
    trainer_gpus: int
    colocated: bool  # servers on trainer GPUs, asleep while it trains
    staleness: int = 0  # k; 0: synchronous
    concurrency: int = 64  # episodes in flight per server (rollout.concurrency, per replica)
    push: str = "disk"  # "disk" (this repo), "nccl", or "memory" (verl's hybrid engine)
    fleet: bool = True  # the fleet's measured dispatch efficiency applies

    def __post_init__(self) -> None:
        if self.push not in ("disk", "nccl", "memory"):
            raise ValueError(f"regime {self.key}: push must be disk, nccl or memory, not {self.push!r}")
        for name in ("servers", "tp", "trainer_gpus", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"regime {self.key}: {name} must be >= 1, not {getattr(self, name)}")
        if self.staleness < 0 or not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"regime {self.key}: staleness must be >= 0 and gpu_memory_utilization in (0, 1]")

    @property
    def rollout_gpus(self) -> int:
        return self.servers * self.tp


# ----------------------------------------------------------------------------- pure pieces


def fit_lognormal(quantiles: tuple[tuple[float, float], ...]) -> dict:
    """(mu, sigma) of the log-normal whose quantiles best match the given ones, least squares in
    log space (three quantiles, two parameters), and how far each lands from its target."""
    from statistics import NormalDist

    z = np.array([NormalDist().inv_cdf(q) for q, _ in quantiles])
    y = np.log([v for _, v in quantiles])
    sigma, mu = np.polyfit(z, y, 1)
    fitted = np.exp(mu + sigma * z)
    return {"distribution": "log-normal", "mu": float(mu), "sigma": float(sigma),
            "quantiles": {f"p{round(q * 100)}": {"target": v, "fitted": round(float(f), 1)}
                          for (q, v), f in zip(quantiles, fitted)}}


def dispatch_beta(points: tuple[tuple[int, float], ...]) -> float:
    """beta of efficiency = replicas^-beta, least squares through the origin in log space."""
    x = np.log([n for n, _ in points])
    y = np.log([e for _, e in points])
    return float(-(x @ y) / (x @ x))


@dataclass(frozen=True)
class Server:
    """One vLLM server of a regime: its memory (swe_aem.plan's model) and its speed."""

    tp: int
    kv_tokens: int
    weight_bytes_gpu: float
    kv_bytes_token_gpu: float
    params: float
    layers: int
    q_dim: int
    hidden: int
    gpu: Gpu

    @classmethod
    def of(cls, arch: Architecture, tp: int, utilization: float, gpu: Gpu) -> Server:
        mem = vllm_memory(arch, tp=tp, gpu_memory_utilization=utilization, gpu_bytes=gpu.memory_gib * GIB,
                          dtype="bfloat16", max_model_len=40_960)
        return cls(tp, mem.kv_tokens, mem.weights, mem.kv_bytes_per_token, arch.params, arch.layers,
                   arch.heads * arch.head_dim, arch.hidden, gpu)

    def decode_step_s(self, seqs: np.ndarray, context: np.ndarray) -> np.ndarray:
        """One decode iteration of `seqs` sequences holding `context` tokens of KV cache: the
        weights' and the cache's bytes read at the calibrated bandwidth (or the matmuls, when
        that is longer), plus the tensor-parallel all-reduces."""
        g = self.gpu
        memory = (self.weight_bytes_gpu + context * self.kv_bytes_token_gpu) / (g.hbm_bytes_s * g.decode_bandwidth_share)
        compute = seqs * 2 * self.params / self.tp / (g.bf16_flops * g.prefill_mfu)
        comm = 2 * self.layers * g.allreduce_latency_s if self.tp > 1 else 0.0
        return np.maximum(memory, compute) + comm

    def prefill_s(self, tokens: np.ndarray, context_end: np.ndarray) -> np.ndarray:
        """Server seconds to prefill `tokens` new tokens that end at position `context_end`:
        2 FLOPs a parameter a token plus causal attention over the positions, and the
        all-reduces of their activations."""
        g = self.gpu
        mean_pos = context_end - tokens / 2
        flops = tokens * (2 * self.params + 4 * self.layers * self.q_dim * mean_pos)
        comm = 0.0
        if self.tp > 1:
            per_token = 2 * self.layers * self.hidden * 2 * 2 * (self.tp - 1) / self.tp
            comm = tokens * per_token / g.allreduce_bus_bytes_s
        return flops / (self.tp * g.bf16_flops * g.prefill_mfu) + comm


def forward_flops(tokens: np.ndarray, arch: Architecture) -> np.ndarray:
    """A forward pass over whole sequences: 2 FLOPs a parameter a token plus causal attention."""
    return 2 * arch.params * tokens + 2 * arch.layers * arch.heads * arch.head_dim * tokens.astype(float) ** 2


def balanced_max(costs: np.ndarray, tokens: np.ndarray, ranks: int) -> float:
    """The busiest rank's cost when sequences go, longest first, to the rank with the fewest
    tokens (swe_aem.train's balanced_shards)."""
    load_tokens = np.zeros(ranks)
    load_cost = np.zeros(ranks)
    for i in np.argsort(-tokens, kind="stable"):
        r = int(np.argmin(load_tokens))
        load_tokens[r] += tokens[i]
        load_cost[r] += costs[i]
    return float(load_cost.max())


def train_seconds(lengths: np.ndarray, gpus: int, arch: Architecture, trainer: Trainer, gpu: Gpu,
                  rng: np.random.Generator) -> float:
    """forward_old over the batch, then one update per mini-batch (forward, recomputation and a
    backward of twice the forward), each as long as its busiest rank, plus CPU Adam."""
    rate = gpu.bf16_flops * trainer.mfu
    fwd = forward_flops(lengths, arch)
    seconds = balanced_max(fwd, lengths, gpus) / rate
    order = rng.permutation(len(lengths))
    for part in np.array_split(order, trainer.mini_batches):
        seconds += balanced_max(4 * fwd[part], lengths[part], gpus) / rate
    return seconds + trainer.mini_batches * trainer.cpu_adam_s_per_billion * arch.params / 1e9 / gpus


def push_seconds(regime: Regime, push: Push, arch: Architecture) -> tuple[float, float]:
    """(seconds the trainer spends publishing, seconds the servers stop serving to load)."""
    size = arch.params * 2  # bf16
    if regime.push in ("nccl", "memory"):  # memory: verl's hybrid engine hands its shards over in place
        return 0.0, push.nccl_s
    load = max(size / push.load_bytes_s, regime.servers * size / push.shared_fs_bytes_s)
    return size / push.write_bytes_s, load


# ----------------------------------------------------------------------------- the simulation

IDLE, DISPATCH, START, QUEUED, PREFILL, DECODE, TOOL, GRADE, DONE = range(9)


class Simulation:
    """`chains` independent clusters, each running `steps` weight updates, advanced in slices of
    `dt` seconds. Episode slot i of a chain holds an episode of batch t where
    i // episodes == t % (k + 1): k + 1 batches can be in flight. A turn waits in its server's
    queue until the KV cache holds its context and output, prefills (the whole context when the
    server's prefix cache lost it, else only the new tokens), decodes one token per iteration
    with the server's other sequences, then runs its tool call off the server."""

    def __init__(self, regime: Regime, work: Workload, gpu: Gpu, trainer: Trainer, push: Push,
                 arch: Architecture, *, chains: int, steps: int, warmup: int, seed: int, dt: float):
        self.regime, self.work, self.gpu, self.trainer, self.arch = regime, work, gpu, trainer, arch
        self.steps, self.warmup, self.dt = steps, warmup, dt
        self.rng = np.random.default_rng(seed)
        self.fit = fit_lognormal(work.turn_quantiles)
        self.fleet_s = FLEET_TURN_S * (regime.servers ** dispatch_beta(FLEET_DISPATCH) - 1) if regime.fleet else 0.0
        self.srv = Server.of(arch, regime.tp, regime.gpu_memory_utilization, gpu)
        self.write_s, self.load_s = push_seconds(regime, push, arch)
        if regime.colocated:
            self.load_s += push.sleep_wake_s
        self.k, self.E, self.S, self.C = regime.staleness, work.episodes, regime.servers, chains
        n = chains * (self.k + 1) * self.E
        self.chain = np.repeat(np.arange(chains), (self.k + 1) * self.E)
        self.group = (np.arange(n) % ((self.k + 1) * self.E)) // self.E
        self.phase = np.full(n, IDLE)
        self.server = np.full(n, -1)  # global id: chain * S + s
        self.timer = np.zeros(n)
        self.turns = np.zeros(n, dtype=int)
        self.turn = np.zeros(n, dtype=int)
        self.ctx = np.zeros(n)  # tokens of the episode so far (prompt, turns, observations)
        self.new = np.zeros(n)  # tokens not yet in the server's cache (a hit prefills only these)
        self.out = np.zeros(n)  # this turn's output tokens
        self.dec_left = np.zeros(n)
        self.pf_left = np.zeros(n)  # server seconds of prefill left
        self.order = np.zeros(n)  # FIFO key at the server
        self.batch = np.full(n, -1)
        self.every = np.arange(chains)
        self.owner = np.repeat(self.every, self.S)  # the chain of each server
        self.version = np.zeros(chains, dtype=int)
        self.next_admit = np.zeros(chains, dtype=int)
        self.next_train = np.zeros(chains, dtype=int)
        self.trainer_free = np.zeros(chains)
        # each pending push: (its load starts, it is served); a server loading weights serves nothing
        self.pushes: list[list[tuple[float, float]]] = [[] for _ in range(chains)]
        self.load_from = np.full(chains, np.inf)  # the next push's load window (pushes come in order)
        self.load_until = np.full(chains, np.inf)
        self.sleeping_until = np.zeros(chains)  # colocated: servers asleep while the trainer runs
        self.done_count = np.zeros((chains, self.k + 1), dtype=int)
        self.admitted_at = np.zeros((chains, steps + self.k + 2))
        self.updates = [[0.0] for _ in range(chains)]
        self.trainings: list[list[tuple[float, float]]] = [[] for _ in range(chains)]
        self.window = np.zeros((chains, 2))  # start, end of each chain's measured window
        self.rec: dict[str, list[float]] = {"train_s": [], "rollout_span_s": [], "trained_tokens": []}
        self.busy_server = np.zeros(chains)  # server-seconds with a request running, measured window
        self.tokens_out = np.zeros(chains)
        self.hits = np.zeros(2)  # turns after the first: prefix cache hits, misses
        self.seq = 0.0
        self.now = 0.0

    def run(self) -> dict:
        for c in range(self.C):
            self._admit_batches(c)
        while (self.version < self.steps).any():
            self._timers()
            self._dispatch()
            serving = self._serving()
            self._admit(serving)
            used = self._prefill(serving)
            self._decode(serving, used)
            self.now += self.dt
            self._train()
        busy_trainer = np.array([sum(max(0.0, min(b, w1) - max(a, w0)) for a, b in spans)
                                 for spans, (w0, w1) in zip(self.trainings, self.window)])
        return summarize(self.regime, self.work, self.srv, self.updates, self.warmup, self.window,
                         self.busy_server, busy_trainer, self.tokens_out, self.hits, self.rec,
                         (self.write_s, self.load_s), self.fleet_s)

    def _measuring(self) -> np.ndarray:
        """Per chain: inside its measured window (after the warm-up, before the last update)."""
        return (self.version >= self.warmup) & (self.version < self.steps)

    def _admit_batches(self, c: int) -> None:
        """The admission rule: batch t runs once the served weights are version >= t - k."""
        w = self.work
        while self.next_admit[c] <= self.version[c] + self.k and self.next_admit[c] < self.steps:
            t = self.next_admit[c]
            idx = np.nonzero((self.chain == c) & (self.group == t % (self.k + 1)))[0]
            turns = self.rng.lognormal(self.fit["mu"], self.fit["sigma"], len(idx))
            self.turns[idx] = np.clip(np.rint(turns), 1, w.max_turns)
            self.turn[idx] = 0
            self.ctx[idx] = self.new[idx] = w.prompt_tokens
            self.batch[idx] = t
            self.phase[idx] = DISPATCH
            self.done_count[c, t % (self.k + 1)] = 0
            self.admitted_at[c, t] = self.now
            self.next_admit[c] += 1

    def _draw_output(self, idx: np.ndarray) -> None:
        w = self.work
        o = np.rint(self.rng.lognormal(math.log(w.output_median), w.output_sigma, len(idx)))
        self.out[idx] = np.clip(o, 1, np.maximum(w.max_context - self.ctx[idx], 1))
        self.dec_left[idx] = self.out[idx]
        self.phase[idx] = QUEUED
        self.order[idx] = self.seq + self.rng.random(len(idx))
        self.seq += 1

    def _timers(self) -> None:
        """Sandbox starts, tool calls and gradings that end in this slice."""
        phase, w = self.phase, self.work
        timed = np.nonzero((phase == START) | (phase == TOOL) | (phase == GRADE))[0]
        self.timer[timed] -= self.dt
        ended = timed[self.timer[timed] <= 0]
        if not len(ended):
            return
        graded = ended[phase[ended] == GRADE]
        phase[graded] = DONE
        np.add.at(self.done_count, (self.chain[graded], self.group[graded]), 1)
        tools = ended[phase[ended] == TOOL]
        full = tools[self.ctx[tools] >= w.max_context - 16]  # no room for another turn
        phase[full] = GRADE
        self.timer[full] = grade_time(self.rng, w, len(full))
        self._draw_output(np.concatenate([ended[phase[ended] == START], tools[self.ctx[tools] < w.max_context - 16]]))

    def _dispatch(self) -> None:
        """Each admitted episode to the least-loaded server with room, older batches first (the
        fleet's driver; a replica holds an episode from its sandbox's start to its grade)."""
        waiting = self.phase == DISPATCH
        if not waiting.any():
            return
        S, cap = self.S, self.regime.concurrency
        flying = (self.phase >= START) & (self.phase <= GRADE)
        load = np.bincount(self.server[flying], minlength=self.C * S).reshape(self.C, S)
        for c in np.nonzero(np.bincount(self.chain[waiting], minlength=self.C) > 0)[0]:
            free = np.maximum(cap - load[c], 0)
            if free.sum() == 0:
                continue
            pending = np.nonzero(waiting & (self.chain == c))[0]
            pending = pending[np.lexsort((pending, self.batch[pending]))]
            levels = np.concatenate([np.arange(load[c, s], cap) for s in range(S)])
            owners = np.repeat(np.arange(S), free)
            take = owners[np.lexsort((owners, levels))][:len(pending)]
            got = pending[:len(take)]
            self.server[got] = c * S + take
            self.phase[got] = START
            self.timer[got] = self.work.sandbox_start_s + self.fleet_s

    def _serving(self) -> np.ndarray:
        """Per server: neither loading weights nor asleep for the trainer."""
        loading = (self.load_from <= self.now) & (self.now < self.load_until)
        return ~loading[self.owner] & (self.sleeping_until[self.owner] <= self.now)

    def _admit(self, serving: np.ndarray) -> None:
        """vLLM's scheduler: queued turns, FIFO per server, while the KV cache holds each one's
        context and output and fewer than max_num_seqs run. A turn after the first finds its
        prefix still cached with the chance that the cache holds the idle episodes' prefixes."""
        phase, srv, n_srv = self.phase, self.srv, self.C * self.S
        running = (phase == PREFILL) | (phase == DECODE)
        reserved = np.bincount(self.server[running], weights=self.ctx[running] + self.out[running], minlength=n_srv)
        n_running = np.bincount(self.server[running], minlength=n_srv)
        queued = np.nonzero((phase == QUEUED) & serving[np.maximum(self.server, 0)])[0]
        if len(queued):
            idle = ((phase == QUEUED) | (phase == TOOL)) & (self.turn > 0)
            demand = np.bincount(self.server[idle], weights=self.ctx[idle], minlength=n_srv)
            p_hit = np.clip((srv.kv_tokens - reserved) / np.maximum(demand, 1), 0, 1)
            q = queued[np.lexsort((self.order[queued], self.server[queued]))]
            s_of = self.server[q]
            need = self.ctx[q] + self.out[q]
            starts = group_starts(s_of)
            cum = np.cumsum(need)
            within = cum - (cum[starts] - need[starts])
            rank = np.arange(len(q)) - starts
            a = q[(within <= srv.kv_tokens - reserved[s_of]) & (rank < self.regime.concurrency - n_running[s_of])]
            later = self.turn[a] > 0
            hit = later & ((self.rng.random(len(a)) < p_hit[self.server[a]]) | self.work.perfect_prefix_cache)
            self.hits += (int(hit.sum()), int((later & ~hit).sum()))
            self.pf_left[a] = srv.prefill_s(np.where(hit, self.new[a], self.ctx[a]), self.ctx[a])
            phase[a] = PREFILL
        running = (phase == PREFILL) | (phase == DECODE)
        active = (np.bincount(self.server[running], minlength=n_srv) > 0) & serving
        self.busy_server += self._measuring() * np.bincount(self.owner, weights=active * self.dt, minlength=self.C)

    def _prefill(self, serving: np.ndarray) -> np.ndarray:
        """Prefills, FIFO per server, take the slice's time first; per server, the seconds used."""
        n_srv = self.C * self.S
        pre = np.nonzero((self.phase == PREFILL) & serving[np.maximum(self.server, 0)])[0]
        if not len(pre):
            return np.zeros(n_srv)
        p = pre[np.lexsort((self.order[pre], self.server[pre]))]
        s_of = self.server[p]
        starts = group_starts(s_of)
        cost = self.pf_left[p]
        cum = np.cumsum(cost)
        before = cum - cost - (cum[starts] - cost[starts])
        spent = np.clip(self.dt - before, 0, cost)
        self.pf_left[p] = cost - spent
        self.phase[p[self.pf_left[p] <= 1e-9]] = DECODE
        return np.bincount(s_of, weights=spent, minlength=n_srv)

    def _decode(self, serving: np.ndarray, used: np.ndarray) -> None:
        """The rest of the slice: every decoding sequence one token per iteration; a finished
        turn goes to its tool call (or, the last one, to grading) with the slice's leftover time."""
        phase, w, n_srv = self.phase, self.work, self.C * self.S
        dec = np.nonzero((phase == DECODE) & serving[np.maximum(self.server, 0)])[0]
        if not len(dec):
            return
        running = (phase == PREFILL) | (phase == DECODE)
        s_of = self.server[dec]
        seqs = np.bincount(s_of, minlength=n_srv)
        held = np.bincount(self.server[running], minlength=n_srv,
                           weights=self.ctx[running] + self.out[running] - self.dec_left[running])
        iters = np.where(seqs > 0, (self.dt - used) / self.srv.decode_step_s(seqs, held), 0.0)
        adv = iters[s_of]
        made = np.minimum(adv, self.dec_left[dec])
        self.tokens_out += np.bincount(self.chain[dec], weights=made, minlength=self.C) * self._measuring()
        self.dec_left[dec] -= made
        finished = self.dec_left[dec] <= 1e-9
        fin = dec[finished]
        if not len(fin):
            return
        leftover = (self.dt - used[self.server[fin]]) * (1 - made[finished] / np.maximum(adv[finished], 1e-9))
        self.ctx[fin] += self.out[fin]
        self.turn[fin] += 1
        last = (self.turn[fin] >= self.turns[fin]) | (self.ctx[fin] >= w.max_context - 16)
        graded, tools = fin[last], fin[~last]
        phase[graded] = GRADE
        self.timer[graded] = grade_time(self.rng, w, len(graded)) - leftover[last]
        phase[tools] = TOOL
        self.timer[tools] = tool_time(self.rng, w, len(tools)) + self.fleet_s - leftover[~last]
        obs = self.rng.lognormal(math.log(w.observation_median), w.observation_sigma, len(tools))
        obs = np.minimum(np.rint(obs), w.observation_cap)
        self.ctx[tools] = np.minimum(self.ctx[tools] + obs, w.max_context)
        self.new[tools] = obs

    def _train(self) -> None:
        """The trainer takes a finished batch when it is free; the push that follows pauses the
        servers while they load; a push served raises the version and admits the next batches."""
        k, now = self.k, self.now
        complete = self.done_count[self.every, self.next_train % (k + 1)] >= self.E
        for c in np.nonzero(complete & (self.trainer_free <= now) & (self.next_train < self.next_admit))[0]:
            idx = np.nonzero((self.chain == c) & (self.group == self.next_train[c] % (k + 1)))[0]
            lengths = self.ctx[idx].copy()
            train = train_seconds(lengths, self.regime.trainer_gpus, self.arch, self.trainer, self.gpu, self.rng)
            self.rec["train_s"].append(train)
            self.rec["rollout_span_s"].append(now - self.admitted_at[c, self.next_train[c]])
            self.rec["trained_tokens"].append(float(lengths.mean()))
            self.trainings[c].append((now, now + train))
            self.phase[idx] = IDLE
            start_load = now + train + self.write_s
            if self.regime.colocated:
                self.sleeping_until[c] = start_load + self.load_s
            self.trainer_free[c] = start_load
            self.pushes[c].append((start_load, start_load + self.load_s))
            self.load_from[c], self.load_until[c] = self.pushes[c][0]
            self.next_train[c] += 1
        for c in np.nonzero(self.load_until <= now)[0]:
            self.pushes[c].pop(0)
            self.load_from[c], self.load_until[c] = self.pushes[c][0] if self.pushes[c] else (np.inf, np.inf)
            self.version[c] += 1
            self.updates[c].append(now)
            if self.version[c] == self.warmup:
                self.window[c, 0] = now
            if self.version[c] == self.steps:
                self.window[c, 1] = now
            self._admit_batches(c)


def simulate(regime: Regime, work: Workload, gpu: Gpu, trainer: Trainer, push: Push, arch: Architecture, *,
             chains: int, steps: int, warmup: int, seed: int, dt: float = 2.0) -> dict:
    """Simulate `chains` independent clusters for `steps` weight updates each; the step time
    is the time between updates after `warmup` of them (the asynchronous ramp)."""
    return Simulation(regime, work, gpu, trainer, push, arch, chains=chains, steps=steps, warmup=warmup,
                      seed=seed, dt=dt).run()


def group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """For each element of a sorted array, the index where its run of equal keys starts."""
    first = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    return np.maximum.accumulate(np.where(first, np.arange(len(sorted_keys)), 0))


def tool_time(rng: np.random.Generator, work: Workload, size: int) -> np.ndarray:
    t = rng.lognormal(math.log(work.tool_median_s), work.tool_sigma, size) * work.tool_time_scale
    return np.minimum(t, work.tool_cap_s) + work.tool_overhead_s


def grade_time(rng: np.random.Generator, work: Workload, size: int) -> np.ndarray:
    return np.minimum(rng.lognormal(math.log(work.grade_median_s), work.grade_sigma, size), work.grade_cap_s)


def summarize(regime: Regime, work: Workload, srv: Server, updates: list, warmup: int, window: np.ndarray,
              busy_server: np.ndarray, busy_trainer: np.ndarray, tokens_out: np.ndarray, hits: np.ndarray,
              rec: dict, push_s: tuple[float, float], fleet_s: float) -> dict:
    """Step times (between updates after the warm-up), throughput and GPU idle shares."""
    gaps = np.concatenate([np.diff(u)[warmup:] for u in updates])
    wall = float((window[:, 1] - window[:, 0]).sum())
    step = float(gaps.mean())
    server_busy = float(busy_server.sum()) / (wall * regime.servers)
    trainer_busy = float(busy_trainer.sum()) / wall
    if regime.colocated:  # the servers' GPUs also train; no GPU is trainer-only unless some host no server
        vllm_idle = 1 - min(1.0, server_busy + trainer_busy)
        trainer_only = regime.trainer_gpus - regime.rollout_gpus
        trainer_idle = 1 - trainer_busy if trainer_only > 0 else None
    else:
        vllm_idle = 1 - server_busy
        trainer_idle = 1 - trainer_busy
    return {
        "regime": regime.key, "label": regime.label,
        "layout": {"servers": regime.servers, "tp": regime.tp, "rollout_gpus": regime.rollout_gpus,
                   "trainer_gpus": regime.trainer_gpus, "colocated": regime.colocated,
                   "staleness": regime.staleness, "concurrency_per_server": regime.concurrency,
                   "gpu_memory_utilization": regime.gpu_memory_utilization, "push": regime.push,
                   "kv_cache_tokens_per_server": srv.kv_tokens,
                   "fleet_dispatch_s_per_turn": round(fleet_s, 2)},
        "steps_measured": len(gaps),
        "step_s": {"mean": round(step, 1), "p10": round(float(np.percentile(gaps, 10)), 1),
                   "p90": round(float(np.percentile(gaps, 90)), 1)},
        "episodes_per_hour": round(work.episodes * 3600 / step, 1),
        "idle_share": {"trainer_gpus": None if trainer_idle is None else round(trainer_idle, 3),
                       "vllm_gpus": round(vllm_idle, 3)},
        "phases_s": {"rollout_span_mean": round(float(np.mean(rec["rollout_span_s"])), 1),
                     "train_mean": round(float(np.mean(rec["train_s"])), 1),
                     "publish": round(push_s[0], 1), "load": round(push_s[1], 1)},
        "generated_tokens_per_s_per_vllm_gpu": round(float(tokens_out.sum()) / wall / regime.rollout_gpus, 1),
        "prefix_cache_hit_rate": round(float(hits[0] / max(hits.sum(), 1)), 3),
        "trained_tokens_per_episode_mean": round(float(np.mean(rec["trained_tokens"])), 0),
    }


# ----------------------------------------------------------------------------- checks and runs


def calibration(gpu: Gpu, arch: Architecture) -> dict:
    """GPUStack's two vLLM runs of Qwen3-32B on one H100 (docs.gpustack.ai performance-lab,
    qwen3-32b/h100): the 32K-input run the two efficiencies were read from, and the 2K-input
    run as a check (500 requests of ~2,000 + 100 tokens; 998,175 input tokens, 328 s)."""
    srv = Server.of(arch, 1, 0.9, gpu)
    one = np.array([1.0])

    def run(requests: int, prompt: float, output: int) -> float:
        resident = max(1, int(srv.kv_tokens // (prompt + output)))
        prefill = float(srv.prefill_s(np.array([prompt]), np.array([prompt]))[0]) * requests
        decode = float(srv.decode_step_s(one * resident, one * resident * (prompt + output / 2))[0])
        return prefill + output * requests / resident * decode

    return {"kv_tokens_tp1": srv.kv_tokens,
            "random_32k": {"model_s": round(run(100, 32_000, 100), 0), "measured_s": 1157.3,
                           "use": "fitted on (TPOT -> bandwidth share, duration -> prefill MFU)"},
            "random_2k": {"model_s": round(run(500, 1_996, 100), 0), "measured_s": 328.0,
                          "use": "check (not fitted)"}}


def server_speeds(gpu: Gpu, arch: Architecture) -> list[dict]:
    """What the server model says a 32B server does at TP-8 / 4 / 2 (gpu_memory_utilization 0.9):
    decode tokens/s of one sequence and of a full KV cache at 16k tokens of context each, and
    prefill tokens/s of a 16k-token context; per server and per GPU."""
    rows = []
    for tp in (8, 4, 2, 1):
        srv = Server.of(arch, tp, 0.9, gpu)
        full = max(1, srv.kv_tokens // 16_384)
        one = 1 / float(srv.decode_step_s(np.array([1]), np.array([16_384.0]))[0])
        many = full / float(srv.decode_step_s(np.array([full]), np.array([full * 16_384.0]))[0])
        prefill = 16_384 / float(srv.prefill_s(np.array([16_384.0]), np.array([16_384.0]))[0])
        rows.append({"tp": tp, "kv_tokens": srv.kv_tokens, "decode_one_seq_tok_s": round(one, 1),
                     "seqs_of_16k_in_kv": int(full), "decode_full_kv_tok_s": round(many, 0),
                     "decode_full_kv_tok_s_per_gpu": round(many / tp, 0),
                     "prefill_16k_tok_s": round(prefill, 0), "prefill_16k_tok_s_per_gpu": round(prefill / tp, 0)})
    return rows


def nemo_rl_check(gpu: Gpu, trainer: Trainer, push: Push, arch: Architecture) -> dict:
    """An independent bound: NeMo-RL v0.7's published GRPO step of Qwen3-32B on 32 H100
    (docs/about/performance-summary.md: generation TP-4, 2,048 samples a step, mean sequence
    3,256 tokens of at most 4,096, on-policy, 323 s a step for generation, log-probs, Megatron
    training and refit together). The model's generation of such a batch on 8 TP-4 servers
    (single-turn, no tools; the prompt length and gpu_memory_utilization 0.6 are assumptions)
    must come in well under the whole step."""
    work = Workload(episodes=2048, turn_quantiles=((0.5, 1.0), (0.9, 1.0), (0.99, 1.0)), max_turns=1,
                    max_context=4_096, prompt_tokens=300, output_median=2_900.0, output_sigma=0.3,
                    grade_median_s=1e-3, grade_sigma=0.0, sandbox_start_s=0.0)
    regime = Regime("nemo", "NeMo-RL", 8, 4, 0.6, 32, colocated=True, concurrency=256, push="nccl", fleet=False)
    r = simulate(regime, work, gpu, trainer, push, arch, chains=1, steps=1, warmup=0, seed=0)
    return {"published_step_s": 323.0, "model_generation_s": r["phases_s"]["rollout_span_mean"],
            "model_generated_tok_s_per_gpu": round(r["generated_tokens_per_s_per_vllm_gpu"], 0)}


def regimes() -> list[Regime]:
    return [
        Regime("a", "(a) sync, one TP-8 server (today's single-server path), colocated", 1, 8, 0.6, 64,
               colocated=True, concurrency=512, fleet=False),
        Regime("ref", "reference: DeepSWE's own layout, 8 colocated TP-8 servers (verl hybrid engine)", 8, 8,
               0.6, 64, colocated=True, concurrency=64, push="memory", fleet=False),
        Regime("b-tp8", "(b) fleet, sync, 4 x TP-8 on 32 GPUs, trainer on 32", 4, 8, 0.9, 32, colocated=False,
               concurrency=128),
        Regime("b-tp4", "(b) fleet, sync, 8 x TP-4 on 32 GPUs, trainer on 32", 8, 4, 0.9, 32, colocated=False,
               concurrency=64),
        Regime("b-tp2", "(b) fleet, sync, 16 x TP-2 on 32 GPUs, trainer on 32", 16, 2, 0.9, 32, colocated=False,
               concurrency=32),
    ]


def async_of(base: Regime, k: int) -> Regime:
    return replace(base, key=f"c{k}-{base.key.split('-')[1]}", staleness=k,
                   label=base.label.replace("(b) fleet, sync", f"(c) fleet, async k={k}"))


def sensitivity(best_sync: Regime, gpu: Gpu, work: Workload, trainer: Trainer, push: Push) -> list:
    """(name, regime, workload, trainer, push) of the runs that test what would change the conclusion."""
    c1 = async_of(best_sync, 1)
    tp = best_sync.tp
    a, ref = regimes()[:2]
    return [
        ("(a) with a perfect prefix cache", a, replace(work, perfect_prefix_cache=True), trainer, push),
        ("(a) with rollout.concurrency 64", replace(a, concurrency=64), work, trainer, push),
        ("one TP-8 server split (trainer 56), async k=1, conc. 128",
         replace(a, colocated=False, gpu_memory_utilization=0.9, trainer_gpus=56, staleness=1, concurrency=128),
         work, trainer, push),
        ("reference, turns 2x longer, commands 4x slower", ref,
         replace(work, output_median=2 * work.output_median, tool_time_scale=4.0), trainer, push),
        ("(a) with commands 4x slower", a, replace(work, tool_time_scale=4.0), trainer, push),
        ("(b) NCCL push", replace(best_sync, push="nccl"), work, trainer, push),
        ("(c) k=1 NCCL push", replace(c1, push="nccl"), work, trainer, push),
        ("(b) trainer at 15% MFU", best_sync, work, replace(trainer, mfu=0.15), push),
        ("(c) k=1 trainer at 15% MFU", c1, work, replace(trainer, mfu=0.15), push),
        ("(b) no dispatch loss", replace(best_sync, fleet=False), work, trainer, push),
        ("(c) k=1 commands 4x slower", c1, replace(work, tool_time_scale=4.0), trainer, push),
        ("(c) k=1, 48 rollout / 16 trainer GPUs", replace(c1, servers=48 // tp, trainer_gpus=16,
                                                          concurrency=max(1, 512 * tp // 48)), work, trainer, push),
        ("(c) k=1, 16 rollout / 48 trainer GPUs", replace(c1, servers=16 // tp, trainer_gpus=48,
                                                          concurrency=512 * tp // 16), work, trainer, push),
        ("(c) k=1, max_turns 100", c1, replace(work, max_turns=100), trainer, push),
    ]


def table(rows: list[dict]) -> str:
    head = f"{'regime':<62} {'step s':>7} {'p90 s':>7} {'ep/h':>6} {'idle trn':>8} {'idle vllm':>9} {'rollout s':>9} {'train s':>7} {'push s':>6} {'hit':>5}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ti = r["idle_share"]["trainer_gpus"]
        ph = r["phases_s"]
        lines.append(f"{r['label'][:62]:<62} {r['step_s']['mean']:>7.0f} {r['step_s']['p90']:>7.0f} "
                     f"{r['episodes_per_hour']:>6.0f} {'-' if ti is None else f'{ti:.0%}':>8} "
                     f"{r['idle_share']['vllm_gpus']:>9.0%} {ph['rollout_span_mean']:>9.0f} {ph['train_mean']:>7.0f} "
                     f"{ph['publish'] + ph['load']:>6.0f} {r['prefix_cache_hit_rate']:>5.0%}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/measurements/step_time_model.json"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    gpu, work, trainer, push = Gpu(), Workload(), Trainer(), Push()
    arch = load_preset("qwen3-32b").architecture
    fit = fit_lognormal(work.turn_quantiles)
    cal = calibration(gpu, arch)
    print("A MODEL, NOT A MEASUREMENT (inputs and sources: docs/step_time_model.md)")
    print(f"turns: log-normal mu {fit['mu']:.3f} sigma {fit['sigma']:.3f}: "
          + ", ".join(f"{k} {v['fitted']} (target {v['target']:.0f})" for k, v in fit["quantiles"].items())
          + f"; cut at {work.max_turns}")
    print(f"calibration (one H100, TP-1): 32k-input run {cal['random_32k']['model_s']:.0f} s modelled vs "
          f"{cal['random_32k']['measured_s']:.0f} s measured (fitted); 2k-input run "
          f"{cal['random_2k']['model_s']:.0f} s vs {cal['random_2k']['measured_s']:.0f} s (check)")
    nemo = nemo_rl_check(gpu, trainer, push, arch)
    print(f"cross-check: NeMo-RL's Qwen3-32B GRPO step on 32 H100 took {nemo['published_step_s']:.0f} s in all; "
          f"the model generates that batch in {nemo['model_generation_s']:.0f} s")
    speeds = server_speeds(gpu, arch)
    print("server model (gpu_memory_utilization 0.9; tokens/s per server, per GPU):")
    for row in speeds:
        print(f"  TP-{row['tp']}: KV {row['kv_tokens']:>9,} tokens; decode 1 seq {row['decode_one_seq_tok_s']:>5.0f}; "
              f"{row['seqs_of_16k_in_kv']:>3} seqs of 16k {row['decode_full_kv_tok_s']:>6.0f} "
              f"({row['decode_full_kv_tok_s_per_gpu']:.0f}/GPU); prefill at 16k {row['prefill_16k_tok_s']:>6.0f} "
              f"({row['prefill_16k_tok_s_per_gpu']:.0f}/GPU)")

    def run(regime: Regime, w: Workload = work, tr: Trainer = trainer, pu: Push = push, quick: bool = False) -> dict:
        k = regime.staleness
        if k == 0:  # synchronous steps are independent of each other: many chains, one step each;
            # a single server's steps are long (many slices) and vary little: fewer of them
            chains, steps, warmup = (8 if regime.servers > 1 else 4, 1, 0) if quick else \
                (32 if regime.servers > 1 else 12, 1, 0)
        else:  # the first k updates are the ramp; an even number measured (the gaps alternate)
            chains, steps, warmup = (4, 4 + k, k) if quick else (8, 6 + k, k)
        return simulate(regime, w, gpu, tr, pu, arch, chains=chains, steps=steps, warmup=warmup, seed=args.seed)

    rows = [run(r) for r in regimes()]
    fleet_sync = [r for r in rows if r["regime"].startswith("b-")]
    best = min(fleet_sync, key=lambda r: r["step_s"]["mean"])
    best_regime = next(r for r in regimes() if r.key == best["regime"])
    rows += [run(async_of(best_regime, k)) for k in (1, 2)]
    print(table(rows))
    sens = []
    for name, regime, w, tr, pu in sensitivity(best_regime, gpu, work, trainer, push):
        r = run(regime, w, tr, pu, quick=True)
        r["label"] = name
        sens.append(r)
    print("\nwhat would change it (fewer simulated steps each):")
    print(table(sens))
    elapsed = time.perf_counter() - t0
    print(f"\n{sum(r['steps_measured'] for r in rows + sens)} simulated steps in {elapsed:.0f} s; -> {args.out}")
    result = {
        "what": "A MODEL, not a measurement: simulations/step_time/model.py (docs/step_time_model.md)",
        "seed": args.seed, "simulated_step_s_resolution": 2.0,
        "inputs": {"gpu": dataclasses.asdict(gpu), "workload": dataclasses.asdict(work),
                   "trainer": dataclasses.asdict(trainer), "push": dataclasses.asdict(push),
                   "fleet_dispatch_measured": FLEET_DISPATCH,
                   "fleet_dispatch_beta": round(dispatch_beta(FLEET_DISPATCH), 4)},
        "turns_fit": fit, "calibration": cal, "nemo_rl_check": nemo, "server_model": speeds, "regimes": rows, "sensitivity": sens,
        "runtime_s": round(elapsed, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
