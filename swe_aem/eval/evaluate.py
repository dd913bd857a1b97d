"""Roll out with evaluation settings, grade, and report resolve rates (the library of `swe-aem eval`).

k runs are k samples per instance from one concurrent rollout (sample r is run
r). Each run gets its own official predictions file (one row per instance, as
the harness wants), and the per-instance outcomes go through the statistics in
swe_aem.eval.estimators: resolve rate per run, Pass@1 over runs with a confidence
interval, Pass@k with the unbiased estimator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from swe_aem.agent.settings import AgentConfig
from swe_aem.errors import SetupError

VERIFIED = "SWE-bench/SWE-bench_Verified"


class EvalError(SetupError, RuntimeError):
    """Nothing could be evaluated (every instance lost samples to infrastructure failures)."""


@dataclass
class EvalSettings:
    """How `swe-aem eval` runs: samples per task, grading and the agent's settings."""

    runs: int = 1
    """Samples per instance (Pass@1 over k runs, Pass@k)."""
    grade_timeout_s: float = 1800.0
    """Limit of one grading run (s)."""
    concurrency: int = 8
    """Episodes at once."""
    retries: int = 1
    """Reruns of an episode or a grading that failed for infrastructure reasons."""
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(
        max_turns=100, episode_timeout_s=5400.0, seed=0))
    """The agent's settings; defaults: the DeepSWE evaluation's 100 steps and 5,400 s, at
    temperature 1, seeded (0) so that two evaluations of two checkpoints are paired."""


def evaluate(model: str, dataset: str, out_dir: Path, s: EvalSettings, *, split: str = "test",
             instance_ids: list[str] | None = None, server_url: str | None = None,
             dataset_format: str | None = None, created_after: str | None = None,
             adapter: str | Path | None = None) -> dict[str, Path]:
    """Roll out `s.runs` samples per instance, grade them (official rules), write the report.

    `adapter`: a peft LoRA folder (a run's `final_adapter/`) served on `model` as its base:
    the server starts with LoRA enabled at the adapter's rank and loads it through vLLM's own
    route (/v1/load_lora_adapter) before the first request, and every request names it. An
    adapter vLLM cannot serve is refused before any container or server starts.

    A sample lost to infrastructure failures after its retries is not scored 0: its
    instance leaves the statistics of every run (so runs stay paired) and is listed in
    the report's meta with the reason.
    """
    from transformers import AutoTokenizer

    from swe_aem.agent.harness import open_harness
    from swe_aem.agent.trajectory import write_episodes
    from swe_aem.data import load_instances
    from swe_aem.data.instances import decontaminated
    from swe_aem.policy.models import resolve_model
    from swe_aem.reward import grader

    preset, model_path = resolve_model(model)
    if adapter is not None:
        preset = with_adapter(preset, adapter)
    instances = load_instances(dataset, split=split, instance_ids=instance_ids, dataset_format=dataset_format)
    if created_after is not None:  # a decontaminated set: tasks newer than the model's data
        instances = decontaminated(instances, created_after, dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    agent = s.agent.for_model(preset)
    traj_path = out_dir / "trajectories.jsonl"
    traj_path.write_text("")
    with open_harness(model_path, preset, concurrency=s.concurrency, server_url=server_url,
                      log_path=out_dir / "vllm.log") as h:
        if adapter is not None:
            h.policy.push_weights(Path(adapter))  # the client's requests name it from here on
        result = h.rollout(instances, s.runs, tokenizer=tokenizer, config=agent,
                           grade=grader(h.grade_pool, timeout=s.grade_timeout_s, strict=False),
                           max_retries=s.retries, concurrency=s.concurrency,
                           on_episode=lambda ep: write_episodes(traj_path, [ep], append=True))
    meta = {"dataset": dataset, "split": split, "created_after": created_after,
            "adapter": None if adapter is None else str(adapter),
            "max_turns": agent.max_turns, "temperature": agent.temperature,
            "thinking": agent.thinking}
    return write_rollout_report(out_dir, result, instances, s.runs, model_name=str(model), meta=meta,
                                title=f"{model} on {dataset}")


def with_adapter(preset, adapter: str | Path):
    """The preset with LoRA serving for `adapter` (its rank, one adapter loaded); a
    LoraOptionError naming the folder or what vLLM refuses in it."""
    import dataclasses

    from swe_aem.policy.adapters import check_servable

    config = check_servable(adapter)
    return dataclasses.replace(preset, lora_rank=int(config["r"]), max_loras=1)


def write_rollout_report(out_dir: Path, result, instances: list, runs: int, *, model_name: str,
                         meta: dict, title: str) -> dict[str, Path]:
    """Predictions per run and the eval report (eval.json/md/png) of a graded rollout.

    Shared by `swe-aem eval` and the trainer's held-out evaluation, so both count the
    same way: an instance that lost a sample to infrastructure failures is left out of
    every run (runs stay paired), never scored 0.
    """
    from swe_aem.data.instances import instance_language
    from swe_aem.eval.predictions import Prediction, write_predictions
    from swe_aem.eval.report import write_eval_result
    from swe_aem.eval.runs import runs_from_samples

    for r in range(runs):
        write_predictions(out_dir / f"run-{r}" / "predictions.jsonl",
                          [Prediction(e.instance_id, model_name, e.patch or "")
                           for e in result.episodes if e.sample_index == r])
    lost = sorted({d.instance_id for d in result.dropped})
    kept_instances = [i for i in instances if i.instance_id not in lost]
    kept = [i.instance_id for i in kept_instances]
    if not kept:
        raise EvalError(f"every instance lost a sample to infrastructure failures: "
                        f"{[d.reason for d in result.dropped][:3]}")
    kept_ids = set(kept)
    graded = runs_from_samples([e for e in result.episodes if e.instance_id in kept_ids], kept, runs)
    meta = {"model": model_name, **meta, "runs": runs, "instances_excluded": lost,
            "dropped_samples": [d.to_json() for d in result.dropped][:50],
            "note": "an instance with a sample lost to infrastructure failures (after retries) "
                    "is excluded from every run, never counted as unresolved"}
    languages = {i.instance_id: instance_language(i) for i in kept_instances}
    return write_eval_result(out_dir, graded, meta=meta, title=title, languages=languages)
