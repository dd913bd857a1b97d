"""Asynchronous bounded-staleness training on CPU: the real trainer (DeepSpeed on the small
random Llama), real containers and grading, a stand-in policy server at the HTTP boundary
(ScriptedPolicyServer: vLLM's completion and weight-reload routes, not a model).

1. max_staleness=1: rollouts of step t+1 run while step t trains; every token's weights
   version is recorded and none trains more than one version late.
2. A run killed mid-step and resumed repeats no finished step and reruns no finished episode.
3. max_staleness=0 through the stream gives exactly the synchronous loop's episodes.
4. Dynamic sampling's top-up (rollout.max_sampling_rounds): a step whose first round has no
   signal rolls out a second, and a kill-and-resume reruns neither round; synchronously and
   through the stream.
"""

import json
import threading
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from swe_aem.agent.episode import request_seed, step_seed
from swe_aem.agent.trajectory import read_episodes
from swe_aem.config import load_config
from swe_aem.policy.scripted import ScriptedPolicyServer, editor_calls_for_patch, tool_call_text
from swe_aem.train import loop
from swe_aem.train.rollouts import LiveRollouts
from swe_aem.train.stream import RolloutStream

pytestmark = pytest.mark.slow
INSTANCE = "swe-aem__pyledger-1"
FINISH = "Done.\n<function=finish>\n<parameter=message>fixed</parameter>\n</function>"
SAMPLES = 4


class SeededPlans(ScriptedPolicyServer):
    """Turn 0 of an episode picks the gold edits (reward 1) or a few shell calls that fix
    nothing (reward 0) by its request's seed, so every run with one seed picks alike; later
    turns follow the plan named in the prompt. Answers the weight-reload routes."""

    def __init__(self, tokenizer, instance):
        self.plans = {
            "Plan A: the fix.": editor_calls_for_patch(instance.patch) + [FINISH],
            "Plan B: look around.": [tool_call_text("xml", "execute_bash", command="ls /testbed")] * 3 + [FINISH],
        }
        self.local = threading.local()
        super().__init__(tokenizer, self.respond, weight_routes=True)

    def completion(self, body):
        self.local.seed = body.get("seed")  # one thread per request
        return super().completion(body)

    def respond(self, prompt, turn):
        if self.local.seed is None:  # the weight probe's scoring request
            return "ok"
        if turn == 0:
            name = list(self.plans)[self.local.seed % 2]
        else:
            name = next(n for n in self.plans if n in prompt)
        steps = self.plans[name]
        return f"{name}\n{steps[min(turn, len(steps) - 1)]}"


def mixed_seed(steps):
    """A trainer seed whose every step has both plans among its samples (a group with signal)."""
    for seed in range(100):
        if all(len({request_seed(step_seed(seed, t), INSTANCE, k, 0) % 2 for k in range(SAMPLES)}) == 2
               for t in range(steps)):
            return seed
    raise AssertionError("no seed mixes both plans")


def config(small_model, url, *extra):
    return load_config("rloo_aem", overrides=[
        f"model={small_model}", "algo.aem_min_range=0.0", "run.steps=3", "rollout.tasks_per_step=1",
        f"rollout.samples_per_task={SAMPLES}", "rollout.agent.max_turns=8", "rollout.agent.max_new_tokens=1024",
        "rollout.concurrency=8", "trainer.lr=1e-4", "run.dataset=local", "run.split=test",
        f"run.instance_ids=[{INSTANCE}]", f"run.vllm_url={url}", "run.save_every=1",
        f"trainer.seed={mixed_seed(3)}", "heldout.split=null",
        "rollout.parity_max_kl=null",  # a stand-in server, no model: nothing to compare sampling with
        *extra])


def train_rows(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r.get("kind", "train") == "train"]


@pytest.fixture
def policy(local_instances, small_model):
    inst = next(i for i in local_instances if i.instance_id == INSTANCE)
    with SeededPlans(AutoTokenizer.from_pretrained(small_model), inst) as server:
        yield server


def test_rollouts_overlap_the_update_within_the_staleness_bound(tmp_path, policy, small_model):
    run = tmp_path / "run"
    trainer = loop.Trainer(config(small_model, policy.base_url, "rollout.max_staleness=1"), run)
    assert isinstance(trainer.source, RolloutStream)
    trainer.train()
    rows = train_rows(run)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[0]["rollout_batches_in_flight"] == 2.0  # step 1's batch started beside step 0's
    assert all(r["optimizer_step_skipped"] == 0.0 for r in rows)
    assert len(policy.weight_pushes) == 3
    stale = []
    for t, row in enumerate(rows):
        episodes = list(read_episodes(run / "trajectories" / f"step-{t:06d}.jsonl"))
        assert sorted(e.sample_index for e in episodes) == list(range(SAMPLES))
        versions = [turn.policy_version for e in episodes for turn in e.turns]
        assert all(t - 1 <= v <= t for v in versions), (t, versions)  # the bound, on the records
        assert row["staleness_max"] == max(t - v for v in versions) <= 1
        assert 0.0 < row["is_weight_min"] <= row["is_weight_max"]
        stale.append(row.get("staleness_1_share", 0.0))
    assert stale[0] == 0.0 and max(stale[1:]) > 0.0  # later steps did train on version t-1 tokens
    assert not list((run / "rollout_buffer").glob("*.jsonl"))  # every batch trained and checkpointed


def test_a_killed_async_run_resumes_without_repeating_a_step_or_an_episode(tmp_path, policy, small_model,
                                                                          monkeypatch):
    run = tmp_path / "run"
    cfg = config(small_model, policy.base_url, "rollout.max_staleness=1")
    real_update, calls = loop.ppo_update, []

    def killed_in_step_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_update(*args, **kwargs)

    monkeypatch.setattr(loop, "ppo_update", killed_in_step_2)
    with pytest.raises(KeyboardInterrupt):
        loop.Trainer(cfg, run).train()
    monkeypatch.setattr(loop, "ppo_update", real_update)
    buffered = {t: {(e.instance_id, e.sample_index): e for e in read_episodes(run / "rollout_buffer" / f"step-{t:06d}.jsonl")}
                for t in (1, 2) if (run / "rollout_buffer" / f"step-{t:06d}.jsonl").is_file()}
    assert len(buffered.get(2, {})) == SAMPLES  # step 2's batch had finished when the update died
    first_run_requests = len(policy.requests)

    trainer = loop.Trainer(cfg, run, resume=True)
    assert trainer.state.step == 2
    trainer.train()
    assert [r["step"] for r in train_rows(run)] == [0, 1, 2]  # no finished step twice
    for t, kept in buffered.items():
        episodes = {(e.instance_id, e.sample_index): e for e in read_episodes(run / "trajectories" / f"step-{t:06d}.jsonl")}
        for key, ep in kept.items():  # a finished episode is trained as it was, not run again
            assert episodes[key].to_dict() == ep.to_dict()
    # the turn-0 requests of every episode of the run, each sent once over both processes
    seeds = [r.get("seed") for r in policy.requests if r.get("seed") is not None]
    firsts = {request_seed(step_seed(cfg.trainer.seed, t), INSTANCE, k, 0) for t in range(3) for k in range(SAMPLES)}
    assert sorted(s for s in seeds if s in firsts) == sorted(firsts)
    assert len(policy.requests) > first_run_requests
    # one weights version: every push is named by the steps trained, the resume's push too
    # (it once restarted its own count: v000001 for the weights of step 2)
    assert [Path(p).name for p in policy.weight_pushes] == ["v000001", "v000002", "v000002", "v000003"]


def test_max_staleness_0_through_the_stream_is_the_synchronous_loop(tmp_path, policy, small_model):
    cfg = config(small_model, policy.base_url)
    tokenizer = AutoTokenizer.from_pretrained(small_model)
    trainer = loop.Trainer(cfg, tmp_path / "sync")  # synchronous: LiveRollouts itself
    assert isinstance(trainer.source, LiveRollouts) and cfg.rollout.max_staleness is None
    trainer.close()

    def two_steps(make):
        source = make()
        try:
            batch = [trainer.instances[INSTANCE]]
            first, _ = source.collect(batch, 0)
            source.push_weights(policy_weights, 1)
            second, _ = source.collect(batch, 1)
            return [[_strip(e) for e in eps] for eps in (first, second)]
        finally:
            source.close()

    policy_weights = tmp_path / "weights"
    policy_weights.mkdir()
    (policy_weights / "model.safetensors").write_bytes(b"")

    def live(name):
        return LiveRollouts(cfg, trainer.preset, trainer.model_path, tokenizer, tmp_path / name, f"pytest-{name}")

    sync = two_steps(lambda: live("a"))
    streamed = two_steps(lambda: RolloutStream(live("b"), lambda t: [trainer.instances[INSTANCE]], steps=2,
                                                max_staleness=0, start=0))
    assert sync == streamed
    assert {t["policy_version"] for ep in streamed[1] for t in ep["turns"]} == {1}


def _strip(ep):
    """An episode without its wall-clock times."""
    d = ep.to_dict()
    d.pop("wall_s")
    for t in d["turns"]:
        t.pop("generate_s"), t.pop("tool_s")
    return d


class OneTaskSolvable(SeededPlans):
    """SeededPlans for the turn-0 seeds in `seeds` (one task's, which may be solved); every
    other task's episodes only look around (reward 0: a group without signal)."""

    def __init__(self, tokenizer, instance, seeds):
        self.seeds = seeds
        super().__init__(tokenizer, instance)

    def respond(self, prompt, turn):
        if turn == 0 and self.local.seed is not None and self.local.seed not in self.seeds:
            return "Plan B: look around.\n" + self.plans["Plan B: look around."][0]
        return super().respond(prompt, turn)


TOP_UP_TASKS = sorted([INSTANCE, "swe-aem__pyledger-2"])


def top_up_seed():
    """A trainer seed whose step 0 has the other task in round 0 and INSTANCE, with both
    plans among its samples, in round 1."""
    for seed in range(200):
        rounds = loop.step_candidates(TOP_UP_TASKS, 0, 1, seed, 2)
        if rounds[1] == [INSTANCE] and len(
                {request_seed(step_seed(seed, 0), INSTANCE, k, 0) % 2 for k in range(SAMPLES)}) == 2:
            return seed
    raise AssertionError("no seed puts a mixed INSTANCE in round 1")


@pytest.mark.parametrize("staleness", [0, 1])
def test_a_top_up_round_trains_and_a_resume_reruns_no_round(tmp_path, local_instances, small_model,
                                                           monkeypatch, staleness):
    seed = top_up_seed()
    inst = next(i for i in local_instances if i.instance_id == INSTANCE)
    solvable = {request_seed(step_seed(seed, 0), INSTANCE, k, 0) for k in range(SAMPLES)}
    run = tmp_path / "run"
    with OneTaskSolvable(AutoTokenizer.from_pretrained(small_model), inst, solvable) as server:
        cfg = config(small_model, server.base_url, "run.steps=1", f"run.instance_ids=[{','.join(TOP_UP_TASKS)}]",
                     f"trainer.seed={seed}", "rollout.filter_groups=true", "rollout.max_sampling_rounds=2",
                     f"rollout.max_staleness={staleness}")
        real_update = loop.ppo_update

        def killed(*args, **kwargs):
            raise KeyboardInterrupt("killed in the update")

        monkeypatch.setattr(loop, "ppo_update", killed)
        with pytest.raises(KeyboardInterrupt):
            loop.Trainer(cfg, run).train()
        monkeypatch.setattr(loop, "ppo_update", real_update)
        buffer = run / "rollout_buffer"
        first = [e.reward for e in read_episodes(buffer / "step-000000.jsonl")]
        second = [e.reward for e in read_episodes(buffer / "step-000000.round-1.jsonl")]
        assert first == [0.0] * SAMPLES and sorted(set(second)) == [0.0, 1.0]  # no signal, then signal
        sent = len(server.requests)

        trainer = loop.Trainer(cfg, run, resume=True)
        trainer.train()
        # both rounds came from the buffer: the resumed run sent no generation request
        assert [r for r in server.requests[sent:] if r.get("seed") is not None] == []
    row = train_rows(run)[0]
    assert (row["sampling_rounds"], row["groups_sampled"], row["groups_kept"]) == (2.0, 2.0, 1.0)
    assert row["episodes"] == SAMPLES and row["optimizer_step_skipped"] == 0.0
    assert row["reward_mean"] == sum(second) / SAMPLES and row["reward_mean_sampled"] == sum(second) / (2 * SAMPLES)
    recorded = [e.instance_id for e in read_episodes(run / "trajectories" / "step-000000.jsonl")]
    assert recorded == ["swe-aem__pyledger-2"] * SAMPLES + [INSTANCE] * SAMPLES  # round 0, then round 1
    assert not list(buffer.glob("*.jsonl"))  # trained and checkpointed
