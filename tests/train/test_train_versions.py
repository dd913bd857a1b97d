"""Weight versions for asynchronous training, without containers: the client's update gate
(an update waits for the generations in flight and holds new ones back; each generation
knows its weights' version) against a stand-in server at the HTTP boundary, and the
staleness metrics and bound of a step's episodes."""

import asyncio
import time

import pytest
from transformers import AutoTokenizer

from swe_aem.agent.trajectory import Episode, Turn
from swe_aem.policy.client import PolicyClient, SamplingParams
from swe_aem.policy.models import load_preset
from swe_aem.policy.scripted import ScriptedPolicyServer
from swe_aem.train.rollouts import TrainingSetupError
from swe_aem.train.stream import staleness_metrics

GENERATE_S = 0.5


@pytest.fixture(scope="module")
def slow_server():
    tokenizer = AutoTokenizer.from_pretrained(load_preset("tiny").default_path)

    def respond(_prompt, _turn):
        time.sleep(GENERATE_S)  # a generation that takes a while
        return "ok"

    with ScriptedPolicyServer(tokenizer, respond) as server:
        yield server


async def _until(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


def test_an_update_waits_for_generations_in_flight_and_holds_new_ones_back(slow_server):
    async def scenario():
        client = PolicyClient(slow_server.base_url)
        sent = len(slow_server.requests)
        first = asyncio.create_task(client.generate([1, 2, 3], SamplingParams(max_tokens=8)))
        await _until(lambda: len(slow_server.requests) == sent + 1)  # in flight at the server
        log = []

        async def update():
            async with client.updating_weights(1):
                log.append(("start", first.done(), len(slow_server.requests)))
                await asyncio.sleep(0.3)  # the load
                log.append(("end", len(slow_server.requests)))

        upd = asyncio.create_task(update())
        await asyncio.sleep(0.05)
        second = asyncio.create_task(client.generate([1, 2, 3], SamplingParams(max_tokens=8)))
        a, _, b = await asyncio.gather(first, upd, second)
        await client.aclose()
        return a, b, log, sent

    a, b, log, sent = asyncio.run(scenario())
    # the update began only once the first generation was back, and no request reached the
    # server while it ran: the second generation waited, then ran under the new version
    assert log == [("start", True, sent + 1), ("end", sent + 1)]
    assert (a.policy_version, b.policy_version) == (0, 1)


def test_a_failed_update_keeps_the_version_and_lets_generations_go_on(slow_server):
    async def scenario():
        client = PolicyClient(slow_server.base_url)
        with pytest.raises(OSError):
            async with client.updating_weights(5):
                raise OSError("the load failed")
        gen = await asyncio.wait_for(client.generate([1, 2], SamplingParams(max_tokens=4)), 10)
        await client.aclose()
        return client.version, gen.policy_version

    assert asyncio.run(scenario()) == (0, 0)


def _episode(versions, tokens=2):
    return Episode("t", 0, [Turn([1], [2] * tokens, [-1.0] * tokens, "stop", policy_version=v) for v in versions],
                   termination="finished", reward=1.0)


def test_staleness_metrics_count_tokens_per_version():
    m = staleness_metrics([_episode([3, 3, 4]), _episode([4], tokens=6)], step=4, bound=1)
    assert m["staleness_max"] == 1.0
    assert m["staleness_1_share"] == pytest.approx(4 / 12) and m["staleness_0_share"] == pytest.approx(8 / 12)
    assert m["staleness_mean"] == pytest.approx(4 / 12)


def test_staleness_over_the_bound_or_from_the_future_is_an_error():
    with pytest.raises(TrainingSetupError, match="2 versions stale, over rollout.max_staleness=1"):
        staleness_metrics([_episode([2, 3])], step=4, bound=1)
    with pytest.raises(TrainingSetupError, match="newer than the trainer's"):
        staleness_metrics([_episode([5])], step=4, bound=None)
    assert staleness_metrics([], step=0, bound=0) == {}
