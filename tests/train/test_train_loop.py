"""The training loop on recorded trajectories (replay): credit, AEM on/off, resume (issue 5)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import recorded_episodes

from swe_aem.agent.trajectory import Episode, write_episodes
from swe_aem.config import load_config
from swe_aem.train.batch import (
    TurnLayout,
    collate,
    computed_tokens,
    decode_samples,
    encode_samples,
    encoded_bytes,
    groups_with_signal,
    pack_by_tokens,
    samples_from_episodes,
)
from swe_aem.train.loop import Trainer, step_candidates, task_batch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def synthetic_episodes(tasks: int = 3) -> list[Episode]:
    """Four samples a task, one to three turns each, sample 3 of task 0 cut short."""
    return recorded_episodes(tasks=tasks, seed=0, max_turns=3, prompt_len=(5, 15), response_len=(3, 12),
                             cut_short=(0, 3))


@pytest.fixture(scope="module")
def replay_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "trajectories.jsonl"
    write_episodes(path, synthetic_episodes())
    return path


def _cfg(model: Path, replay: Path, *extra: str):
    # The random model's token entropies all sit within ~0.01 nats of log V, below the
    # paper's 0.1 range floor: aem_min_range=0 lets AEM act on them at all.
    return load_config("rloo_aem", overrides=[
        f"model={model}", f"run.replay={replay}", "run.steps=2", "rollout.tasks_per_step=2",
        "rollout.samples_per_task=4", "trainer.lr=1e-3", "trainer.micro_batch_tokens=96",
        "trainer.logprob_chunk_size=64", "algo.aem_min_range=0.0", *extra])


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.engine.module.state_dict().items()}


def test_task_batches_are_a_pure_function_of_step():
    ids = [f"t{i}" for i in range(5)]
    seq = [task_batch(ids, s, 2, seed=7) for s in range(5)]
    assert seq == [task_batch(ids, s, 2, seed=7) for s in range(5)]
    flat = [x for b in seq for x in b]
    assert sorted(flat[:5]) == sorted(ids)  # every task once per epoch


@pytest.mark.parametrize("pool, size", [(5, 2), (5, 3), (7, 4), (6, 6), (9, 5)])
def test_no_task_twice_in_a_step(pool, size):
    """A step crossing an epoch boundary once took the same task from both permutations:
    two copies with the same request seeds, merged into one group of cloned samples."""
    ids = [f"t{i}" for i in range(pool)]
    batches = [task_batch(ids, s, size, seed=3) for s in range(40)]
    assert all(len(set(b)) == size for b in batches)
    assert batches == [task_batch(ids, s, size, seed=3) for s in range(40)]  # a pure function
    first_epoch = [t for b in batches for t in b][:pool]
    assert sorted(first_epoch) == sorted(ids)  # every task once in the first epoch


def test_a_step_larger_than_its_pool_is_refused():
    with pytest.raises(ValueError, match="batch of 4 tasks is larger than the task pool of 3"):
        task_batch(["a", "b", "c"], 0, 4, seed=0)


def test_samples_layout_and_packing():
    eps = synthetic_episodes()
    samples = samples_from_episodes(eps, ["max_turns"])
    assert sum(not s.trainable for s in samples) == 1
    layout = TurnLayout.of(samples)
    assert layout.num_turns == sum(e.num_turns for e in eps)
    lengths = [len(s.input_ids) for s in samples]
    batches = pack_by_tokens(lengths, 60)
    assert sorted(i for b in batches for i in b) == list(range(len(samples)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 60
    with pytest.raises(ValueError, match="not been graded"):
        samples_from_episodes([Episode("x", 0, eps[0].turns, termination="finished")])
    packed = pack_by_tokens(lengths, 60, packed=True)  # one row each: their total fits
    assert sorted(i for b in packed for i in b) == list(range(len(samples)))
    assert all(len(b) == 1 or sum(lengths[i] for i in b) <= 60 for b in packed)
    assert computed_tokens(lengths, packed, packed=True) == sum(lengths)
    assert computed_tokens(lengths, batches, packed=False) >= sum(lengths)
    assert len(packed) <= len(batches)


def test_samples_travel_to_the_ranks_as_flat_arrays():
    """Rank 0 sends the other ranks the samples (`encode_samples`), not the episodes: the same
    samples come back, log-probs in float32 (as collate reads them), about 5 bytes a token."""
    eps = synthetic_episodes()
    samples = samples_from_episodes(eps, ["max_turns"])
    arrays = encode_samples(samples)
    back = decode_samples(arrays)
    layout = TurnLayout.of(samples)
    for a, b in zip(samples, back):
        assert (a.input_ids, a.loss_mask, a.turn_index, a.group, a.reward, a.trainable) == \
            (b.input_ids, b.loss_mask, b.turn_index, b.group, b.reward, b.trainable)
        assert torch.equal(torch.tensor(a.rollout_logprobs, dtype=torch.float32), torch.tensor(b.rollout_logprobs))
    for key, value in collate(samples, range(len(samples)), layout, 0).items():
        assert torch.equal(value, collate(back, range(len(back)), layout, 0)[key]), key
    # 2 bytes a token id (a vocabulary under 2^16), 2 a turn index, 1 a mask entry, 4 a
    # sampled token's log-prob (the others share one placeholder), 25 a sample's own fields
    tokens = sum(len(x.input_ids) for x in samples)
    sampled = sum(t >= 0 for x in samples for t in x.turn_index)
    assert encoded_bytes(arrays) == 5 * tokens + 4 * sampled + 4 + 25 * len(samples)
    assert decode_samples(encode_samples([])) == []


def test_replay_training_logs_and_checkpoints(small_model, replay_file, tmp_path):
    trainer = Trainer(_cfg(small_model, replay_file), tmp_path / "run")
    before = _params(trainer)
    state = trainer.train()
    assert state.step == 2 and state.episodes_seen == 16
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    for key in ("reward_mean", "response_entropy_mean", "alpha_min", "alpha_max", "alpha_std",
                "frac_pos_adv", "frac_neg_adv", "drift_base", "drift_aem", "clip_frac",
                "rollout_trainer_kl", "tokens_per_s", "time_forward_s", "time_update_s",
                "trajectories_filtered", "aem_share_of_step"):
        assert key in rows[0], key
    assert rows[0]["alpha_max"] > 1.0 > rows[0]["alpha_min"]
    assert rows[0]["update_balance"] == 1.0  # one rank never waits for another
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "trainer_state.json").is_file()
    assert (tmp_path / "run" / "config.yaml").read_text().count("aem: true") == 1
    after = _params(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_settings_left_null_are_the_model_presets(small_model, replay_file, tmp_path):
    """algo.aem_min_range and run.save_every null (the defaults) take the preset's values, and
    config.yaml records the values the run used: the tiny preset's floor is below the paper's
    0.1 (its entropies are); the big presets checkpoint every 10 steps (460 GB each for 32B)."""
    from swe_aem.policy.models import load_preset, resolve_model

    trainer = Trainer(_cfg(small_model, replay_file, "algo.aem_min_range=null", "run.save_every=null"),
                      tmp_path / "run")
    preset = resolve_model(str(small_model))[0]
    assert trainer.cfg.algo.aem_min_range == preset.aem_min_range
    assert trainer.cfg.run.save_every == preset.save_every == 1
    recorded = (tmp_path / "run" / "config.yaml").read_text()
    assert f"aem_min_range: {preset.aem_min_range}" in recorded and "save_every: 1\n" in recorded
    assert load_preset("tiny").aem_min_range == 0.01 < load_preset("32b").aem_min_range == 0.1
    assert [load_preset(n).save_every for n in ("1.5b", "7b", "14b", "32b", "qwen3-32b")] == [5, 10, 10, 10, 10]


def test_aem_off_equals_base_and_on_changes_update(small_model, replay_file, tmp_path):
    def one_step(*extra):
        t = Trainer(_cfg(small_model, replay_file, "run.steps=1", *extra), tmp_path / str(len(os.listdir(tmp_path))))
        t.train()
        return _params(t)

    base = one_step("algo.aem=false")
    lam0 = one_step("algo.aem=true", "algo.aem_lambda=0.0")
    aem = one_step("algo.aem=true", "algo.aem_lambda=2.0")
    for k in base:
        assert torch.equal(base[k], lam0[k]), k
    assert any(not torch.equal(base[k], aem[k]) for k in base)


def _final_params(run: Path) -> dict[str, torch.Tensor]:
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    states = torch.load(next((ckpts[-1] / "deepspeed").glob("mp_rank_00_model_states.pt")),
                        weights_only=False)
    return states["module"]


def test_resume_after_kill_matches_uninterrupted_run(small_model, replay_file, tmp_path):
    def cmd(run: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "swe_aem.cli", "train", "--algo", "rloo_aem", "--run-dir", str(run),
                f"model={small_model}", f"run.replay={replay_file}", "run.steps=3",
                "rollout.tasks_per_step=2", "trainer.lr=1e-3", "trainer.micro_batch_tokens=96", *extra]

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_PORT": "29611"}
    whole = tmp_path / "whole"
    subprocess.run(cmd(whole), check=True, env=env, cwd=ROOT, capture_output=True, timeout=600)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(cmd(cut), env={**env, "MASTER_PORT": "29612"}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (cut / "checkpoints" / "step-000001" / "trainer_state.json").is_file():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # mid-run: during step 2 (or its checkpoint)
    proc.wait()
    # without --resume the command refuses to clobber the run
    refused = subprocess.run(cmd(cut), check=False, env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    subprocess.run(cmd(cut, "--resume"), check=True,
                   env={**env, "MASTER_PORT": "29613"}, cwd=ROOT, capture_output=True, timeout=600)
    last = max((cut / "checkpoints").glob("step-*"))
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["episodes_seen"] == 3 * 8
    a, b = _final_params(whole), _final_params(cut)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def _with_rewards(rewards_by_task: dict[str, list[float]]) -> list[Episode]:
    """synthetic_episodes with the given rewards per task (same tokens)."""
    eps = synthetic_episodes(tasks=len(rewards_by_task))
    for ep in eps:
        ep.reward = rewards_by_task[ep.instance_id][ep.sample_index]
    return eps


def test_groups_with_signal_keeps_mixed_groups_in_batch_order():
    eps = _with_rewards({"task-0": [0, 0, 0, 0], "task-1": [1, 0, 0, 1], "task-2": [0, 1, 1, 1]})
    kept, ids, dropped = groups_with_signal(eps, ["task-2", "task-0", "task-1"], limit=1)
    assert ids == ["task-2"] and dropped == ["task-0", "task-1"]
    assert {e.instance_id for e in kept} == {"task-2"} and len(kept) == 4
    kept, ids, dropped = groups_with_signal(eps, ["task-0", "task-1", "task-2"], limit=5)
    assert ids == ["task-1", "task-2"] and dropped == ["task-0"]


def test_groups_with_signal_asks_the_estimator_about_trainable_members():
    """A group whose members are all masked (cut short) moves nothing, however its rewards
    differ: it is dropped; masked members still shape the baseline of the others."""
    eps = _with_rewards({"task-0": [1, 0, 0, 0], "task-1": [0, 0, 1, 1], "task-2": [1, 1, 1, 0]})
    for ep in eps:  # task-1: every member cut short (no trainable turn); task-2: its odd one masked
        cut = ep.instance_id == "task-1" or (ep.instance_id == "task-2" and ep.sample_index == 3)
        ep.termination = "max_turns" if cut else "finished"
    for advantage in ("rloo", "grpo", "grpo_no_std"):
        _, ids, dropped = groups_with_signal(eps, ["task-0", "task-1", "task-2"], limit=5,
                                             advantage=advantage, untrainable=("max_turns",))
        # task-2's trainable members (rewards 1, 1, 1) get 1 - mean(others), non-zero through the
        # masked 0 in the baseline (RLOO: 1 - 2/3; GRPO: 1 - 0.75)
        assert ids == ["task-0", "task-2"] and dropped == ["task-1"], advantage
    # without masking, task-1's rewards differ and it has signal
    _, ids, _ = groups_with_signal(eps, ["task-0", "task-1", "task-2"], limit=5)
    assert ids == ["task-0", "task-1", "task-2"]


def test_step_without_signal_skips_the_optimizer(small_model, tmp_path):
    replay = tmp_path / "flat.jsonl"
    write_episodes(replay, _with_rewards({f"task-{t}": [0.0] * 4 for t in range(3)}))
    trainer = Trainer(_cfg(small_model, replay, "run.steps=1"), tmp_path / "run")
    before = _params(trainer)
    trainer.train()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["optimizer_step_skipped"] == 1.0 and "time_update_s" not in row
    after = _params(trainer)
    for k in before:  # no Adam drift, no weight decay: bit for bit the same
        assert torch.equal(before[k], after[k]), k


def test_dynamic_sampling_trains_only_groups_with_signal(small_model, tmp_path):
    replay = tmp_path / "mixed.jsonl"
    write_episodes(replay, _with_rewards({"task-0": [1, 1, 1, 1], "task-1": [1, 0, 0, 1],
                                          "task-2": [1, 1, 1, 1]}))
    trainer = Trainer(_cfg(small_model, replay, "run.steps=1", "rollout.tasks_per_step=1",
                           "rollout.oversample=3", "rollout.filter_groups=true"), tmp_path / "run")
    before = _params(trainer)
    trainer.train()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["groups_kept"] == 1.0 and row["groups_dropped"] == 2.0
    assert row["episodes"] == 4.0 and row["optimizer_step_skipped"] == 0.0
    assert row["reward_mean"] == 0.5  # only task-1 trained
    assert row["reward_mean_sampled"] == 10 / 12  # every sampled episode, filtered or not
    after = _params(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # when no group has signal the whole step is skipped, and said so
    replay2 = tmp_path / "none.jsonl"
    write_episodes(replay2, _with_rewards({f"task-{t}": [1.0] * 4 for t in range(3)}))
    t2 = Trainer(_cfg(small_model, replay2, "run.steps=1", "rollout.filter_groups=true"), tmp_path / "run2")
    t2.train()
    row = json.loads((tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["groups_kept"] == 0.0 and row["optimizer_step_skipped"] == 1.0 and row["episodes"] == 0.0


def test_a_steps_candidates_are_its_batch_then_other_tasks_round_by_round():
    ids = [f"t{i}" for i in range(7)]
    for step in range(4):
        rounds = step_candidates(ids, step, 2, seed=3, rounds=3)
        assert rounds == step_candidates(ids, step, 2, seed=3, rounds=3)  # pure: a resume sees these
        assert rounds[0] == task_batch(ids, step, 2, seed=3)  # round 0 is the step's batch
        assert [len(r) for r in rounds] == [2, 2, 2]
        flat = [t for r in rounds for t in r]
        assert len(set(flat)) == len(flat)  # no task twice in a step, over every round
        assert step_candidates(ids, step, 2, seed=3, rounds=1) == [rounds[0]]
    # the pool runs out: 7 tasks give a batch of 2 three rounds of top-up, the last of 1
    assert [len(r) for r in step_candidates(ids, 0, 2, seed=3, rounds=9)] == [2, 2, 2, 1]


def test_dynamic_sampling_tops_up_until_enough_groups_have_signal(small_model, tmp_path):
    """rollout.max_sampling_rounds=3: round 0's task has no signal, round 1's has; the step
    trains on round 1's group and round 2's candidate is never rolled out."""
    tasks = [f"task-{t}" for t in range(4)]
    cfg = _cfg(small_model, tmp_path / "replay.jsonl", "run.steps=1", "rollout.tasks_per_step=1",
               "rollout.filter_groups=true", "rollout.max_sampling_rounds=3")
    rounds = step_candidates(tasks, 0, 1, cfg.trainer.seed, 3)
    rewards = {rounds[0][0]: [0, 0, 0, 0], rounds[1][0]: [1, 0, 0, 0], rounds[2][0]: [1, 1, 0, 0]}
    rewards.update({t: [1, 1, 1, 1] for t in tasks if t not in rewards})
    write_episodes(tmp_path / "replay.jsonl", _with_rewards(rewards))
    trainer = Trainer(cfg, tmp_path / "run")
    asked, collect = [], trainer.source.collect

    def recorded(instances, step, round=0):
        asked.append((step, round, [i.instance_id for i in instances]))
        return collect(instances, step, round)

    trainer.source.collect = recorded
    trainer.train()
    assert asked == [(0, 0, rounds[0]), (0, 1, rounds[1])]  # round 2 stays unrun
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert (row["sampling_rounds"], row["groups_sampled"], row["groups_kept"], row["groups_dropped"]) == (2, 2, 1, 1)
    assert row["episodes"] == 4.0 and row["reward_mean"] == 0.25  # round 1's group trained
    assert row["reward_mean_sampled"] == 1 / 8 and row["optimizer_step_skipped"] == 0.0

    # the rounds run out: every candidate without signal, the step is skipped, and said so
    write_episodes(tmp_path / "flat.jsonl", _with_rewards({t: [0, 0, 0, 0] for t in tasks}))
    t2 = Trainer(replace_replay(cfg, tmp_path / "flat.jsonl"), tmp_path / "run2")
    t2.train()
    row = json.loads((tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()[0])
    assert (row["sampling_rounds"], row["groups_sampled"], row["groups_kept"]) == (3, 3, 0)
    assert row["optimizer_step_skipped"] == 1.0


def replace_replay(cfg, path):
    from dataclasses import replace

    return replace(cfg, run=replace(cfg.run, replay=str(path)))


def test_a_top_up_needs_group_filtering():
    from swe_aem.config import ConfigError

    with pytest.raises(ConfigError, match="max_sampling_rounds > 1 .* needs rollout.filter_groups=true"):
        load_config("rloo_aem", overrides=["rollout.max_sampling_rounds=2"])


def test_a_rollout_that_fails_ends_the_step_with_its_reason(small_model, replay_file, tmp_path):
    """Rank 0's rollout goes through on_rank0: an error inside it, or a step whose every
    episode failed, is raised (on rank 0 as itself; tests/train/test_train_ranks.py shows the
    other ranks' side) instead of training on nothing."""
    from swe_aem.train.rollouts import TrainingSetupError

    trainer = Trainer(_cfg(small_model, replay_file, "run.steps=1"), tmp_path / "run")
    trainer.source.collect = lambda instances, step, round=0: ([], {})
    with pytest.raises(TrainingSetupError, match="step 0: every episode failed"):
        trainer.step()

    def docker_down(instances, step, round=0):
        raise ConnectionError("Docker daemon is not answering")

    trainer.source.collect = docker_down
    with pytest.raises(ConnectionError, match="not answering"):
        trainer.step()


def test_packed_sequences_train_as_padded_rows_do(small_model, replay_file, tmp_path):
    """trainer.pack_sequences through the trainer: no padding computed (computed_over_real
    1), and the update as the padded one's within float32 rounding (the unit test with its
    bound: tests/train/test_train_deepspeed.py)."""
    weights, rows = {}, {}
    for packed in (False, True):
        trainer = Trainer(_cfg(small_model, replay_file, "run.steps=1", f"trainer.pack_sequences={packed}"),
                          tmp_path / f"run-{packed}")
        before = _params(trainer)
        trainer.train()
        weights[packed] = _params(trainer)
        rows[packed] = json.loads((tmp_path / f"run-{packed}" / "metrics.jsonl").read_text().splitlines()[0])
    assert rows[True]["computed_over_real"] == 1.0 < rows[False]["computed_over_real"]
    moved = max(float((weights[False][k] - before[k]).abs().max()) for k in before)
    diff = max(float((weights[True][k] - weights[False][k]).abs().max()) for k in before)
    assert moved > 0 and diff < 1e-3 * moved, (diff, moved)
