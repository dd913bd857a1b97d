"""LoRA RL on the trainer's DeepSpeed engine (trainer.lora), through peft.

The adapters are injected into the causal LM in place (peft's `inject_adapter_in_model`):
the model stays a Hugging Face causal LM, so `PolicyLogprobs` still takes hidden states
from `lm.base_model` and runs its chunked log-prob/entropy head (under `get_peft_model` the
wrapper's `base_model` would return logits). Only the adapter matrices require grad, so
`build_engine` hands only them to the optimizer; the base is frozen (and under ZeRO-3 stays
partitioned: peft sizes its matrices from each Linear's in/out features, not from the
partitioned weight, and DeepSpeed partitions the new matrices when the engine is built).

A push is the adapter alone, written as peft saves it (adapter_config.json +
adapter_model.safetensors, the folder vLLM's /v1/load_lora_adapter reads); the exports are
`final_adapter/` (that folder) and `final_model/` (the base with B @ A x alpha / r merged in,
Hugging Face names, servable without LoRA).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from torch import Tensor, nn

from swe_aem.config import LoraConfig
from swe_aem.policy.adapters import LoraOptionError, check_servable, server_max_lora_rank
from swe_aem.policy.models import ModelPreset
from swe_aem.train import ranks
from swe_aem.train.weights import WeightPublisher, _write_folder, full_state_dict

ADAPTER = "default"  # peft's adapter name inside the module names (lora_A.default.weight)
PEFT_PREFIX = "base_model.model."  # what peft's save_pretrained puts before each key


def decoder_linear_names(lm: nn.Module) -> list[str]:
    """The leaf names of every nn.Linear in the decoder (attention and MLP blocks): the
    default targets. The head and the embeddings lie outside `lm.base_model`'s layers and
    are never among them (the tiny model ties the two)."""
    head = lm.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, m in lm.base_model.named_modules()
             if isinstance(m, nn.Linear) and m is not head}
    return sorted(names)


def peft_config(lora: LoraConfig, lm: nn.Module):
    """peft's LoraConfig for `lora` on `lm`; a clear error for a target the model lacks, a
    head or embedding target, or an `init_from` adapter whose rank, targets or options
    differ or vLLM refuses."""
    from peft import LoraConfig as PeftLoraConfig

    linear = decoder_linear_names(lm)
    targets = sorted(lora.target_modules) if lora.target_modules is not None else linear
    missing = [t for t in targets if t not in linear]
    if missing:
        raise LoraOptionError(
            f"trainer.lora.target_modules names {missing}, which are not linear layers of this "
            f"model's decoder (it has {linear}); the head and the embeddings are never adapted")
    alpha = lora.alpha if lora.alpha is not None else 2.0 * lora.rank
    if lora.init_from is not None:
        given = check_servable(Path(lora.init_from).expanduser())
        theirs = (given.get("r"), sorted(given.get("target_modules") or []))
        if theirs != (lora.rank, targets):
            raise LoraOptionError(
                f"trainer.lora.init_from={lora.init_from} has rank {theirs[0]} and targets {theirs[1]}, "
                f"this config rank {lora.rank} and targets {targets}: one base serves one adapter "
                "shape; set trainer.lora.rank / target_modules to the adapter's")
        alpha = float(given.get("lora_alpha", alpha))
    server_max_lora_rank(lora.rank)  # refused above vLLM's maximum
    return PeftLoraConfig(r=lora.rank, lora_alpha=alpha, lora_dropout=lora.dropout,
                          target_modules=targets, bias="none", use_dora=False,
                          base_model_name_or_path=getattr(lm.config, "_name_or_path", None) or None)


def add_lora(lm: nn.Module, lora: LoraConfig) -> nn.Module:
    """`lm` with LoRA adapters injected in place (every other parameter frozen), loaded from
    `lora.init_from` when given; the same module object, still a Hugging Face causal LM. Under
    ZeRO-3 call it on the model load_model built inside zero.Init, before build_engine."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    cfg = peft_config(lora, lm)
    lm = inject_adapter_in_model(cfg, lm, adapter_name=ADAPTER)
    for name, p in lm.named_parameters():
        p.requires_grad_(_is_adapter(name))
    lm.swe_aem_lora = cfg  # the config its adapter folders are saved with
    if lora.init_from is not None:
        from safetensors.torch import load_file

        folder = Path(lora.init_from).expanduser()
        sd = load_file(str(folder / "adapter_model.safetensors"))
        sd = {k.removeprefix(PEFT_PREFIX): v for k, v in sd.items()}
        result = set_peft_model_state_dict(lm, sd, adapter_name=ADAPTER)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise LoraOptionError(f"trainer.lora.init_from={folder}: tensors {unexpected[:3]}... match "
                                  "no adapter of this model (an adapter for another base?)")
    return lm


def _is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def lora_of(engine_or_lm) -> object | None:
    """The peft config a model's adapters were injected with (None: no LoRA)."""
    module = getattr(engine_or_lm, "module", engine_or_lm)
    module = getattr(module, "lm", module)
    return getattr(module, "swe_aem_lora", None)


def adapter_state_dict(engine) -> dict[str, Tensor] | None:
    """The adapter's tensors as peft saves them (keys `base_model.model.<module>.lora_A.weight`)
    on rank 0, gathered under ZeRO-3; None on the other ranks. Every rank calls it."""
    import deepspeed

    lm = engine.module.lm
    params = {n: p for n, p in lm.named_parameters() if _is_adapter(n)}
    zero3 = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(list(params.values()), enabled=zero3):
        if ranks.rank() != 0:
            return None
        out = {}
        for name, p in params.items():
            key = name.replace(f".{ADAPTER}.", ".")
            out[PEFT_PREFIX + key] = p.detach().to("cpu", copy=True).contiguous()
    return out


def write_adapter(sd: dict[str, Tensor], cfg, folder: Path) -> Path:
    """An adapter folder as peft writes one (adapter_config.json, adapter_model.safetensors),
    put in place by a rename so a reader (vLLM) never sees half of it."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(sd, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def merged_state_dict(sd: dict[str, Tensor], scaling: float) -> dict[str, Tensor]:
    """The base's state dict with every adapter merged in, with the base's own names: each
    `X.base_layer.weight` becomes `X.weight` = W + scaling x B @ A (its bias `X.bias`), and the
    adapter tensors go. Pure; float32 arithmetic, cast back to the weight's dtype."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if ".lora_" in key:
            continue
        if ".base_layer." not in key:
            out[key] = value
            continue
        module, leaf = key.split(".base_layer.")
        if leaf == "weight":
            a, b = sd[f"{module}.lora_A.{ADAPTER}.weight"], sd[f"{module}.lora_B.{ADAPTER}.weight"]
            value = (value.float() + scaling * (b.float() @ a.float())).to(value.dtype)
        out[f"{module}.{leaf}"] = value
    return out


class AdapterPublisher(WeightPublisher):
    """WeightPublisher for a LoRA run: `save` writes the step's adapter folder (what the
    server loads under a new name), `export` the merged `final_model/` and `final_adapter/`.
    The folders of the last `keep` versions stay on disk (those the server may hold)."""

    def __init__(self, root: Path, lm_config, keep: int = 1, timeout_s: float = 300.0) -> None:
        super().__init__(root, lm_config, "disk", timeout_s)
        self.keep = keep
        self._written: list[Path] = []

    def save(self, engine, version: int) -> Path | None:
        sd = adapter_state_dict(engine)
        if sd is None:
            return None
        target = write_adapter(sd, lora_of(engine), self.root / f"adapter-v{version:06d}")
        self._written.append(target)
        while len(self._written) > self.keep:
            shutil.rmtree(self._written.pop(0), ignore_errors=True)
        self.path = target
        return target

    def export(self, engine, folder: Path, tokenizer) -> None:
        """`folder` (final_model/): the merged servable model; its sibling `final_adapter/`:
        the adapter as peft saves it (rank 0 writes; every rank calls)."""
        cfg = lora_of(engine)
        adapter = adapter_state_dict(engine)
        sd = full_state_dict(engine)
        if sd is None:
            return
        _write_folder(merged_state_dict(sd, cfg.lora_alpha / cfg.r), folder, self.lm_config, tokenizer)
        write_adapter(adapter, cfg, Path(folder).with_name("final_adapter"))


def check_engine(lora: LoraConfig | None, zero_stage: int) -> None:
    """LoRA trains on ZeRO-2 and ZeRO-3 alike: nothing is refused (the hook resolve_run calls
    for a LoRA engine). Measured (tests/train/test_train_lora.py, float32 on CPU): two steps of the
    tiny model's adapter equal plain torch AdamW's within 3.2e-8 on ZeRO-2 and 3.7e-8 on
    ZeRO-3 on one rank, 4.2e-8 and 4.7e-8 on two gloo ranks (a move of 2e-2: float32
    rounding); the gradient norms agree to 3e-8 relative. Under ZeRO-3 load_model builds the base inside zero.Init (each rank a
    shard), peft sizes its matrices from each Linear's in/out features and its forward reads
    the base weight the module's hooks gather, and deepspeed.initialize turns the adapters,
    plain tensors until then, into ZeRO-3 parameters (rank 0's values broadcast, then
    partitioned) before the optimizer takes them.

    The 7.8x gradient norm once measured here (and the refusal it caused) compared two
    different models: the test built its ZeRO-3 model by constructing the LM inside zero.Init,
    where transformers' initialisation (std 0.02; its smart_apply is not DeepSpeed's gathering
    Module.apply) writes into the partitioned, empty placeholders and leaves torch's defaults
    (std ~0.1, embeddings 1.0). Loaded by from_pretrained, as the
    trainer does, the weights are the checkpoint's. ZeRO-3 is worth it for a base too large
    to hold whole on each GPU; with LoRA the optimizer state is the adapter's alone either way."""
    del lora, zero_stage


def serving_preset(preset: ModelPreset, lora: LoraConfig | None, max_staleness: int) -> ModelPreset:
    """The preset whose server serves the run's adapters: rank `lora.rank` (vLLM's
    --max-lora-rank rounded up from it), max_staleness + 1 adapters loaded (every version a
    request in flight may name). Unchanged without LoRA."""
    if lora is None:
        return preset
    server_max_lora_rank(lora.rank)
    return dataclasses.replace(preset, lora_rank=lora.rank, max_loras=max_staleness + 1)


def adapter_parameters(lm: nn.Module) -> int:
    """Trainable (adapter) parameters of a model after add_lora."""
    return sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel()
               for n, p in lm.named_parameters() if _is_adapter(n))


def describe(lm: nn.Module) -> str:
    """One line for the run's log: the adapter's shape and size."""
    cfg = lora_of(lm)
    return (f"LoRA: rank {cfg.r}, alpha {cfg.lora_alpha}, targets {sorted(cfg.target_modules)}, "
            f"{adapter_parameters(lm):,} trainable parameters")


def make_publisher(cfg, preset: ModelPreset, root: Path, lm_config, transfer: str) -> WeightPublisher:
    """The run's weight publisher: adapter folders for a LoRA run (kept for the max_staleness + 1
    versions its server may hold), else the full-weights one through `transfer`."""
    if cfg.trainer.lora is None:
        return WeightPublisher(root, lm_config, transfer, preset.load_s)
    return AdapterPublisher(root, lm_config, keep=preset.max_loras, timeout_s=preset.load_s)
