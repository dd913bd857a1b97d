"""GPU memory of the two programs of a run, counted from the model's shape: no GPU, no I/O.

Every number is bytes of one GPU. What is an estimate rather than arithmetic (vLLM's own
overheads, what a sleeping server keeps, the trainer's CUDA context) is a named constant
below with where it comes from, so a measurement can correct it in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from swe_aem.config import LoraConfig, ModelTrainerSettings, resolve_trainer
from swe_aem.policy.models import Architecture, ModelPreset

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


def run_lora(cfg, preset: ModelPreset) -> LoraConfig | None:
    """The run's LoRA: trainer.lora, else a LoRA preset's `lora:` (configs/model/7b-lora.yaml),
    else None (full fine-tuning)."""
    if cfg.trainer.lora is not None:
        return cfg.trainer.lora
    if preset.lora is not None:
        return LoraConfig(**preset.lora)
    return None


@dataclass(frozen=True)
class TrainerSettings(ModelTrainerSettings):
    """The trainer's settings the memory depends on: the config's, the preset's where null
    (swe_aem.config.resolve_trainer, the trainer's own resolution)."""

    logprob_chunk_size: int
    lora_rank: int | None = None  # the run's LoRA rank (run_lora); None: full fine-tuning
    lora_targets: tuple[str, ...] | None = None  # its target_modules; None: every attention and MLP linear

    @classmethod
    def of(cls, cfg, preset) -> TrainerSettings:
        lora = run_lora(cfg, preset)
        targets = None if lora is None or lora.target_modules is None else tuple(sorted(lora.target_modules))
        return cls(**asdict(resolve_trainer(cfg.trainer, preset)),
                   logprob_chunk_size=cfg.trainer.logprob_chunk_size,
                   lora_rank=None if lora is None else lora.rank, lora_targets=targets)


# --------------------------------------------------------------------------- LoRA

# The linear layers of a decoder layer by peft's leaf names (Llama, Qwen2, Qwen3, Gemma 3:
# every attention and MLP linear, trainer.lora's default targets); their (in, out) features
# from the shape. vLLM's tensor parallelism splits the outputs of the column-parallel ones
# and the inputs of the row-parallel ones (o_proj, down_proj).
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ROW_PARALLEL = ("o_proj", "down_proj")


def linear_shapes(arch: Architecture, tp: int = 1) -> dict[str, tuple[int, int]]:
    """(in, out) features of each decoder linear on one of `tp` tensor-parallel ranks (KV heads
    split over the ranks, or replicated when there are fewer heads than ranks)."""
    kv = max(1, arch.kv_heads // tp) * arch.head_dim
    return {"q_proj": (arch.hidden, arch.q_dim // tp), "k_proj": (arch.hidden, kv), "v_proj": (arch.hidden, kv),
            "o_proj": (arch.q_dim // tp, arch.hidden), "gate_proj": (arch.hidden, arch.intermediate // tp),
            "up_proj": (arch.hidden, arch.intermediate // tp), "down_proj": (arch.intermediate // tp, arch.hidden)}


def adapter_params(arch: Architecture, rank: int, targets: tuple[str, ...] | list[str] | None = None) -> int:
    """LoRA's parameters: A (rank x in) and B (out x rank) of every targeted linear of every
    layer, rank x (in + out) each; what peft's add_lora injects."""
    shapes = linear_shapes(arch)
    return arch.layers * sum(rank * sum(shapes[name]) for name in (targets or DECODER_LINEARS))


def vllm_lora_slot_bytes(arch: Architecture, server_rank: int, tp: int, dtype: str) -> int:
    """One adapter slot of a vLLM server started with --enable-lora, on one TP rank: vLLM
    wraps every decoder linear whatever the adapter targets (vllm/lora/model_manager.py
    _create_lora_modules) and sizes its A and B at --max-lora-rank in the model's dtype
    (vllm/lora/layers/base_linear.py create_lora_weights). Column-parallel layers hold A whole
    and their share of B, row-parallel ones their share of A and B whole."""
    return arch.layers * server_rank * dtype_bytes(dtype) * sum(sum(io) for io in linear_shapes(arch, tp).values())


@dataclass(frozen=True)
class AdapterMemory:
    """A LoRA run's adapter: its size, what a checkpoint and a push of it weigh, and the
    slots vLLM reserves for it."""

    rank: int
    targets: tuple[str, ...]
    params: int  # adapter parameters (trainable)
    base_params: int  # the frozen base's
    dtype_bytes: int  # bytes per parameter of the trained copy (bf16: 2), what a push writes
    optimizer_bytes: int  # Adam's per adapter parameter: float32 master (bf16 only) + m + v
    server_rank: int  # vLLM's --max-lora-rank: the smallest it accepts >= rank
    max_loras: int  # adapters loaded at once (rollout.max_staleness + 1)
    slot_bytes: float  # one adapter slot on one vLLM TP rank
    serve_dtype_bytes: int  # the served base's bytes per parameter (a full-weights push)

    @property
    def push_bytes(self) -> float:
        """adapter_model.safetensors: the adapter's tensors as trained."""
        return self.params * self.dtype_bytes

    @property
    def full_push_bytes(self) -> float:
        return self.base_params * self.serve_dtype_bytes

    @property
    def checkpoint_bytes(self) -> float:
        """The adapter and its optimizer states (DeepSpeed's exclude_frozen_parameters)."""
        return self.params * (self.dtype_bytes + self.optimizer_bytes)

    @property
    def full_checkpoint_bytes(self) -> float:
        return self.base_params * (self.dtype_bytes + self.optimizer_bytes)

    @property
    def slots_bytes(self) -> float:
        return self.max_loras * self.slot_bytes

    def items(self) -> tuple[Item, ...]:
        """The adapter's sizes as the plan prints them, each with how it was counted."""
        a, b, opt = self.params, self.dtype_bytes, self.optimizer_bytes
        return (
            Item("adapter", self.push_bytes,
                 f"{a:,} params: rank {self.rank} x (in + out) of each targeted linear of each layer, {b} B each"),
            Item("checkpoint", self.checkpoint_bytes,
                 f"adapter + its Adam states, {b + opt} B x {a / 1e6:.1f}M (frozen base excluded; "
                 f"full fine-tuning: {self.full_checkpoint_bytes / GIB:.1f} GiB)"),
            Item("push", self.push_bytes,
                 f"adapter_model.safetensors, loaded by POST /v1/load_lora_adapter (full weights: "
                 f"{self.full_push_bytes / GIB:.1f} GiB)"),
            Item("vLLM slots", self.slots_bytes,
                 f"a GPU's: --max-loras {self.max_loras} x --max-lora-rank {self.server_rank}, every decoder linear"),
        )

    def to_json(self) -> dict:
        return {"rank": self.rank, "targets": list(self.targets), "adapter_params": self.params,
                "base_params": self.base_params, "share": self.params / self.base_params,
                "push_gib": self.push_bytes / GIB, "full_push_gib": self.full_push_bytes / GIB,
                "checkpoint_gib": self.checkpoint_bytes / GIB, "full_checkpoint_gib": self.full_checkpoint_bytes / GIB,
                "vllm_max_lora_rank": self.server_rank, "vllm_max_loras": self.max_loras,
                "vllm_slots_gib_per_gpu": self.slots_bytes / GIB}


def adapter_memory(arch: Architecture, s: TrainerSettings, *, server_rank: int, max_loras: int, tp: int,
                   dtype: str) -> AdapterMemory:
    assert s.lora_rank is not None
    targets = s.lora_targets or DECODER_LINEARS
    return AdapterMemory(s.lora_rank, tuple(targets), adapter_params(arch, s.lora_rank, targets), arch.params,
                         2 if s.bf16 else 4, 12 if s.bf16 else 8, server_rank, max_loras,
                         vllm_lora_slot_bytes(arch, server_rank, tp, dtype), dtype_bytes(dtype))


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
    lora_slots: float = 0.0  # --enable-lora: max_loras adapter slots at --max-lora-rank (this rank's)
    lora_how: str = ""

    @property
    def reserved(self) -> float:
        """What the server holds while awake: its share of the GPU, whatever it uses."""
        return self.weights + self.lora_slots + self.runtime + max(self.kv_cache, 0.0)

    @property
    def kv_tokens(self) -> int:
        return max(int(self.kv_cache // self.kv_bytes_per_token), 0)

    @property
    def sequences(self) -> float:
        """Sequences of max_model_len tokens the KV cache holds at once (vLLM needs >= 1)."""
        return self.kv_tokens / self.max_model_len

    def items(self) -> tuple[Item, ...]:
        tp = self.tensor_parallel_size
        slots = (Item("vLLM LoRA slots", self.lora_slots, self.lora_how),) if self.lora_slots else ()
        return (
            Item("vLLM weights", self.weights, f"params x dtype / TP {tp}" + (" (the base)" if slots else "")),
            *slots,
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
                dtype: str, max_model_len: int, lora: AdapterMemory | None = None) -> VllmMemory:
    """vLLM's memory per GPU: the whole model over TP ranks (and with LoRA its adapter slots,
    allocated with the weights), then the KV cache gets what is left of
    gpu_memory_utilization x the GPU."""
    weights = arch.params * dtype_bytes(dtype) / tp
    runtime = VLLM_RUNTIME_GIB * GIB
    slots, how = 0.0, ""
    if lora is not None:
        slots = lora.slots_bytes
        how = (f"--max-loras {lora.max_loras} x --max-lora-rank {lora.server_rank} on every decoder linear"
               + (f", this rank's share of TP {tp}" if tp > 1 else ""))
    kv = gpu_memory_utilization * gpu_bytes - weights - slots - runtime
    return VllmMemory(tp, gpu_memory_utilization, weights, runtime, kv,
                      kv_bytes_per_token(arch, tp, dtype), max_model_len, VLLM_ASLEEP_GIB * GIB, slots, how)


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
    longest: int  # the longest sample: rollout.agent.max_context_tokens capped by max_model_len
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
    head's logits and DeepSpeed's buckets. With LoRA (s.lora_rank) the base is frozen (its
    weights only) and the gradients and Adam states are the adapter's (lora_state)."""
    p, b = arch.params, (2 if s.bf16 else 4)
    z, w = s.zero_stage, world
    shard = w if z >= 3 else 1
    state = [Item("trainer runtime", TRAINER_RUNTIME_GIB * GIB, "CUDA context, NCCL (allowance)")]
    if s.lora_rank is not None:
        state += lora_state(arch, s, world=w)
    elif z >= 3 and s.offload_params:
        state.append(Item("trainer params", 0.0, "ZeRO-3, offloaded to CPU"))
    else:
        state.append(Item("trainer params", p * b / shard,
                          f"{b} B x params" + (f" / {w} ranks (ZeRO-3)" if z >= 3 else " (full copy)")))
    if s.lora_rank is not None:
        pass  # lora_state above
    elif z >= 2 and s.offload_optimizer:
        state.append(Item("trainer grads", 0.0, f"ZeRO-{z}, offloaded with the optimizer"))
    else:
        state.append(Item("trainer grads", p * b / (w if z >= 2 else 1),
                          f"{b} B x params" + (f" / {w} ranks (ZeRO-{z})" if z >= 2 else "")))
    opt_bytes = 12 if s.bf16 else 8  # fp32 master copy (bf16 only) + Adam's m and v
    if s.lora_rank is not None:
        pass  # lora_state above
    elif s.offload_optimizer:
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
    weight_grad = ", its weight gradient"
    adapter_grad = 0
    if s.lora_rank is not None:  # a frozen base has no weight gradient: only ZeRO-3's gathered copy
        copies = 1 if z >= 3 else 0
        weight_grad = ", its adapter's gradient"
        adapter_grad = adapter_params(arch, s.lora_rank, s.lora_targets) // arch.layers * b
    layer = ((layer_activation_bytes(arch, b) + layer_backward_bytes(arch, b)) * t + copies * arch.layer_params * b
             + adapter_grad)
    chunk = s.logprob_chunk_size * arch.vocab * (b + 4 * CHUNK_FLOAT32_COPIES)
    head = 2 * b * arch.hidden * t + chunk + copies * arch.embedding_params * b
    gathered = " and its gathered weights (ZeRO-3)" if z >= 3 else ""
    if s.gradient_checkpointing:
        work.append(Item("activations", arch.layers * b * arch.hidden * t,
                         f"checkpointing: {arch.layers} layer inputs x {t:,} tokens"))
        if layer >= head:
            work.append(Item("backward peak", layer, f"one layer recomputed, its gradients{weight_grad}{gathered}"))
        else:
            head_grad = "" if s.lora_rank is not None else ", the head's gradient"
            work.append(Item("backward peak", head, f"LM head: {s.logprob_chunk_size} x {arch.vocab:,} logits"
                                                    f"{head_grad}{gathered}"))
    else:
        work.append(Item("activations", arch.layers * layer_activation_bytes(arch, b) * t,
                         f"no checkpointing: {arch.layers} layers x {t:,} tokens"))
        rest = max(layer - layer_activation_bytes(arch, b) * t, head)
        work.append(Item("backward peak", rest, f"gradients of a layer or of the LM head{gathered}"))
    if z >= 3:
        work.append(Item("ZeRO-3 prefetch", PREFETCH_BUCKET * b, "the next layer's weights, gathered ahead"))
    if rows > 1:  # padded rows get a [rows, 1, L, L] boolean mask
        work.append(Item("attention mask", rows * longest * longest, f"{rows} rows of {longest:,}"))
    if z >= 1 and s.lora_rank is not None:  # allocated whole (stage_1_and_2.setup_buckets, stage3's IPG buffer)
        work.append(Item("reduce bucket", REDUCE_BUCKET * b, "DeepSpeed's gradient bucket, its full size "
                                                             "whatever the adapter's"))
    elif z >= 1:
        work.append(Item("reduce bucket", min(REDUCE_BUCKET, p) * b, "DeepSpeed's gradient bucket"))
    return TrainerMemory(w, longest, rows, tuple(state), tuple(work))


def lora_state(arch: Architecture, s: TrainerSettings, *, world: int) -> list[Item]:
    """A LoRA trainer's resident memory: the frozen base in the training dtype (ZeRO-3's shard,
    or whole on each GPU below it; none on the GPU when offloaded), and the adapter's weights,
    gradients and Adam states, each partitioned as the ZeRO stage partitions a trainable
    parameter's. The base has no gradients and no optimizer states (DeepSpeed's optimizer gets
    the adapter's parameters only: swe_aem.train.model.build_engine)."""
    assert s.lora_rank is not None
    p, b, z, w = arch.params, (2 if s.bf16 else 4), s.zero_stage, world
    a = adapter_params(arch, s.lora_rank, s.lora_targets)
    frozen = "frozen: no gradients, no optimizer states"
    out = []
    if z >= 3 and s.offload_params:
        out.append(Item("frozen base", 0.0, f"{b} B x {p / 1e9:.2f}B params in CPU RAM (offload_params); {frozen}"))
        out.append(Item("adapter params", 0.0, f"{b} B x {a / 1e6:.1f}M, in CPU RAM with the base"))
    else:
        where = f" / {w} ranks (ZeRO-3)" if z >= 3 else f", whole on each GPU (ZeRO-{z})"
        out.append(Item("frozen base", p * b / (w if z >= 3 else 1), f"{b} B x {p / 1e9:.2f}B params{where}; {frozen}"))
        out.append(Item("adapter params", a * b / (w if z >= 3 else 1),
                        f"{b} B x {a / 1e6:.1f}M adapter params" + (f" / {w} ranks" if z >= 3 else "")))
    if z >= 2 and s.offload_optimizer:
        out.append(Item("adapter grads", 0.0, f"ZeRO-{z}, offloaded with the optimizer"))
    else:
        out.append(Item("adapter grads", a * b / (w if z >= 2 else 1),
                        f"{b} B x {a / 1e6:.1f}M" + (f" / {w} ranks (ZeRO-{z})" if z >= 2 else "")))
    opt = 12 if s.bf16 else 8
    what = "float32 master, Adam's m and v" if s.bf16 else "Adam's m and v, float32"
    if s.offload_optimizer:
        out.append(Item("adapter optimizer", 0.0, f"{opt} B x {a / 1e6:.1f}M ({what}) on CPU (offload_optimizer)"))
    else:
        out.append(Item("adapter optimizer", opt * a / (w if z >= 1 else 1),
                        f"{opt} B x {a / 1e6:.1f}M ({what})" + (f" / {w} ranks" if z >= 1 else "")))
    return out


def trainable_params(arch: Architecture, s: TrainerSettings) -> int:
    """The parameters in the optimizer: every one, or with LoRA the adapter's."""
    return arch.params if s.lora_rank is None else adapter_params(arch, s.lora_rank, s.lora_targets)


def host_bytes(arch: Architecture, s: TrainerSettings, *, world: int, ranks: int) -> float:
    """CPU RAM of `ranks` trainer ranks of one node for what ZeRO offloads to it (with LoRA:
    the frozen base and the adapter's weights, the adapter's optimizer states)."""
    b = 2 if s.bf16 else 4
    trained = trainable_params(arch, s)
    total = 0.0
    if s.offload_params and s.zero_stage >= 3:
        total += (arch.params + (trained if s.lora_rank is not None else 0)) * b / world * ranks
    if s.offload_optimizer:  # Adam's states and float32 gradients (+ master copy under bf16)
        total += (16 if s.bf16 else 12) * trained / world * ranks
    return total
