"""The RL loop: roll out, grade, assign credit (estimator + AEM), PPO on DeepSpeed,
push weights to vLLM, log, checkpoint. One process per rank; rank 0 drives the
agents and broadcasts the episodes, every rank trains on its shard."""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import numpy as np
import torch
from rich.console import Console

from swe_aem import hostmem
from swe_aem.agent.episode import step_seed
from swe_aem.agent.trajectory import Episode
from swe_aem.algo.schedule import lr_factor
from swe_aem.config import Config, ConfigError
from swe_aem.policy.client import SamplingParams
from swe_aem.train import ranks
from swe_aem.train.batch import (
    TurnLayout,
    decode_samples,
    encode_samples,
    encoded_bytes,
    groups_with_signal,
    plan_update,
    samples_from_episodes,
)
from swe_aem.train.checkpoint import CheckpointManager, TrainState, probe_storage
from swe_aem.train.credit import assign_credit
from swe_aem.train.credit_log import record_credit
from swe_aem.train.lora import add_lora, make_publisher
from swe_aem.train.metrics import MetricsLogger, batch_metrics, episode_row, thinking_metrics, timed
from swe_aem.train.model import build_engine, load_model
from swe_aem.train.parity import (
    PARITY_SEED,
    PARITY_TOKENS,
    check_parity,
    parity_prompt_ids,
    parity_stats,
    score_sampled,
)
from swe_aem.train.resolve import recorded_config, resolve_run
from swe_aem.train.rollouts import (
    HeldoutReport,
    ReplayRollouts,
    RolloutSource,
    TrainingSetupError,
)
from swe_aem.train.sources import open_rollouts
from swe_aem.train.stream import staleness_metrics
from swe_aem.train.update import forward_old, policy_loss_config, ppo_update, set_lr
from swe_aem.train.weights import WeightSyncError, run_transfer

T = TypeVar("T")

console = Console()


def task_batch(task_ids: list[str], step: int, size: int, seed: int) -> list[str]:
    """The tasks of a step: a pure function of (step, seed), so a resumed run (and the
    asynchronous look-ahead) sees exactly the batches it would have seen. Epochs are seeded
    permutations; a step that crosses an epoch boundary takes the old epoch's tail, then the
    new epoch's tasks in order, skipping those already in the step: no task twice in a step
    (two copies would share their request seeds and merge into one group of cloned samples)."""
    n = len(task_ids)
    if size > n:
        raise ValueError(f"a step's batch of {size} tasks is larger than the task pool of {n}")

    def epoch_order(epoch: int) -> list[str]:
        order = list(task_ids)
        random.Random(seed * 100_003 + epoch).shuffle(order)
        return order

    epoch, offset = divmod(step * size, n)
    out = epoch_order(epoch)[offset:offset + size]
    if len(out) < size:  # the batch runs into the next epoch (size <= n: at most one boundary)
        taken = set(out)
        out += [t for t in epoch_order(epoch + 1) if t not in taken][:size - len(out)]
    return out


def step_candidates(task_ids: list[str], step: int, size: int, seed: int, rounds: int) -> list[list[str]]:
    """The tasks a step may roll out, round by round: round 0 is `task_batch` (the step's
    batch), each later round `size` other tasks of the pool (dynamic sampling's top-up), in
    an order seeded by (seed, step); fewer rounds when the pool runs out. A pure function of
    (step, seed), so a resume and the asynchronous look-ahead see the same candidates; the
    trainer rolls out a round only while the kept groups fall short."""
    first = task_batch(task_ids, step, size, seed)
    taken = set(first)
    rest = [t for t in task_ids if t not in taken]
    random.Random(f"top-up:{seed}:{step}").shuffle(rest)
    return [first, *(rest[i:i + size] for i in range(0, min(len(rest), size * (rounds - 1)), size))]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class StepResult:
    metrics: dict[str, float]
    episodes: int


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False,
                 heldout_report: HeldoutReport | None = None):
        """`heldout_report`: swe_aem.eval.evaluate.write_rollout_report where heldout.split is set
        (the caller's: training does not import evaluation). Set-up in order: the ranks, the
        run resolved (every refusal), the run folder and checkpoints, the engine (restored on
        a resume), then the rollout source and its weights."""
        self.cfg, self.run_dir, self.heldout_report = cfg, Path(run_dir), heldout_report
        hostmem.limit_malloc_arenas()  # before DeepSpeed's, Ray's and the stream's threads allocate
        hostmem.map_large_allocations()  # activations' blocks go back to the kernel when freed
        self.rank, self.world = ranks.init_distributed(cfg.run.collective_timeout_s)
        self.is_main = self.rank == 0
        seed_everything(cfg.trainer.seed + self.rank)
        # config + preset -> what this run is, every refusal said before any weight loads
        plan = resolve_run(cfg)
        self.cfg, self.preset, self.model_path = plan.cfg, plan.preset, plan.model_path
        resume_from = self._open_run_folder(plan, resume)
        self._build_engine(resume_from)
        self.metrics = MetricsLogger(self.run_dir, enabled=self.is_main, trackers=self.cfg.run.loggers,
                                     name=self.run_dir.name, config=asdict(self.cfg))
        self.loss_cfg = policy_loss_config(self.cfg.algo)
        self.run_id = f"train-{uuid.uuid4().hex[:8]}"
        self.source: RolloutSource | None = None
        self.publisher = make_publisher(self.cfg, self.preset, self.run_dir / "weights", self.lm_config,
                                        run_transfer(self.cfg, self.preset))  # LoRA: adapter folders
        self._probe_before: list[float] | None = None  # the server's probe before a colocated sleep
        self._episodes: list[Episode] = []  # rank 0: the step's episodes, between rollout and logs
        try:
            self._open_source(resumed=resume_from is not None)
        except BaseException:
            self.close()  # never leave a server or sandboxes behind
            raise

    # ------------------------------------------------------------------ set-up
    def _open_run_folder(self, plan, resume: bool) -> Path | None:
        """The storage probe, config.yaml and the checkpoints; the checkpoint to resume from
        (rank 0's step for every rank, checked before the engine is built: a clear error)."""
        cfg = self.cfg
        # one run folder for every rank, or node-local disks: asked once, before the engine
        self.storage = probe_storage(self.run_dir)
        if self.is_main and self.world > 1:
            console.print(self.storage.describe(self.run_dir))
        self.settings = replace(plan.settings, node_local_checkpoints=not self.storage.shared)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(recorded_config(cfg))
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep=cfg.run.keep_checkpoints,
                                      node_local=not self.storage.shared,
                                      adapter_only=cfg.trainer.lora is not None)
        return self.ckpt.resume_point() if resume else None

    def _build_engine(self, resume_from: Path | None) -> None:
        """Tokenizer, model (LoRA adapters in place), DeepSpeed engine, restored state."""
        from transformers import AutoTokenizer

        cfg = self.cfg
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        dtype = torch.bfloat16 if self.settings.bf16 else torch.float32
        lm = load_model(self.model_path, self.settings, dtype)  # under ZeRO-3 each rank's shard only
        lm = add_lora(lm, cfg.trainer.lora) if cfg.trainer.lora is not None else lm  # adapters in place
        self.lm_config = lm.config
        self.engine = build_engine(lm, self.settings, cfg.trainer.logprob_chunk_size)
        self.state = TrainState()
        if resume_from is not None:
            self.state = self.ckpt.load(self.engine, resume_from)
            if self.is_main:
                console.print(f"resumed from {resume_from} at step {self.state.step}")

    def _open_source(self, resumed: bool) -> None:
        """The rollout source, and the served weights made the trainer's: pushed where the
        server started from other weights, else labelled with the step."""
        self.source = self._rollout_source()
        # whether the rollout server takes the trainer's weights: rank 0 decides for all, once
        self.pushes_weights = bool(ranks.broadcast(self.source.pushes_weights if self.is_main else None))
        if self.pushes_weights and (resumed and self.state.step > 0 or self.cfg.trainer.lora is not None):
            # the server started from the base weights: a resumed run's, and a LoRA run's
            # adapter (B = 0, or trainer.lora.init_from's) before its first rollout
            self._sync_weights(self.state.step)
        elif self.state.step > 0:
            self._label_weights(self.state.step)

    def _rollout_source(self):
        if self.cfg.run.replay:
            src = ReplayRollouts(Path(self.cfg.run.replay))
            self.task_ids = src.task_ids
            self.instances = {i: SimpleNamespace(instance_id=i) for i in self.task_ids}
            self._check_task_pool()
            return src
        from swe_aem.data import load_instances

        insts = load_instances(self.cfg.run.dataset, split=self.cfg.run.split,
                               instance_ids=self.cfg.run.instance_ids,
                               dataset_format=self.cfg.run.dataset_format)
        if not insts:
            raise TrainingSetupError(f"dataset {self.cfg.run.dataset!r} has no instances")
        self.instances = {i.instance_id: i for i in insts}
        self.task_ids = sorted(self.instances)
        self._check_task_pool()  # before any server starts
        if not self.is_main:
            return None
        return open_rollouts(self.cfg, self.preset, self.model_path, self.tokenizer, self.run_dir,
                             self.run_id, self.heldout_report, start=self.state.step,
                             batch_of=lambda t: [self.instances[i] for i in self._batch_ids(t)])

    def _batch_size(self) -> int:
        r = self.cfg.rollout
        return math.ceil(r.tasks_per_step * r.oversample)

    def _check_task_pool(self) -> None:
        """A step holds each task once: a pool smaller than a step's batch cannot fill one."""
        if self._batch_size() > len(self.task_ids):
            r = self.cfg.rollout
            raise ConfigError(
                f"a step rolls out {self._batch_size()} tasks (rollout.tasks_per_step={r.tasks_per_step} x "
                f"rollout.oversample={r.oversample}) but the task pool holds {len(self.task_ids)}; "
                "lower tasks_per_step or oversample, or train on more tasks")

    def _batch_ids(self, step: int) -> list[str]:
        return task_batch(self.task_ids, step, self._batch_size(), self.cfg.trainer.seed)

    # ------------------------------------------------------------------ loop
    def train(self) -> TrainState:
        try:
            if self._probes_parity:  # the served weights are the trainer's: they must sample alike
                self.metrics.log(self.state.step, self._check_parity(f"at step {self.state.step}"),
                                 kind="parity")
            if self.state.step == 0 and self.cfg.heldout.before:
                self.heldout_eval("before")
            while self.state.step < self.cfg.run.steps:
                result = self.step()
                self.state.episodes_seen += result.episodes
                self.state.step += 1
                if self.state.step % self.cfg.run.save_every == 0 or self.state.step == self.cfg.run.steps:
                    with timed(result.metrics, "checkpoint"):
                        self.ckpt.save(self.engine, self.state)
                    if self.source is not None:  # its buffered episodes are trained and saved
                        self.source.forget_before(self.state.step)
                # the step's batch and activations go back to the kernel (glibc keeps freed heap
                # pages resident); its peak and what stays are logged (host RAM, GiB)
                hostmem.trim()
                result.metrics.update(host_rss_gib=hostmem.rss_bytes() / hostmem.GIB,
                                      host_peak_rss_gib=hostmem.peak_rss_bytes() / hostmem.GIB)
                self.metrics.log(self.state.step - 1, result.metrics)
                if self.is_main:
                    m = result.metrics
                    console.print(
                        f"step {self.state.step}/{self.cfg.run.steps} reward={m.get('reward_mean', 0):.3f} "
                        f"entropy={m.get('response_entropy_mean', 0):.3f} alpha=[{m.get('alpha_min', 1):.2f},"
                        f"{m.get('alpha_max', 1):.2f}] loss={m.get('loss', 0):.4f} "
                        f"time={m.get('time_step_s', 0):.1f}s")
            self.export(self.run_dir / "final_model")
            self.heldout_eval("after")
        finally:
            self.close()
        return self.state

    def heldout_eval(self, phase: str) -> None:
        """Resolve rate on the held-out split with the server's current weights: before the
        first RL step (the warm start) and after the last. Live runs only; rank 0 rolls out,
        the other ranks wait, and a failure on rank 0 stops them all."""
        h = self.cfg.heldout
        if h.split is None or self.cfg.run.replay:
            return
        on_rank0(lambda: self._heldout_eval_on_rank0(phase), f"held-out evaluation ({phase})")

    def _heldout_eval_on_rank0(self, phase: str) -> None:
        from swe_aem.data import load_instances

        h = self.cfg.heldout
        dataset = h.dataset or self.cfg.run.dataset
        every = {i.instance_id: i for i in load_instances(dataset, split=h.split,
                                                            dataset_format=self.cfg.run.dataset_format)}
        ids = h.draw(list(every.values()), self.cfg.trainer.seed if h.seed is None else h.seed, "heldout")
        out = self.run_dir / "heldout" / f"{phase}-step-{self.state.step:06d}"
        timing: dict[str, float] = {}
        with timed(timing, "heldout"):
            summary = self.source.evaluate([every[i] for i in ids], runs=h.runs, temperature=h.temperature,
                                           out_dir=out, model_name=f"{Path(self.cfg.model).name}@step{self.state.step}")
        row = {"heldout_resolve_rate": summary["pass1_mean"], "heldout_tasks": float(summary["n_instances"]),
               "heldout_excluded": float(len(ids) - summary["n_instances"]), **timing}
        self.metrics.log(self.state.step, row, kind=f"heldout_{phase}")
        console.print(f"held-out ({phase} RL, step {self.state.step}): resolve rate "
                      f"{row['heldout_resolve_rate']:.3f} on {summary['n_instances']} {dataset}/{h.split} "
                      f"tasks -> {out}")

    def export(self, folder: Path) -> None:
        """A complete HF model folder (weights, config, tokenizer) for eval and serving."""
        self.publisher.export(self.engine, folder, self.tokenizer)

    def step(self) -> StepResult:
        """One RL step, phase by phase: roll out (rank 0), lay the batch out over the ranks,
        score it with the trainer's weights, assign credit, update, publish the weights."""
        cfg, step = self.cfg, self.state.step
        t_start = time.perf_counter()
        ids = self._batch_ids(step)
        # rank 0 rolls out and sends every rank the samples as flat arrays (the episodes stay
        # on rank 0); an error there (every episode failed, Docker down) ends every rank
        arrays, m = on_rank0(lambda: self._rollout_on_rank0(ids, step), f"step {step} rollout")
        samples = decode_samples(arrays)
        episodes, self._episodes = self._episodes, []  # rank 0's; empty on the others
        # the step's learning rate, a pure function of the RL step (resumable)
        m["lr"] = set_lr(self.engine, cfg.trainer.learning_rate() * lr_factor(
            step, cfg.run.steps, cfg.trainer.lr_scheduler, cfg.trainer.lr_warmup_steps, cfg.trainer.lr_min_ratio))
        if not samples:  # dynamic sampling found no group with signal
            self._label_weights(step + 1)
            return self._skipped_step(m, t_start)
        if self.is_main:  # the episode table, for W&B and MLflow
            self.metrics.table(step, "episode_table", [episode_row(e) for e in episodes])
        layout, plan, shard = self._lay_out(samples, step, m)
        with timed(m, "forward"):
            fwd = forward_old(self.engine, samples, layout, self.settings.micro_batch_tokens, self.pad_id,
                              indices=shard, temperature=cfg.rollout.agent.temperature,
                              packed=cfg.trainer.pack_sequences, token_entropy=cfg.run.record_token_entropy)
        m["computed_over_real"] = fwd.computed_over_real  # padding's overhead (1.0: none)
        with timed(m, "credit"):
            credit = assign_credit(samples, layout, fwd.turn_entropy, fwd.turn_lengths, fwd.turn_surprisal,
                                   cfg.algo)
        if self.is_main:  # every turn's entropy, alpha and advantages: credit/step-N.jsonl
            record_credit(self.run_dir, step, episodes, samples, layout, fwd, credit,
                          token_entropy=cfg.run.record_token_entropy)
        m.update(self._update(samples, layout, fwd, credit, plan, shard, step, m))
        if self.is_main:  # metrics are rank 0's to log
            m.update(batch_metrics(episodes, samples, layout, fwd, credit, cfg.algo.advantage))
        m["time_step_s"] = time.perf_counter() - t_start
        m["aem_share_of_step"] = m["time_credit_s"] / m["time_step_s"]
        m["trainer_idle_share"] = m.get("time_rollout_s", 0.0) / m["time_step_s"]  # waiting for episodes
        return StepResult(m, len(samples))

    def _rollout_on_rank0(self, ids: list[str], step: int) -> tuple[dict, dict[str, float]]:
        """Rank 0's step input: the step's episodes (kept here for the logs and the credit
        record), checked against the staleness bound, as the flat sample arrays the ranks
        train on; and the rollout's metrics with the batch's own (staleness, thinking tokens,
        the bytes sent to the other ranks)."""
        episodes, m = self._collect(ids, step)
        if episodes:
            if not self.cfg.run.replay:  # each turn's weights version, against the bound
                m.update(staleness_metrics(episodes, step, self.cfg.rollout.max_staleness))
            m.update(thinking_metrics(episodes))  # per-turn thinking tokens, their share of the context
        self._episodes = episodes
        arrays = encode_samples(samples_from_episodes(episodes, self._untrainable()))
        m["broadcast_bytes"] = float(encoded_bytes(arrays)) if self.world > 1 else 0.0
        return arrays, m

    def _lay_out(self, samples: list, step: int, m: dict[str, float]):
        """The GPUs given to the update, and the batch laid out: samples, turns, and each
        optimizer step's mini-batch drawn first, then balanced over the ranks by workload
        (tokens and attention's quadratic term: no rank holds a mini-batch's long tail while
        the others wait); the old log-probs live where each sample trains."""
        # a colocated vLLM gives its GPU memory back for the update (POST /sleep?level=1), first
        # probing the weights that rolled out for the push to compare with; the others wait
        probe = self.publisher.probe_ids(self.tokenizer) if self.pushes_weights else None
        self._probe_before = on_rank0(lambda: self.source.release_gpus(probe), "vLLM sleep")
        gen = torch.Generator().manual_seed(step_seed(self.cfg.trainer.seed, step))
        lengths = [len(s.input_ids) for s in samples]
        plan = plan_update(lengths, self.world, self.cfg.trainer.mini_batches, gen)
        m["update_balance"] = plan.busiest_over_mean(lengths)
        return TurnLayout.of(samples), plan, plan.shard(self.rank)

    def _update(self, samples, layout: TurnLayout, fwd, credit, plan, shard: list[int], step: int,
                m: dict[str, float]) -> dict[str, float]:
        """PPO on the step's credit and the weights published as version step + 1; or, with
        no trainable turn of non-zero advantage, nothing (no gradient: Adam's moments and
        weight decay would still move the weights) and the served weights relabelled."""
        cfg = self.cfg
        trains = torch.tensor([samples[i].trainable for i in layout.turn_sample.tolist()], dtype=torch.bool)
        has_signal = bool((credit.turn_advantages[trains] != 0).any()) if layout.num_turns else False
        out: dict[str, float] = {"optimizer_step_skipped": float(not has_signal)}
        if not has_signal:
            self._label_weights(step + 1)
            return out
        with timed(m, "update"):
            out.update(ppo_update(self.engine, samples, layout, fwd.old_logprobs, credit.turn_advantages,
                                  self.loss_cfg, self.settings.micro_batch_tokens, self.pad_id,
                                  mini_batches=cfg.trainer.mini_batches, epochs=cfg.trainer.ppo_epochs,
                                  indices=shard, temperature=cfg.rollout.agent.temperature, plan=plan,
                                  packed=cfg.trainer.pack_sequences))
        tokens = sum(len(samples[i].input_ids) for i in shard)
        out["tokens_per_s"] = tokens * (1 + cfg.trainer.ppo_epochs) / max(
            m["time_forward_s"] + m["time_update_s"], 1e-9) * self.world
        if self.pushes_weights:
            out.update(self._sync_weights(step + 1))
        else:
            self._label_weights(step + 1)
        return out

    def _collect(self, ids: list[str], step: int) -> tuple[list[Episode], dict[str, float]]:
        """Rank 0's rollout of the step's tasks: graded episodes and the rollout's metrics.
        Under dynamic sampling only groups with signal are kept, topped up round by round
        from the step's candidates (`step_candidates`) while fewer than tasks_per_step have
        signal and rounds are left; none when no group has any."""
        r = self.cfg.rollout
        upcoming = task_batch(self.task_ids, step + 1, len(ids), self.cfg.trainer.seed)
        self.source.prefetch([self.instances[i] for i in upcoming])  # pulls overlap this step
        rounds = step_candidates(self.task_ids, step, len(ids), self.cfg.trainer.seed,
                                 r.max_sampling_rounds if r.filter_groups else 1)
        kept: list[Episode] = []
        kept_ids: list[str] = []
        sampled: list[float] = []
        m: dict[str, float] = {}
        for n, round_ids in enumerate(rounds):
            episodes, mr = self.source.collect([self.instances[i] for i in round_ids], step, n)
            for key, value in mr.items():  # times and drops add up over the rounds
                m[key] = m.get(key, 0.0) + value if key.startswith(("time_", "episodes_")) else value
            if not episodes:
                first = self.source.dropped[0].reason if self.source.dropped else "unknown"
                raise TrainingSetupError(f"step {step}: every episode failed (first: {first}); all reasons in "
                                         f"{self.run_dir / 'dropped_episodes.jsonl'}")
            if not r.filter_groups:
                return episodes, m
            sampled += [e.reward for e in episodes]
            more, more_ids, _ = groups_with_signal(
                episodes, round_ids, r.tasks_per_step - len(kept_ids), advantage=self.cfg.algo.advantage,
                untrainable=self._untrainable())
            kept, kept_ids = kept + more, kept_ids + more_ids
            if len(kept_ids) >= r.tasks_per_step:
                break
        groups = sum(len(ids_) for ids_ in rounds[:n + 1])
        # reward of everything sampled (reward_mean of the step is of the kept groups only)
        m.update({"reward_mean_sampled": float(np.mean(sampled)), "sampling_rounds": float(n + 1),
                  "groups_sampled": float(groups), "groups_kept": float(len(kept_ids)),
                  "groups_dropped": float(groups - len(kept_ids))})
        return kept, m

    def _untrainable(self) -> tuple[str, ...]:
        """Terminations whose trajectories are masked out of the loss (compact filtering);
        they stay in their group's baseline."""
        a = self.cfg.algo
        return tuple(a.filter_terminations) if a.compact_filtering else ()

    def _skipped_step(self, m: dict[str, float], t_start: float) -> StepResult:
        """A step whose rollouts left no group with signal: logged, nothing trained."""
        m.update({"optimizer_step_skipped": 1.0, "episodes": 0.0,
                  "time_step_s": time.perf_counter() - t_start})
        if self.is_main:
            console.print(f"step {self.state.step + 1}: no group with reward signal; optimizer step skipped")
        return StepResult(m, 0)

    def _label_weights(self, version: int) -> None:
        """The served weights, unchanged, stand for `version` (a step that trained nothing)."""
        if self.is_main and not self.cfg.run.replay:
            self.source.label_weights(version)

    def _sync_weights(self, version: int) -> dict[str, float]:
        """Publish the trainer's weights as `version` (the steps they have trained) and check
        that the server took them; timed as the step's weight_sync phase."""
        timing: dict[str, float] = {}
        with timed(timing, "weight_sync"):
            out = self._push_and_check(version)
        return {**out, **timing}

    def _push_and_check(self, version: int) -> dict[str, float]:
        self.publisher.save(self.engine, version)
        before, self._probe_before = self._probe_before, None
        if before is not None:  # a sleeping server wakes into the memory every rank gives back
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            ranks.barrier()
        out: dict[str, float] = {}
        if self.is_main:
            probe = self.publisher.probe_ids(self.tokenizer)
            before = before if before is not None else self.source.probe_logprobs(probe)
            # asleep: wake the weights, load the new ones, then wake the KV cache
            out["time_weight_push_s"] = self.source.push_weights(self.publisher.to_push(self.engine, version), version)
            after = self.source.probe_logprobs(probe)
            out["probe_server_change"] = float(np.max(np.abs(np.subtract(after, before))))
        else:  # a transfer through vLLM's engine is collective: rank 0's push sends with these
            self.publisher.send(self.engine, version)
        out.update(self.publisher.compare_probe(self.engine, self.tokenizer,
                                                after if self.is_main else None))
        if self._probes_parity:
            out.update(self._check_parity(f"after the push of version {version}"))
        if self.is_main and out["probe_server_change"] == 0.0 \
                and out["probe_server_trainer_max_abs_diff"] > 1e-3:
            raise WeightSyncError(
                f"the server's log-probs of the probe did not change after the weight push, but "
                f"differ from the trainer's by {out['probe_server_trainer_max_abs_diff']:.4f}")
        return out

    @property
    def _probes_parity(self) -> bool:
        """The parity probe runs where the server serves the trainer's weights (pushed to it)
        and the config has not turned it off (rollout.parity_max_kl null: a stand-in)."""
        return self.pushes_weights and self.cfg.rollout.parity_max_kl is not None

    def _check_parity(self, where: str) -> dict[str, float]:
        """The sampling parity probe (swe_aem/train/parity.py) on weights the server and the
        trainer share (at start, or just pushed): the server's log-prob of each token it
        sampled at the rollout temperature against the trainer's; refused above
        rollout.parity_max_kl. Rank 0 asks the server, every rank scores (ZeRO-3 gathers)."""
        r = self.cfg.rollout
        prompt = parity_prompt_ids(self.tokenizer)
        sampling = SamplingParams(temperature=r.agent.temperature, max_tokens=PARITY_TOKENS, seed=PARITY_SEED)
        gen = on_rank0(lambda: self.source.probe_sample(prompt, sampling), f"sampling parity probe ({where})")
        stats = parity_stats(gen.logprobs, score_sampled(self.engine, prompt, gen.token_ids, r.agent.temperature))
        if self.is_main:
            console.print(f"sampling parity ({where}): KL(server || trainer) {stats.kl:.3g} per token over "
                          f"{stats.tokens} sampled tokens, max |log-prob diff| {stats.max_abs_diff:.3g}")
        check_parity(stats, r.parity_max_kl, where)
        return stats.metrics()

    def close(self) -> None:
        self.metrics.close()
        if self.source is not None:
            self.source.close()
            self.source = None


def on_rank0(fn: Callable[[], T], what: str) -> T:
    """fn() on rank 0 while the other ranks wait, its result given to every rank; if it
    fails, every rank raises (rank 0 its own error, the others a TrainingSetupError naming
    it) instead of waiting in a collective for ever."""
    result: T | None = None
    error: Exception | None = None
    if ranks.rank() == 0:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below; the other ranks must not wait for it
            error = exc
    failed, shared = ranks.broadcast((True, f"{what} failed on rank 0: {error}") if error is not None
                                else (False, result))
    if error is not None:
        raise error
    if failed:
        raise TrainingSetupError(shared)
    return shared
