"""The LLM arm of `swe-aem evidence`: its option checks, the pairing of held-out runs, and a
toy-sized end-to-end run on the real trainer, containers and grader. There the policy is
ScriptedPolicyServer, a deterministic STAND-IN for vLLM (see tests/train/test_train_live.py), the
trainer's model the small random Llama, and the SFT warm start a WarmStart pointing at it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train_live import _patch_writing_policy

from swe_aem.cli import main
from swe_aem.config import ConfigError
from swe_aem.eval.report import write_eval_result
from swe_aem.evidence.llm import (
    ARMS,
    paired_heldout,
    run_dir,
    run_llm_evidence,
)
from swe_aem.sft.warm_start import WarmStart
from swe_aem.train.loop import task_batch

TRAIN = ["swe-aem__pyledger-1", "swe-aem__pyledger-2"]
SEEDS = (0, 7)  # their first one-task batches differ (checked below)


@pytest.mark.parametrize("argv", [["--llm", "--quick"], ["--llm", "--lam", "0.5"], ["--llm", "--seeds", "1", "1"],
                                  ["--llm", "--steps", "0"], ["heldout.tasks=2"], ["--seeds", "3", "4"]])
def test_options_of_the_other_arm_are_refused(argv: list[str], tmp_path: Path) -> None:
    assert main(["evidence", *argv, "--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


def test_llm_arm_needs_a_heldout_split(tmp_path: Path) -> None:
    assert main(["evidence", "--llm", "--out", str(tmp_path / "ev"), "--", "heldout.split=null"]) == 2
    assert not (tmp_path / "ev").exists()


def test_heldout_runs_are_paired_on_the_instances_every_run_kept(tmp_path: Path) -> None:
    graded = {("grpo", 0): {"a": True, "b": False, "c": True}, ("grpo", 1): {"a": False, "b": True, "c": True},
              ("grpo_aem", 0): {"a": True, "b": True}, ("grpo_aem", 1): {"a": True, "b": False, "c": False}}
    records = [{"arm": arm, "seed": seed,
                "heldout_after_eval": str(write_eval_result(tmp_path / f"{arm}-{seed}", [run], n_boot=10)["json"])}
               for (arm, seed), run in graded.items()]
    runs, excluded = paired_heldout(records)
    assert excluded == ["c"]  # lost in one run, so left out of all of them
    assert runs == {"grpo": [{"a": True, "b": False}, {"a": False, "b": True}],
                    "grpo_aem": [{"a": True, "b": True}, {"a": True, "b": False}]}


def _gold_or_notes(instances) -> callable:
    """_patch_writing_policy of the instance whose problem statement is in the prompt (held-out
    prompts get the first one's, whose edits fix nothing there)."""
    policies = [(i.problem_statement.splitlines()[0], _patch_writing_policy(i)[0]) for i in instances]

    def respond(prompt: str, turn: int) -> str:
        return next((p for head, p in policies if head in prompt), policies[0][1])(prompt, turn)

    return respond


@pytest.mark.slow
def test_llm_evidence_end_to_end(tmp_path: Path, local_instances, small_model) -> None:
    """2 arms x 2 seeds, 1 RL step each; token entropies of the random model sit inside the
    paper's 0.1 range floor, so aem_min_range=0 lets AEM act."""
    from transformers import AutoTokenizer

    from swe_aem.policy.scripted import ScriptedPolicyServer

    assert task_batch(TRAIN, 0, 1, SEEDS[0]) != task_batch(TRAIN, 0, 1, SEEDS[1])
    ws = WarmStart(Path(small_model), TRAIN, cached=True, summary={"stand_in": "random Llama, no SFT"})
    overrides = ["warm_start.dataset=local", "warm_start.split=test", "warm_start.instances_matching=null",
                 "warm_start.max_fix_lines=null",
                 "algo.aem_min_range=0.0",
                 "rollout.tasks_per_step=1", "rollout.samples_per_task=4", "rollout.agent.max_turns=8",
                 "rollout.agent.max_new_tokens=1024", "rollout.concurrency=4", "rollout.filter_groups=true",
                 "trainer.lr=1e-4", "run.push_weights=false",
                 "heldout.dataset=local", "heldout.split=test", "heldout.tasks=2",
                 "heldout.instances_matching=confmerge|textkit", "heldout.max_fix_lines=null"]
    out = tmp_path / "ev"
    respond = _gold_or_notes([i for i in local_instances if i.instance_id in TRAIN])
    with ScriptedPolicyServer(AutoTokenizer.from_pretrained(small_model), respond) as server:
        overrides.append(f"run.vllm_url={server.base_url}")
        rec = run_llm_evidence(out, SEEDS, steps=1, overrides=overrides, ws=ws)
        with pytest.raises(ConfigError, match="already exists with other settings"):
            run_llm_evidence(out, SEEDS, steps=2, overrides=overrides, ws=ws)
        # cut short in the last run's held-out evaluation: a rerun reuses the finished runs and
        # resumes that one from its checkpoint (no second RL step, the evaluation again)
        last = run_dir(out, ARMS[-1], SEEDS[-1]) / "metrics.jsonl"
        rows = last.read_text().splitlines()
        last.write_text("\n".join(rows[:-1]) + "\n")
        stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.jsonl") if p != last}
        again = run_llm_evidence(out, SEEDS, steps=1, overrides=overrides, ws=ws)
        assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
        assert [json.loads(x).get("kind", "train") for x in last.read_text().splitlines()] == \
            ["train", "heldout_after"]
        assert again["comparison"]["n_instances"] == rec["comparison"]["n_instances"]

    runs = {(r["arm"], r["seed"]): r for r in rec["runs"]}
    assert sorted(runs) == [(arm, seed) for arm in ARMS for seed in SEEDS]
    for (arm, seed), r in runs.items():
        rd = Path(r["run_dir"])
        rows = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
        first = (arm, seed) == (ARMS[0], SEEDS[0])
        assert [row.get("kind", "train") for row in rows] == ["heldout_before"] * first + ["train", "heldout_after"]
        assert (rd / "heldout" / "after-step-000001" / "eval.json").is_file()
        assert r["steps"][0]["reward_mean"] == 0.5  # gold edits in half of the group
        assert r["tasks"] == [task_batch(TRAIN, 0, 1, seed)]  # the seed's batch, in both arms
    assert len(list(out.glob("runs/*/heldout/before-step-*/eval.json"))) == 1
    assert rec["paired_batches"]
    for seed in SEEDS:
        plain, aem = runs["grpo", seed]["steps"][0], runs["grpo_aem", seed]["steps"][0]
        assert plain["alpha_max"] == plain["alpha_min"] == 1.0
        assert aem["alpha_max"] > 1.0 > aem["alpha_min"]

    c = rec["comparison"]
    assert c["runs_a"] == c["runs_b"] == len(SEEDS)
    assert c["n_instances"] + len(rec["instances_excluded"]) == 2
    for arm, key in zip(ARMS, ("rate_a", "rate_b"), strict=True):
        graded = json.loads(Path(rec["arms"][arm]["heldout_eval"]).read_text())["runs"]
        assert len(graded) == len(SEEDS) and c[key] == pytest.approx(
            sum(map(sum, (r.values() for r in graded))) / (len(SEEDS) * c["n_instances"]))
    # the combined evals are ordinary eval.json files: `swe-aem compare` gets the same result
    assert main(["compare", c["run_a"], c["run_b"], "--out", str(tmp_path / "cmp")]) == 0
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["diff"] == c["diff"]
    md = (out / "evidence_llm.md").read_text()
    assert f"before RL (the shared checkpoint): {rec['heldout_before']['resolve_rate']:.3f}" in md
    assert "| grpo_aem |" in md and "McNemar" in md
    assert (out / rec["plot"]).stat().st_size > 10_000
