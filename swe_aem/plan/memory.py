"""GPU memory of the two programs of a run, counted from the model's shape: no GPU, no I/O.

Every number is bytes of one GPU. What is an estimate rather than arithmetic (vLLM's own
overheads, what a sleeping server keeps, the trainer's CUDA context) is a named constant
below with where it comes from, so a measurement can correct it in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from swe_aem.config import ModelTrainerSettings, resolve_trainer
from swe_aem.policy.models import Architecture

GIB = 1024**3

# vLLM takes gpu_memory_utilization x the GPU for itself; weights and this come out of it
# before the KV cache: non-torch memory 1.27 GiB + activation peak 2.95 GiB in vLLM's
# own profile of a 9.7 GB model (vllm#11743's log), rounded up.
VLLM_RUNTIME_GIB = 4.5
# What a server asleep at level 1 still holds (CUDA context, CUDA graphs, the torch
# allocator's cache): 4.75 GiB after sleep on one GPU (vllm#17117), about 7 GiB a GPU for a
# TP-8 1T-parameter model (vllm#47654). Level 1 moves the weights to CPU RAM.
VLLM_ASLEEP_GIB = 5.0
# A trainer process's CUDA context, NCCL communicators and cuBLAS workspaces: an allowance.
TRAINER_RUNTIME_GIB = 1.5
# DeepSpeed 0.19's defaults (deepspeed/runtime/zero/config.py), which engine.py keeps:
REDUCE_BUCKET = 500_000_000  # elements of a gradient reduce bucket (stages 1-3)
PREFETCH_BUCKET = 50_000_000  # elements ZeRO-3 gathers ahead of the layer it runs


def dtype_bytes(dtype: str) -> int:
    return 2 if dtype in ("bfloat16", "float16", "half") else 4


@dataclass(frozen=True)
class TrainerSettings(ModelTrainerSettings):
    """The trainer's settings the memory depends on: the config's, the preset's where null
    (swe_aem.config.resolve_trainer, the trainer's own resolution)."""

    logprob_chunk_size: int

    @classmethod
    def of(cls, cfg, preset) -> TrainerSettings:
        return cls(**asdict(resolve_trainer(cfg.trainer, preset)),
                   logprob_chunk_size=cfg.trainer.logprob_chunk_size)


@dataclass(frozen=True)
class Item:
    """One line of a GPU's memory: what, how much, and how it was counted."""

    what: str
    bytes: float
    how: str = ""

    @property
    def gib(self) -> float:
        return self.bytes / GIB


# --------------------------------------------------------------------------- vLLM


@dataclass(frozen=True)
class VllmMemory:
    """One tensor-parallel rank of a rollout server, awake and asleep."""

    tensor_parallel_size: int
    gpu_memory_utilization: float
    weights: float
    runtime: float
    kv_cache: float
    kv_bytes_per_token: int
    max_model_len: int
    asleep: float

    @property
    def reserved(self) -> float:
        """What the server holds while awake: its share of the GPU, whatever it uses."""
        return self.weights + self.runtime + max(self.kv_cache, 0.0)

    @property
    def kv_tokens(self) -> int:
        return max(int(self.kv_cache // self.kv_bytes_per_token), 0)

    @property
    def sequences(self) -> float:
        """Sequences of max_model_len tokens the KV cache holds at once (vLLM needs >= 1)."""
        return self.kv_tokens / self.max_model_len

    def items(self) -> tuple[Item, ...]:
        tp = self.tensor_parallel_size
        return (
            Item("vLLM weights", self.weights, f"params x dtype / TP {tp}"),
            Item("vLLM runtime", self.runtime, "CUDA context, activation peak (estimate)"),
            Item("vLLM KV cache", max(self.kv_cache, 0.0),
                 f"rest of gpu_memory_utilization {self.gpu_memory_utilization:g}: "
                 f"{self.kv_tokens:,} tokens = {self.sequences:.1f} x {self.max_model_len:,}"),
        )


def kv_bytes_per_token(arch: Architecture, tp: int, dtype: str) -> int:
    """K and V of every layer for one token on one TP rank (KV heads are split over the
    ranks, or replicated when there are fewer heads than ranks)."""
    heads = max(1, arch.kv_heads // tp)
    return 2 * arch.layers * heads * arch.head_dim * dtype_bytes(dtype)


def vllm_memory(arch: Architecture, *, tp: int, gpu_memory_utilization: float, gpu_bytes: float,
                dtype: str, max_model_len: int) -> VllmMemory:
    """vLLM's memory per GPU: the whole model over TP ranks, then the KV cache gets what is
    left of gpu_memory_utilization x the GPU."""
    weights = arch.params * dtype_bytes(dtype) / tp
    runtime = VLLM_RUNTIME_GIB * GIB
    kv = gpu_memory_utilization * gpu_bytes - weights - runtime
    return VllmMemory(tp, gpu_memory_utilization, weights, runtime, kv,
                      kv_bytes_per_token(arch, tp, dtype), max_model_len, VLLM_ASLEEP_GIB * GIB)


# --------------------------------------------------------------------------- trainer


def layer_activation_bytes(arch: Architecture, b: int) -> int:
    """Bytes per token that one decoder layer keeps for its backward (Hugging Face's
    Qwen2/Llama code with SDPA attention, which keeps no [T x T] scores):
    two RMSNorms (their float32 input and the scaled output), q k v after RoPE and the
    attention output, the gated MLP's gate, SiLU(gate), up and their product."""
    norm = max(4, b) * arch.hidden + b * arch.hidden
    attn = b * (2 * arch.q_dim + 2 * arch.kv_dim)
    if arch.qk_norm:  # Qwen3: the same RMSNorm of q and k per head
        attn += (max(4, b) + b) * (arch.q_dim + arch.kv_dim)
    return 2 * norm + attn + 4 * b * arch.intermediate


def layer_backward_bytes(arch: Architecture, b: int) -> float:
    """Bytes per token of gradients alive at a layer's backward peak: the gated MLP's
    (three of its width) and the hidden state's (in and out, twice), of which
    BACKWARD_SHARE is alive at once."""
    return BACKWARD_SHARE * (3 * b * arch.intermediate + 4 * b * arch.hidden)


# Fitted on one H200 (scripts/measure_train_memory.py: Qwen2.5-7B's shape at 16k tokens,
# Qwen3-32B's and Qwen2.5-32B's widths at 8k-32k tokens): with half of the gradients above
# alive at the peak, the step's peak was predicted within -2% to +14% (the full set gave
# +19% to +44%); on five other shapes (--check: 14B at 12k, Qwen3-32B width at 24k, 1.5B at
# 32k, 32B width 4 x 4k, 7B at 36k) within -10% (1.5B, tied head) to +0.4%
BACKWARD_SHARE = 0.5
# The chunked LM head (swe_aem.algo.entropy) per logit of a chunk: the product in the model's
# dtype, its float32 copy and two float32 temporaries (logsumexp's, the softmax's)
CHUNK_FLOAT32_COPIES = 3


@dataclass(frozen=True)
class TrainerMemory:
    """One data-parallel rank of the trainer at the peak of a training micro-batch, and what
    it keeps on the GPU between updates (while a colocated vLLM runs)."""

    world: int
    longest: int  # the longest sample: rollout.max_context_tokens capped by max_model_len
    rows: int  # samples of that length packed in one micro-batch
    state: tuple[Item, ...]  # parameters, gradients, optimizer states, runtime: always there
    work: tuple[Item, ...]  # gathered parameters, activations, buffers: during the update

    @property
    def tokens(self) -> int:
        return self.longest * self.rows

    @property
    def resident(self) -> float:
        return sum(i.bytes for i in self.state)

    @property
    def peak(self) -> float:
        return self.resident + sum(i.bytes for i in self.work)

    def items(self) -> tuple[Item, ...]:
        return self.state + self.work


def trainer_memory(arch: Architecture, s: TrainerSettings, *, world: int, longest: int) -> TrainerMemory:
    """ZeRO shards of parameters, gradients and Adam states (or none where offloaded to
    CPU), the layer ZeRO-3 gathers, activations at the longest micro-batch (`longest`
    tokens, packed `micro_batch_tokens // longest` to a row when shorter), the chunked LM
    head's logits and DeepSpeed's buckets."""
    p, b = arch.params, (2 if s.bf16 else 4)
    z, w = s.zero_stage, world
    shard = w if z >= 3 else 1
    state = [Item("trainer runtime", TRAINER_RUNTIME_GIB * GIB, "CUDA context, NCCL (allowance)")]
    if z >= 3 and s.offload_params:
        state.append(Item("trainer params", 0.0, "ZeRO-3, offloaded to CPU"))
    else:
        state.append(Item("trainer params", p * b / shard,
                          f"{b} B x params" + (f" / {w} ranks (ZeRO-3)" if z >= 3 else " (full copy)")))
    if z >= 2 and s.offload_optimizer:
        state.append(Item("trainer grads", 0.0, f"ZeRO-{z}, offloaded with the optimizer"))
    else:
        state.append(Item("trainer grads", p * b / (w if z >= 2 else 1),
                          f"{b} B x params" + (f" / {w} ranks (ZeRO-{z})" if z >= 2 else "")))
    opt_bytes = 12 if s.bf16 else 8  # fp32 master copy (bf16 only) + Adam's m and v
    if s.offload_optimizer:
        state.append(Item("trainer optimizer", 0.0, "Adam states on CPU (offload_optimizer)"))
    else:
        state.append(Item("trainer optimizer", opt_bytes * p / (w if z >= 1 else 1),
                          f"{opt_bytes} B x params" + (f" / {w} ranks" if z >= 1 else "")))

    rows = max(1, s.micro_batch_tokens // longest)
    t = longest * rows
    work = []
    # the backward's peak is in one decoder layer or in the LM head, whichever is larger:
    # what it recomputes and differentiates, plus that module's weight gradient (and under
    # ZeRO-3 its gathered weights, which the other stages do not hold)
    copies = 2 if z >= 3 else 1
    layer = (layer_activation_bytes(arch, b) + layer_backward_bytes(arch, b)) * t + copies * arch.layer_params * b
    chunk = s.logprob_chunk_size * arch.vocab * (b + 4 * CHUNK_FLOAT32_COPIES)
    head = 2 * b * arch.hidden * t + chunk + copies * arch.embedding_params * b
    gathered = " and its gathered weights (ZeRO-3)" if z >= 3 else ""
    if s.gradient_checkpointing:
        work.append(Item("activations", arch.layers * b * arch.hidden * t,
                         f"checkpointing: {arch.layers} layer inputs x {t:,} tokens"))
        if layer >= head:
            work.append(Item("backward peak", layer, f"one layer recomputed, its gradients, its weight gradient{gathered}"))
        else:
            work.append(Item("backward peak", head, f"LM head: {s.logprob_chunk_size} x {arch.vocab:,} logits, "
                                                    f"the head's gradient{gathered}"))
    else:
        work.append(Item("activations", arch.layers * layer_activation_bytes(arch, b) * t,
                         f"no checkpointing: {arch.layers} layers x {t:,} tokens"))
        rest = max(layer - layer_activation_bytes(arch, b) * t, head)
        work.append(Item("backward peak", rest, f"gradients of a layer or of the LM head{gathered}"))
    if z >= 3:
        work.append(Item("ZeRO-3 prefetch", PREFETCH_BUCKET * b, "the next layer's weights, gathered ahead"))
    if rows > 1:  # padded rows get a [rows, 1, L, L] boolean mask
        work.append(Item("attention mask", rows * longest * longest, f"{rows} rows of {longest:,}"))
    if z >= 1:
        work.append(Item("reduce bucket", min(REDUCE_BUCKET, p) * b, "DeepSpeed's gradient bucket"))
    return TrainerMemory(w, longest, rows, tuple(state), tuple(work))


def host_bytes(arch: Architecture, s: TrainerSettings, *, world: int, ranks: int) -> float:
    """CPU RAM of `ranks` trainer ranks of one node for what ZeRO offloads to it."""
    b = 2 if s.bf16 else 4
    total = 0.0
    if s.offload_params and s.zero_stage >= 3:
        total += arch.params * b / world * ranks
    if s.offload_optimizer:  # Adam's states and float32 gradients (+ master copy under bf16)
        total += (16 if s.bf16 else 12) * arch.params / world * ranks
    return total
