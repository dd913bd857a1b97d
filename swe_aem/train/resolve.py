"""What a training run is, resolved once from its config and its model preset, before any
collective, server or weight: the one place that fills the preset-decided settings and
refuses a config that cannot train, naming the knob.

`resolve_run` gives the config that config.yaml records and the run trains with, the
preset the servers start from (placement / vllm.* overrides, LoRA's serving flags), the
model folder and the DeepSpeed engine's settings; `swe-aem train`, the evidence runs and
the Trainer all go through it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import yaml

from swe_aem.config import Config, ConfigError, resolve_trainer, to_yaml
from swe_aem.plan import run_lora, run_preset
from swe_aem.policy.models import ModelPreset
from swe_aem.train.lora import check_engine, serving_preset
from swe_aem.train.model import EngineSettings
from swe_aem.train.rollouts import TrainingSetupError, uses_fleet


@dataclass(frozen=True)
class RunPlan:
    """A run resolved: what it trains with and what its servers start from."""

    cfg: Config
    """The config with the preset-decided nulls filled in (what config.yaml records)."""
    preset: ModelPreset
    """The preset the rollout servers start from: placement= and vllm.* over the preset's
    (as `swe-aem plan` shows), then LoRA's serving flags."""
    model_path: Path
    """The model folder (a preset's prepared folder, or a path given as model=)."""
    settings: EngineSettings
    """The DeepSpeed engine's settings (trainer.* over the preset's)."""


def resolve_run(cfg: Config) -> RunPlan:
    """Config + preset -> RunPlan, raising the run's refusals (no GPU for a GPU preset, an
    asynchronous recipe without its correction, a LoRA option vLLM cannot serve, a KL term) before any
    heavy work starts. Prepares the model folder (a preset's first use)."""
    from swe_aem.policy.models import resolve_model

    try:
        preset, model_path = resolve_model(cfg.model)
    except KeyError as exc:
        raise TrainingSetupError(exc.args[0]) from exc
    check_hardware(run_preset(cfg, preset))
    cfg, preset, settings = resolved(cfg, preset)
    return RunPlan(cfg, preset, Path(model_path), settings)


def resolved(cfg: Config, preset: ModelPreset) -> tuple[Config, ModelPreset, EngineSettings]:
    """The half of `resolve_run` that needs neither the model's files nor this machine's
    hardware (`swe-aem plan` uses it for machines elsewhere): the config with the preset's
    defaults, the servers' preset and the engine's settings, or the refusal of a config
    that cannot train."""
    preset = run_preset(cfg, preset)
    if cfg.trainer.lora is None and preset.lora is not None:  # a LoRA preset (7b-lora): its adapter
        cfg = replace(cfg, trainer=replace(cfg.trainer, lora=run_lora(cfg, preset)))
    settings = engine_settings(cfg, preset)  # after: a LoRA run's learning rate is LoRA's
    cfg = with_preset_defaults(cfg, preset)
    check_async(cfg, preset)
    check_engine(cfg.trainer.lora, settings.zero_stage)  # LoRA's engine checks
    if cfg.algo.kl_coef > 0:
        raise TrainingSetupError("algo.kl_coef > 0 needs a reference model, which this trainer "
                                 "does not load; the recipes here use no KL term")
    preset = serving_preset(preset, cfg.trainer.lora, cfg.rollout.max_staleness)  # LoRA: vLLM's flags
    return cfg, preset, settings


def engine_settings(cfg: Config, preset) -> EngineSettings:
    t = cfg.trainer
    return EngineSettings(**asdict(resolve_trainer(t, preset)), lr=t.learning_rate(), betas=(t.betas[0], t.betas[1]),
                          weight_decay=t.weight_decay, grad_clip=t.grad_clip, eps=t.adam_eps)


def check_hardware(preset) -> None:
    if preset.num_gpus > 0 and not torch.cuda.is_available():
        raise TrainingSetupError(
            f"model preset {preset.name!r} needs {preset.num_gpus} GPU(s) per node and none is "
            "visible (torch.cuda.is_available() is False); on CPU use MODEL=tiny")


def with_preset_defaults(cfg: Config, preset: ModelPreset) -> Config:
    """The settings left null that the model preset decides, filled in: the config a run
    records in config.yaml and trains with (AEM's range floor, the checkpoint interval)."""
    if cfg.algo.aem_min_range is None:
        cfg = replace(cfg, algo=replace(cfg.algo, aem_min_range=preset.aem_min_range))
    if cfg.run.save_every is None:
        cfg = replace(cfg, run=replace(cfg.run, save_every=preset.save_every))
    if cfg.rollout.max_staleness is None:  # asynchronous only with rollout GPUs of its own
        k = preset.max_staleness if preset.placement == "split" else 0
        cfg = replace(cfg, rollout=replace(cfg.rollout, max_staleness=k))
    return cfg


def check_async(cfg: Config, preset: ModelPreset) -> None:
    """Asynchronous training overlaps rollouts with the update: refuse the set-ups where
    they cannot overlap, or would train stale tokens uncorrected, naming the knob."""
    if not cfg.rollout.max_staleness:
        return
    why = None
    if cfg.algo.tis_cap is None:
        why = ("tokens sampled by older weights would train as on-policy: the decoupled loss weights "
               "each by min(proximal / behaviour, algo.tis_cap), and algo.tis_cap is null; set it "
               "(2.0, train.yaml's default)")
    elif cfg.run.replay:
        why = "recorded episodes (run.replay) have no rollouts to overlap"
    elif preset.num_gpus > 0 and preset.sleeps and not uses_fleet(cfg):  # a fleet's servers never sleep
        why = ("a colocated vLLM sleeps while the trainer runs; give it GPUs of its own with "
               "placement=split")
    if why:
        raise ConfigError(f"rollout.max_staleness={cfg.rollout.max_staleness} (asynchronous training): "
                          f"{why}; or rollout.max_staleness=0")


def recorded_config(cfg: Config) -> str:
    """A run's config.yaml: the resolved config, then the sampling its rollouts and held-out
    evaluations use, every field named (not settings: what the requests and servers send)."""
    from swe_aem.policy.session import sampling_record

    effective = {"effective_sampling": {"rollout": sampling_record(cfg.rollout.agent.temperature, cfg.rollout.agent.top_p),
                                        "heldout": sampling_record(cfg.heldout.temperature)}}
    return to_yaml(cfg) + yaml.safe_dump(effective, sort_keys=False)
