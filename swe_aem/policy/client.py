"""Token-exact client for a vLLM OpenAI-compatible server.

Prompts go out as token ids and the sampled token ids come back with their
log-probs, so no generated token is ever re-tokenised (re-tokenising a multi-turn
chat silently changes the tokens the trainer sees).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from swe_aem.errors import RunError


class ServerUnavailableError(RunError, RuntimeError):
    """The policy server cannot be reached (down, crashed or refusing connections)."""


class GenerationError(RunError, RuntimeError):
    """The server answered, but not with a usable completion (e.g. a 400 for a too-long prompt)."""


# vLLM's neutral values of every sampling field besides temperature and top_p. Each request
# sends them: a server started with `--generation-config auto` (vLLM's default) fills the
# fields a request leaves unset from the model folder's generation_config.json (Qwen ships
# top_k 20 and a repetition penalty), and would then sample from another distribution than
# the trainer's softmax(z / T) over the whole vocabulary. The project's own servers also
# start with `--generation-config vllm` (policy.server); these values keep an attached one
# (started by hand) honest too.
NEUTRAL_SAMPLING: dict[str, float | int] = {
    "top_k": 0,  # 0: every token (vLLM's "disabled")
    "min_p": 0.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
}


@dataclass(frozen=True)
class SamplingParams:
    """What one generation request asks for. Every other sampling field goes out at its
    neutral value (`NEUTRAL_SAMPLING`), so the tokens are drawn from softmax(z / T)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # vLLM extension: always produce max_tokens (benchmarks)


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each sampled token under the serving policy
    finish_reason: str  # "stop" (end of turn or stop string) or "length"
    policy_version: int = 0  # the served weights' version (PolicyClient.version) that sampled it


class PolicyClient:
    """Async client: `await client.generate(ids, SamplingParams())`.

    At most max_concurrency requests are in flight; connection failures and 5xx
    answers are retried with backoff, then reported as ServerUnavailableError.

    Weight updates happen between generations: `updating_weights(v)` waits for the
    generations in flight, holds new ones back while its body loads the weights, then
    labels every later generation with version v. An episode running across an update
    carries on, its later turns under the new weights, and each turn knows exactly
    which weights sampled it (asynchronous training bounds staleness on these labels).
    """

    def __init__(
        self,
        base_url: str,
        model: str = "policy",
        *,
        timeout: float = 300.0,
        retries: int = 2,
        max_concurrency: int = 16,
        backoff_s: float = 0.5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_concurrency = max_concurrency
        self._semaphore: asyncio.Semaphore | None = None
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.version = 0  # of the weights the server serves; set by updating_weights
        self._gate: asyncio.Condition | None = None
        self._generating = 0
        self._updating = False

    def _client(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        # Bound to the running loop: a client reused across asyncio.run calls rebuilds.
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            self._loop = loop
            self._http = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=self.timeout,
                limits=httpx.Limits(max_connections=self.max_concurrency),
            )
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._gate = asyncio.Condition()
        return self._http, self._semaphore

    @asynccontextmanager
    async def _generation(self) -> AsyncIterator[int]:
        """Hold the weights still for one generation; yields their version."""
        self._client()
        assert self._gate is not None
        async with self._gate:
            await self._gate.wait_for(lambda: not self._updating)
            self._generating += 1
            version = self.version
        try:
            yield version
        finally:
            async with self._gate:
                self._generating -= 1
                self._gate.notify_all()

    @asynccontextmanager
    async def updating_weights(self, version: int) -> AsyncIterator[None]:
        """The body loads new weights into the server with no generation in flight (those
        running finish first, new ones wait); later generations carry `version`. The
        body's failure leaves the version as it was."""
        self._client()
        assert self._gate is not None
        async with self._gate:
            await self._gate.wait_for(lambda: not self._updating)
            self._updating = True
            await self._gate.wait_for(lambda: self._generating == 0)
        loaded = False
        try:
            yield
            loaded = True
        finally:
            async with self._gate:
                self._updating = False
                if loaded:
                    self.version = version
                self._gate.notify_all()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _post(self, path: str, body: dict, *, read_timeout: bool = True) -> dict:
        """POST with retries; `read_timeout=False` waits for the answer as long as it takes
        (the caller bounds it), connecting and sending still time out."""
        http, semaphore = self._client()
        timeout = httpx.Timeout(self.timeout) if read_timeout else httpx.Timeout(self.timeout, read=None)
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1) * (1 + random.random()))
            try:
                async with semaphore:
                    resp = await http.post(path, json=body, timeout=timeout)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last = exc
                continue
            if resp.status_code >= 500:
                last = GenerationError(f"{resp.status_code}: {resp.text[:300]}")
                continue
            if resp.status_code != 200:
                raise GenerationError(f"POST {path} -> {resp.status_code}: {resp.text[:500]}")
            return resp.json()
        raise ServerUnavailableError(
            f"policy server at {self.base_url} unavailable after {self.retries + 1} attempts: "
            f"{type(last).__name__}: {last}"
        )

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        """Sample one continuation of prompt_ids; returns the exact sampled ids.

        No read timeout: a generation is bounded by its caller's deadline (the episode's,
        through asyncio.wait_for, which also aborts the request), not by a per-request
        limit that a long 32k-token turn on a busy server outlasts and a retry restarts."""
        body = {
            "model": self.model,
            "prompt": list(prompt_ids),
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            **NEUTRAL_SAMPLING,
            "logprobs": 1,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
            body["include_stop_str_in_output"] = True
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.ignore_eos:
            body["ignore_eos"] = True
        async with self._generation() as version:
            data = await self._post("/v1/completions", body, read_timeout=False)
        choice = data["choices"][0]
        token_ids = [int(t) for t in choice["token_ids"]]
        logprobs = [float(x) for x in choice["logprobs"]["token_logprobs"]]
        if len(logprobs) != len(token_ids):
            raise GenerationError(
                f"server returned {len(token_ids)} token ids but {len(logprobs)} log-probs"
            )
        return Generation(token_ids, logprobs, choice.get("finish_reason") or "stop", version)

    async def score(self, token_ids: list[int]) -> list[float]:
        """log p(token_i | token_<i) for i = 1..n-1 under the served weights."""
        body = {
            "model": self.model,
            "prompt": list(token_ids),
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 0,
        }
        data = await self._post("/v1/completions", body)
        entries = data["choices"][0]["prompt_logprobs"]
        out = []
        for tok, entry in zip(token_ids[1:], entries[1:], strict=True):
            out.append(float(entry[str(tok)]["logprob"]))
        return out

    async def health(self) -> bool:
        http, _ = self._client()
        try:
            return (await http.get("/health", timeout=5.0)).status_code == 200
        except httpx.HTTPError:
            return False

    # Sync conveniences for scripts and the trainer's non-async code.
    def generate_sync(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        return asyncio.run(self._once(self.generate(prompt_ids, sampling)))

    def score_sync(self, token_ids: list[int]) -> list[float]:
        return asyncio.run(self._once(self.score(token_ids)))

    async def _once(self, coro):
        try:
            return await coro
        finally:
            await self.aclose()
